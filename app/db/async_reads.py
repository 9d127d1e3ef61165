"""Hot reads on Postgres without a worker thread: psycopg's asyncio connections.

A status read is one indexed query. Sent through SQLAlchemy from the threadpool,
the thread hand-off and the library around the query cost the API process about
three times the query itself; here the event loop sends it on a pooled asyncio
connection (autocommit, server-side prepared after a few uses). Statements are
still written in SQLAlchemy Core and compiled once to SQL.

The pool belongs to the application's lifespan (``HotReads.open`` / ``close``) and
to that lifespan's event loop. Where there is none — SQLite, an app served without
its lifespan, a request on another loop, a connection the pool finds broken —
``fetch_one`` says so (``Unavailable``) and the caller reads in the threadpool.
"""

import asyncio
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import make_url
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg
from sqlalchemy.sql import Executable


class Unavailable(Exception):
    """No asyncio connection for this read: use the threadpool path."""


def compiled(statement: Executable) -> str:
    """The statement as psycopg's SQL (``%(name)s`` parameters), once, at import."""
    return str(statement.compile(dialect=pg_psycopg.dialect()))  # type: ignore[no-untyped-call]


class HotReads:
    def __init__(self, pool: AsyncConnectionPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop

    @classmethod
    async def open(cls, database_url: str, size: int = 10) -> "HotReads | None":
        """A pool on this event loop for a Postgres URL; None for anything else."""
        url = make_url(database_url)
        if url.get_backend_name() != "postgresql":
            return None
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        pool = AsyncConnectionPool(conninfo, min_size=1, max_size=size, open=False,
                                   kwargs={"autocommit": True, "row_factory": namedtuple_row})
        await pool.open(wait=False)  # the API starts even while Postgres is down
        return cls(pool, asyncio.get_running_loop())

    async def close(self) -> None:
        await self.pool.close()

    async def fetch_one(self, sql: str, params: dict[str, Any]) -> Any:
        """The first row (attributes named as the statement's columns), or None."""
        if asyncio.get_running_loop() is not self.loop:
            raise Unavailable("another event loop")
        try:
            async with self.pool.connection(timeout=5) as connection:
                cursor = await connection.execute(sql, params)
                return await cursor.fetchone()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # a connection Postgres dropped (restart): the pool discards it; this
            # read goes through SQLAlchemy, which reconnects or answers 503
            raise Unavailable(str(exc)) from exc
        except TimeoutError as exc:
            raise Unavailable("no connection") from exc
