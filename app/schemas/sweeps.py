"""Sweeps: a base experiment spec and a grid and/or a random space over its dotted
fields; the replies (status, summary) and the comparison of runs."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.schemas.common import StrictModel

# points one sweep may make (grid points × random samples)
MAX_POINTS = 500
DottedPath = str


class Distribution(StrictModel):
    """One of uniform [a, b], log_uniform [a, b] (a > 0), int_uniform [a, b]
    (inclusive) or choice [values…]."""

    uniform: tuple[float, float] | None = None
    log_uniform: tuple[float, float] | None = None
    int_uniform: tuple[int, int] | None = None
    choice: list[Any] | None = Field(None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _exactly_one(self) -> "Distribution":
        given = [name for name in ("uniform", "log_uniform", "int_uniform", "choice")
                 if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of uniform, log_uniform, int_uniform, choice")
        for name in ("uniform", "log_uniform", "int_uniform"):
            bounds = getattr(self, name)
            if bounds is not None and bounds[0] > bounds[1]:
                raise ValueError(f"{name}: the low bound must not exceed the high one")
        if self.log_uniform is not None and self.log_uniform[0] <= 0:
            raise ValueError("log_uniform: bounds must be positive")
        return self


class RandomSearch(StrictModel):
    n: int = Field(ge=1, le=MAX_POINTS, description="Points drawn.")
    seed: int = Field(0, ge=0, le=2**31 - 1,
                      description="The draws are a function of the seed: the same seed, "
                                  "the same points.")
    space: dict[DottedPath, Distribution] = Field(min_length=1, max_length=50)


class SweepCreate(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "alpha-by-method",
        "base": {"dataset_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                 "model": {"width": 8, "depth": 2},
                 "training": {"epochs": 2, "optimizer": "adamw", "lr": 0.003,
                              "schedule": "constant"}},
        "grid": {"augmentation.method": ["none", "mixup", "cutmix"],
                 "augmentation.alpha": [0.2, 1, 8], "training.seed": [0, 1, 2]},
    }]})

    name: str = Field("sweep", min_length=1, max_length=200)
    base: dict[str, Any] = Field(
        description="An experiment spec (POST /v1/experiments) every point starts from; "
                    "dataset_id may be here, at the top level, or an axis.")
    dataset_id: uuid.UUID | None = Field(None, description="Sets base.dataset_id.")
    grid: dict[DottedPath, list[Any]] | None = Field(
        None, max_length=50,
        description="Dotted field → values; every combination is a point.")
    random: RandomSearch | None = Field(
        None, description="n points drawn from a space; with a grid, each grid point is "
                          "combined with each draw.")

    @field_validator("grid")
    @classmethod
    def _values_given(cls, grid: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        for path, values in (grid or {}).items():
            if not values:
                raise ValueError(f"{path}: give at least one value")
            if len(values) > MAX_POINTS:
                raise ValueError(f"{path}: at most {MAX_POINTS} values")
        return grid

    @model_validator(mode="after")
    def _a_space(self) -> "SweepCreate":
        if not self.grid and self.random is None:
            raise ValueError("give a grid, a random search, or both")
        return self


class SweepRun(BaseModel):
    id: uuid.UUID
    experiment_id: uuid.UUID
    status: str
    point: dict[str, Any] = Field(description="The point's values, by dotted field.")
    metrics: dict[str, float]


class SweepCreated(BaseModel):
    sweep_id: uuid.UUID
    run_ids: list[uuid.UUID]
    url: str


class SweepOut(BaseModel):
    id: uuid.UUID
    name: str
    spec: dict[str, Any] = Field(description="The request: base, grid, random.")
    created_at: datetime
    total: int = Field(description="Runs of the sweep.")
    counts: dict[str, int] = Field(description="Runs by status.")
    finished: int = Field(description="Runs that ended (succeeded, failed or cancelled).")
    progress: float = Field(description="finished / total.")
    done: bool = Field(description="Every run ended.")
    run_ids: list[uuid.UUID]
    runs: list[SweepRun]


class SummaryRow(BaseModel):
    config: dict[str, Any] = Field(description="The point without training.seed.")
    n: int = Field(description="Succeeded runs with the metric.")
    runs: int = Field(description="Runs of this configuration.")
    mean: float | None
    std: float | None = Field(description="Sample standard deviation (n - 1); 0 for n = 1.")
    min: float | None
    max: float | None
    best_run_id: uuid.UUID | None


class SweepSummary(BaseModel):
    sweep_id: uuid.UUID
    metric: str
    order: str = Field(description="desc for scores, asc for losses and calibration errors.")
    rows: list[SummaryRow]


class ComparedRun(BaseModel):
    id: uuid.UUID
    experiment_id: uuid.UUID
    name: str
    status: str
    metrics: dict[str, float]
    spec: dict[str, Any] = Field(description="dataset_id, task and the stored spec.")


class CurveOut(BaseModel):
    steps: list[int] = Field(description="Every step any run has a point at, ascending.")
    runs: dict[str, list[float | None]] = Field(
        description="Run id → its value at each step (null where it has none).")


class RunComparison(BaseModel):
    runs: list[ComparedRun]
    differs: dict[str, dict[str, Any]] = Field(
        description="Dotted spec field → run id → value, for the fields that differ.")
    histories: dict[str, CurveOut]
