"""Per-project limits, checked when work is submitted, so no worker meets a job
too big for its project.

Defaults come from the settings (``MIXLAB_LIMIT_*``); a project's ``limits``
overrides them by name. Rate/concurrency limits (runs running, runs queued) are
a ``LimitExceeded`` (429, ``Retry-After``); size limits (dataset bytes,
epochs × training samples, model parameters) a ``FieldError`` (422) at the field
the size is computed from.
"""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import Dataset, Experiment, Project, Run
from app.ml.models import ModelSpecError, build_model
from app.ml.models.spec import MULTIMODAL_KINDS
from app.ml.models.towers import build_dual_encoder
from app.runs.status import LIVE, RunStatus
from app.schemas.access import ProjectLimits
from app.schemas.experiments import ExperimentCreate
from app.services.errors import FieldError, LimitExceeded, NotFoundError
from app.settings import Settings


@dataclass(frozen=True)
class Limits:
    running_runs: int
    queued_runs: int
    dataset_bytes: int
    epoch_samples: int
    model_parameters: int


def effective(settings: Settings, project: Project) -> Limits:
    overrides = ProjectLimits.model_validate(project.limits or {})
    return Limits(**{f.name: getattr(overrides, f.name) or getattr(settings, f"limit_{f.name}")
                     for f in fields(Limits)})


def _project(session: Session, project_id: uuid.UUID, lock: bool = False) -> Project:
    # FOR NO KEY UPDATE: submissions of one project queue up behind each other, but
    # inserts that only reference the project (a new dataset's foreign key) do not
    project = session.get(Project, project_id,
                          with_for_update={"key_share": True} if lock else None)
    if project is None:
        raise NotFoundError("project", project_id)
    return project


# --- datasets --------------------------------------------------------------------------

def check_dataset_bytes(session: Session, settings: Settings, project_id: uuid.UUID,
                        incoming: int, loc: tuple[str | int, ...]) -> None:
    """Refuse a new dataset when the project's prepared datasets, plus ``incoming``
    bytes (an upload's size; 0 where it is not known yet), pass ``dataset_bytes``."""
    limit = effective(settings, _project(session, project_id)).dataset_bytes
    used = session.scalar(select(func.coalesce(func.sum(Dataset.size_bytes), 0))
                          .where(Dataset.project_id == project_id)) or 0
    if used >= limit or used + incoming > limit:
        raise FieldError(loc, f"the project's datasets take {used} bytes"
                              + (f" and this one {incoming}" if incoming else "")
                              + f"; its limit is {limit} bytes (dataset_bytes): delete "
                                "datasets it no longer needs")


# --- experiments -----------------------------------------------------------------------

def check_experiment(session: Session, settings: Settings, project_id: uuid.UUID,
                     request: ExperimentCreate, summary: dict[str, Any],
                     new_runs: int = 1) -> None:
    """Size limits of the run, then the project's queue (``check_queue``, which
    locks the project's row until the caller commits)."""
    check_epoch_samples(session, settings, project_id, request, summary)
    check_model_size(session, settings, project_id, request, summary)
    check_queue(session, settings, project_id, new_runs)


def check_epoch_samples(session: Session, settings: Settings, project_id: uuid.UUID,
                        request: ExperimentCreate, summary: dict[str, Any]) -> None:
    limits = effective(settings, _project(session, project_id))
    samples = int(summary["split_sizes"]["train"])
    epochs = request.training.epochs
    if epochs * samples > limits.epoch_samples:
        raise FieldError(("body", "training", "epochs"),
                         f"{epochs} epochs × {samples} training samples = {epochs * samples} "
                         f"passes the project's limit of {limits.epoch_samples} "
                         "(epoch_samples)")


def check_model_size(session: Session, settings: Settings, project_id: uuid.UUID,
                     request: ExperimentCreate, summary: dict[str, Any]) -> None:
    """The model's parameters against ``model_parameters`` (builds it on the meta
    device: a model that cannot be built is a ``FieldError`` too)."""
    limits = effective(settings, _project(session, project_id))
    parameters = model_parameters(request, summary)
    if parameters > limits.model_parameters:
        kind = request.model.kind if request.task != "retrieval" else "multimodal"
        field = _SIZE_FIELD.get(kind, "dim")
        raise FieldError(("body", "model", field),
                         f"the model has {parameters:,} parameters; the project's limit is "
                         f"{limits.model_parameters:,} (model_parameters): make it smaller "
                         "(model.width, model.depth, model.widen, model.name, model.dim, "
                         "model.text_dim, model.layers)")


