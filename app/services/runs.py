"""Reading runs: one run, a page of them, metric history, the evaluation.

What changes a run (cancel, claim, progress, outcomes) is ``app.runs.service``;
every status change goes through ``app.runs.lifecycle.transition``.
"""

import json
import uuid
from collections.abc import Iterable
from itertools import groupby
from operator import itemgetter
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Row, bindparam, func, or_, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session

from app.db.async_reads import HotReads, Unavailable, compiled
from app.db.models import Experiment, MetricPoint, Run
from app.db.session import read_connection
from app.ml.multitask import NAME as MULTITASK
from app.ml.tasks import TASKS
from app.runs.status import LIVE, RunStatus
from app.services.errors import ConflictError, FieldError, NotFoundError
from app.storage import ArtifactStore, evaluation_key


def get(session: Session, project_id: uuid.UUID, run_id: uuid.UUID) -> Run:
    """The project's run (through its experiment); another project's is not
    found, exactly like a missing one."""
    run = session.get(Run, run_id)
    if run is None or run.experiment.project_id != project_id:
        raise NotFoundError("run", run_id)
    return run


class RunRow:
    """A run read by ``read``: its row, with ``Run``'s attribute names, and
    ``.experiment`` holding the experiment's ``name``, ``spec`` and ``sweep_id``
    (what a run's reply shows of it)."""

    __slots__ = ("_row", "experiment")

    def __init__(self, row: Row[Any]) -> None:
        self._row = row
        self.experiment = SimpleNamespace(name=row.experiment_name, spec=row.experiment_spec,
                                          sweep_id=row.experiment_sweep_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)


# built once, with bound parameters: building and hashing the statement per call
# cost as much as running it
_READ = (select(*Run.__table__.c, Experiment.name.label("experiment_name"),
                Experiment.spec.label("experiment_spec"),
                Experiment.sweep_id.label("experiment_sweep_id"))
         .join(Experiment, Run.experiment_id == Experiment.id)
         .where(Run.id == bindparam("run_id"), Experiment.project_id == bindparam("project_id")))


_READ_SQL = compiled(_READ)


async def read_hot(reads: HotReads | None, project_id: uuid.UUID, run_id: uuid.UUID) -> RunRow:
    """``read`` on the event loop through ``reads`` (Postgres); raises ``Unavailable``
    where it cannot, and the caller runs ``read`` in a thread instead."""
    if reads is None:
        raise Unavailable("no pool")
    row = await reads.fetch_one(_READ_SQL, {"run_id": run_id, "project_id": project_id})
    if row is None:
        raise NotFoundError("run", run_id)
    return RunRow(row)


def read(project_id: uuid.UUID, run_id: uuid.UUID) -> RunRow:
    """``get`` for the hot status read (clients poll it): the run and its
    experiment in one Core query on a connection of its own, no Session."""
    with read_connection() as connection:
        row = connection.execute(_READ, {"run_id": run_id, "project_id": project_id}).first()
    if row is None:
        raise NotFoundError("run", run_id)
    return RunRow(row)


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


# One key's history as columns: {"step": [...], "epoch": [...], "value": [...]}.
MetricColumns = dict[str, list[Any]]


def owns(session: Session, project_id: uuid.UUID, run_id: uuid.UUID) -> None:
    """404 unless the run is the project's: one indexed query, no ORM objects (the
    hot read paths need only the answer)."""
    found = session.execute(select(Run.id).join(Experiment, Run.experiment_id == Experiment.id)
                            .where(Run.id == run_id, Experiment.project_id == project_id)
                            ).first()
    if found is None:
        raise NotFoundError("run", run_id)


def metric_history(session: Session, project_id: uuid.UUID, run_id: uuid.UUID,
                   key: str | None = None, after_step: int | None = None,
                   max_points: int | None = None,
                   keys: Iterable[str] | None = None) -> dict[str, MetricColumns]:
    """Columns (``step``, ``epoch``, ``value``, by step) by key: every key, ``key``
    or ``keys``; with ``after_step`` only later steps (incremental fetches); with
    ``max_points`` each key's curve down-sampled in SQL (``downsampled``).

    Columns rather than one object per point: 100,000 points are three lists
    that the Core rows are unzipped into, not 100,000 dicts to build and encode."""
    owns(session, project_id, run_id)
    return columns_of(session, run_id, key, after_step, max_points, keys)


def columns_of(session: Session, run_id: uuid.UUID, key: str | None = None,
               after_step: int | None = None, max_points: int | None = None,
               keys: Iterable[str] | None = None) -> dict[str, MetricColumns]:
    """``metric_history`` without the ownership check, for callers that loaded
    the run through ``get`` already."""
    where = [MetricPoint.run_id == run_id]
    if key is not None:
        where.append(MetricPoint.key == key)
    if keys is not None:
        where.append(MetricPoint.key.in_(list(keys)))
    if after_step is not None:
        where.append(MetricPoint.step > after_step)
    points = (downsampled(where, max_points) if max_points is not None else
              select(MetricPoint.key, MetricPoint.step, MetricPoint.epoch, MetricPoint.value)
              .where(*where)).subquery()
    if session.get_bind().dialect.name == "postgresql":
        # one row per key, its columns as arrays built by Postgres: 100,000 points
        # cost no Python object each (a Row per point cost 4 µs, 0.4 s in all)
        def column(c: Any) -> Any:
            return func.array_agg(aggregate_order_by(c, points.c.step))

        query = (select(points.c.key, column(points.c.step), column(points.c.epoch),
                        column(points.c.value))
                 .group_by(points.c.key).order_by(points.c.key))
        return {name: {"step": steps, "epoch": epochs, "value": values}
                for name, steps, epochs, values in session.execute(query)}
    # SQLite (the embedded mode): rows ordered by (key, step), each key's unzipped
    rows = session.execute(select(points).order_by(points.c.key, points.c.step)).all()
    history: dict[str, MetricColumns] = {}
    for name, group in groupby(rows, itemgetter(0)):
        _, steps, epochs, values = zip(*group, strict=True)
        history[name] = {"step": list(steps), "epoch": list(epochs), "value": list(values)}
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
                       ranked.c.step == ranked.c.hi)))


def evaluation(session: Session, store: ArtifactStore, project_id: uuid.UUID,
               run_id: uuid.UUID) -> dict[str, Any]:
    """A succeeded classifier's test-split report. 422 for a task that has none
    (retrieval), 409 until the run has succeeded (or when it did not), 404 when a
    succeeded run has no report stored."""
    run = get(session, project_id, run_id)
    task = run.experiment.task
    if task not in TASKS and task != MULTITASK:  # multitask: a report per task
        raise FieldError(("path", "run_id"),
                         f"evaluation is per-class scores of a classifier; task {task} has "
                         f"none: its recall@K figures (test_r1_q2t, …, test_mean_recall) "
                         f"are in the run's metrics (GET /v1/runs/{run.id})")
    if run.status != RunStatus.SUCCEEDED:
        hint = (f"it is written when the run succeeds; poll GET /v1/runs/{run.id}"
                if run.status in LIVE else "only a succeeded run has one")
        raise ConflictError(f"run {run.id} is {run.status}: {hint}")
    key = evaluation_key(run.id)
    if not store.exists(key):
        raise NotFoundError("evaluation of run", run_id)
    return json.loads(store.get(key))  # type: ignore[no-any-return]
