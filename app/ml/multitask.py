"""Multi-task classification: one linear head per task over a shared model.

Hard sharing: the encoders and the fusion (or an image model's body) are
shared, and each task has its own linear head on the shared representation.
The heads are the column blocks of the model's last linear layer, built with
Σ K_t outputs: block t is exactly a linear head of task t on the penultimate
features (its rows touch nothing else), and every tensor the library passes
around stays one (N, Σ K_t) logits tensor. Labels are (N, T) class indices, one
column per task in the dataset's order.

Mixing: ``mix`` mixes the first task's targets; the others are mixed with
``mix_targets`` and the same λ and partner (``mix_all_targets``), so every
task sees the same mixture of the same two samples. The loss is
Σ_t w_t · soft cross-entropy of task t's logits block against its mixed targets.

Metrics: each classification metric per task (``acc.<task>``, ``ece.<task>``…)
and, under the plain name, its unweighted mean over the tasks (``acc`` is the
mean accuracy), which checkpoint selection and early stopping follow by default.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from app.ml.data.prepared import PreparedDataset
from app.ml.metrics import classification_metrics, evaluation_report, soft_cross_entropy
from app.ml.mixing import Mixed
from app.ml.mixing.registry import mix_targets
from app.ml.tasks import CLASSIFICATION, Task

NAME = "multitask"


@dataclass(frozen=True)
class Head:
    name: str
    classes: tuple[str, ...]
    weight: float = 1.0


@dataclass(frozen=True)
class Heads:
    """The tasks of a multi-task model, in the order of its logits' blocks."""

    heads: tuple[Head, ...]

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.heads]

    @property
    def total_classes(self) -> int:
        return sum(len(h.classes) for h in self.heads)

    def to_json(self) -> str:
        """What a checkpoint's metadata keeps (``tasks``), ``from_json``'s input."""
        return json.dumps([[h.name, list(h.classes), h.weight] for h in self.heads])

    @classmethod
    def from_json(cls, text: str) -> "Heads":
        return cls(tuple(Head(str(name), tuple(classes), float(weight))
                         for name, classes, weight in json.loads(text)))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, Σ K_t): each task's block a softmax over that task's classes."""
        return torch.cat([logits[:, b].softmax(dim=-1) for b in self.blocks()], dim=1)

    def blocks(self) -> list[slice]:
        """Each task's columns of the (N, Σ K_t) logits."""
        out, start = [], 0
        for h in self.heads:
            out.append(slice(start, start + len(h.classes)))
            start += len(h.classes)
        return out


def weight_problems(tasks: Sequence[str], weights: Mapping[str, float] | None
                    ) -> list[tuple[str, str]]:
    """(field, reason) for ``task_weights`` against a dataset's tasks: a weight
    of a task the dataset lacks names that task's key."""
    have = ", ".join(tasks)
    return [(f"task_weights.{name}", f"the dataset has no task {name!r}; its tasks: {have}")
            for name in (weights or {}) if name not in tasks]


def task_problem(task_names: Sequence[str]) -> str | None:
    """Why a dataset with these label columns cannot train task multitask."""
    if len(task_names) < 2:
        return ("task 'multitask' needs a dataset with several label columns (tasks); this "
                "one has one label column: use 'classification'")
    return None


def heads_of(data: PreparedDataset, weights: Mapping[str, float] | None = None) -> Heads:
    """The dataset's tasks as heads, weighted by ``weights`` (default 1 each);
    ``ValueError`` naming the field when the dataset or the weights do not fit."""
    problem = task_problem(list(data.tasks))
    if problem is not None:
        raise ValueError(f"task: {problem}")
    for field, reason in weight_problems(list(data.tasks), weights):
        raise ValueError(f"{field}: {reason}")
    weights = dict(weights or {})
    return Heads(tuple(Head(t, tuple(names), float(weights.get(t, 1.0)))
                       for t, names in data.tasks.items()))


