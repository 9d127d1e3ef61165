import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from app.ml.models import ModelSpec
from app.ml.train import TrainSpec
from app.schemas.augmentation import AugmentationSpec
from app.schemas.common import StrictModel


class ModelSpecIn(StrictModel):
    kind: Literal["cnn", "multimodal"] = Field(
        "cnn", description="cnn: the image-only SmallCNN. multimodal: one encoder per "
                           "modality of the dataset and a fusion head.")
    width: int = Field(32, ge=1, le=512, description="Channels of the first conv layer.")
    depth: int = Field(3, ge=1, le=8, description="Number of conv blocks.")
    dropout: float = Field(0.0, ge=0, lt=1)
    fusion: Literal["early", "late", "attention", "tensor", "gated"] = Field(
        "early", description="multimodal: how the modalities' features are combined.")
    dim: int = Field(64, ge=2, le=2048, description="multimodal: every encoder's output width.")
    image_encoder: Literal["cnn", "resnet18"] = Field(
        "cnn", description="multimodal: resnet18 needs torchvision on the worker.")
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

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelSpecIn":
        if self.kind == "multimodal":
            if self.fusion == "attention" and self.dim % self.heads:
                raise ValueError("dim must be a multiple of heads for attention fusion")
            if self.text_encoder == "transformer" and self.text_dim % self.heads:
                raise ValueError("text_dim must be a multiple of heads for the text transformer")
        return self

    @model_serializer(mode="wrap")
    def _cnn_fields_only(self, handler: Any) -> dict[str, Any]:
        # a cnn spec is stored and shown with its own fields only, as before
        # multimodal models existed
        data = handler(self)
        if self.kind == "cnn" and isinstance(data, dict):
            data = {k: v for k, v in data.items() if k in _CNN_FIELDS}
        return data

    def to_ml(self) -> ModelSpec:
        return ModelSpec(**self.model_dump())


_CNN_FIELDS = ("kind", "width", "depth", "dropout")


class TrainingSpecIn(StrictModel):
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(3e-3, gt=0, le=10)
    weight_decay: float = Field(0.01, ge=0, le=10)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$",
                        description="auto picks CUDA (bf16 autocast) when the worker has it.")
    calibration: Literal["none", "temperature"] = Field(
        "temperature",
        description="temperature: after the last epoch, fit one temperature T on the "
                    "validation logits (minimising NLL; T < 1 sharpens an under-confident "
                    "model) and report temperature, test_ece_calibrated and "
                    "test_nll_calibrated next to the raw metrics; predictions do not "
                    "change and T is saved with the checkpoint. none: skip it.")
    time_limit_s: int | None = Field(
        None, ge=1, le=30 * 24 * 3600,
        description="Wall-clock limit of one attempt, from its claim; past it the run "
                    "stops at its next step and fails with the reason.")

    def to_ml(self) -> TrainSpec:
        return TrainSpec(**self.model_dump(exclude={"time_limit_s"}))


# The tasks ``train`` knows (``app.ml.tasks.TASKS``), and retrieval, which has
# its own loop (``app.ml.retrieval``); a new task is one more name here.
TaskName = Literal["classification", "multilabel", "retrieval"]


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
                    "micro/macro-F1 at 0.5, NLL, ECE, Brier). retrieval: CLIP-style "
                    "contrastive training of two towers (`retrieval.query` → "
                    "`retrieval.target`) with augmentation none, mixgen or m3mix; recall@1/5/10 "
                    "both ways.")
    retrieval: RetrievalSpecIn | None = Field(
        None, description="task retrieval: which modalities are paired (required there, "
                          "refused for other tasks).")
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
    runs: list[RunRef]
