"""The worker's calls on a run, each in a session of its own.

The worker imports no ``app.db``: it claims, writes progress and reports its
outcome through these, and never chooses a status. The claim and the outcome
are retried through a short database outage (``MIXLAB_DB_RETRY_S``); progress
writes are retried by the reporter's next period instead.
"""

import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from app.db.retry import retry_db
from app.db.session import get_engine, session_scope
from app.ml.training import Progress
from app.observability.logs import CapturedLine
from app.runs import logs as run_logs
from app.runs import service
from app.runs.queue import enqueue_run
from app.runs.spec import RunPlan
from app.schemas.experiments import ModelSpecIn
from app.services import initial_weights, limits
from app.settings import get_settings
from app.storage import ArtifactStore

log = logging.getLogger(__name__)

AtCapacity = service.AtCapacity
Claimed = service.Claimed
Rejected = service.Rejected
T = TypeVar("T")


def retrying(operation: Callable[[], T], what: str) -> T:
    """``operation`` retried through a database outage of up to MIXLAB_DB_RETRY_S."""
    return retry_db(operation, what, get_settings().db_retry_s)


def forget_inherited_connections() -> None:
    """In a freshly forked worker process: drop the parent's pooled connections
    (without closing them: they are the parent's) so this one opens its own."""
    get_engine().dispose(close=False)


def claim(run_id: uuid.UUID, refuse: Callable[[RunPlan], str | None] | None = None
          ) -> service.Claimed | service.Rejected | None:
    """``app.runs.service.claim`` under the project's ``running_runs`` limit; ``refuse``
    says why this worker cannot train a plan (None: it can)."""
    settings = get_settings()

    def take() -> service.Claimed | service.Rejected | None:
        with session_scope() as session:
            return service.claim(session, run_id,
                                 lambda project: limits.effective(settings, project).running_runs,
                                 refuse)

    return retry_db(take, f"claiming run {run_id}", settings.db_retry_s)


def locate_start(project_id: uuid.UUID, model: ModelSpecIn, store: ArtifactStore
                 ) -> initial_weights.WeightsSource | None:
    """Where ``model.weights`` / ``model.init_from_run`` point now (FieldError or
    NotFoundError when they no longer resolve); None for random weights."""
    settings = get_settings()

    def locate() -> initial_weights.WeightsSource | None:
        with session_scope() as session:
            return initial_weights.locate(session, settings, store, project_id, model)

    return retry_db(locate, "locating the run's initial weights", settings.db_retry_s)


def record_start(run_id: uuid.UUID, attempt: int | None, device: str,
                 total_steps: int) -> None:
    with session_scope() as session:
        service.record_start(session, run_id, device, total_steps, attempt=attempt)


def record_flush(run_id: uuid.UUID, attempt: int | None,
                 metrics: list[tuple[int, int, dict[str, float]]], progress: Progress | None,
                 checkpoint_key: str | None, checkpoint_epoch: int | None
                 ) -> service.Control:
    """Metrics, progress and the checkpoint's key in one transaction; whether to go on."""
    with session_scope() as session:
        if metrics:
            service.record_metrics(session, run_id, metrics, attempt=attempt, commit=False)
        return service.record_progress(session, run_id, progress, checkpoint_key,
                                       attempt=attempt, checkpoint_epoch=checkpoint_epoch)


def record_logs(run_id: uuid.UUID, attempt: int, lines: list[CapturedLine]) -> bool:
    """Store lines the attempt logged; False once the run is gone."""
    with session_scope() as session:
        return run_logs.store(session, run_id, attempt, lines)


def record_init(run_id: uuid.UUID, attempt: int, init: dict[str, Any]) -> bool:
    def write() -> bool:
        with session_scope() as session:
            return service.record_init(session, run_id, init, attempt=attempt)

    return retry_db(write, f"reporting run {run_id}", get_settings().db_retry_s)


def exists(run_id: uuid.UUID) -> bool:
    def read() -> bool:
        with session_scope() as session:
            return service.get_row(session, run_id) is not None

    return retry_db(read, f"reading run {run_id}", get_settings().db_retry_s)


def report(run_id: uuid.UUID, attempt: int, outcome: service.Outcome) -> service.Reported:
    """Record this attempt's outcome (the service picks the status); a requeued run
    is published after the commit."""
    settings = get_settings()

    def write() -> service.Reported:
        with session_scope() as session:
            return service.report(session, run_id, attempt, outcome,
                                  settings.run_max_attempts)

    done = retry_db(write, f"finishing run {run_id}", settings.db_retry_s)
    if done == "requeued":
        try:
            enqueue_run(str(run_id))
        except Exception:  # queued in Postgres: the reconciler publishes it
            log.exception("publishing requeued run %s failed; the reconciler will", run_id)
    return done
