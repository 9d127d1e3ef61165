"""Real faults on loopback: a Redis server of our own to kill and restart, a TCP
proxy in front of Postgres to cut, and worker processes to SIGKILL.

A fault stack is an API and workers started as processes, as in production,
with the reconciler sweeping every second and short heartbeat timeouts. With
``hold_epoch`` its workers hold each run once that epoch (and its checkpoint)
is recorded, until the test releases them (``worker.hold``): a fault is injected
when the run is known to be mid-training, never after a guessed delay.
"""

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import DB_NAME, PG_URL_BASE, TMP, free_port, stop, wait_http
from tests.integration.helpers import wait_until
from worker.hold import RELEASE, held_marker


class RedisServer:
    """A redis-server without persistence: a restart loses every message."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()


class TcpProxy:
    """Forwards a local port to Postgres; ``cut()`` closes the listener and every
    open connection (connections are refused, as when the server is down) until
    ``restore()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                sock.close()

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown wakes the accept() blocked in the other thread; close alone
            # would leave the socket listening until that accept returned
            with suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for sock in (a, b):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.start()


@dataclass
class FaultStack:
    base_url: str
    env: dict[str, str]
    api: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    hold_dir: Path | None = None

    def wait_held(self, run_id: str | None = None, attempt: int = 1,
                  timeout: float = 180) -> str:
        """Wait until a worker holds ``run_id`` (any run when None) at the hold
        epoch; the held run's id."""
        assert self.hold_dir is not None, "fault_stack(hold_epoch=...) holds runs"
        folder = self.hold_dir

        def held() -> str | None:
            if run_id is not None:
                return run_id if held_marker(folder, run_id, attempt).exists() else None
            found = sorted(folder.glob(f"held-*-{attempt}"))
            return found[0].name[len("held-"):-len(f"-{attempt}")] if found else None

        return str(wait_until(held, timeout=timeout, interval=0.05,
                              what=f"a worker to hold run {run_id or '(any)'}"))

    def release(self) -> None:
        """Let every held run go on; no run is held from now on."""
        assert self.hold_dir is not None
        (self.hold_dir / RELEASE).touch()

    def start_worker(self, concurrency: int = 1) -> subprocess.Popen[bytes]:
        log = TMP / f"fault-worker-{uuid.uuid4().hex[:6]}.log"
        # its own session, so SIGKILL of the group takes Celery's main process
        # and its pool child at once, as a lost node would
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--concurrency",
                                 str(concurrency)], env=self.env, start_new_session=True,
                                stdout=log.open("wb"), stderr=subprocess.STDOUT)
        self.workers.append(proc)
        self.logs.append(log)
        return proc

    def kill_worker(self, proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def worker_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())


@contextmanager
def fault_stack(broker_url: str, database_port: int = 5432,
                extra_env: dict[str, str] | None = None,
                hold_epoch: int | None = None) -> Iterator[FaultStack]:
    tag = uuid.uuid4().hex[:8]
    hold_dir = None
    if hold_epoch is not None:
        hold_dir = TMP / f"hold-{tag}"
        hold_dir.mkdir()
        extra_env = {"MIXLAB_TEST_HOOKS": "true", "MIXLAB_TEST_HOLD_EPOCH": str(hold_epoch),
                     "MIXLAB_TEST_HOLD_DIR": str(hold_dir), **(extra_env or {})}
    base = PG_URL_BASE.rsplit(":", 1)[0]  # postgresql+psycopg://postgres@127.0.0.1
    env = {**os.environ,
           "MIXLAB_DATABASE_URL": f"{base}:{database_port}/{DB_NAME}",
           "MIXLAB_BROKER_URL": broker_url,
           "MIXLAB_QUEUE": f"gpu-fault-{tag}", "MIXLAB_INGEST_QUEUE": f"ingest-fault-{tag}",
           "MIXLAB_RECONCILE_INTERVAL_S": "1", "MIXLAB_QUEUED_GRACE_S": "2",
           "MIXLAB_HEARTBEAT_TIMEOUT_S": "4", "MIXLAB_CONTROL_POLL_S": "0.2",
           **(extra_env or {})}
    port = free_port()
    api_log = TMP / f"fault-api-{tag}.log"
    api = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.api.main:app", "--host",
                            "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                           env=env, stdout=api_log.open("wb"), stderr=subprocess.STDOUT)
    stack = FaultStack(f"http://127.0.0.1:{port}", env, api, logs=[api_log], hold_dir=hold_dir)
    try:
        wait_http(stack.base_url, api, api_log)
        yield stack
    finally:
        if hold_dir is not None:  # a held worker would wait out its SIGTERM grace
            stack.release()
        for proc in stack.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        stop(api)
