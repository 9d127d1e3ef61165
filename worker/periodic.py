"""A daemon thread that calls a flush function at a fixed period until stopped.

Both reporters (a training run's, a dataset preparation's) write their state this
way, off the thread that does the work: a failed flush is logged and simply
retried at the next period.
"""

import contextvars
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicFlush:
    def __init__(self, flush: Callable[[], None], period_s: float, name: str) -> None:
        self._flush, self.period_s, self.name = flush, period_s, name
        self._stopping = threading.Event()
        # the creator's context (a run's, app.observability.logs): the thread's
        # lines name the run too
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._loop,), name=name,
                                        daemon=True)

    def _loop(self) -> None:
        while not self._stopping.wait(self.period_s):
            try:
                self._flush()
            except Exception:  # retried at the next period
                log.exception("%s: periodic write failed", self.name)

    def start(self) -> None:
        """Idempotent; a stopped flusher stays stopped."""
        if not self._thread.is_alive() and not self._stopping.is_set():
            self._thread.start()

    def stop(self) -> None:
        """Stop and wait for a flush in progress to end."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
