"""Many API processes, one reconciler: the Postgres advisory-lock leader
(app.runs.leader). Two API deployments on one database: exactly one process
sweeps, the others stand by, and one of them takes over when the leader stops."""

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from app.runs.leader import RECONCILER_LOCK_KEY
from tests.conftest import DB_NAME, PG_ADMIN, TMP, free_port, stop, wait_http
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

LEADING = "reconciler: leading"


def _env() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    # sweeps that find nothing to do in the shared test database: only who sweeps matters
    return {**os.environ, "MIXLAB_RECONCILE_INTERVAL_S": "0.2",
            "MIXLAB_QUEUED_GRACE_S": "86400", "MIXLAB_HEARTBEAT_TIMEOUT_S": "86400",
            "MIXLAB_INGEST_STALE_S": "86400",
            "MIXLAB_QUEUE": f"leader-{tag}", "MIXLAB_INGEST_QUEUE": f"leader-ingest-{tag}"}


@contextmanager
def api_process(env: dict[str, str], workers: int = 1
                ) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    port = free_port()
    log = TMP / f"leader-api-{port}.log"
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "api", "--port", str(port),
                             "--workers", str(workers)], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, proc, log)
        yield url, proc, log
    finally:
        stop(proc)


def ready(url: str) -> dict:
    return httpx.get(f"{url}/readyz", timeout=10).json()  # type: ignore[no-any-return]


def lock_holders() -> int:
    """Sessions holding the reconciler's advisory lock in the tests' database."""
    hi, lo = RECONCILER_LOCK_KEY >> 32, RECONCILER_LOCK_KEY & 0xFFFFFFFF
    dsn = PG_ADMIN.replace("dbname=test", f"dbname={DB_NAME}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = %s AND objid = %s AND objsubid = 1 AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
            (hi, lo)).fetchone()
    return int(row[0]) if row else 0


def test_two_api_processes_sweep_once_and_hand_over(database, access) -> None:
    env = _env()
    with api_process(env) as (url_a, proc_a, _), api_process(env) as (url_b, proc_b, _):
        # the leader has swept several times; the other has tried as often, and waits
        def settled() -> list[dict] | None:
            states = [ready(url_a), ready(url_b)]
            leaders = [s for s in states if s["reconciler"] == "leader"]
            return states if len(leaders) == 1 and leaders[0]["reconciler_passes"] >= 5 \
                else None

        states = wait_until(settled, timeout=60, what="one leader with 5 sweeps")
        roles = sorted(s["reconciler"] for s in states)
        assert roles == ["leader", "standby"], states
        standby = next(s for s in states if s["reconciler"] == "standby")
        assert standby["reconciler_passes"] == 0
        assert lock_holders() == 1

        # the leader goes: the standby takes the lock at its next pass and sweeps
        leader_proc, other = (proc_a, url_b) if states[0]["reconciler"] == "leader" \
            else (proc_b, url_a)
        stop(leader_proc)
        taken = wait_until(lambda: (lambda s: s if s["reconciler"] == "leader"
                                    and s["reconciler_passes"] >= 1 else None)(ready(other)),
                           timeout=30, what="the standby to take over")
        assert taken["status"] == "ready"
        assert lock_holders() == 1


def test_mixlab_api_workers_reconcile_in_one_process(database, access) -> None:
    env = _env()
    with api_process(env, workers=2) as (url, _, log):
        wait_until(lambda: LEADING in log.read_text(errors="replace") or None, timeout=60,
                   what="a leader")
        # many connections reach both uvicorn workers: one leads, the other stands by
        seen = [ready(url) for _ in range(30)]
        assert {s["reconciler"] for s in seen} <= {"leader", "standby"}
        assert all(s["reconciler_passes"] == 0 for s in seen if s["reconciler"] == "standby")
        assert lock_holders() == 1
        assert log.read_text(errors="replace").count(LEADING) == 1
