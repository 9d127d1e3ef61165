"""Run state changes: cancel, claim, the worker's progress writes, and outcomes.

Every status change here goes through ``app.runs.lifecycle.transition``; the
writes that do not change the status (progress, metrics, the init report) are
guarded by the attempt, so a worker whose run was given to another attempt (or
deleted) writes nothing and is told to stop.
"""

import math
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Update, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.base import Base, utcnow
from app.db.models import Dataset, Experiment, MetricPoint, Project, Run
from app.ml.data.errors import plain
from app.ml.training import Progress
from app.runs import spec as run_spec
from app.runs.lifecycle import Action, RunStatus, transition
from app.services.errors import ConflictError
from app.services.runs import get

# --- the API's side -----------------------------------------------------------


def request_cancel(session: Session, run_id: uuid.UUID) -> None:
    """The one cancel: a queued run is cancelled at once; a running one is flagged
    and its worker stops at its next step and reports ``Cancelled`` (or, if the
    worker died, the reaper cancels it). The caller commits."""
    if not transition(session, run_id, Action.CANCEL, cancel_requested=True):
        session.execute(update(Run).where(Run.id == run_id,
                                          Run.status == RunStatus.RUNNING.value)
                        .values(cancel_requested=True))


def cancel(session: Session, project_id: uuid.UUID, run_id: uuid.UUID) -> Run:
    """Cancel the project's run (``request_cancel``); cancelling a cancelled run is
    a no-op, a succeeded or failed one a ConflictError."""
    run = get(session, project_id, run_id)
    request_cancel(session, run_id)
    session.commit()
    session.refresh(run)
    if run.status in (RunStatus.SUCCEEDED, RunStatus.FAILED):
        raise ConflictError(f"run {run_id} already {run.status}; nothing to cancel")
    return run


# --- the worker's side -------------------------------------------------------

class AtCapacity(RuntimeError):
    """The run's project already runs as many runs as its ``running_runs`` limit:
    the run stays queued and the reconciler publishes it again later."""


@dataclass(frozen=True)
class Claimed:
    """A run this worker now owns, with what it trains."""

    run_id: uuid.UUID
    attempt: int
    plan: run_spec.RunPlan
    dataset: Dataset
    project_id: uuid.UUID
    previous_checkpoint: str | None


@dataclass(frozen=True)
class Rejected:
    """A queued run whose stored spec does not parse: it failed at the claim."""

    run_id: uuid.UUID
    error: str


def _check_capacity(session: Session, run_id: uuid.UUID,
                    running_limit: Callable[[Project], int]) -> bool:
    """False when the run is gone; AtCapacity while its project runs its limit (the
    project's row stays locked until the claim commits: two workers cannot both
    take the last slot)."""
    project_id = session.scalar(select(Experiment.project_id)
                                .join(Run, Run.experiment_id == Experiment.id)
                                .where(Run.id == run_id))
    if project_id is None:
        return False
    project = session.get(Project, project_id, with_for_update={"key_share": True})
    assert project is not None
    limit = running_limit(project)
    running = session.scalar(
        select(func.count()).select_from(Run)
        .join(Experiment, Run.experiment_id == Experiment.id)
        .where(Experiment.project_id == project_id,
               Run.status == RunStatus.RUNNING.value)) or 0
    if running >= limit:
        session.rollback()
        raise AtCapacity(f"project {project_id} runs {running} runs (running_runs {limit})")
    return True


