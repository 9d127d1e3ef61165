"""What a training task is: the labels it needs, its loss on mixed targets, its
metrics and its evaluation report. ``train`` and the service look tasks up here,
so a task that trains a classifier head is one more ``Task`` in ``TASKS``.

- ``classification``: one class per sample (labels (N,) class indices);
  soft-target cross-entropy; accuracy is the headline metric.
- ``multilabel``: any set of classes per sample (labels (N, K) multi-hot uint8);
  binary cross-entropy with logits on the mixed targets (mixup of multi-hot rows
  is λ·y + (1−λ)·y′, a per-class probability); mAP is the headline metric.

Label smoothing follows ``Task.multilabel``: a multi-label task's targets are
smoothed per class towards ½ (each class is its own two-way problem), a
classification task's towards 1/K. The formula is
``app.ml.mixing.smooth_targets``; a notebook calling
``mix(..., multilabel=True)`` on multi-hot targets gets the trainer's targets.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from app.ml.data.prepared import PreparedDataset
from app.ml.metrics import (
    classification_metrics,
    evaluation_report,
    multilabel_metrics,
    multilabel_nll,
    multilabel_report,
    soft_cross_entropy,
)
from app.ml.mixing import MixSpec, smooth_targets

Metrics = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
Report = Callable[[torch.Tensor, torch.Tensor, list[str]], dict[str, Any]]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Task:
    name: str
    multilabel: bool  # labels (N, K) multi-hot and independent per-class logits
    headline: str  # the metric robustness checks report (``test_<headline>_without_<m>``)
    loss: Loss  # logits, dense (N, K) mixed targets → mean loss
    nll: Loss  # logits, labels as stored → mean NLL (what temperature scaling fits)
    metrics: Metrics  # logits, labels as stored → 0-d tensors
    report: Report  # logits, labels, class names → JSON-ready report
    metric_names: tuple[str, ...] = ()  # the keys ``metrics`` returns (``val_<name>``…)

    def mix_spec(self, spec: MixSpec) -> tuple[MixSpec, float]:
        """The spec the trainer's ``mix`` call gets and the smoothing this task
        applies itself (``targets``). That call does not say the targets are
        multi-label, so a multi-label task smooths after mixing, by the same rule;
        smoothing is affine, so before or after mixing gives the same targets."""
        if not self.multilabel or spec.label_smoothing == 0:
            return spec, 0.0
        return replace(spec, label_smoothing=0.0), spec.label_smoothing

    def targets(self, mixed_targets: torch.Tensor, smoothing: float) -> torch.Tensor:
        """Mixed targets with the smoothing ``mix_spec`` kept back folded in."""
        return smooth_targets(mixed_targets, smoothing, multilabel=self.multilabel)

    def mismatch(self, multilabel_data: bool) -> str | None:
        """Why a dataset with (or without) multi-label targets cannot train this
        task; None when it can."""
        if self.multilabel and not multilabel_data:
            return (f"task {self.name!r} needs multi-label targets (a set of classes per "
                    "sample); this dataset has one class per sample: use 'classification'")
        if not self.multilabel and multilabel_data:
            return (f"task {self.name!r} needs one class per sample; this dataset has "
                    "multi-label targets: use 'multilabel'")
        return None

    def check(self, data: PreparedDataset) -> None:
        problem = self.mismatch(data.multilabel)
        if problem is not None:
            raise ValueError(problem)


CLASSIFICATION = Task(
    name="classification", multilabel=False, headline="acc",
    loss=soft_cross_entropy, nll=lambda logits, y: F.cross_entropy(logits.float(), y.long()),
    metrics=classification_metrics, report=evaluation_report,
    metric_names=("loss", "acc", "ece", "f1_macro", "brier"))

MULTILABEL = Task(
    name="multilabel", multilabel=True, headline="map",
    loss=multilabel_nll, nll=multilabel_nll,
    metrics=multilabel_metrics, report=multilabel_report,
    metric_names=("loss", "map", "f1_micro", "f1_macro", "subset_acc", "ece", "brier"))

TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, MULTILABEL)}


def get_task(name: str | Task) -> Task:
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
