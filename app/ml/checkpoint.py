"""Rebuild a trained model from a checkpoint's tensors and metadata, with what
turns its logits into probabilities: the task and the fitted temperature.

``train`` writes the metadata (``TrainHooks.on_checkpoint``): ``model_spec``,
``class_names``, ``task``, the input shape(s) and, on the last epoch's
checkpoint of a run with ``calibration="temperature"``, ``temperature``.
Checkpoints written before tasks and calibration existed load as
classification with T = 1.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from app.ml.models import ModelSpec, build_model
from app.ml.tasks import Task, get_task


@dataclass
class LoadedModel:
    model: nn.Module
    task: Task
    class_names: list[str]
    temperature: float = 1.0

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities: softmax over classes (classification) or a
        sigmoid per class (multilabel) of ``logits / temperature``."""
        scaled = logits.float() / self.temperature
        return scaled.sigmoid() if self.task.multilabel else scaled.softmax(dim=-1)


def load_model(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> LoadedModel:
    """The model of a checkpoint, weights loaded, in eval mode."""
    spec = ModelSpec(**json.loads(metadata["model_spec"]))
    class_names = list(json.loads(metadata["class_names"]))
    task = get_task(metadata.get("task", "classification"))
    if spec.kind == "multimodal":
        shapes = {m: tuple(s) for m, s in json.loads(metadata["input_shapes"]).items()}
        categorical = {m: dict(zip(c["columns"], c["cardinalities"], strict=True))
                       for m, c in json.loads(metadata.get("categorical", "{}")).items()}
        model = build_model(spec, shapes, len(class_names),
                            kinds=json.loads(metadata["modality_kinds"]),
                            vocab_sizes=json.loads(metadata["vocab_sizes"]),
                            categorical=categorical, multilabel=task.multilabel)
    else:
        model = build_model(spec, tuple(json.loads(metadata["input_shape"])), len(class_names))
    model.load_state_dict(dict(tensors), strict=True)
    model.eval()
    return LoadedModel(model, task, class_names, float(metadata.get("temperature", "1.0")))
