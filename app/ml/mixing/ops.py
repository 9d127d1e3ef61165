"""The mixing ops: small pure functions over a batch dict.

Each op receives the batch, the per-sample λ drawn by ``mix`` and the partner
index, and returns the mixed batch, the λ the targets must use (cutmix corrects
it to the kept area) and the boxes it cut, if any. Ops never write into the
caller's tensors.
"""

import torch

from app.ml.mixing.types import MixSpec


def interpolate(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam * x + (1 - lam) * partner`` broadcast over trailing dims, in x's dtype.

    Integer tensors (uint8 images) are mixed in float32 and rounded back.
    """
    shape = (-1,) + (1,) * (x.dim() - 1)
    if x.is_floating_point():
        w = lam.to(x.dtype).view(shape)
        return torch.lerp(partner, x, w)
    w = lam.view(shape)
    mixed = torch.lerp(partner.float(), x.float(), w).round()
    info = torch.iinfo(x.dtype)
    return mixed.clamp(info.min, info.max).to(x.dtype)


def mixup_op(batch: dict[str, torch.Tensor], lam: torch.Tensor, index: torch.Tensor,
             spec: MixSpec, generator: torch.Generator
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """Mixup (Zhang et al., ICLR 2018): convex combination of every modality."""
    mixed = {k: interpolate(v, v[index], lam) for k, v in batch.items()}
    return mixed, lam, None


def none_op(batch: dict[str, torch.Tensor], lam: torch.Tensor, index: torch.Tensor,
            spec: MixSpec, generator: torch.Generator
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """No mixing: inputs pass through, λ = 1."""
    return dict(batch), torch.ones_like(lam), None


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
                 generator: torch.Generator) -> torch.Tensor:
    """Boxes (y0, x0, y1, x1) per sample; one shared box in ``batch`` λ mode."""
    n = lam.shape[0]
    draw = lam[:1] if spec.lam_mode == "batch" else lam
    y0, y1 = _box_sides(draw, height, spec, generator)
    x0, x1 = _box_sides(draw, width, spec, generator)
    boxes = torch.stack([y0, x0, y1, x1], dim=1)
    if spec.lam_mode == "batch":
        boxes = boxes.expand(n, 4)
    # a sample that is not mixed (λ = 1, from prob < 1 or a batch of one) gets no box
    return torch.where((lam < 1.0)[:, None], boxes, torch.zeros_like(boxes))


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boolean (N, 1, H, W) mask, True inside each sample's box."""
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    in_y = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 2:3])
    in_x = (xs >= boxes[:, 1:2]) & (xs < boxes[:, 3:4])
    return (in_y[:, :, None] & in_x[:, None, :])[:, None]


def cutmix_op(batch: dict[str, torch.Tensor], lam: torch.Tensor, index: torch.Tensor,
              spec: MixSpec, generator: torch.Generator
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """CutMix (Yun et al., ICCV 2019) on 4-D (N, C, H, W) tensors.

    Other modalities in the batch are interpolated with the same (corrected) λ,
    so every modality of a sample and its label agree on one mixing weight.
    """
    images = [k for k, v in batch.items() if v.dim() == 4]
    if not images:
        raise ValueError("cutmix needs an image modality shaped (N, C, H, W)")
    height, width = batch[images[0]].shape[-2:]
    boxes = cutmix_boxes(lam, height, width, spec, generator)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float()
    kept = 1.0 - area / float(height * width)
    if spec.correct_lam or spec.cutmix_minmax is not None:
        lam = kept
    mask = box_mask(boxes, height, width)
    mixed: dict[str, torch.Tensor] = {}
    for key, value in batch.items():
        if key in images:
            if value.shape[-2:] != (height, width):
                raise ValueError(f"cutmix: image modalities differ in size ({key})")
            mixed[key] = torch.where(mask, value[index], value)
        else:
            mixed[key] = interpolate(value, value[index], lam)
    return mixed, lam, boxes