def stacked_labels(data: PreparedDataset) -> torch.Tensor:
    """(N, T) int64: every task's labels, a column per task in order."""
    return torch.stack([data.labels_of(t).long() for t in data.tasks], dim=1)


def mix_all_targets(mixed: Mixed, labels: torch.Tensor, heads: Heads,
                    smoothing: float) -> torch.Tensor:
    """(N, Σ K_t) mixed targets of every task: the first task's as ``mix`` made
    them, every other task's with the same λ and partner (``mixed.lam``/``index``)."""
    parts = [mixed.targets.float()]
    for t, head in enumerate(heads.heads[1:], start=1):
        parts.append(mix_targets(labels[:, t], len(head.classes), smoothing,
                                 mixed.lam, mixed.index))
    return torch.cat(parts, dim=1)


def multitask_loss(logits: torch.Tensor, targets: torch.Tensor, heads: Heads) -> torch.Tensor:
    """Σ_t w_t · soft cross-entropy of task t's block of logits and targets."""
    total = logits.new_zeros((), dtype=torch.float32)
    for head, block in zip(heads.heads, heads.blocks(), strict=True):
        total = total + head.weight * soft_cross_entropy(logits[:, block], targets[:, block])
    return total


def multitask_nll(logits: torch.Tensor, labels: torch.Tensor, heads: Heads) -> torch.Tensor:
    """Σ_t w_t · NLL of task t's labels: what a shared temperature is fitted to."""
    wide = logits if logits.dtype == torch.float64 else logits.float()
    total = wide.new_zeros(())
    for t, (head, block) in enumerate(zip(heads.heads, heads.blocks(), strict=True)):
        total = total + head.weight * F.cross_entropy(wide[:, block], labels[:, t].long())
    return total


def multitask_metrics(logits: torch.Tensor, labels: torch.Tensor,
                      heads: Heads) -> dict[str, torch.Tensor]:
    """Each classification metric per task (``<metric>.<task>``) and its mean over
    the tasks (``<metric>``); 0-d tensors, no host sync."""
    out: dict[str, torch.Tensor] = {}
    per_task = [classification_metrics(logits[:, block], labels[:, t])
                for t, block in enumerate(heads.blocks())]
    for name in CLASSIFICATION.metric_names:
        values = [m[name] for m in per_task]
        out[name] = torch.stack(values).mean()
        out.update({f"{name}.{h.name}": v for h, v in zip(heads.heads, values, strict=True)})
    return out


def multitask_report(logits: torch.Tensor, labels: torch.Tensor,
                     heads: Heads) -> dict[str, Any]:
    """The first task's report at the top (as a classifier's), and every task's
    confusion matrix and per-class scores under ``tasks``."""
    reports = {h.name: evaluation_report(logits[:, block], labels[:, t], list(h.classes))
               for t, (h, block) in enumerate(zip(heads.heads, heads.blocks(), strict=True))}
    first = reports[heads.heads[0].name]
    return {**first, "task": NAME,
            "tasks": {name: {k: v for k, v in r.items() if k != "task"}
                      for name, r in reports.items()}}


def multitask(heads: Heads) -> Task:
    """The ``Task`` that trains ``heads``: labels (N, T), logits (N, Σ K_t)."""
    names = tuple(n for n in CLASSIFICATION.metric_names) + tuple(
        f"{n}.{h.name}" for n in CLASSIFICATION.metric_names for h in heads.heads)
    return Task(
        name=NAME, multilabel=False, headline="acc",
        loss=lambda logits, targets: multitask_loss(logits, targets, heads),
        nll=lambda logits, labels: multitask_nll(logits, labels, heads),
        metrics=lambda logits, labels: multitask_metrics(logits, labels, heads),
        report=lambda logits, labels, _names: multitask_report(logits, labels, heads),
        metric_names=names)


def metric_names(tasks: Sequence[str]) -> tuple[str, ...]:
    """The metric names (unprefixed) a multi-task run on these tasks reports."""
    return multitask(Heads(tuple(Head(t, ("a", "b")) for t in tasks))).metric_names
