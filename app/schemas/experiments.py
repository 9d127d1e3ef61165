import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from app.ml.models import ModelSpec
from app.ml.models.spec import LATENT_KINDS, MULTIMODAL_KINDS, default_depth, default_width
from app.ml.training import EarlyStopping, TrainSpec
from app.ml.training.spec import world_size_problem
from app.schemas.augmentation import AugmentationSpec
from app.schemas.common import StrictModel


class ModelSpecIn(StrictModel):
    kind: Literal["cnn", "preact_resnet18", "wide_resnet", "torchvision", "timm",
                  "multimodal", "multimodal_ae", "multimodal_vae"] = Field(
        "cnn", description="cnn: the image-only SmallCNN. preact_resnet18: the mixup paper's "
                           "CIFAR PreAct ResNet-18. wide_resnet: WRN-depth-widen. torchvision, "
                           "timm: that library's image model `name`, randomly initialised "
                           "(needs the library on the worker). multimodal: one encoder per "
                           "modality of the dataset and a fusion head. multimodal_ae, "
                           "multimodal_vae: the same encoders into one shared latent, a "
                           "decoder per modality and a classifier on the latent "
                           "(docs/representations.md).")
    width: int | None = Field(None, ge=1, le=512,
                       description="Channels of the first conv layer: cnn (default 16), "
                                   "preact_resnet18 (64), the multimodal image and spectrogram "
                                   "CNNs (32).")
    depth: int | None = Field(None, ge=1, le=100,
                       description="cnn, multimodal CNNs: number of conv blocks (1-8, "
                                   "default 3). wide_resnet (kind or image_encoder): 6n+4 "
                                   "(default 28).")
    dropout: float = Field(0.0, ge=0, lt=1)
    fusion: Literal["early", "late", "attention", "tensor", "gated"] = Field(
        "early", description="multimodal: how the modalities' features are combined.")
    dim: int = Field(64, ge=2, le=2048, description="multimodal: every encoder's output width.")
    image_encoder: Literal["cnn", "preact_resnet18", "wide_resnet", "torchvision", "timm",
                           "resnet18"] = Field(
        "cnn", description="multimodal: the image (and video frame) tower, any image kind "
                           "with its fields; resnet18: torchvision's resnet18 with its "
                           "ImageNet stem. torchvision and timm need the library on the worker.")
    text_encoder: Literal["mean", "transformer"] = "mean"
    video_encoder: Literal["mean", "temporal_conv"] = "mean"
    text_dim: int = Field(64, ge=2, le=2048, description="multimodal: token embedding width.")
    heads: int = Field(4, ge=1, le=32, description="Attention heads (text transformer, "
                                                   "attention fusion).")
    layers: int = Field(1, ge=1, le=12, description="Transformer layers (text, attention "
                                                    "fusion).")
    modality_dropout: float = Field(0.0, ge=0, lt=1, description="multimodal: chance of "
                                    "dropping each modality of a training sample (never all).")
    rank: int = Field(4, ge=1, le=64, description="tensor fusion: rank of the factors.")
    name: str | None = Field(None, min_length=1, max_length=100,
                             pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                             description="torchvision, timm (kind or image_encoder): the "
                                         "library's model name, e.g. resnet18.")
    widen: int = Field(10, ge=1, le=20, description="wide_resnet: the widening factor.")
    weights: str | None = Field(
        None, min_length=1, max_length=2000,
        description="Start from a safetensors file: file:///path (under the server's "
                    "MIXLAB_IMPORT_ROOTS), s3://bucket/key (under its "
                    "MIXLAB_S3_IMPORT_PREFIXES), or store:KEY (a file of one of "
                    "the project's runs in the artifact store, e.g. its checkpoint key). "
                    "Tensors load by name and shape; the run reports what loaded (`init`).")
    latent_dim: int = Field(16, ge=1, le=1024,
                            description="multimodal_ae/_vae: width of the shared latent.")
    beta: float = Field(1.0, ge=0, le=1000, description="multimodal_vae: weight of the KL term.")
    recon_weights: dict[Annotated[str, Field(min_length=1, max_length=64)],
                        Annotated[float, Field(ge=0, le=1000)]] = Field(
        default_factory=dict, max_length=16,
        description="multimodal_ae/_vae: weight of each modality's reconstruction term "
                    "(default 1 each), e.g. {\"audio\": 0.1}.")
    classifier_weight: float = Field(
        1.0, ge=0, le=1000,
        description="multimodal_ae/_vae: weight of the classification head's loss; 0 trains "
                    "the autoencoder unsupervised.")
    init_from_run: uuid.UUID | None = Field(
        None, description="Start from the checkpoint of a succeeded run of the project "
                          "(tensors matched by name and shape, as for weights).")

    @field_validator("init_from_run")
    @classmethod
    def _one_start(cls, value: uuid.UUID | None, info: ValidationInfo) -> uuid.UUID | None:
        # declared after weights, so info.data holds it: the 422 points at this field
        if value is not None and info.data.get("weights") is not None:
            raise ValueError("give weights or init_from_run, not both")
        return value

    freeze: list[str] = Field(
        default_factory=list, max_length=16,
        description="Parts of the model whose weights stay as they start (transfer): "
                    "multimodal: `<modality>_encoder` (e.g. image_encoder) for each modality "
                    "of the dataset and `fusion`; multimodal_ae/multimodal_vae: "
                    "`<modality>_encoder`, `<modality>_decoder` and `classifier`; image "
                    "kinds: `backbone` (all but the classifier). Frozen parts are left out "
                    "of the optimizer and kept in eval mode (BatchNorm statistics fixed, no "
                    "dropout). Needs weights or init_from_run; the run's `init.frozen` "
                    "lists the frozen tensors.")

    @field_validator("freeze")
    @classmethod
    def _freeze_a_start(cls, value: list[str], info: ValidationInfo) -> list[str]:
        # declared after weights and init_from_run, so info.data holds them; the parts
        # themselves are checked against the dataset (app.services.experiments)
        twice = sorted({p for p in value if value.count(p) > 1})
        if twice:
            raise ValueError(f"lists {twice[0]!r} twice")
        if value and info.data.get("weights") is None \
                and info.data.get("init_from_run") is None:
            raise ValueError("needs model.weights or model.init_from_run: frozen random "
                             "weights would stay random")
        return value

    @model_validator(mode="after")
    def _kind_defaults(self) -> "ModelSpecIn":
        # filled here so a stored spec always holds numbers (app.ml gives the values)
        if self.width is None:
            self.width = default_width(self.kind, self.image_encoder)
        if self.depth is None:
            self.depth = default_depth(self.kind, self.image_encoder)
        return self

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelSpecIn":
        if self.kind in MULTIMODAL_KINDS:
            if self.fusion == "attention" and self.dim % self.heads:
                raise ValueError("dim must be a multiple of heads for attention fusion")
            if self.text_encoder == "transformer" and self.text_dim % self.heads:
                raise ValueError("text_dim must be a multiple of heads for the text transformer")
        return self

    @model_validator(mode="after")
    def _kind_fields(self) -> "ModelSpecIn":
        multimodal = self.kind in MULTIMODAL_KINDS
        family, field = (self.image_encoder, "image_encoder") if multimodal \
            else (self.kind, "kind")
        named = family in ("torchvision", "timm")
        if named and self.name is None:
            raise ValueError(f"name: required for {field} {family!r} (a {family} model "
                             "name, e.g. resnet18)")
        if not named and self.name is not None:
            raise ValueError(f"name: only torchvision and timm models take a name, not "
                             f"{field} {family!r}")
        if family == "wide_resnet" and (self.depth < 10 or (self.depth - 4) % 6):
            raise ValueError(f"depth: must be 6n+4 (10, 16, 22, 28, 34, 40…) for "
                             f"wide_resnet, not {self.depth}")
        # depth counts conv blocks (the cnn's, a multimodal model's CNNs) except where
        # it is a WRN's
        if (self.kind == "cnn" or multimodal) and family != "wide_resnet" and self.depth > 8:
            raise ValueError(f"depth: at most 8 conv blocks, not {self.depth}")
        return self

    @model_serializer(mode="wrap")
    def _cnn_fields_only(self, handler: Any) -> dict[str, Any]:
        # each kind is stored and shown with its own fields only (a cnn spec as
        # before the other kinds existed); multimodal with all of them, less name
        # and widen where its image tower does not use them
        data = handler(self)
        if not isinstance(data, dict):
            return data
        # where the weights start (weights, init_from_run) and freeze: kept for every kind
        # when set
        start = {k: data[k] for k in _TRANSFER_FIELDS if data.get(k)}
        own = {"cnn": _CNN_FIELDS, "preact_resnet18": ("kind", "width", "dropout"),
               "wide_resnet": ("kind", "depth", "widen", "dropout"),
               "torchvision": ("kind", "name"), "timm": ("kind", "name", "dropout")}
        if self.kind in own:
            return {**{k: v for k, v in data.items() if k in own[self.kind]}, **start}
        if self.kind not in LATENT_KINDS:
            for name in _LATENT_FIELDS:
                data.pop(name, None)
        if self.image_encoder not in ("torchvision", "timm"):
            data.pop("name", None)
        if self.image_encoder != "wide_resnet":
            data.pop("widen", None)
        return {**{k: v for k, v in data.items() if k not in _TRANSFER_FIELDS}, **start}

    def to_ml(self) -> ModelSpec:
        # the architecture only: where its weights start is the service's and worker's
        # business (app.services.initial_weights), not app.ml's
        data = self.model_dump()
        for name in _TRANSFER_FIELDS:
            data.pop(name, None)
        return ModelSpec(**data)