def claim(session: Session, run_id: uuid.UUID,
          running_limit: Callable[[Project], int] | None = None,
          refuse: Callable[[run_spec.RunPlan], str | None] | None = None
          ) -> Claimed | Rejected | None:
    """Move a queued run to running for this worker, its spec parsed first; None if
    someone else has it, it was cancelled, or it no longer exists. A spec that
    does not parse fails the run here (``Rejected``), before anything trains, and
    so does a plan ``refuse`` gives a reason for (more processes than the worker
    offers). With ``running_limit`` (the project's ``running_runs``), raises
    ``AtCapacity`` while the project has that many running."""
    if running_limit is not None and not _check_capacity(session, run_id, running_limit):
        return None
    run = session.get(Run, run_id)
    if run is None or run.status != RunStatus.QUEUED or run.cancel_requested:
        session.rollback()
        return None
    experiment = run.experiment
    try:
        plan = run_spec.parse(experiment.name, experiment.dataset_id, experiment.task,
                              experiment.spec)
    except run_spec.SpecError as exc:
        return _reject(session, run_id, str(exc))
    problem = refuse(plan) if refuse is not None else None
    if problem is not None:
        return _reject(session, run_id, problem)
    now = utcnow()
    claimed = transition(session, run_id, Action.CLAIM, guard=[Run.cancel_requested.is_(False)],
                         started_at=now, heartbeat_at=now, worker_host=socket.gethostname(),
                         error=None)
    session.commit()
    if not claimed:
        return None
    session.refresh(run)
    return Claimed(run_id, run.attempt, plan, experiment.dataset, experiment.project_id,
                   run.checkpoint_key)


def _reject(session: Session, run_id: uuid.UUID, error: str) -> Rejected | None:
    rejected = transition(session, run_id, Action.REJECT, error=plain(error))
    session.commit()
    return Rejected(run_id, error) if rejected else None


def _mine(run_id: uuid.UUID, attempt: int | None) -> Update:
    """An UPDATE of ``run_id`` that only matches while this attempt still owns it
    (running, same attempt). It never writes the status."""
    query = update(Run).where(Run.id == run_id)
    if attempt is not None:
        query = query.where(Run.attempt == attempt, Run.status == RunStatus.RUNNING.value)
    return query


def record_start(session: Session, run_id: uuid.UUID, device: str, total_steps: int,
                 attempt: int | None = None) -> None:
    session.execute(_mine(run_id, attempt)
                    .values(device=device, total_steps=total_steps, heartbeat_at=utcnow()))
    session.commit()


Control = Literal["go", "cancel", "lost"]


def record_progress(session: Session, run_id: uuid.UUID, progress: Progress | None,
                    checkpoint_key: str | None = None, attempt: int | None = None,
                    checkpoint_epoch: int | None = None) -> Control:
    """Write progress and a heartbeat; say whether the worker carries on (``go``),
    stops because a cancel was requested (read back by the same statement), or
    stops because the run is no longer this attempt's (``lost``: requeued and
    claimed elsewhere, or deleted)."""
    values: dict[str, object] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values.update(epoch=progress.epoch, step=progress.step,
                      total_steps=progress.total_steps,
                      samples_per_s=progress.samples_per_s, eta_s=progress.eta_s)
    if checkpoint_key is not None:
        values.update(checkpoint_key=checkpoint_key, checkpoint_epoch=checkpoint_epoch)
    row = session.execute(_mine(run_id, attempt).values(**values)
                          .returning(Run.cancel_requested)).first()
    session.commit()
    if row is None:
        return "lost"
    return "cancel" if row[0] else "go"


def insert_ignoring_duplicates(session: Session, table: type[Base],
                               rows: list[dict[str, object]]) -> None:
    """Insert ``rows``, skipping those whose key is stored: a write retried after a
    lost reply stores nothing twice."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(table).values(rows).on_conflict_do_nothing())


def record_init(session: Session, run_id: uuid.UUID, init: dict[str, Any],
                attempt: int | None = None) -> bool:
    """Store what the run's starting weights loaded (``app.services.initial_weights``
    ``report``); False, writing nothing, once the run is no longer this attempt's."""
    result = session.execute(_mine(run_id, attempt).values(init=init))
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def record_metrics(session: Session, run_id: uuid.UUID,
                   points: Iterable[tuple[int, int, dict[str, float]]],
                   attempt: int | None = None, commit: bool = True) -> None:
    """Append (epoch, step, {key: value}) points; a point already stored for
    (run, key, step) is kept, so a replayed flush, or an epoch a resumed attempt
    trains again, never duplicates history. With ``attempt``, nothing is written
    once the run is no longer this attempt's."""
    # a NaN or infinite figure is left out: JSON (the latest figures, every reply)
    # cannot hold it, and its absence reads as "no value"
    rows = [{"run_id": run_id, "key": k, "step": step, "epoch": epoch, "value": float(v),
             "recorded_at": utcnow()}
            for epoch, step, values in points for k, v in values.items()
            if math.isfinite(v)]
    if not rows:
        return
    run = session.get(Run, run_id, with_for_update=attempt is not None, populate_existing=True)
    if run is None or (attempt is not None
                       and (run.attempt, run.status) != (attempt, RunStatus.RUNNING)):
        session.rollback()
        return
    insert_ignoring_duplicates(session, MetricPoint, rows)
    latest = dict(run.metrics or {})
    for row in rows:
        latest[str(row["key"])] = float(row["value"])  # type: ignore[arg-type]
    run.metrics = latest
    if commit:
        session.commit()


