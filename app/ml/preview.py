"""Seeded, reproducible previews of what a mixing spec does to a dataset."""

from dataclasses import dataclass

import torch

from app.ml.data.prepared import PreparedDataset
from app.ml.mixing import MixSpec, mix


@dataclass
class PreviewBatch:
    indices_a: list[int]
    indices_b: list[int]
    lam: list[float]
    targets: torch.Tensor  # (n, K) soft targets
    boxes: list[list[int]] | None
    images_a: torch.Tensor  # (n, C, H, W) float in [0, 1]
    images_b: torch.Tensor
    mixed: torch.Tensor


def preview_mix(data: PreparedDataset, spec: MixSpec, seed: int, n: int,
                split: str = "train", modality: str = "image") -> PreviewBatch:
    """Draw ``n`` samples of ``split`` and mix them; same seed, same result."""
    generator = torch.Generator().manual_seed(seed)
    pool = data.split_indices(split)
    chosen = pool[torch.randperm(pool.shape[0], generator=generator)[:n]]
    lo, hi = data.value_range(modality)
    images = (data.inputs[modality][chosen].float() - lo) / max(hi - lo, 1e-12)
    mixed = mix({modality: images}, data.labels[chosen], spec, generator, data.num_classes)
    partners = chosen[mixed.index]
    return PreviewBatch(
        indices_a=chosen.tolist(),
        indices_b=partners.tolist(),
        lam=mixed.lam.tolist(),
        targets=mixed.targets,
        boxes=mixed.boxes.tolist() if mixed.boxes is not None else None,
        images_a=images,
        images_b=images[mixed.index],
        mixed=mixed.inputs[modality].clamp(0.0, 1.0),
    )
