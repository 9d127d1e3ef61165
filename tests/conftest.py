"""Test-wide setup: a fresh Postgres database and Redis queue per test run.

The environment is set before any ``app`` module is imported, because settings
and the Celery client are built from it once per process. Integration tests
start the real API (uvicorn) and a real Celery worker as subprocesses. The API
requires API keys, as in the compose stack: every test's requests carry the
write key of the ``tests`` project (the ``access`` fixture).
"""

import os
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

PG_ADMIN = os.environ.get("MIXLAB_TEST_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres "
                                                  "dbname=test")
PG_URL_BASE = os.environ.get("MIXLAB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("MIXLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

RUN_TAG = uuid.uuid4().hex[:10]
DB_NAME = f"mixlab_test_{RUN_TAG}"
TMP = Path(tempfile.mkdtemp(prefix=f"mixlab-test-{RUN_TAG}-"))

os.environ.pop("MIXLAB_API_KEY", None)  # the developer's own key has no place here
os.environ.update({
    "MIXLAB_AUTH": "true",
    "MIXLAB_DATABASE_URL": f"{PG_URL_BASE}/{DB_NAME}",
    "MIXLAB_BROKER_URL": REDIS_URL,
    "MIXLAB_QUEUE": f"gpu-test-{RUN_TAG}",
    "MIXLAB_INGEST_QUEUE": f"ingest-test-{RUN_TAG}",
    "MIXLAB_PROGRESS_FLUSH_S": "0.2",
    "MIXLAB_DATA_DIR": str(TMP / "data"),
    "MIXLAB_ARTIFACT_URL": (TMP / "artifacts").as_uri(),
    "MIXLAB_CONTROL_POLL_S": "0.2",
    # one torch thread per run: the tests' API, worker and pytest share 2 cores, and
    # spinning OpenMP threads that outnumber the cores slow a tiny run many times over
    "MIXLAB_TORCH_THREADS": "1",
    # the shared stack does not sweep (tests of the sweeps make stale runs on
    # purpose); the fault-injection tests start API processes that do
    "MIXLAB_RECONCILE_INTERVAL_S": "0",
    # file:// dataset URIs may point here only (tests put files in it)
    "MIXLAB_IMPORT_ROOTS": str(TMP / "imports"),
    # data-parallel runs: workers offer two CPU processes whatever the machine has, and
    # ranks that lose each other give up within two minutes
    "MIXLAB_CPU_WORLD_SIZE": "2",
    "MIXLAB_DIST_TIMEOUT_S": "120",
})
(TMP / "imports").mkdir()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    """The run's own Postgres database, migrated to head, dropped at the end."""
    from app.db.migrate import upgrade

    create_database(DB_NAME)
    url = os.environ["MIXLAB_DATABASE_URL"]
    upgrade(url)
    yield url
    from app.db.session import get_engine

    get_engine().dispose()
    drop_database(DB_NAME)


def wait_http(base_url: str, proc: subprocess.Popen[bytes], log: Path,
              timeout: float = 60) -> None:
    from app.client import wait_until_ready

    if not wait_until_ready(base_url, timeout, lambda: proc.poll() is None):
        raise RuntimeError(f"{base_url} not ready after {timeout}s or exited:\n"
                           f"{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


TEST_PROJECT = "tests"


@dataclass
class Access:
    project_id: uuid.UUID
    key: str  # a write key of the project

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="session")
def access(database: str) -> Access:
    """The project the tests' requests act as and its write key, made through the
    service layer as ``mixlab admin`` makes them. The key is exported as
    MIXLAB_API_KEY, so MixlabClient and the CLI commands tests run send it."""
    from app.db.session import session_scope
    from app.services import auth

    with session_scope() as session:
        project = auth.create_project(session, TEST_PROJECT)
        _, key = auth.create_key(session, project.id, "tests", "write")
        made = Access(project.id, key)
    os.environ["MIXLAB_API_KEY"] = made.key
    return made


@dataclass
class Stack:
    base_url: str
    api: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    worker_log: Path


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="session")
def worker(database: str) -> Iterator[Worker]:
    """One Celery worker on both of this run's queues (training and dataset
    preparation), as `mixlab worker` starts it. The in-process ``api_client``
    publishes to the same queues, so its datasets get prepared by it too."""
    log = TMP / "worker.log"
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        yield Worker(proc, log)
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def stack(database: str, worker: Worker, access: Access) -> Iterator[Stack]:
    """The API and one Celery worker on Postgres + Redis, as separate processes."""
    port = free_port()
    api_log = TMP / "api.log"
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.api.main:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        stdout=api_log.open("wb"), stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_http(base_url, api, api_log)
        yield Stack(base_url, api, worker.proc, worker.log)
    finally:
        stop(api)


@pytest.fixture
def client(stack: Stack, access: Access) -> Iterator["MixlabClient"]:  # noqa: F821
    from app.client import MixlabClient

    with MixlabClient(stack.base_url, api_key=access.key) as mx:
        yield mx


@pytest.fixture(scope="session")
def api_client(database: str, access: Access) -> Iterator[httpx.Client]:
    """In-process client for request validation tests (same Postgres database),
    sending the ``tests`` project's write key."""
    from fastapi.testclient import TestClient

    from app.api.main import app

    with TestClient(app, headers=access.headers) as tc:
        yield tc
