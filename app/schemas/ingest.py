"""The ``spec`` form field of a Parquet / archive upload: which column is which modality."""

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from app.ml.data.ingest_spec import RESERVED_NAMES, IngestSpec, ModalitySpec
from app.schemas.common import StrictModel

Column = Annotated[str, Field(min_length=1, max_length=200)]


class ImageIngest(StrictModel):
    kind: Literal["image"]
    column: Column
    size: tuple[Annotated[int, Field(ge=1, le=512)], Annotated[int, Field(ge=1, le=512)]] = (
        Field((32, 32), description="(H, W) after a bilinear resize."))
    channels: Literal[1, 3] | None = Field(None, description="Default: 1 if the first image "
                                                             "is grayscale, else 3.")


class TextIngest(StrictModel):
    kind: Literal["text"]
    column: Column
    max_length: int = Field(32, ge=1, le=8192, description="Tokens kept per sample.")
    vocab_size: int = Field(5000, ge=3, le=1_000_000,
                            description="Including <pad> (0) and <unk> (1); words by "
                                        "frequency in the train split.")


class AudioIngest(StrictModel):
    kind: Literal["audio"]
    column: Column
    sample_rate: int | None = Field(None, ge=1000, le=384_000,
                                    description="Resample every clip to this rate (linear). "
                                                "Default: all clips must share one rate.")
    clip_seconds: float = Field(1.0, gt=0, le=600, description="Clips are cropped or "
                                                               "zero-padded to this length.")


class TabularIngest(StrictModel):
    kind: Literal["tabular"]
    columns: list[Column] = Field([], max_length=100_000, description="Numeric columns.")
    categorical: list[Column] = Field([], max_length=10_000,
                                      description="Encoded as integer codes (0 = unseen).")
    normalise: bool = Field(True, description="Standardise numeric columns with train "
                                              "mean and std.")

    @model_validator(mode="after")
    def _some_column(self) -> "TabularIngest":
        if not self.columns and not self.categorical:
            raise ValueError("needs at least one column in columns or categorical")
        return self


ModalityIngest = Annotated[ImageIngest | TextIngest | AudioIngest | TabularIngest,
                           Field(discriminator="kind")]


class IngestSpecIn(StrictModel):
    """How to read a Parquet file or an archive's manifest. Omit to infer from the data."""

    label: Column = "label"
    split: Column | None = Field(None, description="Default: a column named 'split' if any, "
                                                   "else a stratified 70/15/15 split.")
    multilabel: bool = Field(
        False, description="Each sample has a set of classes (multi-hot labels). A label "
                           "column of lists (Parquet list column, JSON lists in "
                           "manifest.jsonl) turns this on by itself; set it for text labels "
                           "separated by '|' (manifest.csv: cat|dog).")
    tasks: dict[Annotated[str, Field(min_length=1, max_length=40,
                                     pattern=r"^[A-Za-z0-9_-]+$")], Column] = Field(
        {}, max_length=16,
        description="Multi-task data: task name → its label column (one class per row), in "
                    "order; the first task is the primary one. Replaces label. Train it with "
                    "task multitask.")
    modalities: dict[Annotated[str, Field(min_length=1, max_length=64,
                                          pattern=r"^[A-Za-z0-9_.-]+$")],
                     ModalityIngest] = Field(
        {}, max_length=16, description="Modality name → how to prepare it; empty = infer.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "label": "label", "split": "split", "modalities": {
            "image": {"kind": "image", "column": "img", "size": [32, 32], "channels": 3},
            "text": {"kind": "text", "column": "caption", "max_length": 32},
            "tabular": {"kind": "tabular", "columns": ["age"], "categorical": ["city"]}}}]})

    @field_validator("modalities")
    @classmethod
    def _names(cls, value: dict[str, object]) -> dict[str, object]:
        for name in value:
            if name in RESERVED_NAMES:
                raise ValueError(f"{name!r} is reserved; name the modality otherwise")
        if sum(1 for m in value.values() if getattr(m, "kind", "") == "text") > 1:
            raise ValueError("one text modality per dataset")
        return value

    @model_validator(mode="after")
    def _label_or_tasks(self) -> "IngestSpecIn":
        if self.tasks and "label" in self.model_fields_set:
            raise ValueError("give label (one label column) or tasks (several), not both")
        if self.tasks and self.multilabel:
            raise ValueError("tasks are one class per row each; multilabel does not apply")
        return self

    def to_spec(self) -> IngestSpec:
        mods = {}
        for name, m in self.modalities.items():
            data = m.model_dump()
            if "columns" in data:
                data["columns"] = tuple(data["columns"])
                data["categorical"] = tuple(data["categorical"])
            if "size" in data:
                data["size"] = tuple(data["size"])
            mods[name] = ModalitySpec(**data)
        return IngestSpec(modalities=mods, label=self.label, split=self.split,
                          multilabel=self.multilabel, tasks=dict(self.tasks))
