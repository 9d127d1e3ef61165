"""The optimisation recipe of a ``TrainSpec``: optimizer, learning-rate
schedule, gradient clipping and the weight average (EMA).

The learning rate is a pure function of the step (``lr_factor``), so a resumed
run needs no scheduler state and every shape is checked against torch's own
schedulers in the tests: ``cosine`` = LinearLR warm-up then CosineAnnealingLR,
``step`` = MultiStepLR, ``onecycle`` = OneCycleLR (cosine, no momentum cycling).
"""

import math
from collections.abc import Iterable

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
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum,
                               nesterov=spec.nesterov and spec.momentum > 0)
    return torch.optim.AdamW(groups, lr=spec.lr)


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


def build_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """torch's exponential moving average of the weights, buffers (BatchNorm
    statistics) included, so the average is a model that can be evaluated as is."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
