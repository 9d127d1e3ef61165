"""Modality ops shared by every kind, and the image ones.

An op mixes one modality's tensor given the shared λ and partner index of the
call (``OpContext``) and says what it did (``OpResult``). Ops never write into
the caller's tensors and never loop over samples in Python.
"""

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from app.ml.mixing.types import MixSpec


@dataclass
class OpContext:
    lam: torch.Tensor  # (N,) float32: the shared λ at this point of the call
    index: torch.Tensor  # (N,) partner of each sample
    spec: MixSpec
    generator: torch.Generator
    # regions already cut in this call, so modalities of the same size (RGB and
    # depth of one scene) get the same box
    shared: dict[Any, torch.Tensor] = field(default_factory=dict)


@dataclass
class OpResult:
    value: torch.Tensor
    kept: torch.Tensor | None = None  # λ this region op stands for (exact share kept)
    region: torch.Tensor | None = None  # boxes / spans / bands, per sample
    mask: torch.Tensor | None = None  # e.g. the union attention mask for text
    deferred: bool = False  # the model mixes this modality itself


def interpolate(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam * x + (1 - lam) * partner`` broadcast over trailing dims, in x's dtype.

    Integer tensors (uint8 images) are mixed in float32 and rounded back.
    """
    shape = (-1,) + (1,) * (x.dim() - 1)
    if x.is_floating_point():
        return torch.lerp(partner, x, lam.to(x.dtype).view(shape))
    mixed = torch.lerp(partner.float(), x.float(), lam.view(shape)).round()
    info = torch.iinfo(x.dtype)
    return mixed.clamp(info.min, info.max).to(x.dtype)


def mix_rows(x: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[index]`` per sample, without a gathered copy of x.

    One fused gather-and-weighted-sum kernel (an embedding bag of two rows per
    sample: itself with weight λ, its partner with 1 - λ), so the batch is read
    twice and the result written once, in a single parallel region, on CPU and
    CUDA alike; ``x[index]`` followed by ``lerp`` writes and re-reads a full
    copy of the batch. Same value as ``interpolate`` up to rounding (≤ 1 ulp of
    x's dtype); λ = 1 gives x exactly. Integer tensors go through ``interpolate``.
    """
    if not x.is_floating_point() or x.dim() == 0 or x.numel() == 0:
        return interpolate(x, x[index], lam)
    n = x.shape[0]
    w = lam.to(x.dtype)
    bags = torch.stack([torch.arange(n, device=x.device), index], dim=1)
    out = F.embedding_bag(bags, x.reshape(n, -1), mode="sum",
                          per_sample_weights=torch.stack([w, 1.0 - w], dim=1))
    return out.view(x.shape)


def mixup(x: torch.Tensor, ctx: OpContext) -> OpResult:
    """Mixup (Zhang et al., ICLR 2018): a convex combination of the pair."""
    return OpResult(mix_rows(x, ctx.index, ctx.lam))


def _box_sides(lam: torch.Tensor, size: int, spec: MixSpec,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end (half-open) of the cut along one axis of length ``size``."""
    n, device = lam.shape[0], lam.device
    if spec.cutmix_minmax is not None:
        # timm's rand_bbox_minmax: side drawn uniformly, box fully inside the image
        lo, hi = int(size * spec.cutmix_minmax[0]), int(size * spec.cutmix_minmax[1])
        cut = lo + (torch.rand(n, generator=generator, device=device) * (hi - lo + 1)).long()
        cut = cut.clamp(0, size)
        start = (torch.rand(n, generator=generator, device=device)
                 * (size - cut + 1).float()).long()
        return start, start + cut
    # timm's rand_bbox: side sqrt(1 - λ) of the image, centre uniform, clipped
    cut = (size * torch.sqrt(1.0 - lam)).long()
    centre = (torch.rand(n, generator=generator, device=device) * size).long()
    start = (centre - cut // 2).clamp(0, size)
    end = (centre + cut // 2).clamp(0, size)
    return start, end


def cutmix_boxes(lam: torch.Tensor, height: int, width: int, spec: MixSpec,
                 generator: torch.Generator, index: torch.Tensor | None = None) -> torch.Tensor:
    """Boxes (y0, x0, y1, x1) per sample; one shared box in ``batch`` λ mode and
    one per pair in ``pair`` mode (so both partners keep the same share)."""
    n = lam.shape[0]
    draw = lam[:1] if spec.lam_mode == "batch" else lam
    y0, y1 = _box_sides(draw, height, spec, generator)
    x0, x1 = _box_sides(draw, width, spec, generator)
    boxes = torch.stack([y0, x0, y1, x1], dim=1)
    if spec.lam_mode == "batch":
        boxes = boxes.expand(n, 4)
    elif spec.lam_mode == "pair" and index is not None:
        boxes = boxes[pair_leader(index)]
    # a sample that is not mixed (λ = 1, from prob < 1 or a batch of one) gets no box
    return torch.where((lam < 1.0)[:, None], boxes, torch.zeros_like(boxes))


def pair_leader(index: torch.Tensor) -> torch.Tensor:
    """For pairs (i, index[i]), the smaller of the two: whose draw both use."""
    return torch.minimum(torch.arange(index.shape[0], device=index.device), index)


def shared_boxes(ctx: OpContext, op: str, height: int, width: int) -> torch.Tensor:
    """Boxes for this call's (op, height, width), drawn once and reused."""
    key = (op, height, width)
    if key not in ctx.shared:
        ctx.shared[key] = cutmix_boxes(ctx.lam, height, width, ctx.spec, ctx.generator,
                                       ctx.index)
    return ctx.shared[key]


def box_mask(boxes: torch.Tensor, height: int, width: int, dims: int = 4) -> torch.Tensor:
    """Boolean mask, True inside each sample's box, shaped to broadcast over a
    ``dims``-D (N, …, H, W) tensor."""
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    in_y = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 2:3])
    in_x = (xs >= boxes[:, 1:2]) & (xs < boxes[:, 3:4])
    mask = in_y[:, :, None] & in_x[:, None, :]
    return mask.view(mask.shape[0], *([1] * (dims - 3)), height, width)


