"""What a mixing op is asked to do (``MixSpec``) and what it reports back (``Mixed``)."""

from dataclasses import dataclass, field
from typing import Literal

import torch

LamMode = Literal["batch", "sample"]


@dataclass(frozen=True)
class MixSpec:
    """A mixing recipe. Field names follow timm's ``Mixup`` where they overlap.

    method: registered op name (``none``, ``mixup``, ``cutmix``).
    alpha: Beta(alpha, alpha) concentration for λ.
    lam_mode: ``batch`` draws one λ (and one cutmix box) per batch, as timm's
        default; ``sample`` draws one per sample.
    prob: probability that a batch (``batch``) or a sample (``sample``) is mixed.
    cutmix_minmax: optional (min, max) box side ratio; when set, the box size is
        drawn uniformly in that range instead of from λ (timm's rand_bbox_minmax).
    correct_lam: report λ as the exact share of the image kept after the box is
        clipped at the border; targets use that λ.
    label_smoothing: folded into the one-hot targets before mixing.
    """

    method: str = "mixup"
    alpha: float = 1.0
    lam_mode: LamMode = "batch"
    prob: float = 1.0
    cutmix_minmax: tuple[float, float] | None = None
    correct_lam: bool = True
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.alpha <= 0:
            raise ValueError("alpha must be > 0")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError("prob must be in [0, 1]")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        if self.lam_mode not in ("batch", "sample"):
            raise ValueError("lam_mode must be 'batch' or 'sample'")
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError("cutmix_minmax must satisfy 0 < min <= max <= 1")


@dataclass
class Mixed:
    """The result of one mixing call; every field lives on the batch's device.

    ``inputs[k][i] = lam[i] * batch[k][i] + (1 - lam[i]) * batch[k][index[i]]`` for
    interpolating ops; for cutmix, the pixels inside ``boxes[i]`` (y0, x0, y1, x1,
    half-open) come from ``index[i]`` and ``lam[i]`` is the share kept.
    """

    inputs: dict[str, torch.Tensor]
    targets: torch.Tensor
    lam: torch.Tensor
    index: torch.Tensor
    boxes: torch.Tensor | None = None
    method: str = "none"
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
