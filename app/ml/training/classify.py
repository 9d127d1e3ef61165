"""Classification and multi-label training: the ``Objective`` the shared loop
runs for the tasks of ``app.ml.tasks``, and ``train``, their entry point.

An image model (``cnn``, ``preact_resnet18``…) trains on the dataset's image
modality; a ``multimodal`` one on every modality, each normalised with train
statistics. The task gives the loss on mixed targets and the metrics.
Categorical tabular columns (``provenance["tabular"]``) get embeddings: they
are neither standardised nor interpolated as numbers. With ``calibration =
"temperature"`` a temperature fitted on the selected model's validation
logits is reported and saved with the checkpoint.
"""

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import torch
from torch import nn

from app.ml.calibration import at_bound, fit_temperature
from app.ml.data.prepared import PreparedDataset
from app.ml.data.shards import ShardedDataset
from app.ml.device import autocast_dtype, resolve_device
from app.ml.mixing import Mixed, MixSpec, mix
from app.ml.models import ModelSpec, build_model
from app.ml.models.freeze import freeze as freeze_parts
from app.ml.models.freeze import part_names
from app.ml.models.latent import latent_method_problem
from app.ml.models.spec import LATENT_KINDS, MULTIMODAL_KINDS
from app.ml.models.weights import load_matching
from app.ml.resume import ResumePoint
from app.ml.tasks import CLASSIFICATION, Task
from app.ml.training import normalization
from app.ml.training.augment import augment_batch
from app.ml.training.batches import (
    categorical_columns,
    data_device,
    gather,
    rows_to,
    vocab_sizes,
    with_own_codes,
)
from app.ml.training.checks import recipe_problems
from app.ml.training.distributed import SOLO, Ranks
from app.ml.training.evaluation import Split, predict, robustness
from app.ml.training.hooks import TrainHooks, TrainResult
from app.ml.training.loop import Objective, run
from app.ml.training.spec import TrainSpec

log = logging.getLogger(__name__)


def model_modalities(data: PreparedDataset, model_spec: ModelSpec) -> list[str]:
    """The modalities a model of ``model_spec`` reads: all of them (multimodal) or
    the image one, which every sample must then have."""
    if model_spec.kind in MULTIMODAL_KINDS:
        return list(data.inputs)
    if "image" not in data.inputs:
        raise ValueError(f"model.kind: the {model_spec.kind} model needs an image modality")
    missing = int((~data.presence("image")).sum())
    if missing:
        raise ValueError(f"model.kind: the {model_spec.kind} model needs every sample's image, "
                         f"but {missing} samples have none; use a multimodal model, which "
                         "handles missing modalities")
    return ["image"]


