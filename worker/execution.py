"""Execute one run: claim it, load its dataset, train, report the outcome.

The worker decides nothing about the run's status: ``app.runs.attempt`` claims
the run (its spec parsed before the claim commits) and records the outcome
this attempt reports (``Succeeded``, ``Failed``, ``Cancelled``,
``Interrupted``); the service picks the transition.
"""

import json
import logging
import socket
import traceback
import uuid

import torch

from app.db.retry import is_outage
from app.ml.data import PreparedDataset
from app.ml.resume import ResumePoint
from app.ml.resume import from_bytes as resume_from_bytes
from app.ml.retrieval import train_retrieval
from app.ml.training import TrainResult, train
from app.ml.training.fast import keep_compile_cache
from app.observability.logs import RunLogCapture, run_context
from app.runs import attempt as run_attempt
from app.runs.service import Cancelled, Failed, Interrupted, Outcome, Succeeded
from app.runs.spec import RunPlan
from app.schemas.experiments import ModelSpecIn
from app.services import datasets as dataset_service
from app.services import initial_weights
from app.services.errors import FieldError, NotFoundError
from app.settings import get_settings
from app.storage import (
    ArtifactStore,
    evaluation_key,
    get_store,
    resume_key_beside,
    run_prefix,
)
from worker import ranks
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


def _train(data: PreparedDataset, plan: RunPlan, reporter: RunReporter,
           resume: ResumePoint | None,
           init_weights: dict[str, torch.Tensor] | None = None,
           job: ranks.Job | None = None) -> TrainResult:
    if plan.training.world_size > 1 and job is not None:
        return ranks.train_ranks(data, plan, reporter, resume, init_weights, job)
    if plan.task == "retrieval":
        assert plan.retrieval_query is not None and plan.retrieval_target is not None
        return train_retrieval(data, plan.model, plan.mixing, plan.training, reporter,
                               query=plan.retrieval_query, target=plan.retrieval_target,
                               m3mix_weight=plan.m3mix_weight, resume=resume,
                               init_weights=init_weights)
    return train(data, plan.model, plan.mixing, plan.training, reporter, task=plan.task,
                 resume=resume, init_weights=init_weights, freeze=plan.start.freeze,
                 task_weights=plan.task_weights)


def load_start(project_id: uuid.UUID, model: ModelSpecIn, store: ArtifactStore
               ) -> tuple[initial_weights.WeightsSource, dict[str, torch.Tensor]] | None:
    """The tensors ``model.weights`` / ``model.init_from_run`` name, resolved again
    as at submission (a file:// link may point elsewhere now, a run may be gone);
    None for random weights. A start that no longer loads fails the run with why."""
    try:
        source = run_attempt.locate_start(project_id, model, store)
        if source is None:
            return None
        return source, initial_weights.load_tensors(source, store)
    except FieldError as exc:
        raise ValueError(f"model.{exc.loc[-1]}: {exc.message}") from None
    except NotFoundError as exc:
        field = "init_from_run" if model.init_from_run is not None else "weights"
        raise ValueError(f"model.{field}: {exc}") from None


def describe(outcome: Outcome) -> str:
    """The outcome in a log line: its kind and, for a failure, why."""
    kind = type(outcome).__name__.lower()
    reason = getattr(outcome, "error", None) or getattr(outcome, "reason", None)
    return f"{kind}: {reason}" if reason else kind


def unstored(run_id: uuid.UUID, exc: Exception) -> Outcome:
    """The outcome of a run whose results could not be stored. Out of reach (the
    database past its retries, the artifact store): raised, so the reaper
    requeues the run and its next attempt resumes from its last checkpoint. Any
    other error (a value the database refuses, a bug) would fail every attempt
    the same way, so the run fails now, saying why, instead of waiting for the
    reaper to give up on it."""
    if is_outage(exc) or isinstance(exc, OSError):
        raise exc
    log.error("run %s: its results could not be stored:\n%s", run_id, traceback.format_exc())
    return Failed(f"storing the run's results failed: {type(exc).__name__}: {exc}")


def _stopped(reporter: RunReporter, limit: float | None) -> Outcome:
    """The outcome of a loop that stopped early, by why the reporter stopped it."""
    if reporter.stop_reason == "time_limit":
        return Failed(f"time limit of {limit} s (training.time_limit_s) exceeded")
    if reporter.stop_reason == "cancel":
        return Cancelled()
    return Interrupted("the run is no longer this attempt's")


