"""Create experiments (with their runs) and read them back."""

import logging
import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from app.db.models import Dataset, Experiment
from app.ml.models.freeze import freeze_problem, part_names
from app.ml.models.image_models import image_mixing_layers
from app.ml.models.latent import latent_method_problem, recon_weight_problems
from app.ml.models.multimodal import MIXING_LAYERS as MULTIMODAL_MIXING_LAYERS
from app.ml.models.spec import LATENT_KINDS, MULTIMODAL_KINDS, ModelSpecError
from app.ml.multitask import NAME as MULTITASK
from app.ml.multitask import metric_names as multitask_metric_names
from app.ml.multitask import task_problem, weight_problems
from app.ml.retrieval import METRIC_NAMES as RETRIEVAL_METRICS
from app.ml.tasks import TASKS
from app.ml.training.autoencode import latent_metric_names
from app.ml.training.checks import recipe_problems
from app.ml.training.clock import StepPlan
from app.runs.lifecycle import LIVE, new_run
from app.runs.queue import enqueue_run
from app.runs.service import request_cancel
from app.schemas.experiments import ExperimentCreate
from app.services import augmentation, datasets, initial_weights, limits, task_checks
from app.services.errors import FieldError, FieldErrorCollector, NotFoundError
from app.settings import get_settings
from app.storage import ArtifactStore, run_prefix

log = logging.getLogger(__name__)


def dataset_tasks(summary: dict[str, Any]) -> list[str]:
    """The label columns (tasks) of a dataset; [] for a single-task one."""
    return [t["name"] for t in summary.get("tasks", [])]


def _check_task(request: ExperimentCreate, summary: dict[str, Any]) -> None:
    if request.task == MULTITASK:
        found = FieldErrorCollector()
        problem = task_problem(dataset_tasks(summary))
        if problem is not None:
            found.add(("body", "task"), problem)
        else:
            for field, reason in weight_problems(dataset_tasks(summary), request.task_weights):
                found.add(("body", *field.split(".", 1)), reason)
        found.raise_if_any()
        return
    task = TASKS.get(request.task)
    if task is None:  # a task with its own loop (retrieval) checks the dataset itself
        return
    problem = task.mismatch(bool(summary.get("multilabel", False)))
    if problem is not None:
        raise FieldError(("body", "task"), problem)


def _check_recipe(request: ExperimentCreate, kinds: dict[str, str], summary: dict[str, Any],
                  found: FieldErrorCollector) -> None:
    """The training recipe against what the model reads and the task reports."""
    if request.task == "retrieval":
        if request.retrieval is None:  # reported by check_task_fields
            return
        names: tuple[str, ...] = RETRIEVAL_METRICS
        read = [kinds.get(request.retrieval.query, ""), kinds.get(request.retrieval.target, "")]
    elif request.task == MULTITASK:
        names = multitask_metric_names(dataset_tasks(summary))
        read = list(kinds.values()) if request.model.kind in MULTIMODAL_KINDS else ["image"]
    else:
        names = TASKS[request.task].metric_names
        model = request.model
        if model.kind in LATENT_KINDS:
            names = latent_metric_names(list(kinds), model.kind == "multimodal_vae",
                                        TASKS[request.task], model.classifier_weight > 0)
        read = list(kinds.values()) if model.kind in MULTIMODAL_KINDS else ["image"]
    for field, problem in recipe_problems(request.training.to_ml(), names, read):
        found.add(("body", "training", *field.split(".")), problem)


def _check_world_size(request: ExperimentCreate, most: int, found: FieldErrorCollector) -> None:
    """training.world_size against the deployment's maximum and the task."""
    world_size = request.training.world_size
    if world_size > most:
        found.add(("body", "training", "world_size"),
                  f"{world_size} processes asked; this deployment allows at most {most} "
                  "(MIXLAB_MAX_WORLD_SIZE)")
    elif world_size > 1 and request.task == "retrieval":
        found.add(("body", "training", "world_size"),
                  "retrieval trains on one process (its in-batch negatives would shrink to "
                  "each process's share)")


