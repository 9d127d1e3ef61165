"""Batched image augmentation on the training device: random crops and flips.

No per-sample Python: one draw per batch for the offsets and flips, then
gathers. Images are (N, C, H, W); video clips (N, T, C, H, W) get one crop and
one flip per clip, the same for all of its frames.
"""

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from app.ml.training.spec import TrainSpec


def crop_padding(spec: TrainSpec, side: int) -> int:
    """``spec.crop_padding``, or ⌈side/8⌉ (4 pixels on 32×32 images, as in the
    mixup paper's CIFAR recipe; 1 on 8×8 digits)."""
    return spec.crop_padding if spec.crop_padding is not None else -(-side // 8)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad (N, C, H, W) by ``padding`` zeros on every side and crop H×W back at a
    per-sample offset (oy, ox) drawn uniformly from 0…2·padding:
    ``out[n, :, i, j] = padded[n, :, oy[n] + i, ox[n] + j]``. After normalisation,
    0 is the train mean."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)
    picked = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    return picked.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each sample left–right with probability ½ (the last dim is width)."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def augment_problem(augment: tuple[str, ...] | None, kinds: list[str]) -> str | None:
    """Why an explicit ``augment`` cannot apply to a model reading modalities of
    ``kinds``, or None (the default applies where there are images)."""
    if augment and not set(kinds) & {"image", "video"}:
        return (f"{', '.join(augment)} needs an image or video modality; the model reads "
                f"{', '.join(sorted(set(kinds))) or 'none'}")
    return None


def augment_batch(batch: Mapping[str, torch.Tensor], kinds: Mapping[str, str],
                  spec: TrainSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``spec.augment`` applied to the image and video modalities of a normalised batch."""
    out = dict(batch)
    augment = spec.augmentations
    if not augment:
        return out
    for m, x in batch.items():
        kind = kinds.get(m, m)
        if kind not in ("image", "video"):
            continue
        flat = x.flatten(1, 2) if kind == "video" else x  # frames share their crop
        if "crop" in augment:
            flat = random_crop(flat, crop_padding(spec, min(flat.shape[-2:])), generator)
        if "flip" in augment:
            flat = random_flip(flat, generator)
        out[m] = flat.view(x.shape)
    return out
