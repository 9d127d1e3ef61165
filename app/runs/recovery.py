"""Put back the runs that the broker lost or whose worker died.

Postgres is the truth and the broker only carries "run X now", so two sweeps
reconcile them:

* ``republish_lost``: a run ``queued`` for longer than a grace period whose id
  the broker does not hold (neither waiting nor delivered-unacked) is published
  again. That covers a crash between the commit and the publish (the outbox
  case) and a Redis that restarted empty.
* ``reap_dead``: a run ``running`` whose heartbeat is older than the timeout
  lost its worker (SIGKILL, OOM, node loss). It goes back to ``queued`` and is
  published, and the next claim makes it attempt + 1, which resumes from the
  last checkpoint, until ``max_attempts``; then it fails with the reason. A run
  whose cancel was requested is cancelled instead.

Every transition (``app.runs.lifecycle.transition``) is a guarded UPDATE that
also names the attempt it saw, so a worker that heartbeats at the last moment,
or a second reconciler, wins or loses cleanly; a duplicate publish is harmless
because a worker claims a run in Postgres before it trains it.
"""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Dataset, Run
from app.runs.lifecycle import Action, RunStatus, transition

log = logging.getLogger(__name__)

Publish = Callable[[str], None]


@dataclass
class SweepReport:
    republished: list[uuid.UUID] = field(default_factory=list)
    republished_datasets: list[uuid.UUID] = field(default_factory=list)
    requeued: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)
    cancelled: list[uuid.UUID] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.republished or self.republished_datasets or self.requeued
                    or self.failed or self.cancelled)


def _publish_all(run_ids: list[uuid.UUID], publish: Publish) -> list[uuid.UUID]:
    sent = []
    for run_id in run_ids:
        try:
            publish(str(run_id))
            sent.append(run_id)
        except Exception:  # still queued in Postgres: the next sweep tries again
            log.exception("re-publishing run %s failed", run_id)
    return sent


def republish_lost(session: Session, held: set[str] | None, grace_s: float,
                   publish: Publish, skip: frozenset[uuid.UUID] = frozenset()
                   ) -> list[uuid.UUID]:
    """Publish again every run queued for over ``grace_s`` that is not in ``held``
    (the run ids the broker holds, read *before* this call so that a message
    consumed in between is seen as a claimed run, not a lost one). ``None``
    means the broker cannot be inspected: nothing is called lost."""
    if held is None:
        return []
    cutoff = utcnow() - timedelta(seconds=grace_s)
    queued = session.scalars(select(Run.id).where(Run.status == RunStatus.QUEUED.value,
                                                  Run.created_at < cutoff)).all()
    lost = [run_id for run_id in queued if str(run_id) not in held and run_id not in skip]
    if lost:
        log.warning("runs queued in Postgres but absent from the broker: %s",
                    ", ".join(map(str, lost)))
    return _publish_all(lost, publish)


def reap_dead(session: Session, heartbeat_timeout_s: float, max_attempts: int,
              publish: Publish) -> SweepReport:
    """Requeue, fail or cancel every running run whose heartbeat stopped."""
    report = SweepReport()
    cutoff = utcnow() - timedelta(seconds=heartbeat_timeout_s)
    stale = session.execute(select(Run.id, Run.attempt, Run.cancel_requested)
                            .where(Run.status == RunStatus.RUNNING.value,
                                   Run.heartbeat_at < cutoff)).all()
    for run_id, attempt, cancel_requested in stale:
        # the heartbeat guard again: a worker that beat since the SELECT keeps its run
        guard = [Run.heartbeat_at < cutoff]
        lost = f"worker lost: no heartbeat for {heartbeat_timeout_s:g} s"
        if cancel_requested:
            action, error = Action.STOP, f"{lost} after cancel was requested"
            bucket = report.cancelled
        elif attempt >= max_attempts:
            action, error = Action.FAIL, f"{lost} on attempt {attempt} of {max_attempts}"
            bucket = report.failed
        else:
            # the claim sets worker, start and heartbeat again, and counts the attempt
            action, error = Action.REQUEUE, f"{lost} on attempt {attempt}; requeued"
            bucket = report.requeued
        values: dict[str, object] = {"error": error}
        if action is Action.REQUEUE:
            values["worker_host"] = None
        if transition(session, run_id, action, attempt=attempt, guard=guard, **values):
            bucket.append(run_id)
    session.commit()
    for run_id in report.failed + report.cancelled:
        log.error("run %s: no heartbeat; %s", run_id,
                  "failed" if run_id in report.failed else "cancelled")
    report.requeued = _publish_all(report.requeued, publish)
    return report


def republish_stalled_preparations(session: Session, held: set[str] | None, grace_s: float,
                                   stale_s: float, publish: Publish) -> list[uuid.UUID]:
    """Dataset preparations whose message the ingest queue does not hold: never
    claimed for over ``grace_s``, or claimed by a worker silent for ``stale_s``
    (it died; the claim lets the next message take over and counts the attempt)."""
    if held is None:
        return []
    now = utcnow()
    stalled = session.scalars(select(Dataset.id).where(
        Dataset.status == "preparing",
        or_(Dataset.heartbeat_at.is_(None) & (Dataset.created_at < now - timedelta(
            seconds=grace_s)),
            Dataset.heartbeat_at < now - timedelta(seconds=stale_s)))).all()
    lost = [d for d in stalled if str(d) not in held]
    if lost:
        log.warning("dataset preparations not in the broker: %s", ", ".join(map(str, lost)))
    return _publish_all(lost, publish)


def sweep(session: Session, held: set[str] | None, *, grace_s: float,
          heartbeat_timeout_s: float, max_attempts: int, publish: Publish) -> SweepReport:
    """One reconciliation pass: dead workers first (their runs become queued and
    are published here), then runs the broker lost."""
    report = reap_dead(session, heartbeat_timeout_s, max_attempts, publish)
    report.republished = republish_lost(session, held, grace_s, publish,
                                        skip=frozenset(report.requeued))
    return report