def check_queue(session: Session, settings: Settings, project_id: uuid.UUID,
                new_runs: int = 1) -> None:
    """``queued_runs`` (429). Locks the project's row until the caller commits, so
    concurrent submissions are counted one by one. (``running_runs`` caps how
    many run at once at the claim, ``app.services.runs.claim``: a submission past
    it waits in the queue, within ``queued_runs``.)"""
    limits = effective(settings, _project(session, project_id, lock=True))
    _, queued = live_runs(session, project_id)
    if queued + new_runs > limits.queued_runs:
        raise LimitExceeded(f"the project has {queued} runs queued and its limit is "
                            f"{limits.queued_runs} (queued_runs); submit again when they "
                            "have started", settings.limit_retry_after_s)


def live_runs(session: Session, project_id: uuid.UUID) -> tuple[int, int]:
    """(running, queued) runs of the project."""
    counts = dict(session.execute(
        select(Run.status, func.count()).join(Experiment, Run.experiment_id == Experiment.id)
        .where(Experiment.project_id == project_id, Run.status.in_(LIVE))
        .group_by(Run.status)).all())
    return int(counts.get(RunStatus.RUNNING, 0)), int(counts.get(RunStatus.QUEUED, 0))


def _categorical(summary: dict[str, Any], kinds: Mapping[str, str],
                 shapes: Mapping[str, tuple[int, ...]]) -> dict[str, dict[int, int]]:
    """{tabular modality: {column: codes}}, as ``app.ml.training.batches.categorical_columns``
    reads it from a prepared dataset (the summary keeps the same provenance)."""
    meta = (summary.get("provenance") or {}).get("tabular")
    out: dict[str, dict[int, int]] = {}
    if not isinstance(meta, Mapping):
        return out
    for name, info in meta.items():
        if kinds.get(name) != "tabular" or not isinstance(info, Mapping):
            continue
        numeric = len(info.get("columns") or [])
        categories = list((info.get("categorical") or {}).values())
        if categories and numeric + len(categories) == shapes[name][0]:
            out[name] = {numeric + j: len(values) + 1 for j, values in enumerate(categories)}
    return out


# the field a model past model_parameters is pointed at, by kind (multimodal: dim)
_SIZE_FIELD = {"cnn": "width", "preact_resnet18": "width", "wide_resnet": "widen",
               "torchvision": "name", "timm": "name"}


def model_parameters(request: ExperimentCreate, summary: dict[str, Any]) -> int:
    """Parameters of the model the run will build, counted on the meta device (no
    memory, no initialisation). A text modality without a stored vocabulary is
    counted with the smallest embedding table, so the count is a lower bound there."""
    return sum(p.numel() for p in meta_model(request, summary).parameters())


def meta_model(request: ExperimentCreate, summary: dict[str, Any]) -> torch.nn.Module:
    """The model the run will build, on the meta device: its state's names and
    shapes without memory or initialisation (for the parameter count and for
    checking a weights file). ``FieldError`` where the worker could not build it."""
    spec = request.model.to_ml()
    modalities = summary["modalities"]
    kinds = {m["name"]: m["kind"] for m in modalities}
    shapes = {m["name"]: tuple(m["shape"]) for m in modalities}
    vocab = {m["name"]: max(int(m.get("vocab_size") or 0), 2)
             for m in modalities if m["kind"] == "text"}
    categorical = _categorical(summary, kinds, shapes)
    # multitask: the last layer has a block of outputs per task (app.ml.multitask)
    outputs = (sum(len(t["classes"]) for t in summary.get("tasks", []))
               if request.task == "multitask" else 0) or len(summary["classes"])
    try:
        with torch.device("meta"):
            if request.task == "retrieval" and request.retrieval is not None:
                model: torch.nn.Module = build_dual_encoder(
                    spec, request.retrieval.query, request.retrieval.target, shapes, kinds,
                    vocab, categorical)
            elif spec.kind not in MULTIMODAL_KINDS:  # an image classifier
                images = {m: shapes[m] for m, k in kinds.items() if k == "image"}
                model = build_model(spec, images, outputs, kinds=kinds)
            else:
                model = build_model(spec, shapes, outputs, kinds=kinds,
                                    vocab_sizes=vocab, categorical=categorical,
                                    multilabel=bool(summary.get("multilabel")))
    except ValueError as exc:  # the worker would fail the same way
        loc = ("body", "model", exc.field) if isinstance(exc, ModelSpecError) \
            else ("body", "model")
        raise FieldError(loc, f"cannot build this model for the dataset: {exc}") from exc
    return model
