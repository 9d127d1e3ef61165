"""Leadership of the reconciler: one sweeping process per deployment.

Every API process (``mixlab api --workers N``, several replicas behind a
proxy) starts a reconciler; only the one holding a Postgres advisory lock
sweeps. The lock is session-level, on a connection of its own held while
leading: if that process dies or loses its connection, Postgres releases the
lock and another process takes it at its next pass. On SQLite (the embedded
``mixlab up``) there is one API process, so it always leads.
"""

import logging

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# pg advisory lock key (bigint) of the reconciler; any constant unique to mixlab
RECONCILER_LOCK_KEY = 0x6D69786C6162  # "mixlab"


class Leadership:
    def __init__(self, database_url: str, key: int = RECONCILER_LOCK_KEY) -> None:
        self.key = key
        self.embedded = not database_url.startswith("postgresql")
        # a connection of its own, outside the pool: the lock lives as long as it does
        self._engine: Engine | None = (None if self.embedded else
                                       create_engine(database_url, poolclass=NullPool))
        self._conn: Connection | None = None

    @property
    def leading(self) -> bool:
        return self.embedded or self._conn is not None

    def try_lead(self) -> bool:
        """Whether this process leads now: it still holds the lock on a live
        connection, or it just took it. Never blocks on another holder."""
        if self.embedded:
            return True
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                return True
            except Exception:  # the connection died, and the lock with it
                log.warning("reconciler: lost the leader's connection; standing by")
                self._drop()
        assert self._engine is not None
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                    {"key": self.key}).scalar())
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        log.warning("reconciler: leading (advisory lock %d held)", self.key)
        return True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken
                log.debug("closing the leader's connection failed", exc_info=True)

    def release(self) -> None:
        """Give the lock up (closing its connection releases it)."""
        self._drop()
        if self._engine is not None:
            self._engine.dispose()
