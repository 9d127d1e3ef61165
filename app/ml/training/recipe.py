"""The optimisation recipe of a ``TrainSpec``: optimizer, learning-rate
schedule, gradient clipping and the weight average (EMA).

The learning rate is a pure function of the step (``lr_factor``), so a resumed
run needs no scheduler state and every shape is checked against torch's own
schedulers in the tests: ``cosine`` = LinearLR warm-up then CosineAnnealingLR,
``step`` = MultiStepLR, ``onecycle`` = OneCycleLR (cosine, no momentum cycling).
"""

import itertools
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from app.ml.training.spec import TrainSpec

ONECYCLE_PCT_START = 0.3  # torch's default, when warmup_epochs is 0
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4  # torch's defaults


def build_optimizer(model: nn.Module, spec: TrainSpec,
                    no_decay: Iterable[str] = ()) -> torch.optim.Optimizer:
    """``spec.optimizer`` over the model's parameters. Weight decay applies to
    weight matrices and conv kernels only: biases and normalisation scales (1-D
    tensors) and the names in ``no_decay`` are not pulled towards 0 (decaying a
    BatchNorm scale only shrinks what the next layer undoes)."""
    skip = set(no_decay)
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if p.dim() < 2 or name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": spec.weight_decay},
              {"params": plain, "weight_decay": 0.0}]
    # on CUDA one fused kernel updates every parameter, and AdamW's step counts
    # stay on the device; elsewhere torch's default (foreach) implementation
    fused = True if decay + plain and all(p.is_cuda for p in decay + plain) else None
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum,
                               nesterov=spec.nesterov and spec.momentum > 0, fused=fused)
    return torch.optim.AdamW(groups, lr=spec.lr, fused=fused)


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def lr_factor(spec: TrainSpec, step: int, steps_per_epoch: int) -> float:
    """The learning rate of (0-based) ``step`` as a share of ``spec.lr``."""
    total = steps_per_epoch * spec.epochs
    if spec.schedule == "onecycle":
        pct_start = spec.warmup / spec.epochs if spec.warmup else ONECYCLE_PCT_START
        rise_end = pct_start * total - 1
        initial = 1.0 / ONECYCLE_DIV
        if step <= rise_end:
            return _cos_anneal(initial, 1.0, step / rise_end if rise_end > 0 else 1.0)
        fall = (step - rise_end) / max(total - 1 - rise_end, 1e-12)
        return _cos_anneal(1.0, initial / ONECYCLE_FINAL_DIV, min(fall, 1.0))
    warm = spec.warmup * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if spec.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))
    if spec.schedule == "step":
        passed = sum(step >= m * steps_per_epoch for m in spec.step_milestones())
        return spec.gamma ** passed
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(model: nn.Module, max_norm: float | None) -> None:
    """Clip the global gradient norm; ``foreach`` and no ``.item()``: no host sync."""
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)


class WeightAverage(AveragedModel):
    """torch's EMA ``AveragedModel`` (same state, same arithmetic as
    ``get_ema_multi_avg_fn``: the first update copies, later ones lerp by
    1 − decay), with an update that never waits for the device.

    torch's ``update_parameters`` tests its ``n_averaged`` counter (a host tensor)
    and copies it to the device every step; on CUDA that blocking copy waits for
    every queued kernel. Here the count is mirrored in a Python int, set when
    the average is made or loaded, outside the steps."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay = decay
        self._count = 0

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        result = super().load_state_dict(*args, **kwargs)
        self._count = int(self.n_averaged)
        return result

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        pairs = [(a.detach(), p.detach()) for a, p in zip(
            itertools.chain(self.module.parameters(), self.module.buffers()),
            itertools.chain(model.parameters(), model.buffers()), strict=True)]
        if self._count == 0:
            for averaged, live in pairs:
                averaged.copy_(live)
        else:
            floats = [(a, p) for a, p in pairs if a.is_floating_point() or a.is_complex()]
            if floats:
                torch._foreach_lerp_([a for a, _ in floats], [p for _, p in floats],
                                     1 - self.decay)
            for averaged, live in pairs:  # integer buffers (num_batches_tracked), as torch
                if not (averaged.is_floating_point() or averaged.is_complex()):
                    averaged.copy_(averaged * self.decay + live * (1 - self.decay))
        self.n_averaged += 1
        self._count += 1


def build_ema(model: nn.Module, decay: float | None) -> WeightAverage | None:
    """An exponential moving average of the weights, buffers (BatchNorm
    statistics) included, so the average is a model that can be evaluated as is."""
    if decay is None:
        return None
    return WeightAverage(model, decay)