class ClassifierObjective(Objective):
    def __init__(self, data: PreparedDataset, model_spec: ModelSpec, mix_spec: MixSpec,
                 spec: TrainSpec, task: Task, device: torch.device) -> None:
        self.spec, self.task, self.device = spec, task, device
        self.amp = autocast_dtype(device)
        self.multimodal = model_spec.kind in MULTIMODAL_KINDS
        self.kinds = {m: data.modality_kinds.get(m, m) for m in data.inputs}
        self.modalities = model_modalities(data, model_spec)
        self.num_classes, self.class_names = data.num_classes, list(data.class_names)
        self.mix_classes = data.num_classes  # of the targets ``mix`` gets (``mix_labels``)
        inputs_all = {m: data.inputs[m] for m in self.modalities}
        present_all = {m: data.present[m].bool() for m in self.modalities if m in data.present}
        categorical = categorical_columns(data, self.modalities) if self.multimodal else {}
        self.codes = {m: sorted(columns) for m, columns in categorical.items()}
        self.place(data, inputs_all, present_all)

        shapes = {m: tuple(x.shape[1:]) for m, x in inputs_all.items()}
        vocab = vocab_sizes(data, self.modalities)
        if self.multimodal:
            self.model: nn.Module = build_model(
                model_spec, shapes, data.num_classes, kinds=self.kinds, vocab_sizes=vocab,
                categorical=categorical, multilabel=task.multilabel)
        else:
            self.model = build_model(model_spec, shapes["image"], data.num_classes)
        self.model.to(device)
        self.headline = task.headline
        self.metric_names = task.metric_names  # what checkpoint and stopping metrics may name
        self.metadata = {
            "task": task.name, "model_spec": json.dumps(asdict(model_spec)),
            "class_names": json.dumps(self.class_names),
            "modalities": json.dumps(self.modalities),
            "input_shapes": json.dumps({m: list(s) for m, s in shapes.items()}),
            "input_dtypes": json.dumps({m: str(x.dtype).removeprefix("torch.")
                                        for m, x in inputs_all.items()}),
            "modality_kinds": json.dumps({m: self.kinds[m] for m in self.modalities}),
            "vocab_sizes": json.dumps(vocab),
            "categorical": json.dumps({m: {"columns": list(c), "cardinalities": list(c.values())}
                                       for m, c in categorical.items()}),
            "normalization": normalization.to_json(self.normalize)}
        if not self.multimodal:
            self.metadata["input_shape"] = json.dumps(list(shapes["image"]))

        self.task_mix, self.smoothing = task.mix_spec(mix_spec)
        self.mix_spec = mix_spec
        # epochs without mixing (off_epoch) keep the label smoothing
        self.no_mix = MixSpec(method="none", label_smoothing=self.task_mix.label_smoothing)
        self.val = self.split(data.split_indices("val"))  # gathered once
        self.val_labels = self.val.labels.to(device)
        self._test_rows = data.split_indices("test")

    def place(self, data: PreparedDataset, inputs: Mapping[str, torch.Tensor],
              present: Mapping[str, torch.Tensor]) -> None:
        """Put the data where training reads it and fit the normalisation: here
        tensor-resident (on the device when it fits), the train rows copied out
        once; ``app.ml.training.streamed`` reads them from shards instead."""
        self.home = data_device([*inputs.values(), data.labels, *present.values()],
                                self.device)
        self.inputs = {m: x.to(self.home) for m, x in inputs.items()}
        self.labels = data.labels.to(self.home)
        self.present = {m: p.to(self.home) for m, p in present.items()}
        rows = data.split_indices("train").to(self.home)
        self.train_inputs = {m: x[rows] for m, x in self.inputs.items()}
        self.train_labels = self.labels[rows]
        self.train_present = {m: p[rows] for m, p in self.present.items()}
        self.normalize = {m: normalization.fit(self.kinds[m], x, self.device,
                                               self.train_present.get(m), self.codes.get(m))
                          for m, x in self.train_inputs.items()}
        self.n_train = int(self.train_labels.shape[0])

    def describe_data(self) -> str:
        return "tensor-resident"

    def split(self, idx: torch.Tensor) -> Split:
        rows = idx.to(self.home)
        masks = {m: p[rows] for m, p in self.present.items()}
        if self.multimodal:
            return Split({m: x[rows] for m, x in self.inputs.items()}, self.labels[rows],
                         self.normalize, masks)
        return Split(self.inputs["image"][rows], self.labels[rows], self.normalize["image"],
                     masks)

    def logits(self, model: nn.Module, part: Split) -> torch.Tensor:
        return predict(model, part.inputs, part.normalize, self.device,
                       self.spec.eval_batch_size, self.amp, present=part.present)

    def train_loss(self, idx: torch.Tensor, epoch: int,
                   generators: dict[str, torch.Generator]) -> torch.Tensor:
        batch, masks, y = self.batch(idx)
        batch = augment_batch(batch, self.kinds, self.spec, generators["augment"])
        active = self.mix_spec.active_at(epoch, self.spec.epochs)
        mixed = mix(batch, self.mix_labels(y), self.task_mix if active else self.no_mix,
                    generators["mix"], self.mix_classes,
                    kinds={m: self.kinds[m] for m in self.modalities},
                    host_generator=generators["host"])
        with_own_codes(mixed, batch, self.codes)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits = self.forward(mixed, masks)
        return self.task.loss(logits, self.mixed_targets(mixed, y))

    def mix_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The labels ``mix`` mixes (a multi-task objective's first task's)."""
        return y

    def mixed_targets(self, mixed: Mixed, y: torch.Tensor) -> torch.Tensor:
        """The targets the loss compares the logits of ``mixed`` with."""
        return self.task.targets(mixed.targets, self.smoothing)

    def batch(self, idx: torch.Tensor
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """Training rows ``idx`` normalised on the device, their presence masks, labels."""
        batch, masks = gather(self.train_inputs, self.normalize, idx, self.device,
                              self.train_present)
        return batch, masks, rows_to(self.train_labels, idx, self.device)

    def close(self) -> None:
        """Release what the data path holds (a streamed one's reader thread)."""

    def forward(self, mixed: Mixed, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.multimodal:
            return self.model(mixed.inputs, mixed, masks)
        return self.model(mixed.inputs["image"], mixed)

    def validate(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return self.task.metrics(self.logits(model, self.val), self.val_labels)

    def calibrate(self, model: nn.Module) -> float | None:
        return fit_temperature(self.logits(model, self.val), self.val_labels, self.task.nll)

    def test(self, model: nn.Module, temperature: float | None
             ) -> tuple[dict[str, float], dict[str, object] | None]:
        part = self.split(self._test_rows)
        logits, labels = self.logits(model, part), part.labels.to(self.device)
        test = self.task.metrics(logits, labels)
        out = {f"test_{k}": v.item() for k, v in test.items()}
        if temperature is not None and not at_bound(temperature):
            # in float64: a sharpening T leaves margins whose NLL float32 rounds to 0
            calibrated = self.task.metrics(logits.double() / temperature, labels)
            out.update(test_ece_calibrated=calibrated["ece"].item(),
                       test_nll_calibrated=calibrated["loss"].item())
        if self.multimodal:
            out.update(robustness(model, part, self.modalities, self.device,
                                  self.spec.eval_batch_size, self.amp, self.task, self.codes,
                                  self.spec.seed))
        return out, self.task.report(logits, labels, self.class_names)


def objective_type(data: PreparedDataset,
                   model_spec: ModelSpec | None = None) -> type[ClassifierObjective]:
    """The resident objective, the streamed one for a ``ShardedDataset``, or the
    autoencoder's for a ``multimodal_ae`` / ``multimodal_vae`` model."""
    if model_spec is not None and model_spec.kind in LATENT_KINDS:
        # imported here: the autoencoder objectives subclass this module's
        from app.ml.training.autoencode import LatentObjective, StreamedLatentObjective
        return StreamedLatentObjective if isinstance(data, ShardedDataset) else LatentObjective
    if isinstance(data, ShardedDataset):
        # imported here: the streamed objective subclasses this module's
        from app.ml.training.streamed import StreamedClassifierObjective
        return StreamedClassifierObjective
    return ClassifierObjective


def train(data: PreparedDataset, model_spec: ModelSpec, mix_spec: MixSpec,
          spec: TrainSpec, hooks: TrainHooks | None = None, *,
          task: str | Task = CLASSIFICATION, resume: ResumePoint | None = None,
          init_weights: Mapping[str, torch.Tensor] | None = None,
          freeze: Sequence[str] = (), ranks: Ranks = SOLO,
          task_weights: Mapping[str, float] | None = None) -> TrainResult:
    """Train a model for ``task`` on ``data`` with ``mix_spec`` mixing by the
    recipe ``spec``. Raises ``ValueError`` when the task or model does not fit
    the data.

    The global RNG (model init, dropout) is seeded from ``spec.seed`` inside a
    forked RNG state, so runs are reproducible and the caller's state is untouched.
    ``init_weights`` (tensors by name) start the model: those whose name and
    shape match are loaded, and ``TrainResult.init`` says which did not.
    ``freeze`` names parts of the model (``app.ml.models.freeze``) that keep their
    starting weights; ``TrainResult.init["frozen"]`` lists their tensors.
    ``resume`` (a point saved by an earlier attempt of the same run) continues
    after its epoch with every state of the loop, so the result is the one the
    uninterrupted run would have given on the same device. A ``ShardedDataset``
    (``app.ml.data.shards``) is streamed from its shards (``app.ml.training.streamed``).
    ``ranks``: this process's place in a run of ``spec.world_size`` processes
    (``app.ml.training.distributed.joined``); its device is the rank's own.
    Task ``multitask`` (``app.ml.multitask``) trains a head per label column of
    a multi-task dataset, weighted by ``task_weights`` (default 1 each).
    """
    # imported here: the multi-task objective subclasses this module's
    from app.ml.training.multitask import resolve_task
    task, data, objective_class = resolve_task(task, data, task_weights)
    task.check(data)
    if spec.world_size != ranks.world_size:
        raise ValueError(f"training.world_size: {spec.world_size}, but this process trains in "
                         f"a group of {ranks.world_size} (app.ml.training.distributed)")
    if spec.world_size > 1 and isinstance(data, ShardedDataset):
        # ranks index one resident copy each; a streamed run reads shard windows
        raise ValueError(f"training.world_size: {spec.world_size} processes need the dataset "
                         "held in memory, and this one is streamed from its shards (larger "
                         "than MIXLAB_RESIDENT_DATA_BYTES); use world_size 1")
    problem = latent_method_problem(mix_spec.method, model_spec.kind)
    if problem is not None:
        raise ValueError(f"augmentation.method: {problem}")
    if objective_class is not None and model_spec.kind in LATENT_KINDS:
        raise ValueError(f"model.kind: task {task.name} is not trained by a {model_spec.kind} "
                         "model: it trains for classification or multilabel")
    device = ranks.device or resolve_device(spec.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(spec.seed)
        objective = (objective_class or objective_type(data, model_spec))(
            data, model_spec, mix_spec, spec, task, device)
        for field, problem in recipe_problems(spec, objective.metric_names,
                                              [objective.kinds[m] for m in objective.modalities]):
            raise ValueError(f"training.{field}: {problem}")
        match = None
        if init_weights is not None:
            match = load_matching(objective.model, init_weights)
        frozen = freeze_parts(objective.model, freeze,
                              part_names(model_spec.kind, objective.modalities)) if freeze else []
        log.info("training data: %s", objective.describe_data())
        try:
            result = run(objective, spec, hooks or TrainHooks(), device, objective.home, resume,
                         ranks)
        finally:
            objective.close()
    result.init = ({**(match.to_json() if match is not None else {}), "frozen": frozen}
                   if match is not None or frozen else None)
    return result
