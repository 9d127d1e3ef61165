import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.runs.status import RunStatus as Status

# the lifecycle's enum (app.runs.status), listed inline in OpenAPI as it always was
RunStatus = Literal[Status.QUEUED, Status.RUNNING, Status.SUCCEEDED, Status.FAILED,
                    Status.CANCELLED]


class Progress(BaseModel):
    epoch: int = Field(description="Epoch in progress (1-based); 0 before training starts.")
    epochs: int
    step: int
    total_steps: int
    samples_per_s: float | None
    eta_s: float | None


class WorkerInfo(BaseModel):
    host: str | None
    device: str | None = Field(description="What the run trains on, e.g. \"cpu (1 thread, "
                                           "fp32)\" or \"2× cpu (1 thread, fp32, gloo)\".")
    world_size: int = Field(1, description="Processes the run trains on "
                                           "(training.world_size).")


class ShapeMismatch(BaseModel):
    expected: list[int] = Field(description="The model's shape.")
    got: list[int] = Field(description="The file's shape.")


class InitReport(BaseModel):
    """What model.weights / model.init_from_run loaded into the model."""

    source: str = Field(description="model.weights as given (file://, s3://, store:KEY), or "
                                    "run:<id> for model.init_from_run.")
    loaded: int = Field(description="Tensors loaded: same name and shape in model and file.")
    mismatched: dict[str, ShapeMismatch] = Field(
        description="Tensors of both with another shape (another head size): left as "
                    "initialised.")
    missing: list[str] = Field(description="Model tensors the file lacks: left as initialised.")
    unexpected: list[str] = Field(description="File tensors the model lacks: ignored.")
    frozen: list[str] = Field(
        [], description="Model tensors of the parts model.freeze names: kept as they started "
                        "(out of the optimizer, in eval mode), sorted.")


class CheckpointOut(BaseModel):
    url: str = Field(description="GET it for the safetensors file (self-contained: see "
                                 "POST /v1/runs/{run_id}/predict).")
    epoch: int | None = Field(description="The epoch whose weights it holds (a succeeded "
                                          "run's: the kept model, the best epoch with "
                                          "training.checkpoint best); null for runs "
                                          "checkpointed before this was recorded.")
    partial: bool = Field(description="True unless the run succeeded: the weights of the "
                                      "last finished epoch of a run that is still running, "
                                      "was cancelled or failed, not a trained model (no "
                                      "temperature, no test figures).")


class RunOut(BaseModel):
    id: uuid.UUID
    experiment_id: uuid.UUID
    name: str = Field(description="The experiment's name.")
    sweep_id: uuid.UUID | None = Field(description="The sweep that made the run, if any.")
    method: str = Field(description="augmentation.method of the spec.")
    alpha: float = Field(description="augmentation.alpha of the spec.")
    status: RunStatus
    cancel_requested: bool
    attempt: int
    progress: Progress
    metrics: dict[str, float] = Field(description="Latest value of each metric.")
    error: str | None
    worker: WorkerInfo
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    checkpoint_url: str | None = Field(description="The checkpoint's URL (`checkpoint.url`); "
                                                   "see `checkpoint.partial`.")
    checkpoint: CheckpointOut | None = Field(
        description="The run's latest checkpoint, null until its first epoch is saved.")
    init: InitReport | None = Field(
        None, description="Runs started from model.weights or model.init_from_run: what "
                          "loaded, written when training ends (null otherwise, and for a "
                          "run that failed).")


class MetricColumnsOut(BaseModel):
    """One key's points as parallel columns, by step: point i is
    (step[i], epoch[i], value[i])."""

    step: list[int]
    epoch: list[int]
    value: list[float]


class MetricHistory(BaseModel):
    run_id: uuid.UUID
    metrics: dict[str, MetricColumnsOut] = Field(
        description="Metric key → its points as columns (`step`, `epoch`, `value`, by "
                    "step).")


class LogLineOut(BaseModel):
    line: int = Field(description="Number within its attempt, from 1 (the paging cursor)")
    at: datetime
    level: str
    logger: str
    message: str


class RunLogOut(BaseModel):
    run_id: uuid.UUID
    status: RunStatus = Field(description="The run's status now: a follower stops once it "
                                       "ended and `more` is false")
    attempts: list[int] = Field(description="The attempts that logged something")
    attempt: int | None = Field(description="The attempt these lines are from (null: none "
                                            "logged yet)")
    lines: list[LogLineOut]
    next_after_line: int = Field(description="Pass as `after_line` for the lines after these")
    more: bool = Field(description="More lines of this attempt are stored already")


class ClassScores(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class")
    precision: float
    recall: float
    f1: float
    support: int = Field(description="Test samples of the class (multilabel: that have it).")
    ap: float | None = Field(None, description="multilabel: the class's average precision; "
                                               "null when no test sample has the class "
                                               "(and for classification).")


class TaskEvaluation(BaseModel):
    """One task's report of a multitask run."""

    class_names: list[str]
    confusion_matrix: list[list[int]] = Field(
        description="Counts; row = true class, column = predicted class.")
    per_class: list[ClassScores]


class EvaluationOut(BaseModel):
    run_id: uuid.UUID
    split: Literal["test"] = "test"
    task: str = Field("classification", description="The run's task.")
    class_names: list[str]
    confusion_matrix: list[list[int]] | None = Field(
        None, description="classification: counts; row = true class, column = predicted "
                          "class. null for multilabel.")
    threshold: float | None = Field(
        None, description="multilabel: a class is predicted when its probability is at "
                          "least this.")
    class_confusion: list[list[list[int]]] | None = Field(
        None, description="multilabel: per class, counts [[tn, fp], [fn, tp]] at the "
                          "threshold.")
    per_class: list[ClassScores]
    tasks: dict[str, TaskEvaluation] | None = Field(
        None, description="multitask: every task's report, by task (the top-level fields "
                          "are the first task's).")