def _check_image_model(request: ExperimentCreate, summary: dict[str, Any],
                       kinds: dict[str, str]) -> int:
    """An image classifier's model against the dataset; the layers it mixes at."""
    model = request.model
    if "image" not in kinds.values():
        raise FieldError(("body", "model", "kind"),
                         f"the {model.kind} model needs an image modality")
    image = next(m for m in summary["modalities"] if m["kind"] == "image")
    if image.get("missing"):
        raise FieldError(("body", "model", "kind"),
                         f"the {model.kind} model needs every sample's image, but "
                         f"{image['missing']} samples have none; use the multimodal "
                         "model, which handles missing modalities")
    try:
        return image_mixing_layers(model.to_ml(), tuple(image["shape"]))
    except ValueError as exc:  # an unknown name, a library the server lacks
        field = exc.field if isinstance(exc, ModelSpecError) else "kind"
        raise FieldError(("body", "model", field), str(exc)) from exc


def _check_freeze(request: ExperimentCreate, summary: dict[str, Any]) -> None:
    """``model.freeze`` against the parts the model will have on this dataset."""
    loc = ("body", "model", "freeze")
    if request.task == "retrieval":
        raise FieldError(loc, "freezing is not supported for task retrieval")
    modalities = [m["name"] for m in summary["modalities"]]
    problem = freeze_problem(request.model.freeze, part_names(request.model.kind, modalities))
    if problem:
        raise FieldError(loc, problem)


def _check_latent(request: ExperimentCreate, kinds: dict[str, str],
                  found: FieldErrorCollector) -> None:
    """A model with a shared latent and the mixing at its latent, against the task
    and the dataset's modalities (the rules live in app.ml.models.latent)."""
    model = request.model
    problem = latent_method_problem(request.augmentation.method, model.kind)
    if problem is not None:
        found.add(("body", "augmentation", "method"), problem)
    if model.kind not in LATENT_KINDS:
        return
    if request.task in ("retrieval", MULTITASK):
        found.add(("body", "model", "kind"), f"task {request.task} is not trained by a "
                                             f"{model.kind} model: it trains for "
                                             "classification or multilabel")
    for field, why in recon_weight_problems(model.recon_weights, list(kinds)):
        found.add(("body", "model", *field.split(".")), why)


def _validate_against_dataset(request: ExperimentCreate, dataset: Dataset,
                              found: FieldErrorCollector) -> None:
    """Every check of the request against its dataset that does not build the
    model; each failing one adds its field errors to ``found``, so a request
    hears about all of them at once."""
    summary = dataset.summary
    kinds = augmentation.modality_kinds(summary)
    with found.check():
        task_checks.check_task_fields(request)
    with found.check():
        _check_task(request, summary)
    _check_recipe(request, kinds, summary, found)
    _check_latent(request, kinds, found)
    train_size = summary["split_sizes"]["train"]
    if request.training.batch_size > train_size:
        found.add(("body", "training", "batch_size"),
                  f"batch_size {request.training.batch_size} is larger than the dataset's "
                  f"training split ({train_size} samples)")
    if request.model.freeze:
        with found.check():
            _check_freeze(request, summary)
    if request.task == "retrieval":  # two towers, mixing at the embedding level
        if request.retrieval is not None:
            with found.check():
                task_checks.check_retrieval(request, summary)
        return
    mixing_layers: int | None = MULTIMODAL_MIXING_LAYERS
    if request.model.kind not in MULTIMODAL_KINDS:  # an image classifier
        mixing_layers = None
        with found.check():
            mixing_layers = _check_image_model(request, summary, kinds)
    with found.check():
        augmentation.check_against_dataset(request.augmentation, kinds,
                                           ("body", "augmentation"),
                                           augmentation.modality_shapes(summary))
    if mixing_layers is not None:
        with found.check():
            augmentation.check_manifold_layers(request.augmentation, mixing_layers,
                                               ("body", "augmentation"))


