"""Run state: what the API reads and cancels, and what the worker writes.

Every transition is a guarded UPDATE (``WHERE status = ...``), so two actors
racing on one run (a duplicate delivery, a cancel during start-up) cannot both
win.
"""

import json
import socket
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Update, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import TERMINAL_STATUSES, Experiment, MetricPoint, Project, Run
from app.ml.data.errors import plain
from app.ml.tasks import TASKS
from app.ml.training import Progress
from app.services.errors import ConflictError, FieldError, NotFoundError
from app.storage import ArtifactStore, evaluation_key


def get(session: Session, project_id: uuid.UUID, run_id: uuid.UUID) -> Run:
    """The project's run (through its experiment); another project's is not
    found, exactly like a missing one."""
    run = session.get(Run, run_id)
    if run is None or run.experiment.project_id != project_id:
        raise NotFoundError("run", run_id)
    return run


def list_page(session: Session, project_id: uuid.UUID, limit: int, offset: int,
              status: str | None = None,
              experiment_id: uuid.UUID | None = None,
              sweep_id: uuid.UUID | None = None) -> tuple[list[Run], int]:
    query = (select(Run).join(Experiment, Run.experiment_id == Experiment.id)
             .where(Experiment.project_id == project_id))
    if status:
        query = query.where(Run.status == status)
    if experiment_id:
        query = query.where(Run.experiment_id == experiment_id)
    if sweep_id:
        query = query.where(Experiment.sweep_id == sweep_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Run.created_at.desc(), Run.id)
                           .limit(limit).offset(offset)).all()
    return list(rows), total


def cancel(session: Session, project_id: uuid.UUID, run_id: uuid.UUID) -> Run:
    """A queued run is cancelled at once; a running one is flagged and the
    worker stops it at its next step. Cancelling a cancelled run is a no-op."""
    run = get(session, project_id, run_id)
    now = utcnow()
    result = session.execute(
        update(Run).where(Run.id == run_id, Run.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        session.execute(update(Run).where(Run.id == run_id, Run.status == "running")
                        .values(cancel_requested=True))
    session.commit()
    session.refresh(run)
    if run.status in ("succeeded", "failed"):
        raise ConflictError(f"run {run_id} already {run.status}; nothing to cancel")
    return run


def metric_history(session: Session, project_id: uuid.UUID, run_id: uuid.UUID,
                   key: str | None = None, after_step: int | None = None,
                   max_points: int | None = None,
                   keys: Iterable[str] | None = None) -> dict[str, list[Any]]:
    """Points (``.step``, ``.epoch``, ``.value``) by key, by step: every key, ``key``
    or ``keys``; with ``after_step`` only later steps (incremental fetches); with
    ``max_points`` each key's curve down-sampled in SQL (``downsampled``)."""
    get(session, project_id, run_id)
    where = [MetricPoint.run_id == run_id]
    if key is not None:
        where.append(MetricPoint.key == key)
    if keys is not None:
        where.append(MetricPoint.key.in_(list(keys)))
    if after_step is not None:
        where.append(MetricPoint.step > after_step)
    query = downsampled(where, max_points) if max_points is not None else \
        select(MetricPoint.key, MetricPoint.step, MetricPoint.epoch, MetricPoint.value) \
        .where(*where).order_by(MetricPoint.key, MetricPoint.step)
    history: dict[str, list[Any]] = {}
    for point in session.execute(query):
        history.setdefault(point.key, []).append(point)
    return history


def downsampled(where: list[Any], max_points: int) -> Any:
    """At most ``max_points`` points per key, chosen in SQL: a key's steps are cut
    into ``(max_points - 1) // 2`` equal step ranges and each range keeps the rows
    holding its smallest and its largest value (extremes survive), plus the key's
    last point; a key with no more than ``max_points`` points keeps them all."""
    buckets = max(1, (max_points - 1) // 2)
    by_key = {"partition_by": MetricPoint.key}
    base = select(MetricPoint.key, MetricPoint.step, MetricPoint.epoch, MetricPoint.value,
                  func.count().over(**by_key).label("n"),
                  func.min(MetricPoint.step).over(**by_key).label("lo"),
                  func.max(MetricPoint.step).over(**by_key).label("hi")).where(*where).subquery()
    bucket = ((base.c.step - base.c.lo) * buckets) // (base.c.hi - base.c.lo + 1)
    ranked = select(
        base, func.row_number().over(partition_by=(base.c.key, bucket),
                                     order_by=(base.c.value.asc(), base.c.step)).label("low"),
        func.row_number().over(partition_by=(base.c.key, bucket),
                               order_by=(base.c.value.desc(), base.c.step)).label("high"),
    ).subquery()
    return (select(ranked.c.key, ranked.c.step, ranked.c.epoch, ranked.c.value)
            .where(or_(ranked.c.n <= max_points, ranked.c.low == 1, ranked.c.high == 1,
                       ranked.c.step == ranked.c.hi))
            .order_by(ranked.c.key, ranked.c.step))


def evaluation(session: Session, store: ArtifactStore, project_id: uuid.UUID,
               run_id: uuid.UUID) -> dict[str, Any]:
    """A succeeded classifier's test-split report. 422 for a task that has none
    (retrieval), 409 until the run has succeeded (or when it did not), 404 when a
    succeeded run has no report stored."""
    run = get(session, project_id, run_id)
    task = run.experiment.task
    if task not in TASKS:
        raise FieldError(("path", "run_id"),
                         f"evaluation is per-class scores of a classifier; task {task} has "
                         f"none: its recall@K figures (test_r1_q2t, …, test_mean_recall) "
                         f"are in the run's metrics (GET /v1/runs/{run.id})")
    if run.status != "succeeded":
        hint = (f"it is written when the run succeeds; poll GET /v1/runs/{run.id}"
                if run.status in ("queued", "running") else "only a succeeded run has one")
        raise ConflictError(f"run {run.id} is {run.status}: {hint}")
    key = evaluation_key(run.id)
    if not store.exists(key):
        raise NotFoundError("evaluation of run", run_id)
    return json.loads(store.get(key))  # type: ignore[no-any-return]


# --- the worker's side -------------------------------------------------------

class AtCapacity(RuntimeError):
    """The run's project already runs as many runs as its ``running_runs`` limit:
    the run stays queued and the reconciler publishes it again later."""


def claim(session: Session, run_id: uuid.UUID,
          running_limit: Callable[[Project], int] | None = None) -> Run | None:
    """Move a queued run to running for this worker; None if someone else has it,
    it was cancelled, or it no longer exists. With ``running_limit`` (the
    project's ``running_runs``, from its row), raises ``AtCapacity`` while the
    project has that many running; the project's row is locked meanwhile, so two workers cannot
    both take the last slot."""
    if running_limit is not None:
        project_id = session.scalar(select(Experiment.project_id)
                                    .join(Run, Run.experiment_id == Experiment.id)
                                    .where(Run.id == run_id))
        if project_id is None:
            return None
        project = session.get(Project, project_id, with_for_update={"key_share": True})
        assert project is not None
        limit = running_limit(project)
        running = session.scalar(
            select(func.count()).select_from(Run)
            .join(Experiment, Run.experiment_id == Experiment.id)
            .where(Experiment.project_id == project_id, Run.status == "running")) or 0
        if running >= limit:
            session.rollback()
            raise AtCapacity(f"project {project_id} runs {running} runs (running_runs "
                             f"{limit})")
    now = utcnow()
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == "queued", Run.cancel_requested.is_(False))
        .values(status="running", attempt=Run.attempt + 1, started_at=now, heartbeat_at=now,
                worker_host=socket.gethostname(), error=None))
    session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.get(Run, run_id)


def _mine(run_id: uuid.UUID, attempt: int | None) -> Update:
    """An UPDATE of ``run_id`` that only matches while this attempt still owns it:
    after a reaper requeued the run and another worker claimed it, a worker
    that was merely slow (not dead) writes nothing and is told to stop."""
    query = update(Run).where(Run.id == run_id)
    if attempt is not None:
        query = query.where(Run.attempt == attempt, Run.status == "running")
    return query


def record_start(session: Session, run_id: uuid.UUID, device: str, total_steps: int,
                 attempt: int | None = None) -> None:
    session.execute(_mine(run_id, attempt)
                    .values(device=device, total_steps=total_steps, heartbeat_at=utcnow()))
    session.commit()


def record_progress(session: Session, run_id: uuid.UUID, progress: Progress | None,
                    checkpoint_key: str | None = None, attempt: int | None = None,
                    checkpoint_epoch: int | None = None) -> bool:
    """Write progress and a heartbeat; returns whether the worker should stop: a
    cancel was requested (read back by the same statement), or, with ``attempt``,
    the run is no longer this attempt's."""
    values: dict[str, object] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values.update(epoch=progress.epoch, step=progress.step,
                      total_steps=progress.total_steps,
                      samples_per_s=progress.samples_per_s, eta_s=progress.eta_s)
    if checkpoint_key is not None:
        values.update(checkpoint_key=checkpoint_key, checkpoint_epoch=checkpoint_epoch)
    cancel = session.execute(_mine(run_id, attempt).values(**values)
                             .returning(Run.cancel_requested)).first()
    session.commit()
    return cancel is None or bool(cancel[0])


def _insert_ignoring_duplicates(session: Session, rows: list[dict[str, object]]) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(MetricPoint).values(rows).on_conflict_do_nothing())