# --- outcomes: what the worker reports, and the transition each one makes --------

@dataclass(frozen=True)
class Succeeded:
    """Training completed; ``metrics`` are the final ones (test figures, the
    temperature, the training time), recorded at (``epoch``, ``step``) with the
    status, in one transaction."""

    metrics: dict[str, float]
    epoch: int
    step: int


@dataclass(frozen=True)
class Failed:
    error: str


@dataclass(frozen=True)
class Cancelled:
    """The loop stopped because the run's cancel was requested."""


@dataclass(frozen=True)
class Interrupted:
    """The loop stopped for another reason than the run's own (its worker shuts
    down): the run goes back to the queue to resume, while attempts are left."""

    reason: str


Outcome = Succeeded | Failed | Cancelled | Interrupted
# what report() did: the status it wrote, or why it wrote none
Reported = Literal["succeeded", "failed", "cancelled", "requeued", "not_owned"]


def report(session: Session, run_id: uuid.UUID, attempt: int, outcome: Outcome,
           max_attempts: int) -> Reported:
    """Record the outcome of this attempt, and commit. ``not_owned`` when the run
    is no longer this attempt's (deleted, or requeued and claimed elsewhere). A
    ``requeued`` run must then be published by the caller."""
    now = utcnow()
    mine: dict[str, Any] = {"attempt": attempt, "heartbeat_at": now}
    done: Reported
    if isinstance(outcome, Succeeded):
        if outcome.metrics:
            record_metrics(session, run_id, [(outcome.epoch, outcome.step, outcome.metrics)],
                           attempt=attempt, commit=False)
        ok, done = transition(session, run_id, Action.SUCCEED, eta_s=0.0, error=None,
                              **mine), "succeeded"
    elif isinstance(outcome, Failed):
        ok, done = transition(session, run_id, Action.FAIL, eta_s=None,
                              error=plain(outcome.error), **mine), "failed"
    elif isinstance(outcome, Cancelled):
        ok, done = transition(session, run_id, Action.STOP, eta_s=None, **mine), "cancelled"
    else:
        # a flagged run is cancelled, not requeued; the last attempt fails
        flagged = session.scalar(select(Run.cancel_requested).where(Run.id == run_id))
        if flagged:
            ok, done = transition(session, run_id, Action.STOP, eta_s=None, **mine), "cancelled"
        elif attempt >= max_attempts:
            ok, done = transition(session, run_id, Action.FAIL, eta_s=None, **mine,
                                  error=plain(f"interrupted ({outcome.reason}) on attempt "
                                              f"{attempt} of {max_attempts}")), "failed"
        else:
            ok, done = transition(session, run_id, Action.REQUEUE, eta_s=None,
                                  worker_host=None, **mine,
                                  error=plain(f"interrupted ({outcome.reason}) on attempt "
                                              f"{attempt}; requeued")), "requeued"
    session.commit()
    return done if ok else "not_owned"


def get_row(session: Session, run_id: uuid.UUID) -> Run | None:
    """The run, whatever its project (the worker's view); None once deleted."""
    return session.get(Run, run_id)
