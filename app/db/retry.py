"""Retrying database writes through a short outage.

The worker's last writes (claiming a run, the final metrics, the terminal
status) must not be lost because Postgres restarted for a few seconds: they
are retried with backoff for up to ``MIXLAB_DB_RETRY_S``. Only connection
problems are retried; a constraint violation is a bug and raises at once.
"""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_outage(exc: BaseException) -> bool:
    """A lost or refused connection (retried), not an error of the statement."""
    return isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


def retry_db(operation: Callable[[], T], what: str, timeout_s: float = 120.0) -> T:
    deadline = time.monotonic() + timeout_s
    delay = 0.25
    while True:
        try:
            return operation()
        except DBAPIError as exc:
            if not is_outage(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database unavailable (%s); retrying in %.2f s", what,
                        str(exc.orig).strip().splitlines()[0] if exc.orig else exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
