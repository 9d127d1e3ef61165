"""The reconciler: a background thread that sweeps for lost and dead runs.

It runs inside the API process (``mixlab api``, ``mixlab up``, the compose
``api`` service), which is always up when runs are, every
``MIXLAB_RECONCILE_INTERVAL_S`` seconds; ``mixlab reconcile --once`` runs one
pass by hand. Several API replicas may sweep at once: every transition is a
guarded UPDATE and a duplicate publish is refused by the worker's claim, so
the worst case is a message more, never a run trained twice.
"""

import logging
import threading
from collections.abc import Callable

from app.broker_contents import pending_args
from app.db.session import session_scope
from app.queue import PREPARE_DATASET_TASK, TRAIN_RUN_TASK, enqueue_preparation, enqueue_run
from app.services import recovery
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
        if report:
            log.warning("reconciler: requeued %s, republished %s, failed %s, cancelled %s, "
                        "republished preparations %s",
                        *(list(map(str, ids)) for ids in (
                            report.requeued, report.republished, report.failed,
                            report.cancelled, report.republished_datasets)))
        return report

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.reconcile_interval_s):
            try:
                self.run_once()
            except Exception:  # Postgres down for a while: try again next period
                log.warning("reconciler pass failed; retrying in %.0f s",
                            self.settings.reconcile_interval_s, exc_info=True)

    def start(self) -> None:
        if self.settings.reconcile_interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="mixlab-reconciler",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
