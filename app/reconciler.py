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
from app.queue import TRAIN_RUN_TASK, enqueue_run
from app.services import recovery
from app.settings import Settings

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, settings: Settings,
                 publish: Callable[[str], None] = enqueue_run) -> None:
        self.settings = settings
        self.publish = publish
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _held(self) -> set[str] | None:
        try:
            return pending_args(self.settings, self.settings.queue, TRAIN_RUN_TASK)
        except Exception:  # broker down: nothing can be called lost this time
            log.warning("cannot read the broker's queue; skipping lost-run detection",
                        exc_info=True)
            return None

    def run_once(self) -> recovery.SweepReport:
        held = self._held()  # read before Postgres: see recovery.republish_lost
        s = self.settings
        with session_scope() as session:
            report = recovery.sweep(session, held, grace_s=s.queued_grace_s,
                                    heartbeat_timeout_s=s.heartbeat_timeout_s,
                                    max_attempts=s.run_max_attempts, publish=self.publish)
        if report:
            log.warning("reconciler: requeued %s, republished %s, failed %s, cancelled %s",
                        *(list(map(str, ids)) for ids in (report.requeued, report.republished,
                                                         report.failed, report.cancelled)))
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
