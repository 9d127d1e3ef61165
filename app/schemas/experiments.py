import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.ml.models import ModelSpec
from app.ml.train import TrainSpec
from app.schemas.augmentation import AugmentationSpec
from app.schemas.common import StrictModel


class ModelSpecIn(StrictModel):
    kind: Literal["cnn"] = "cnn"
    width: int = Field(32, ge=1, le=512, description="Channels of the first conv layer.")
    depth: int = Field(3, ge=1, le=8, description="Number of conv blocks.")
    dropout: float = Field(0.0, ge=0, lt=1)

    def to_ml(self) -> ModelSpec:
        return ModelSpec(**self.model_dump())


class TrainingSpecIn(StrictModel):
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(3e-3, gt=0, le=10)
    weight_decay: float = Field(0.01, ge=0, le=10)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$",
                        description="auto picks CUDA (bf16 autocast) when the worker has it.")

    def to_ml(self) -> TrainSpec:
        return TrainSpec(**self.model_dump())


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
    task: Literal["classification"] = "classification"
    model: ModelSpecIn = ModelSpecIn()
    augmentation: AugmentationSpec = AugmentationSpec()
    training: TrainingSpecIn = TrainingSpecIn()


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
