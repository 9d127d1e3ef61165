"""Execute one run: claim it, load its dataset, train, record the outcome."""

import json
import logging
import traceback
import uuid
from dataclasses import dataclass

import torch

from app.db.models import Dataset, Experiment, Run
from app.db.retry import retry_db
from app.db.session import session_scope
from app.ml.data import PreparedDataset
from app.ml.resume import ResumePoint
from app.ml.resume import from_bytes as resume_from_bytes
from app.ml.retrieval import train_retrieval
from app.ml.training import TrainResult, train
from app.schemas.experiments import ExperimentCreate
from app.services import datasets as dataset_service
from app.services import initial_weights, limits
from app.services import runs as run_service
from app.services.errors import FieldError, NotFoundError
from app.settings import get_settings
from app.storage import (
    ArtifactStore,
    evaluation_key,
    get_store,
    resume_key_beside,
    run_prefix,
)
from worker.reporter import RunReporter

log = logging.getLogger(__name__)


_FINAL_KEYS = ("train_time_s", "temperature", "temperature_at_bound", "selected_epoch",
               "stopped_epoch")


def final_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """What only the end of a run knows: test metrics (robustness and calibrated
    ones included), the fitted temperature and the training time."""
    return {k: v for k, v in metrics.items() if k.startswith("test_") or k in _FINAL_KEYS}


def load_resume_point(store: ArtifactStore, checkpoint_key: str | None) -> ResumePoint | None:
    """The resume point an earlier attempt left beside its last recorded checkpoint."""
    if checkpoint_key is None:
        return None
    key = resume_key_beside(checkpoint_key)
    if not store.exists(key):
        log.warning("no resume point at %s; the run starts over", key)
        return None
    return resume_from_bytes(store.get(key))


def _train(data: PreparedDataset, spec: ExperimentCreate, reporter: RunReporter,
           resume: ResumePoint | None,
           init_weights: dict[str, torch.Tensor] | None = None) -> TrainResult:
    model, mixing, training = (spec.model.to_ml(), spec.augmentation.to_mix_spec(),
                               spec.training.to_ml())
    if spec.task == "retrieval":
        assert spec.retrieval is not None
        return train_retrieval(data, model, mixing, training, reporter,
                               query=spec.retrieval.query, target=spec.retrieval.target,
                               m3mix_weight=spec.retrieval.m3mix_weight, resume=resume,
                               init_weights=init_weights)
    return train(data, model, mixing, training, reporter, task=spec.task, resume=resume,
                 init_weights=init_weights)


def load_start(project_id: uuid.UUID, spec: ExperimentCreate, store: ArtifactStore
               ) -> tuple[initial_weights.WeightsSource, dict[str, torch.Tensor]] | None:
    """The tensors ``model.weights`` / ``model.init_from_run`` name, resolved again
    as at submission (a file:// link may point elsewhere now, a run may be gone);
    None for random weights. A start that no longer loads fails the run with why."""
    settings = get_settings()

    def locate() -> initial_weights.WeightsSource | None:
        with session_scope() as session:
            return initial_weights.locate(session, settings, store, project_id, spec.model)

    try:
        source = retry_db(locate, "locating the run's initial weights", settings.db_retry_s)
        if source is None:
            return None
        return source, initial_weights.load_tensors(source, store)
    except FieldError as exc:
        raise ValueError(f"model.{exc.loc[-1]}: {exc.message}") from None
    except NotFoundError as exc:
        field = "init_from_run" if spec.model.init_from_run is not None else "weights"
        raise ValueError(f"model.{field}: {exc}") from None


@dataclass
class _Claimed:
    spec: ExperimentCreate
    dataset: Dataset
    attempt: int
    previous_checkpoint: str | None
    project_id: uuid.UUID


def _claim(run_id: uuid.UUID) -> _Claimed | None:
    settings = get_settings()
    with session_scope() as session:
        run = run_service.claim(session, run_id,
                                lambda project: limits.effective(settings, project).running_runs)
        if run is None:
            return None
        experiment = session.get(Experiment, run.experiment_id)
        assert experiment is not None
        spec = ExperimentCreate.model_validate({
            "name": experiment.name, "dataset_id": experiment.dataset_id,
            "task": experiment.task, **experiment.spec})
        return _Claimed(spec, experiment.dataset, run.attempt, run.checkpoint_key,
                        experiment.project_id)


