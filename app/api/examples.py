"""Example replies of the main operations, shown in the OpenAPI schema (/docs,
/redoc, generated clients). Each is a reply of the kind the API gives (digits
with 40 % label noise, a 40-epoch mixup run); the tests validate every one
against its operation's reply model, so they cannot drift from it."""

from typing import Any

from pydantic import BaseModel

from app.schemas.access import KeyCreated
from app.schemas.datasets import DatasetOut
from app.schemas.experiments import ExperimentCreated, ExperimentOut
from app.schemas.runs import EvaluationOut, MetricHistory, RunOut

BASE = "https://mixlab.example.org"
DATASET_ID = "3f1c2a9e-6d1b-4a57-9a0e-5b8f0c4d2e11"
EXPERIMENT_ID = "8a2d7c41-0f3e-4b6a-b1d2-7e9c5a3f6b20"
RUN_ID = "c5e0b3f2-9a4d-4e1c-8b7a-2d6f1e0a9c33"
KEY_ID = "0b7e9d21-5c3a-4f8e-9d6b-1a2c3e4f5a66"

_SOURCE = {"kind": "builtin", "name": "digits", "options": {"label_noise": 0.4, "seed": 0}}
_COUNTS = [(182, 128), (173, 119), (179, 125), (176, 122), (172, 118),
           (180, 126), (183, 129), (177, 123), (182, 130), (193, 139)]

DATASET_PREPARING = {
    "id": DATASET_ID, "name": "digits", "status": "preparing", "source": _SOURCE,
    "progress": 0.0, "stage": "queued", "errors": None, "error_count": 0,
    "num_samples": None, "multilabel": None, "modalities": None, "classes": None,
    "split_sizes": None, "noisy_train_labels": None, "size_bytes": None,
    "created_at": "2026-12-14T09:30:00Z", "started_at": None, "finished_at": None}

