"""Predictions of a finished run: the JSON request (rows of a dataset's split) and the
reply. The other request form, a file upload, is multipart (see the route)."""

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.schemas.common import StrictModel

# samples one request may predict (a split, its indices, or a file's rows)
MAX_PREDICT_SAMPLES = 10_000


class PredictRequest(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"dataset_id": "3f0e9a52-8c1b-4f5e-9d38-2a6f1c7b9e10", "split": "test"},
        {"dataset_id": "3f0e9a52-8c1b-4f5e-9d38-2a6f1c7b9e10", "split": "val",
         "indices": [0, 1, 2]}]})

    dataset_id: uuid.UUID = Field(description="A ready dataset of the project.")
    split: Literal["train", "val", "test"] = "test"
    indices: list[Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]] | None = Field(
        None, min_length=1, max_length=MAX_PREDICT_SAMPLES,
        description="Rows within the split, 0-based positions in it (default: the whole "
                    f"split, if it has at most {MAX_PREDICT_SAMPLES} rows).")


class TaskPrediction(BaseModel):
    predicted: str = Field(description="The task's predicted class (its top score).")
    probabilities: dict[str, float] = Field(
        description="Per class of the task: the calibrated softmax of its head.")
    label: str | None = Field(description="The sample's class in this task; null when the "
                                          "dataset or file gives none.")


class Prediction(BaseModel):
    index: int = Field(description="The row's position in the split, or in the file.")
    predicted: str | list[str] = Field(
        description="The predicted class (the top score, as the run's test accuracy counts "
                    "it); multi-label: every class with p >= 0.5.")
    probabilities: dict[str, float] = Field(
        description="Per class: the calibrated softmax (with the run's temperature, if "
                    "fitted), or for multi-label a sigmoid per class.")
    label: str | list[str] | None = Field(
        description="The sample's true class (multi-label: its classes); null when it has "
                    "none.")
    tasks: dict[str, TaskPrediction] | None = Field(
        None, description="multitask: every task's prediction, by task; the fields above "
                          "are the first (primary) task's.")


class PredictionsOut(BaseModel):
    run_id: uuid.UUID
    task: Literal["classification", "multilabel", "multitask"]
    n: int = Field(description="Number of samples predicted.")
    n_labelled: int = Field(description="How many of them have a label.")
    accuracy: float | None = Field(
        description="Over the labelled samples: the share predicted right (classification), "
                    "or predicted exactly, every class right (multi-label: the run's "
                    "subset_acc). Over a whole test split it equals the run's test_acc / "
                    "test_subset_acc when predicting on the device type it trained on. Null "
                    "without labels.")
    task_accuracy: dict[str, float] | None = Field(
        None, description="multitask: each task's accuracy over the rows labelled for it "
                          "(accuracy is their unweighted mean, as the run's test_acc).")
    predictions: list[Prediction]
