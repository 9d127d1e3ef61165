"""What the service benchmarks (api_load.py, queue_load.py) share: a Postgres
database of their own on the local server, the environment every process of the
stack gets, and ``mixlab`` processes started and stopped as the CLI runs them.

Import it before any ``app`` module is imported and call ``bench_environment``
first: the settings are read once per process.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("MIXLAB_BENCH_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres "
                                                   "dbname=postgres")
PG_URL_BASE = os.environ.get("MIXLAB_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("MIXLAB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def bench_environment(extra: dict[str, str] | None = None
                      ) -> Iterator[tuple[dict[str, str], Path]]:
    """A fresh database (migrated to head) and temporary folder, and the
    MIXLAB_* environment that points at them, its own queues and the local
    Redis, with API keys required; put into this process's environment too.
    Everything is dropped at the end. Yields (env, folder)."""
    tag = uuid.uuid4().hex[:8]
    db = f"mixlab_bench_{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="mixlab-bench-"))
    env = {"MIXLAB_AUTH": "true", "MIXLAB_DATABASE_URL": f"{PG_URL_BASE}/{db}",
           "MIXLAB_BROKER_URL": REDIS_URL, "MIXLAB_QUEUE": f"bench-{tag}",
           "MIXLAB_INGEST_QUEUE": f"bench-ingest-{tag}", "MIXLAB_DATA_DIR": str(tmp / "data"),
           "MIXLAB_ARTIFACT_URL": (tmp / "artifacts").as_uri(), **(extra or {})}
    os.environ.update(env)  # before any app import: settings are read once
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        from app.db.migrate import upgrade

        upgrade(env["MIXLAB_DATABASE_URL"])
        yield env, tmp
    finally:
        from app.db.session import get_engine

        get_engine().dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        _drop_queues(env)
        shutil.rmtree(tmp, ignore_errors=True)


def _drop_queues(env: dict[str, str]) -> None:
    """The run's queues in Redis (empty after a clean run; not after a failed one)."""
    import redis

    try:
        client = redis.Redis.from_url(env["MIXLAB_BROKER_URL"], socket_timeout=2)
        client.delete(env["MIXLAB_QUEUE"], env["MIXLAB_INGEST_QUEUE"])
        client.close()
    except redis.RedisError:
        pass


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``mixlab ARGS`` (as ``python -m app.cli``), its output in ``log``."""
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], env={**os.environ, **env},
                            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def start_api(env: dict[str, str], tmp: Path, workers: int = 1
              ) -> tuple[subprocess.Popen[bytes], str]:
    """``mixlab api --workers N`` on a free port, once /readyz answers: (process, URL)."""
    from app.client import wait_until_ready

    port = free_port()
    log = tmp / f"api-{port}.log"
    api = start(["api", "--port", str(port), "--workers", str(workers)], env, log)
    base = f"http://127.0.0.1:{port}"
    if not wait_until_ready(base, 60, lambda: api.poll() is None):
        stop(api)
        raise SystemExit(f"the API did not start: {log.read_text()[-3000:]}")
    return api, base


def stop(proc: subprocess.Popen[bytes] | None, grace_s: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