def paste_boxes(x: torch.Tensor, index: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """x with the cells inside ``boxes[i]`` (last two dims) taken from ``x[index[i]]``.

    When every sample has the same box and the boxes live on the host (a CPU
    batch: reading them is not a device sync), the batch is copied once and only
    the box is gathered from the partners. Otherwise (per-sample boxes, or an
    accelerator, where reading the box would wait for the device) one masked select.
    """
    height, width = x.shape[-2:]
    if boxes.device.type == "cpu" and bool((boxes == boxes[:1]).all()):
        y0, x0, y1, x1 = boxes[0].tolist()
        value = x.clone()
        if y1 > y0 and x1 > x0:
            value[..., y0:y1, x0:x1] = x[..., y0:y1, x0:x1].index_select(0, index)
        return value
    return torch.where(box_mask(boxes, height, width, x.dim()), x.index_select(0, index), x)


def region_kept(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float()
    return 1.0 - area / float(height * width)


def cutmix(x: torch.Tensor, ctx: OpContext) -> OpResult:
    """CutMix (Yun et al., ICCV 2019) on the last two dims of an image (N, C, H, W)
    or, frame-wise with one box per clip, a video (N, T, C, H, W)."""
    if x.dim() < 4:
        raise ValueError(f"cutmix needs (N, C, H, W) or (N, T, C, H, W), got {tuple(x.shape)}")
    height, width = x.shape[-2:]
    boxes = shared_boxes(ctx, "cutmix", height, width)
    value = paste_boxes(x, ctx.index, boxes)
    exact = ctx.spec.correct_lam or ctx.spec.cutmix_minmax is not None
    # without correction the drawn λ stands, but it is still this op's to set
    return OpResult(value, kept=region_kept(boxes, height, width) if exact else ctx.lam,
                    region=boxes)
