"""The reconciler: a background thread that sweeps for lost and dead runs.

It starts inside every API process (``mixlab api``, ``mixlab up``, the compose
``api`` replicas), which are up whenever runs are, and sweeps every
``MIXLAB_RECONCILE_INTERVAL_S`` seconds in the one process that leads
(``app.runs.leader``: a Postgres advisory lock); the others stand by and take
over when the leader goes. Even two sweeping at once would be safe (every
transition is guarded, a duplicate publish is refused by the worker's claim);
leading keeps the broker reads and the log lines to one process.
"""

import logging
import threading
from collections.abc import Callable

from app.db.session import session_scope
from app.observability.metrics import count_reconciler_actions
from app.runs import recovery
from app.runs.broker_contents import pending_args
from app.runs.leader import Leadership
from app.runs.queue import PREPARE_DATASET_TASK, TRAIN_RUN_TASK, enqueue_preparation, enqueue_run
from app.settings import Settings

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, settings: Settings,
                 publish: Callable[[str], None] = enqueue_run,
                 publish_preparation: Callable[[str], None] = enqueue_preparation) -> None:
        self.settings = settings
        self.publish = publish
        self.publish_preparation = publish_preparation
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.leadership: Leadership | None = None
        self.passes = 0  # sweeps this process made (a standby makes none)

    @property
    def role(self) -> str:
        """``leader``, ``standby``, or ``off`` (interval 0, or not started)."""
        if self.leadership is None:
            return "off"
        return "leader" if self.leadership.leading else "standby"

    def _held(self, queue: str, task: str) -> set[str] | None:
        try:
            return pending_args(self.settings, queue, task)
        except Exception:  # broker down: nothing can be called lost this time
            log.warning("cannot read the broker's queue; skipping lost-run detection",
                        exc_info=True)
            return None

    def run_once(self) -> recovery.SweepReport:
        s = self.settings
        # read before Postgres: see recovery.republish_lost
        held = self._held(s.queue, TRAIN_RUN_TASK)
        held_preparations = self._held(s.ingest_queue, PREPARE_DATASET_TASK)
        with session_scope() as session:
            report = recovery.sweep(session, held, grace_s=s.queued_grace_s,
                                    heartbeat_timeout_s=s.heartbeat_timeout_s,
                                    max_attempts=s.run_max_attempts, publish=self.publish)
            report.republished_datasets = recovery.republish_stalled_preparations(
                session, held_preparations, s.queued_grace_s, s.ingest_stale_s,
                self.publish_preparation)
        self.passes += 1
        count_reconciler_actions(report)  # GET /metrics: mixlab_reconciler_actions_total
        if report:
            log.warning("reconciler: requeued %s, republished %s, failed %s, cancelled %s, "
                        "republished preparations %s",
                        *(list(map(str, ids)) for ids in (
                            report.requeued, report.republished, report.failed,
                            report.cancelled, report.republished_datasets)))
        return report

    def _loop(self) -> None:
        assert self.leadership is not None
        while not self._stop.wait(self.settings.reconcile_interval_s):
            try:
                if self.leadership.try_lead():
                    self.run_once()
            except Exception:  # Postgres down for a while: try again next period
                log.warning("reconciler pass failed; retrying in %.0f s",
                            self.settings.reconcile_interval_s, exc_info=True)

    def start(self) -> None:
        if self.settings.reconcile_interval_s <= 0 or self._thread is not None:
            return
        self.leadership = Leadership(self.settings.resolved_database_url)
        self._thread = threading.Thread(target=self._loop, name="mixlab-reconciler",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.leadership is not None:
            self.leadership.release()
