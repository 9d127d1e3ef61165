"""Create experiments (with their runs) and read them back."""

import logging
import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from app.db.base import utcnow
from app.db.models import Dataset, Experiment, Run
from app.ml.models.image_models import image_mixing_layers
from app.ml.models.multimodal import MIXING_LAYERS as MULTIMODAL_MIXING_LAYERS
from app.ml.models.spec import ModelSpecError
from app.ml.retrieval import METRIC_NAMES as RETRIEVAL_METRICS
from app.ml.tasks import TASKS
from app.ml.training.checks import recipe_problems
from app.queue import enqueue_run
from app.schemas.experiments import ExperimentCreate
from app.services import augmentation, datasets, initial_weights, limits, task_checks
from app.services.errors import FieldError, NotFoundError
from app.settings import get_settings
from app.storage import ArtifactStore, run_prefix

log = logging.getLogger(__name__)


def _check_task(request: ExperimentCreate, summary: dict[str, Any]) -> None:
    task = TASKS.get(request.task)
    if task is None:  # a task with its own loop (retrieval) checks the dataset itself
        return
    problem = task.mismatch(bool(summary.get("multilabel", False)))
    if problem is not None:
        raise FieldError(("body", "task"), problem)


def _check_recipe(request: ExperimentCreate, kinds: dict[str, str]) -> None:
    """The training recipe against what the model reads and the task reports."""
    if request.task == "retrieval":
        assert request.retrieval is not None
        names: tuple[str, ...] = RETRIEVAL_METRICS
        read = [kinds.get(request.retrieval.query, ""), kinds.get(request.retrieval.target, "")]
    else:
        names = TASKS[request.task].metric_names
        read = list(kinds.values()) if request.model.kind == "multimodal" else ["image"]
    for field, problem in recipe_problems(request.training.to_ml(), names, read):
        raise FieldError(("body", "training", *field.split(".")), problem)


def _validate_against_dataset(request: ExperimentCreate, dataset: Dataset) -> None:
    task_checks.check_task_fields(request)
    _check_task(request, dataset.summary)
    _check_recipe(request, augmentation.modality_kinds(dataset.summary))
    train_size = dataset.summary["split_sizes"]["train"]
    if request.training.batch_size > train_size:
        raise FieldError(("body", "training", "batch_size"),
                         f"batch_size {request.training.batch_size} is larger than the "
                         f"dataset's training split ({train_size} samples)")
    if request.task == "retrieval":  # two towers, mixing at the embedding level
        task_checks.check_retrieval(request, dataset.summary)
        return
    kinds = augmentation.modality_kinds(dataset.summary)
    model = request.model
    if model.kind != "multimodal":  # an image classifier
        if "image" not in kinds.values():
            raise FieldError(("body", "model", "kind"),
                             f"the {model.kind} model needs an image modality")
        image = next(m for m in dataset.summary["modalities"] if m["kind"] == "image")
        if image.get("missing"):
            raise FieldError(("body", "model", "kind"),
                             f"the {model.kind} model needs every sample's image, but "
                             f"{image['missing']} samples have none; use the multimodal "
                             "model, which handles missing modalities")
        try:
            mixing_layers = image_mixing_layers(model.to_ml(), tuple(image["shape"]))
        except ValueError as exc:  # an unknown name, a library the server lacks
            field = exc.field if isinstance(exc, ModelSpecError) else "kind"
            raise FieldError(("body", "model", field), str(exc)) from exc
    else:
        mixing_layers = MULTIMODAL_MIXING_LAYERS
    augmentation.check_against_dataset(request.augmentation, kinds, ("body", "augmentation"),
                                       augmentation.modality_shapes(dataset.summary))
    augmentation.check_manifold_layers(request.augmentation, mixing_layers,
                                       ("body", "augmentation"))


def create(session: Session, project_id: uuid.UUID, request: ExperimentCreate) -> Experiment:
    """Store the experiment and its run, commit, then publish the run.

    Publishing after the commit means a worker never receives a run id it
    cannot read; if publishing fails the run stays ``queued`` in Postgres.
    """
    dataset = session.get(Dataset, request.dataset_id)
    if dataset is None or dataset.project_id != project_id:  # another project's: the same
        raise FieldError(("body", "dataset_id"), f"dataset {request.dataset_id} does not exist")
    datasets.require_ready(dataset)
    _validate_against_dataset(request, dataset)
    # model.weights / model.init_from_run: file headers only, before the insert and
    # outside the project lock check_experiment takes
    initial_weights.check(session, get_settings(), project_id, request, dataset.summary)
    limits.check_experiment(session, get_settings(), project_id, request, dataset.summary)
    parts = {"model", "augmentation", "training"} | ({"retrieval"} if request.retrieval else set())
    spec = request.model_dump(mode="json", include=parts)
    experiment = Experiment(project_id=project_id, name=request.name, dataset_id=dataset.id,
                            task=request.task, spec=spec)
    experiment.runs.append(Run(status="queued"))
    session.add(experiment)
    session.commit()
    for run in experiment.runs:
        try:
            enqueue_run(str(run.id))
        except Exception:  # the row is committed; it stays queued and visible
            log.exception("publishing run %s failed; it stays queued", run.id)
    return experiment


def get(session: Session, project_id: uuid.UUID, experiment_id: uuid.UUID) -> Experiment:
    """The project's experiment; another project's is not found, like a missing one."""
    experiment = session.get(Experiment, experiment_id, options=[selectinload(Experiment.runs)])
    if experiment is None or experiment.project_id != project_id:
        raise NotFoundError("experiment", experiment_id)
    return experiment


def list_page(session: Session, project_id: uuid.UUID, limit: int,
              offset: int) -> tuple[list[Experiment], int]:
    mine = Experiment.project_id == project_id
    total = session.scalar(select(func.count()).select_from(Experiment).where(mine)) or 0
    rows = session.scalars(select(Experiment).where(mine)
                           .options(selectinload(Experiment.runs))
                           .order_by(Experiment.created_at.desc(), Experiment.id)
                           .limit(limit).offset(offset)).all()
    return list(rows), total


def delete(session: Session, project_id: uuid.UUID, store: ArtifactStore,
           experiment_id: uuid.UUID) -> None:
    """Remove an experiment with its runs, metric history and checkpoints. Live
    runs are cancelled first: a queued one is never claimed, and a running one's
    worker finds its run gone at its next progress write, stops, and removes
    whatever it wrote after this (``worker.execution``)."""
    experiment = get(session, project_id, experiment_id)
    session.execute(update(Run).where(Run.experiment_id == experiment_id,
                                      Run.status.in_(("queued", "running")))
                    .values(status="cancelled", cancel_requested=True, finished_at=utcnow()))
    run_ids = [r.id for r in experiment.runs]
    session.delete(experiment)
    session.commit()
    for run_id in run_ids:
        store.delete_prefix(run_prefix(run_id))
