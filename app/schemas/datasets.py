import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.augmentation import AugmentationSpec
from app.schemas.common import StrictModel


class DigitsOptions(StrictModel):
    label_noise: float = Field(0.0, ge=0, le=0.9,
                               description="Share of training labels flipped to another class.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the label noise.")


class BuiltinSource(StrictModel):
    kind: Literal["builtin"]
    name: Literal["digits"] = Field(description="scikit-learn's 1,797 8x8 handwritten digits.")
    options: DigitsOptions = DigitsOptions()


class DatasetCreate(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "digits-noisy",
        "source": {"kind": "builtin", "name": "digits",
                   "options": {"label_noise": 0.4, "seed": 0}},
    }]})

    name: str = Field(min_length=1, max_length=200)
    source: BuiltinSource


class ModalityOut(BaseModel):
    name: str
    kind: str
    shape: list[int]
    dtype: str


class ClassOut(BaseModel):
    index: int
    name: str
    count: int
    split_counts: dict[str, int]


class DatasetOut(BaseModel):
    id: uuid.UUID
    name: str
    status: str
    source: dict[str, Any]
    num_samples: int
    modalities: list[ModalityOut]
    classes: list[ClassOut]
    split_sizes: dict[str, int]
    noisy_train_labels: int
    size_bytes: int
    created_at: datetime


class PreviewRequest(AugmentationSpec):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"method": "cutmix", "alpha": 1.0, "seed": 0, "n": 8}]})

    seed: int = Field(0, ge=0, le=2**31 - 1)
    n: int = Field(8, ge=1, le=64, description="Number of mixed samples.")
    split: Literal["train", "val", "test"] = "train"


class PreviewSample(BaseModel):
    index_a: int = Field(description="Dataset index of the sample being mixed.")
    index_b: int = Field(description="Dataset index of its partner.")
    lam: float = Field(description="Weight of sample A (share of A's pixels for cutmix).")
    label_a: str
    label_b: str
    label_mixture: dict[str, float] = Field(description="Soft target: class name → weight.")
    box: list[int] | None = Field(None, description="CutMix box y0, x0, y1, x1 (half-open).")
    image_url: str


class PreviewOut(BaseModel):
    dataset_id: uuid.UUID
    spec: PreviewRequest
    samples: list[PreviewSample]
    image_url: str = Field(description="PNG grid of every sample: A | B | mixed.")