def validate(session: Session, project_id: uuid.UUID, request: ExperimentCreate,
             dataset: Dataset) -> None:
    """Every field error of the request against its dataset, raised together
    (``FieldErrors``): the dataset checks, then the project's size limits and
    what the model's starting weights hold, which build the model and so run
    when the model and the task pass. Then the project's queue (429)."""
    validate_fields(session, project_id, request, dataset)
    # the queue last, and outside the field checks: it locks the project's row
    limits.check_queue(session, get_settings(), project_id)


def validate_fields(session: Session, project_id: uuid.UUID, request: ExperimentCreate,
                    dataset: Dataset) -> None:
    """``validate`` without the queue: what a sweep checks for each of its points
    before it counts them all against the queue at once (``app.services.sweeps``)."""
    found = FieldErrorCollector()
    _validate_against_dataset(request, dataset, found)
    settings = get_settings()
    _check_world_size(request, settings.max_world_size, found)
    with found.check():
        limits.check_epoch_samples(session, settings, project_id, request, dataset.summary)
    if not found.any_under("body", "model") and not found.any_under("body", "task") \
            and not found.any_under("body", "retrieval"):
        # model.weights / model.init_from_run: file headers only, before the insert
        with found.check():
            initial_weights.check(session, settings, project_id, request, dataset.summary)
        with found.check():
            limits.check_model_size(session, settings, project_id, request, dataset.summary)
    found.raise_if_any()


def create(session: Session, project_id: uuid.UUID, request: ExperimentCreate) -> Experiment:
    """Store the experiment and its run, commit, then publish the run.

    Publishing after the commit means a worker never receives a run id it
    cannot read; if publishing fails the run stays ``queued`` in Postgres.
    """
    dataset = session.get(Dataset, request.dataset_id)
    if dataset is None or dataset.project_id != project_id:  # another project's: the same
        raise FieldError(("body", "dataset_id"), f"dataset {request.dataset_id} does not exist")
    datasets.require_ready(dataset)
    validate(session, project_id, request, dataset)
    experiment = build(project_id, request, dataset)
    session.add(experiment)
    session.commit()
    publish([experiment])
    return experiment


def build(project_id: uuid.UUID, request: ExperimentCreate, dataset: Dataset) -> Experiment:
    """The experiment row of a validated request, with its queued run (not added)."""
    parts = ({"model", "augmentation", "training"} | ({"retrieval"} if request.retrieval else set())
             | ({"task_weights"} if request.task_weights else set()))
    spec = request.model_dump(mode="json", include=parts)
    experiment = Experiment(project_id=project_id, name=request.name, dataset_id=dataset.id,
                            task=request.task, spec=spec)
    # the plan the worker's loop reports at its start, known now: a queued run and
    # the first poll after its claim already say how many steps it takes
    plan = StepPlan.of(int(dataset.summary["split_sizes"]["train"]),
                       request.training.batch_size, request.training.epochs,
                       request.training.world_size)
    experiment.runs.append(new_run(total_steps=plan.total_steps))
    return experiment


def publish(experiments: list[Experiment]) -> None:
    """Enqueue the runs of committed experiments."""
    for experiment in experiments:
        for run in experiment.runs:
            try:
                enqueue_run(str(run.id))
            except Exception:  # the row is committed; it stays queued and visible
                log.exception("publishing run %s failed; it stays queued", run.id)


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
    runs are cancelled first, as a cancel does it: a queued one is never claimed,
    and a running one's worker finds its run gone at its next progress write,
    stops, and removes whatever it wrote after this (``worker.execution``)."""
    experiment = get(session, project_id, experiment_id)
    for run in experiment.runs:
        if run.status in LIVE:
            request_cancel(session, run.id)
    run_ids = [r.id for r in experiment.runs]
    session.delete(experiment)
    session.commit()
    for run_id in run_ids:
        store.delete_prefix(run_prefix(run_id))
