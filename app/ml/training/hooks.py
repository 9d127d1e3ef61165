"""How the training loop talks to the outside: ``TrainHooks`` and what it reports."""

from dataclasses import dataclass, field
from typing import Literal

import torch

from app.ml.resume import ResumePoint


@dataclass(frozen=True)
class Progress:
    epoch: int
    step: int
    total_steps: int
    samples_per_s: float
    eta_s: float


@dataclass
class TrainResult:
    status: Literal["completed", "stopped"]
    device: str
    epochs_completed: int
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    # the test split's per-class scores (and confusion matrix / counts; completed runs)
    report: dict[str, object] | None = None
    # what ``init_weights`` loaded into the model (``WeightMatch.to_json()``)
    init: dict[str, object] | None = None


class TrainHooks:
    """Callbacks from the training loop; all default to doing nothing.

    They run on the training thread between steps, so they must be cheap:
    ``on_progress`` is called every step.
    """

    def on_start(self, device: str, total_steps: int) -> None: ...

    def on_progress(self, progress: Progress) -> None: ...

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None: ...

    def on_step_metrics(self, epoch: int, points: list[tuple[int, dict[str, float]]]) -> None:
        """Throttled per-step values (``train_loss_step``, ``lr``) as (step, values),
        delivered once an epoch."""

    def on_checkpoint(self, epoch: int, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None: ...

    # Hooks that set this get ``on_checkpoint(..., resume=ResumePoint)``: the
    # optimizer and generator states too, to carry the run on after a crash.
    wants_resume_points: bool = False

    def should_stop(self) -> bool:
        return False


def emit_checkpoint(hooks: TrainHooks, epoch: int, weights: dict[str, torch.Tensor],
                    metadata: dict[str, str], point: ResumePoint | None) -> None:
    """The epoch's checkpoint, with a resume point for hooks that want one."""
    if hooks.wants_resume_points and point is not None:
        hooks.on_checkpoint(epoch, weights, metadata, resume=point)  # type: ignore[call-arg]
    else:
        hooks.on_checkpoint(epoch, weights, metadata)