def execute_run(run_id: uuid.UUID) -> str:
    """Train ``run_id`` if this worker can claim it; returns what happened.

    The claim and the outcome are retried through a short database outage; a
    worker that dies instead leaves the run to the reconciler's reaper, which
    requeues it to resume from its last checkpoint.
    """
    try:
        claimed = run_attempt.claim(run_id, refuse=ranks.refusal)
    except run_attempt.AtCapacity as full:
        # stays queued; the reconciler publishes it again once the message is gone
        log.info("run %s deferred: %s", run_id, full)
        return "deferred"
    if claimed is None:
        log.info("run %s not claimable (already taken, cancelled or gone)", run_id)
        return "skipped"
    if isinstance(claimed, run_attempt.Rejected):
        log.error("run %s failed at its claim: %s", run_id, claimed.error)
        return "failed"
    attempt = claimed.attempt
    # every line from here names the run, its attempt and project, and the run keeps
    # its own copy of them (GET /v1/runs/{id}/logs)
    with (run_context(run_id, attempt, claimed.project_id),
          RunLogCapture(run_id, attempt) as capture):
        return _execute_claimed(run_id, claimed, capture)


def _execute_claimed(run_id: uuid.UUID, claimed: run_attempt.Claimed,
                     capture: RunLogCapture) -> str:
    settings = get_settings()
    attempt, plan = claimed.attempt, claimed.plan
    log.info("run %s attempt %d started on %s: %s, %s, %d epochs", run_id, attempt,
             socket.gethostname(), plan.task, plan.mixing.method, plan.training.epochs)
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    # training.compile: what this worker compiled once, later runs load
    keep_compile_cache(settings.data_dir.resolve() / "torch-compile")
    store = get_store()
    reporter = RunReporter(run_id, store, plan.training.epochs,
                           period_s=settings.control_poll_s, attempt=attempt,
                           time_limit_s=plan.time_limit_s, log_capture=capture)
    reporter.start()  # heartbeat while the dataset loads
    source = None
    data: PreparedDataset | None = None
    try:
        # retrieval and data-parallel runs train on tensor-resident data only
        data = dataset_service.open_for_training(
            store, claimed.dataset, settings,
            stream=plan.task != "retrieval" and plan.training.world_size == 1)
        resume = (load_resume_point(store, claimed.previous_checkpoint) if attempt > 1
                  else None)
        if resume is not None:
            log.info("run %s attempt %d resumes after epoch %d", run_id, attempt, resume.epoch)
        # loaded on every attempt: one resumed from a point overwrites them, one that
        # starts over (no point yet) needs them, and both report what the start held
        source, tensors = load_start(claimed.project_id, plan.start, store) or (None, None)
        job = ranks.Job(run_id, attempt, claimed.project_id, str(claimed.dataset.artifact_key),
                        resume_key_beside(claimed.previous_checkpoint)
                        if resume is not None and claimed.previous_checkpoint else None)
        result = _train(data, plan, reporter, resume, tensors, job)
        del tensors  # CPU copies: the model holds what loaded
    except ranks.RankFailed as exc:
        # a rank that died (a lost process) is an interruption: the next attempt resumes
        log.error("run %s: %s%s", run_id, exc, f"\n{exc.detail}" if exc.detail else "")
        outcome: Outcome = Interrupted(str(exc)) if exc.died else Failed(str(exc))
        result = None
    except Exception as exc:
        log.error("run %s failed:\n%s", run_id, traceback.format_exc())
        outcome = Failed(f"{type(exc).__name__}: {exc}")
        result = None
    finally:
        if data is not None:
            data.close()  # a streamed dataset's maps and cache folder

    try:
        if result is not None:
            if source is not None and result.init is not None:
                # written once training is over, from what train() actually loaded (a
                # failed run has no report; its error says why); guarded by the attempt
                run_attempt.record_init(run_id, attempt,
                                        initial_weights.report(source, result.init))
            if result.report is not None:
                store.put(evaluation_key(run_id), json.dumps(result.report).encode())
            outcome = (Succeeded(final_metrics(result.metrics), plan.training.epochs,
                                 result.steps)
                       if result.status == "completed"
                       else _stopped(reporter, plan.time_limit_s))
        # what is still buffered (metrics, the last checkpoint) before the outcome
        run_attempt.retrying(reporter.close, f"reporting run {run_id}")
    except Exception as exc:
        outcome = unstored(run_id, exc)
    log.info("run %s attempt %d reports: %s", run_id, attempt, describe(outcome))
    # the log before the outcome: a follower that sees the run ended has every line
    try:
        run_attempt.retrying(reporter.close_log, f"storing run {run_id}'s log")
    except Exception:  # the outcome matters more than the log's last lines
        log.exception("storing the last log lines of run %s failed", run_id)
    done = run_attempt.report(run_id, attempt, outcome)
    if done != "not_owned":
        return done
    if not run_attempt.exists(run_id):
        # its experiment was deleted mid-run: remove what this attempt wrote after
        store.delete_prefix(run_prefix(run_id))
        log.info("run %s was deleted while it ran; its files are removed", run_id)
        return "deleted"
    # the reaper gave the run to another attempt while this one was cut off
    log.warning("run %s attempt %d no longer owns the run; result dropped", run_id, attempt)
    return "superseded"
