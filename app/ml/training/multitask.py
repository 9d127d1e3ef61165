"""The objective of task ``multitask`` (``app.ml.multitask``): the classifier's,
with labels (N, T) (a column per task), a model whose last layer has a block
of outputs per task, and every task's targets mixed with ``mix``'s λ and partner."""

from collections.abc import Callable, Mapping
from dataclasses import replace

import torch

from app.ml.data.prepared import PreparedDataset
from app.ml.data.shards import ShardedDataset
from app.ml.mixing import Mixed, MixSpec
from app.ml.models import ModelSpec
from app.ml.multitask import NAME, Heads, heads_of, mix_all_targets, multitask, stacked_labels
from app.ml.tasks import Task, get_task
from app.ml.training.classify import ClassifierObjective
from app.ml.training.spec import TrainSpec
from app.ml.training.streamed import StreamedClassifierObjective

# builds an objective from (data, model spec, mix spec, train spec, task, device)
MakeObjective = Callable[[PreparedDataset, ModelSpec, MixSpec, TrainSpec, Task, torch.device],
                         ClassifierObjective]


class MultitaskObjective(ClassifierObjective):
    def __init__(self, data: PreparedDataset, model_spec: ModelSpec, mix_spec: MixSpec,
                 spec: TrainSpec, task: Task, device: torch.device, heads: Heads) -> None:
        self.heads = heads
        # the classifier's objective over (N, T) labels and Σ K_t classes; the
        # heads know which block of the logits is whose
        labels = stacked_labels(data)
        view = replace(data, labels=labels, clean_labels=labels,
                       class_names=[f"{h.name}:{c}" for h in heads.heads for c in h.classes])
        super().__init__(view, model_spec, mix_spec, spec, task, device)
        self.mix_classes = len(heads.heads[0].classes)
        self.metadata["tasks"] = heads.to_json()  # what app.ml.checkpoint rebuilds them from

    def mix_labels(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, 0]

    def mixed_targets(self, mixed: Mixed, y: torch.Tensor) -> torch.Tensor:
        return mix_all_targets(mixed, y, self.heads, self.task_mix.label_smoothing)


class StreamedMultitaskObjective(MultitaskObjective, StreamedClassifierObjective):
    """Multi-task over a ``ShardedDataset``: the (N, T) labels are the shard
    index's (resident, a few bytes a row), the rows are streamed."""


def resolve_task(task: str | Task, data: PreparedDataset,
                 task_weights: Mapping[str, float] | None
                 ) -> tuple[Task, PreparedDataset, MakeObjective | None]:
    """The task to train, the data to train it on and, for ``multitask``, its
    objective (None: the data's usual one). ``ValueError`` naming the field when
    the task, the dataset and ``task_weights`` do not fit."""
    if not (isinstance(task, str) and task == NAME):
        if task_weights:
            name = task if isinstance(task, str) else task.name
            raise ValueError(f"task_weights: applies to task multitask only, not {name}")
        return get_task(task), data, None
    heads = heads_of(data, task_weights)

    def objective(data: PreparedDataset, model_spec: ModelSpec, mix_spec: MixSpec,
                  spec: TrainSpec, task: Task, device: torch.device) -> MultitaskObjective:
        kind = (StreamedMultitaskObjective if isinstance(data, ShardedDataset)
                else MultitaskObjective)
        return kind(data, model_spec, mix_spec, spec, task, device, heads)

    return multitask(heads), data, objective