DATASET_READY = {
    **DATASET_PREPARING, "status": "ready", "progress": 1.0, "stage": None,
    "num_samples": 1797, "multilabel": False,
    "modalities": [{"name": "image", "kind": "image", "shape": [1, 8, 8], "dtype": "uint8"}],
    "classes": [{"index": i, "name": str(i), "count": count,
                 "split_counts": {"train": train, "val": (count - train) // 2,
                                  "test": count - train - (count - train) // 2}}
                for i, (count, train) in enumerate(_COUNTS)],
    "split_sizes": {"train": 1259, "val": 269, "test": 269}, "noisy_train_labels": 504,
    "size_bytes": 130_872, "started_at": "2026-12-14T09:30:00.2Z",
    "finished_at": "2026-12-14T09:30:01Z"}

DATASET_FAILED = {
    **DATASET_PREPARING, "name": "zoo", "status": "failed", "stage": None,
    "source": {"kind": "upload", "format": "parquet", "filename": "zoo.parquet"},
    "errors": [{"field": "img", "message": "unreadable image in 60 rows: 0, 1, 2, 3, 4, 5, "
                                           "6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, "
                                           "19, … (first: not an image PIL can read (PNG, "
                                           "JPEG, GIF, BMP, TIFF, WebP, …))"},
               {"field": "label", "message": "missing in 2 rows: 4, 7"}],
    "error_count": 62, "started_at": "2026-12-14T09:30:00.2Z",
    "finished_at": "2026-12-14T09:30:03Z"}

_RUN_REF = {"id": RUN_ID, "status": "queued", "url": f"{BASE}/v1/runs/{RUN_ID}"}

EXPERIMENT_CREATED = {"experiment_id": EXPERIMENT_ID, "run_ids": [RUN_ID], "runs": [_RUN_REF],
                      "url": f"{BASE}/v1/experiments/{EXPERIMENT_ID}"}

EXPERIMENT = {
    "id": EXPERIMENT_ID, "name": "digits-mixup", "dataset_id": DATASET_ID,
    "task": "classification",
    "spec": {"model": {"kind": "cnn", "width": 16, "depth": 3, "dropout": 0.0},
             "augmentation": {"method": "mixup", "alpha": 1.0},
             "training": {"epochs": 40, "batch_size": 128, "lr": 0.1, "seed": 0}},
    "created_at": "2026-12-14T09:31:00Z", "sweep_id": None,
    "runs": [{**_RUN_REF, "status": "running"}]}

_CHECKPOINT = f"{BASE}/v1/runs/{RUN_ID}/checkpoint"
RUN_RUNNING = {
    "id": RUN_ID, "experiment_id": EXPERIMENT_ID, "name": "digits-mixup", "sweep_id": None,
    "method": "mixup", "alpha": 1.0, "status": "running",
    "cancel_requested": False, "attempt": 1,
    "progress": {"epoch": 13, "epochs": 40, "step": 117, "total_steps": 360,
                 "samples_per_s": 5210.0, "eta_s": 5.6},
    "metrics": {"train_loss": 1.62, "val_loss": 0.41, "val_acc": 0.93, "val_f1_macro": 0.93,
                "val_ece": 0.12, "val_brier": 0.11, "train_loss_step": 1.58, "lr": 0.087},
    "error": None, "worker": {"host": "gpu-worker-1", "device": "cuda:0 (bf16 autocast)"},
    "created_at": "2026-12-14T09:31:00Z", "started_at": "2026-12-14T09:31:01Z",
    "finished_at": None, "heartbeat_at": "2026-12-14T09:31:04Z",
    "checkpoint_url": _CHECKPOINT,
    "checkpoint": {"url": _CHECKPOINT, "epoch": 12, "partial": True}, "init": None}

RUN_CANCELLED = {
    **RUN_RUNNING, "status": "cancelled", "cancel_requested": True,
    "progress": {**RUN_RUNNING["progress"], "eta_s": None},  # type: ignore[dict-item]
    "finished_at": "2026-12-14T09:31:05Z", "heartbeat_at": "2026-12-14T09:31:05Z"}

RUN_SUCCEEDED = {
    **RUN_RUNNING, "status": "succeeded",
    "progress": {"epoch": 40, "epochs": 40, "step": 360, "total_steps": 360,
                 "samples_per_s": 5390.0, "eta_s": 0.0},
    "metrics": {**RUN_RUNNING["metrics"],  # type: ignore[dict-item]
                "val_acc": 0.97, "test_acc": 0.98, "test_f1_macro": 0.98, "test_loss": 0.12,
                "test_ece": 0.05, "test_brier": 0.03, "temperature": 0.71,
                "temperature_at_bound": 0.0, "test_ece_calibrated": 0.02,
                "test_nll_calibrated": 0.08, "train_time_s": 9.4},
    "finished_at": "2026-12-14T09:31:11Z", "heartbeat_at": "2026-12-14T09:31:11Z",
    "checkpoint": {"url": _CHECKPOINT, "epoch": 40, "partial": False}}

METRICS = {"run_id": RUN_ID, "metrics": {"val_acc": {
    "step": [9, 18, 27], "epoch": [1, 2, 3], "value": [0.41, 0.72, 0.85]}}}

EVALUATION = {
    "run_id": RUN_ID, "split": "test", "task": "classification", "class_names": ["0", "1", "2"],
    "confusion_matrix": [[27, 0, 0], [0, 26, 1], [0, 1, 26]], "threshold": None,
    "class_confusion": None,
    "per_class": [{"class": "0", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 27},
                  {"class": "1", "precision": 0.963, "recall": 0.963, "f1": 0.963,
                   "support": 27},
                  {"class": "2", "precision": 0.963, "recall": 0.963, "f1": 0.963,
                   "support": 27}]}

KEY_CREATED = {"id": KEY_ID, "name": "ci", "prefix": "mxl_4kq9", "scope": "read",
               "created_at": "2026-12-14T09:00:00Z", "last_used_at": None, "revoked_at": None,
               "key": "mxl_4kq9_Zt3vN0pQ…"}

# operationId → (status, reply model, {example name: (summary, value)})
Examples = dict[str, tuple[str, type[BaseModel], dict[str, tuple[str, dict[str, Any]]]]]
REPLY_EXAMPLES: Examples = {
    "datasets_create": ("202", DatasetOut, {
        "preparing": ("Accepted: a worker prepares it", DATASET_PREPARING)}),
    "datasets_get": ("200", DatasetOut, {
        "ready": ("Prepared: modalities, classes, splits", DATASET_READY),
        "preparing": ("Still preparing", {**DATASET_PREPARING, "stage": "reading",
                                          "progress": 0.4}),
        "failed": ("Failed: every problem by field, rows capped at 20", DATASET_FAILED)}),
    "experiments_create": ("202", ExperimentCreated, {
        "queued": ("Stored and queued", EXPERIMENT_CREATED)}),
    "experiments_get": ("200", ExperimentOut, {"experiment": ("With its runs", EXPERIMENT)}),
    "runs_get": ("200", RunOut, {
        "running": ("Training: progress, latest metrics, a partial checkpoint", RUN_RUNNING),
        "succeeded": ("Done: test figures, the final checkpoint", RUN_SUCCEEDED),
        "cancelled": ("Cancelled: its last epoch's checkpoint, partial", RUN_CANCELLED)}),
    "runs_cancel": ("200", RunOut, {
        "cancelling": ("A running run stops within a step or two",
                       {**RUN_RUNNING, "cancel_requested": True})}),
    "runs_metrics": ("200", MetricHistory, {"history": ("One key (?key=val_acc)", METRICS)}),
    "runs_evaluation": ("200", EvaluationOut, {"classification": ("Three classes", EVALUATION)}),
    "keys_create": ("201", KeyCreated, {"created": ("The key, shown once", KEY_CREATED)}),
}


def add_examples(schema: dict[str, Any]) -> None:
    """Put ``REPLY_EXAMPLES`` on their operations' JSON replies."""
    operations = {op["operationId"]: op for item in schema.get("paths", {}).values()
                  for op in item.values() if isinstance(op, dict) and "operationId" in op}
    for operation_id, (status, _, examples) in REPLY_EXAMPLES.items():
        media = operations[operation_id]["responses"][status]["content"]["application/json"]
        media["examples"] = {name: {"summary": summary, "value": value}
                             for name, (summary, value) in examples.items()}