def _finish(run_id: uuid.UUID, status: str, attempt: int, error: str | None = None) -> bool:
    def write() -> bool:
        with session_scope() as session:
            return run_service.finish(session, run_id, status, error, attempt=attempt)

    return retry_db(write, f"finishing run {run_id}", get_settings().db_retry_s)


def _record_init(run_id: uuid.UUID, init: dict[str, object], attempt: int) -> bool:
    with session_scope() as session:
        return run_service.record_init(session, run_id, init, attempt=attempt)


def _exists(run_id: uuid.UUID) -> bool:
    with session_scope() as session:
        return session.get(Run, run_id) is not None


def execute_run(run_id: uuid.UUID) -> str:
    """Train ``run_id`` if this worker can claim it; returns what happened.

    The claim and the last writes are retried through a short database outage;
    a worker that dies instead leaves the run to the reconciler's reaper, which
    requeues it to resume from its last checkpoint.
    """
    settings = get_settings()
    try:
        claimed = retry_db(lambda: _claim(run_id), f"claiming run {run_id}",
                           settings.db_retry_s)
    except run_service.AtCapacity as full:
        # stays queued; the reconciler publishes it again once the message is gone
        log.info("run %s deferred: %s", run_id, full)
        return "deferred"
    if claimed is None:
        log.info("run %s not claimable (already taken, cancelled or gone)", run_id)
        return "skipped"
    attempt = claimed.attempt

    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    store = get_store()
    limit = claimed.spec.training.time_limit_s
    reporter = RunReporter(run_id, store, claimed.spec.training.epochs,
                           period_s=settings.control_poll_s, attempt=attempt,
                           time_limit_s=limit)
    reporter.start()  # heartbeat while the dataset loads
    try:
        data = dataset_service.load_prepared(store, claimed.dataset)
        resume = (load_resume_point(store, claimed.previous_checkpoint) if attempt > 1
                  else None)
        if resume is not None:
            log.info("run %s attempt %d resumes after epoch %d", run_id, attempt, resume.epoch)
        # loaded on every attempt: one resumed from a point overwrites them, one that
        # starts over (no point yet) needs them, and both report what the start held
        source, tensors = load_start(claimed.project_id, claimed.spec, store) or (None, None)
        result = _train(data, claimed.spec, reporter, resume, tensors)
        del tensors  # CPU copies: the model holds what loaded
    except Exception as exc:
        log.error("run %s failed:\n%s", run_id, traceback.format_exc())
        retry_db(reporter.close, f"reporting run {run_id}", settings.db_retry_s)
        _finish(run_id, "failed", attempt, f"{type(exc).__name__}: {exc}")
        return "failed"

    final = final_metrics(result.metrics)
    if source is not None and result.init is not None:
        # written once training is over, from what train() actually loaded (a failed
        # run has no report; its error says why); guarded by the attempt
        init = initial_weights.report(source, result.init)
        retry_db(lambda: _record_init(run_id, init, attempt), f"reporting run {run_id}",
                 settings.db_retry_s)
    if result.report is not None:
        store.put(evaluation_key(run_id), json.dumps(result.report).encode())
    retry_db(lambda: reporter.close(final if result.status == "completed" else None,
                                    step=result.steps),
             f"reporting run {run_id}", settings.db_retry_s)
    status = "succeeded" if result.status == "completed" else "cancelled"
    error = None
    if result.status == "stopped" and reporter.timed_out:
        status, error = "failed", f"time limit of {limit} s (training.time_limit_s) exceeded"
    if not _finish(run_id, status, attempt, error):
        if not retry_db(lambda: _exists(run_id), f"reading run {run_id}", settings.db_retry_s):
            # its experiment was deleted mid-run: remove what this attempt wrote after
            store.delete_prefix(run_prefix(run_id))
            log.info("run %s was deleted while it ran; its files are removed", run_id)
            return "deleted"
        # the reaper gave the run to another attempt while this one was cut off
        log.warning("run %s attempt %d no longer owns the run; result dropped", run_id, attempt)
        return "superseded"
    return status