def record_init(session: Session, run_id: uuid.UUID, init: dict[str, Any],
                attempt: int | None = None) -> bool:
    """Store what the run's starting weights loaded (``app.services.initial_weights``
    ``report``); False, writing nothing, once the run is no longer this attempt's."""
    result = session.execute(_mine(run_id, attempt).values(init=init))
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]


def record_metrics(session: Session, run_id: uuid.UUID,
                   points: Iterable[tuple[int, int, dict[str, float]]],
                   attempt: int | None = None, commit: bool = True) -> None:
    """Append (epoch, step, {key: value}) points; a point already stored for
    (run, key, step) is kept, so a replayed flush, or an epoch a resumed attempt
    trains again, never duplicates history. With ``attempt``, nothing is written
    once the run is no longer this attempt's."""
    rows = [{"run_id": run_id, "key": k, "step": step, "epoch": epoch, "value": float(v),
             "recorded_at": utcnow()}
            for epoch, step, values in points for k, v in values.items()]
    if not rows:
        return
    run = session.get(Run, run_id, with_for_update=attempt is not None)
    if run is None or (attempt is not None and (run.attempt, run.status) != (attempt, "running")):
        session.rollback()
        return
    _insert_ignoring_duplicates(session, rows)
    latest = dict(run.metrics or {})
    for row in rows:
        latest[str(row["key"])] = float(row["value"])  # type: ignore[arg-type]
    run.metrics = latest
    if commit:
        session.commit()


def finish(session: Session, run_id: uuid.UUID, status: str, error: str | None = None,
           attempt: int | None = None) -> bool:
    """Move a running run to a terminal state; False if it was not running (or,
    with ``attempt``, no longer this attempt's)."""
    assert status in TERMINAL_STATUSES
    result = session.execute(
        _mine(run_id, attempt).where(Run.status == "running")
        .values(status=status, error=None if error is None else plain(error),
                finished_at=utcnow(), heartbeat_at=utcnow(),
                eta_s=0.0 if status == "succeeded" else None))
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]