_CNN_FIELDS = ("kind", "width", "depth", "dropout")
# where the weights start and what of them stays: not architecture, stored only when set
_TRANSFER_FIELDS = ("weights", "init_from_run", "freeze")


# a validation metric key; multitask adds one task's: val_acc.<task>
VAL_METRIC_PATTERN = r"^val_[a-z0-9_]{1,60}(\.[A-Za-z0-9_-]{1,40})?$"
_LATENT_FIELDS = ("latent_dim", "beta", "recon_weights", "classifier_weight")


def _default(name: str) -> Any:
    """The recipe's default for a field: ``TrainSpec`` holds each one once."""
    return TrainSpec.__dataclass_fields__[name].default


class EarlyStoppingIn(StrictModel):
    metric: str = Field("val_acc", pattern=VAL_METRIC_PATTERN,
                        description="A validation metric of the task: val_acc, val_loss, "
                                    "val_f1_macro, val_ece… (val_map for multilabel; "
                                    "val_acc.<task> for one task of multitask).")
    patience: int = Field(10, ge=1, le=10_000,
                          description="Epochs without improvement before the run stops.")
    mode: Literal["min", "max"] | None = Field(
        None, description="Default: min for losses and calibration errors, max otherwise.")


class TrainingSpecIn(StrictModel):
    epochs: int = Field(_default("epochs"), ge=1, le=10_000)
    batch_size: int = Field(_default("batch_size"), ge=1, le=65_536)
    optimizer: Literal["sgd", "adamw"] = Field(
        _default("optimizer"), description="sgd (with momentum, nesterov) or adamw.")
    lr: float = Field(_default("lr"), gt=0, le=10,
                      description="Peak learning rate, reached after warmup_epochs.")
    momentum: float = Field(_default("momentum"), ge=0, lt=1,
                            description="sgd: momentum (adamw ignores it).")
    nesterov: bool = Field(_default("nesterov"), description="sgd: Nesterov momentum.")
    weight_decay: float = Field(_default("weight_decay"), ge=0, le=10,
                                description="On weight matrices and conv kernels; biases and "
                                            "normalisation scales are not decayed.")
    schedule: Literal["constant", "cosine", "step", "onecycle"] = Field(
        _default("schedule"),
        description="Per-step learning-rate schedule after the warm-up: cosine to 0; step: × "
                    "gamma at each of milestones (default 50 % and 75 % of epochs); onecycle: "
                    "torch's OneCycleLR (its rise lasts warmup_epochs, or 30 %).")
    warmup_epochs: int | None = Field(
        _default("warmup_epochs"), ge=0, le=10_000,
        description="Linear warm-up to lr over this many epochs; must be < epochs. Default: "
                    "5 % of the epochs (none under 20).")
    milestones: list[int] = Field(default_factory=list, max_length=100,
                                  description="step: the epochs at which lr is multiplied by "
                                              "gamma.")
    gamma: float = Field(_default("gamma"), gt=0, le=1)
    grad_clip: float | None = Field(_default("grad_clip"), gt=0, le=1e6,
                                    description="Clip the global gradient norm to this.")
    ema: float | None = Field(
        _default("ema"), gt=0, lt=1,
        description="Decay of an exponential moving average of the weights (e.g. 0.999); "
                    "the average is then what is validated, tested and saved.")
    augment: list[Literal["crop", "flip"]] | None = Field(
        None, max_length=2,
        description="Batched image augmentation on the training device: crop (pad by "
                    "crop_padding, crop back at a random offset) and flip (horizontal, p = ½; "
                    "not for digits or text-like images). Default: crop on the image "
                    "modalities the model reads (none without images, none for "
                    "multimodal_ae/multimodal_vae); [] turns it off.")
    crop_padding: int | None = Field(_default("crop_padding"), ge=0, le=64,
                                     description="Default: ⌈image side / 8⌉ (4 on 32×32).")
    early_stopping: EarlyStoppingIn | None = Field(
        None, description="Stop once a validation metric has not improved for patience "
                          "epochs; the run reports stopped_epoch.")
    checkpoint: Literal["best", "last"] = Field(
        _default("checkpoint"),
        description="last: the last epoch's model. best: the epoch with the best "
                    "checkpoint_metric; the run then reports the test figures of both "
                    "(test_acc and test_acc_last) and selected_epoch.")
    checkpoint_metric: str | None = Field(
        None, pattern=VAL_METRIC_PATTERN,
        description="Default: early_stopping.metric, else the task's headline (val_acc; "
                    "val_map for multilabel; for multitask val_acc is the mean over tasks).")
    log_every_steps: int | None = Field(
        None, ge=1, le=1_000_000,
        description="How often train_loss_step and lr enter the metric history "
                    "(default: about 10 points an epoch).")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$",
                        description="auto picks CUDA (bf16 autocast) when the worker has it.")
    calibration: Literal["none", "temperature"] = Field(
        "temperature",
        description="temperature: after training, fit one temperature T on the validation "
                    "logits of the kept model (minimising NLL; T < 1 sharpens an "
                    "under-confident model) and report temperature, test_ece_calibrated and "
                    "test_nll_calibrated next to the raw metrics; predictions do not "
                    "change and T is saved with the checkpoint. none: skip it.")
    compile: bool = Field(
        _default("compile"),
        description="torch.compile the model for the training steps (compiled before the "
                    "first step, cached per worker; evaluation stays eager). Pays on GPUs "
                    "for long runs. A worker that cannot compile trains eagerly: a warning "
                    "in the run's log, and 'compile failed: … (eager)' in its device.")
    time_limit_s: int | None = Field(
        None, ge=1, le=30 * 24 * 3600,
        description="Wall-clock limit of one attempt, from its claim; past it the run "
                    "stops at its next step and fails with the reason.")
    world_size: int = Field(
        1, ge=1, le=1024,
        description="Processes the run trains on, data-parallel: one per GPU of the worker "
                    "(NCCL), or CPU processes (gloo). batch_size stays the global batch, "
                    "split across them; lr and the schedule are unchanged. At most "
                    "MIXLAB_MAX_WORLD_SIZE and what the worker offers (docs/distributed.md).")

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_within_run(cls, value: int | None, info: ValidationInfo) -> int | None:
        epochs = info.data.get("epochs")
        if epochs is not None and value is not None and value >= epochs:
            raise ValueError(f"must be less than epochs ({epochs})")
        return value

    @field_validator("milestones")
    @classmethod
    def _milestones_within_run(cls, value: list[int], info: ValidationInfo) -> list[int]:
        epochs = info.data.get("epochs")
        if value != sorted(set(value)):
            raise ValueError("must be strictly increasing epochs")
        if epochs is not None and any(not 0 < m <= epochs for m in value):
            raise ValueError(f"every milestone must be an epoch in 1..{epochs}")
        return value

    @field_validator("augment")
    @classmethod
    def _augment_once(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("lists each augmentation once")
        return value

    @field_validator("nesterov")
    @classmethod
    def _nesterov_momentum(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("optimizer") == "sgd" and info.data.get("momentum") == 0:
            raise ValueError("needs momentum > 0 (or set nesterov to false)")
        return value

    @field_validator("world_size")
    @classmethod
    def _world_size_fits(cls, value: int, info: ValidationInfo) -> int:
        problem = world_size_problem(value, info.data.get("batch_size", 2 * value),
                                     info.data.get("device", "auto"))
        if problem:
            raise ValueError(problem)
        return value

    def to_ml(self) -> TrainSpec:
        data = self.model_dump(exclude={"time_limit_s", "early_stopping"})
        stop = self.early_stopping
        return TrainSpec(**{**data, "milestones": tuple(self.milestones),
                            "augment": None if self.augment is None else tuple(self.augment)},
                         early_stopping=EarlyStopping(**stop.model_dump()) if stop else None)


# The tasks ``train`` knows (``app.ml.tasks.TASKS``), and retrieval, which has
# its own loop (``app.ml.retrieval``); a new task is one more name here.
TaskName = Literal["classification", "multilabel", "multitask", "retrieval"]
# a task (label column) of a multi-task dataset, as ingestion names them
TaskKey = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")]


class RetrievalSpecIn(StrictModel):
    query: str = Field(min_length=1, max_length=64,
                       description="The modality queries come from, e.g. image.")
    target: str = Field(min_length=1, max_length=64,
                        description="The modality retrieved, e.g. text.")
    m3mix_weight: float = Field(1.0, ge=0, le=100,
                                description="m3mix: weight of the hard-negative loss term.")


class ExperimentCreate(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "digits-mixup",
        "dataset_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "task": "classification",
        "model": {},
        "augmentation": {"method": "mixup", "alpha": 1.0},
        "training": {"epochs": 20, "batch_size": 64, "lr": 0.003, "seed": 0,
                     "device": "auto"},
    }]})

    name: str = Field("experiment", min_length=1, max_length=200)
    dataset_id: uuid.UUID
    task: TaskName = Field(
        "classification",
        description="classification: one class per sample (soft-target cross-entropy; "
                    "accuracy, macro-F1, NLL, ECE, Brier). multilabel: a set of classes per "
                    "sample, needs a multi-label dataset (BCE on the mixed targets; mAP, "
                    "micro/macro-F1 at 0.5, NLL, ECE, Brier). multitask: a dataset with "
                    "several label columns (tasks), one linear head per task over the shared "
                    "model, loss Σ task_weights[t] × soft cross-entropy of task t's mixed "
                    "targets; every metric per task (val_acc.<task>, test_acc.<task>…) and "
                    "its mean over the tasks (val_acc, test_acc…). retrieval: CLIP-style "
                    "contrastive training of two towers (`retrieval.query` → "
                    "`retrieval.target`) with augmentation none, mixgen or m3mix; recall@1/5/10 "
                    "both ways.")
    retrieval: RetrievalSpecIn | None = Field(
        None, description="task retrieval: which modalities are paired (required there, "
                          "refused for other tasks).")
    task_weights: dict[TaskKey, Annotated[float, Field(ge=0, le=1000)]] | None = Field(
        None, max_length=64,
        description="task multitask: each task's weight in the loss (default 1 each); "
                    "refused for other tasks.")
    model: ModelSpecIn = ModelSpecIn()
    augmentation: AugmentationSpec = Field(
        default_factory=AugmentationSpec,
        description="Default: mixup α = 1 (none for task retrieval, whose methods are none, "
                    "mixgen and m3mix).")
    training: TrainingSpecIn = TrainingSpecIn()

    @model_validator(mode="after")
    def _retrieval_default_mixing(self) -> "ExperimentCreate":
        if self.task == "retrieval" and "augmentation" not in self.model_fields_set:
            self.augmentation = AugmentationSpec(method="none")
        return self


class RunRef(BaseModel):
    id: uuid.UUID
    status: str
    url: str


class ExperimentCreated(BaseModel):
    experiment_id: uuid.UUID
    run_ids: list[uuid.UUID]
    runs: list[RunRef]
    url: str


class ExperimentOut(BaseModel):
    id: uuid.UUID
    name: str
    dataset_id: uuid.UUID
    task: str
    spec: dict[str, Any]
    created_at: datetime
    sweep_id: uuid.UUID | None = Field(None, description="The sweep that made it, if any.")
    runs: list[RunRef]
