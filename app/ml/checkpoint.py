"""Rebuild a predictor from a checkpoint alone: the model, its input
normalisation, and what turns its logits into probabilities.

``train`` writes the metadata with every checkpoint: ``model_spec``,
``class_names``, ``task``, ``modalities`` and their ``modality_kinds``,
``input_shapes``/``input_dtypes``, ``vocab_sizes``, ``categorical``, the
train-split ``normalization`` and, on the run's final checkpoint,
``temperature`` (and ``selected_epoch`` for ``checkpoint: best``). So a
notebook with torch and ``app.ml`` predicts from raw inputs exactly as the
run's own test evaluation did. Checkpoints written before normalisation was
stored load as models only (``LoadedModel.normalize`` is None).
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from safetensors.torch import load as st_load
from torch import nn

from app.ml.models import ModelSpec, build_model
from app.ml.models.spec import MULTIMODAL_KINDS
from app.ml.multitask import NAME as MULTITASK
from app.ml.multitask import Heads, multitask
from app.ml.safetensors_meta import header_metadata
from app.ml.tasks import Task, get_task
from app.ml.training import normalization
from app.ml.training.evaluation import predict


@dataclass
class LoadedModel:
    model: nn.Module
    task: Task
    class_names: list[str]
    temperature: float = 1.0
    modalities: tuple[str, ...] = ("image",)
    kinds: Mapping[str, str] | None = None
    input_shapes: Mapping[str, tuple[int, ...]] | None = None
    normalize: Mapping[str, normalization.Normalizer] | None = None
    multimodal: bool = False
    heads: Heads | None = None  # task multitask: whose block of the logits is whose

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities: softmax over classes (classification; per
        task's block for multitask) or a sigmoid per class (multilabel) of
        ``logits / temperature``."""
        scaled = logits.float() / self.temperature
        if self.heads is not None:
            return self.heads.probabilities(scaled)
        return scaled.sigmoid() if self.task.multilabel else scaled.softmax(dim=-1)

    def mismatches(self, shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, str]]:
        """(modality, reason) for each way inputs of per-sample ``shapes`` do not
        fit the model: a modality it reads is missing, or has another shape."""
        problems = []
        for m in self.modalities:
            want = tuple((self.input_shapes or {}).get(m, ()))
            if m not in shapes:
                problems.append((m, f"the model reads modality {m!r}, which the input lacks "
                                    f"(it has {', '.join(shapes) or 'none'})"))
            elif want and tuple(shapes[m]) != want:
                problems.append((m, f"per-sample shape {list(shapes[m])} differs from the "
                                    f"{list(want)} the model was trained on"))
        return problems

    @torch.inference_mode()
    def logits(self, inputs: Mapping[str, torch.Tensor],
               present: Mapping[str, torch.Tensor] | None = None, *,
               device: torch.device | str = "cpu", batch_size: int = 1024) -> torch.Tensor:
        """Float32 logits of raw inputs (as prepared datasets store them), through
        the run's normalisation; the same code path as the run's test figures."""
        if self.normalize is None:
            raise ValueError("this checkpoint predates stored normalisation; normalise the "
                             "inputs yourself and call .model")
        problems = self.mismatches({m: tuple(x.shape[1:]) for m, x in inputs.items()})
        if problems:
            raise ValueError("; ".join(f"{m}: {why}" for m, why in problems))
        device = torch.device(device)
        self.model.to(device)
        norm = {m: n.to(device) for m, n in self.normalize.items()}
        masks = {m: p.bool() for m, p in (present or {}).items() if m in self.modalities}
        if self.multimodal:
            return predict(self.model, {m: inputs[m] for m in self.modalities}, norm, device,
                           batch_size, None, present=masks)
        return predict(self.model, inputs["image"], norm["image"], device, batch_size, None)

    def predict_proba(self, inputs: Mapping[str, torch.Tensor],
                      present: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.probabilities(self.logits(inputs, present))


def load_model(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> LoadedModel:
    """The model of a checkpoint, weights loaded, in eval mode."""
    spec = ModelSpec(**json.loads(metadata["model_spec"]))
    class_names = list(json.loads(metadata["class_names"]))
    name = metadata.get("task", "classification")
    heads = Heads.from_json(metadata["tasks"]) if name == MULTITASK else None
    task = multitask(heads) if heads is not None else get_task(name)
    multimodal = spec.kind in MULTIMODAL_KINDS
    if multimodal:
        shapes = {m: tuple(s) for m, s in json.loads(metadata["input_shapes"]).items()}
        categorical = {m: dict(zip(c["columns"], c["cardinalities"], strict=True))
                       for m, c in json.loads(metadata.get("categorical", "{}")).items()}
        model = build_model(spec, shapes, len(class_names),
                            kinds=json.loads(metadata["modality_kinds"]),
                            vocab_sizes=json.loads(metadata["vocab_sizes"]),
                            categorical=categorical, multilabel=task.multilabel)
        modalities = tuple(json.loads(metadata.get("modalities", json.dumps(list(shapes)))))
    else:
        shapes = {"image": tuple(json.loads(metadata["input_shape"]))}
        model = build_model(spec, shapes["image"], len(class_names))
        modalities = ("image",)
    model.load_state_dict(dict(tensors), strict=True)
    model.eval()
    norm = (normalization.from_json(metadata["normalization"]) if "normalization" in metadata
            else None)
    kinds = json.loads(metadata.get("modality_kinds", '{"image": "image"}'))
    return LoadedModel(model, task, class_names, float(metadata.get("temperature", "1.0")),
                       modalities, kinds, shapes, norm, multimodal, heads)


def load_checkpoint(blob: bytes) -> LoadedModel:
    """``load_model`` of a safetensors checkpoint's bytes (nothing is unpickled)."""
    return load_model(st_load(blob), header_metadata(blob))
