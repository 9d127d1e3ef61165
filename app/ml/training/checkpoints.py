"""Which epoch's model a run keeps, when it stops early, and the resume point
that carries all of the loop's state across a crash.

``Selection`` follows one validation metric for ``checkpoint: best`` and
another (or the same) for early stopping; its state is JSON, kept in the
resume point with the weights, the optimizer, the weight average, the best
epoch's weights and every generator, so a resumed run ends exactly as the
uninterrupted one would on the same device.
"""

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from app.ml.resume import ResumePoint
from app.ml.training.spec import TrainSpec, metric_mode


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights (copy=True: on CPU ``.to()`` would hand out the
    live parameters, which the next step overwrites under whoever holds them)."""
    return {k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in model.state_dict().items()}


def _better(value: float, than: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    return than is None or (value > than if mode == "max" else value < than)


@dataclass
class Selection:
    """The best epoch by ``metric`` and the early-stopping counter."""

    metric: str
    mode: str
    stop_metric: str | None = None
    stop_mode: str = "max"
    patience: int = 0
    best_value: float | None = None
    best_epoch: int = 0
    stop_best: float | None = None
    bad_epochs: int = 0
    stopped_epoch: int | None = None
    missing: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, spec: TrainSpec, headline: str) -> "Selection":
        metric = spec.checkpoint_metric or (spec.early_stopping.metric if spec.early_stopping
                                            else f"val_{headline}")
        stop = spec.early_stopping
        return cls(metric, metric_mode(metric), stop.metric if stop else None,
                   stop.direction if stop else "max", stop.patience if stop else 0)

    def update(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Record an epoch's metrics; True if it is the new best by ``metric``."""
        for name in (self.metric, self.stop_metric):
            if name is not None and name not in metrics:
                raise ValueError(f"{name!r} is not a validation metric of this task; it "
                                 f"reports {', '.join(k for k in metrics if k.startswith('val_'))}")
        improved = _better(metrics[self.metric], self.best_value, self.mode)
        if improved:
            self.best_value, self.best_epoch = metrics[self.metric], epoch
        if self.stop_metric is not None:
            if _better(metrics[self.stop_metric], self.stop_best, self.stop_mode):
                self.stop_best, self.bad_epochs = metrics[self.stop_metric], 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs >= self.patience:
                    self.stopped_epoch = epoch
        return improved

    @property
    def should_stop(self) -> bool:
        return self.stopped_epoch is not None

    def state(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch,
                "stop_best": self.stop_best, "bad_epochs": self.bad_epochs,
                "stopped_epoch": self.stopped_epoch}

    def load(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


@dataclass
class LoopState:
    """Everything the loop carries from epoch to epoch."""

    step: int = 0
    epoch: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)
    best_weights: dict[str, torch.Tensor] | None = None


def capture(state: LoopState, weights: dict[str, torch.Tensor],
            optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator],
            device: torch.device, ema: AveragedModel | None,
            selection: Selection) -> ResumePoint:
    """The resume point after an epoch (copies: the reporter thread writes them
    while the next epoch trains)."""
    states = {}
    if ema is not None:
        states["ema"] = snapshot(ema)
    if state.best_weights is not None:
        states["best"] = state.best_weights
    return ResumePoint(
        epoch=state.epoch, step=state.step, model=weights,
        optimizer=_to_cpu(optimizer.state_dict()),
        generators={k: g.get_state() for k, g in generators.items()},
        torch_rng=torch.get_rng_state(),
        cuda_rng=[torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
        extra={"last_metrics": state.last_metrics, "selection": selection.state()},
        states=states)


def restore(point: ResumePoint, model: nn.Module, optimizer: torch.optim.Optimizer,
            generators: dict[str, torch.Generator], device: torch.device,
            ema: AveragedModel | None, selection: Selection) -> LoopState:
    """Load a resume point into the freshly built run."""
    model.load_state_dict(point.model)
    optimizer.load_state_dict(point.optimizer)  # moves the state to the params' device
    for name, generator in generators.items():
        if name in point.generators:
            generator.set_state(point.generators[name])
    torch.set_rng_state(point.torch_rng)
    if device.type == "cuda" and point.cuda_rng:
        torch.cuda.set_rng_state(point.cuda_rng[0], device)
    if ema is not None:
        if "ema" not in point.states:
            raise ValueError("the resume point has no weight average, but the run uses ema")
        ema.load_state_dict(point.states["ema"])
    selection.load(point.extra.get("selection", {}))
    return LoopState(point.step, point.epoch, dict(point.extra.get("last_metrics", {})),
                     point.states.get("best"))
