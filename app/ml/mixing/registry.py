"""Method registry and the single entry point ``mix``.

Adding a method is one op function in ``ops.py`` and one ``register_method`` call.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from app.ml.mixing import ops
from app.ml.mixing.sampling import sample_beta, sample_partners
from app.ml.mixing.types import Mixed, MixSpec

MixOp = Callable[
    [dict[str, torch.Tensor], torch.Tensor, torch.Tensor, MixSpec, torch.Generator],
    tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None],
]

METHODS: dict[str, MixOp] = {}


def register_method(name: str, op: MixOp) -> None:
    if name in METHODS:
        raise ValueError(f"mixing method {name!r} is already registered")
    METHODS[name] = op


register_method("none", ops.none_op)
register_method("mixup", ops.mixup_op)
register_method("cutmix", ops.cutmix_op)


def soft_targets(targets: torch.Tensor, num_classes: int, smoothing: float = 0.0,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense (N, K) targets from class indices or from soft/one-hot rows, smoothed."""
    if targets.dim() == 1:
        dense = F.one_hot(targets.long(), num_classes).to(dtype)
    else:
        dense = targets.to(dtype)
    if smoothing > 0:
        dense = dense * (1.0 - smoothing) + smoothing / num_classes
    return dense


def draw_lam(spec: MixSpec, n: int, generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    """Per-sample λ (float32, shape (n,)); equal across the batch in ``batch`` mode."""
    draws = 1 if spec.lam_mode == "batch" else n
    lam = sample_beta(spec.alpha, draws, generator, device)
    if spec.prob < 1.0:
        apply = torch.rand(draws, generator=generator, device=device) < spec.prob
        lam = torch.where(apply, lam, torch.ones_like(lam))
    return lam.expand(n).clone() if draws == 1 else lam


def mix(batch: dict[str, torch.Tensor], targets: torch.Tensor, spec: MixSpec,
        generator: torch.Generator, num_classes: int) -> Mixed:
    """Mix a batch of one or more modalities with one partner and one λ per sample.

    ``batch`` maps modality name to a tensor whose first dim is the batch;
    ``targets`` are class indices (N,) or soft/one-hot rows (N, K). The generator
    must live on the batch's device. A batch of one comes back unmixed, λ = 1.
    """
    if spec.method not in METHODS:
        raise ValueError(f"unknown mixing method {spec.method!r}; known: {sorted(METHODS)}")
    if not batch:
        raise ValueError("batch has no modalities")
    first = next(iter(batch.values()))
    n, device = first.shape[0], first.device
    if any(v.shape[0] != n for v in batch.values()) or targets.shape[0] != n:
        raise ValueError("all modalities and the targets must share the batch dimension")

    dense = soft_targets(targets, num_classes, spec.label_smoothing)
    if spec.method == "none" or n < 2:
        index = torch.arange(n, device=device)
        lam = torch.ones(n, device=device)
        return Mixed(inputs=dict(batch), targets=dense, lam=lam, index=index,
                     method="none" if spec.method == "none" else spec.method)

    lam = draw_lam(spec, n, generator, device)
    index = sample_partners(n, generator, device)
    mixed, lam, boxes = METHODS[spec.method](batch, lam, index, spec, generator)
    w = lam[:, None].to(dense.dtype)
    mixed_targets = w * dense + (1.0 - w) * dense[index]
    return Mixed(inputs=mixed, targets=mixed_targets, lam=lam, index=index, boxes=boxes,
                 method=spec.method)
