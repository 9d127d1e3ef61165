"""Starting the ranks of a data-parallel run on one host, and noticing when one dies.

``launch_local`` runs rank 0 in the calling process (so a worker keeps its
reporter, its log capture and its hooks in-process) and ranks 1…W-1 as child
processes: ``python -m app.ml.training.follower MODULE:FUNCTION RANK …`` with
JSON arguments. Plain subprocesses rather than ``torch.multiprocessing``: a
Celery prefork worker is a daemonic process, which multiprocessing refuses
children, and spawn would pickle the run's spec; torchrun's own launcher
(torch.distributed.elastic) starts ranks with ``Popen`` too, but it installs
process-wide signal handlers that would replace the worker's.

Failure handling: a follower dies with its parent (``PR_SET_PDEATHSIG``), stays
in the parent's process group (a lost node takes them all), and reports a
Python error through the store (``ERROR_KEY``) before it exits. A follower that
dies closes its connections, so the leader's next collective fails at once;
the leader then names the rank (``RankFailed``) and ends the others.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from app.ml.training.distributed import READY_KEY, Ranks, joined, serve

log = logging.getLogger(__name__)

T = TypeVar("T")
DONE_KEY = "mixlab/done/{rank}"  # the follower's JSON summary
ERROR_KEY = "mixlab/error/{rank}"  # the follower's traceback, if it raised
FOLLOWER_MODULE = "app.ml.training.follower"
# how long the leader waits, after a failed collective, to see which peer died
PEER_EXIT_GRACE_S = 10.0
# how long the followers get to end by themselves once the leader is done
FOLLOWER_EXIT_S = 60.0
# SIGTERM → SIGKILL grace when tearing followers down
FOLLOWER_GRACE_S = 5.0
POLL_S = 0.05


class RankFailed(RuntimeError):
    """A rank of a data-parallel run died or raised, which ends the attempt.
    ``died``: killed by a signal or gone without a Python error (the run may
    resume from its checkpoint); otherwise ``detail`` is the rank's traceback."""

    def __init__(self, rank: int, message: str, died: bool, detail: str = "") -> None:
        super().__init__(message)
        self.rank, self.died, self.detail = rank, died, detail


class _Followers:
    """Ranks 1…W-1 as child processes, and what became of them."""

    def __init__(self, procs: dict[int, subprocess.Popen[bytes]],
                 store: dist.TCPStore) -> None:
        self.procs, self.store = procs, store

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def _failed(self) -> RankFailed | None:
        for rank, proc in self.procs.items():
            code = proc.poll()
            if code is None or code == 0:
                continue
            key = ERROR_KEY.format(rank=rank)
            if self.store.check([key]):
                detail = self.store.get(key).decode()
                lines = detail.strip().splitlines()
                return RankFailed(rank, f"rank {rank} failed: {lines[-1] if lines else code}",
                                  died=False, detail=detail)
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 \
                else f"exited with code {code}"
            return RankFailed(rank, f"rank {rank} (pid {proc.pid}) {how}", died=True)
        return None

    def failure(self, timeout: float) -> RankFailed | None:
        """The first follower seen failed within ``timeout`` s, or None."""
        deadline = time.monotonic() + timeout
        while True:
            failed = self._failed()
            if failed is not None or time.monotonic() >= deadline:
                return failed
            time.sleep(POLL_S)

    def wait_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Until ``done()``; RankFailed if a follower fails first, TimeoutError after
        ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not done():
            failed = self._failed()
            if failed is not None:
                raise failed
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} within {timeout} s")
            time.sleep(POLL_S)

    def end(self) -> None:
        """SIGTERM to the followers still running, SIGKILL after a grace."""
        alive = [p for p in self.procs.values() if p.poll() is None]
        for p in alive:
            p.terminate()
        for p in alive:
            try:
                p.wait(FOLLOWER_GRACE_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _python_path() -> str:
    """This process's import path, so a follower imports the same code."""
    return os.pathsep.join(p or os.getcwd() for p in sys.path if isinstance(p, str))


def launch_local(lead: Callable[[Ranks], T], follow: Callable[..., Any],
                 args: Iterable[Any], world_size: int, device: torch.device,
                 timeout_s: float, host: str = "127.0.0.1",
                 on_spawned: Callable[[list[int]], None] | None = None
                 ) -> tuple[T, dict[int, Any]]:
    """Run one data-parallel job of ``world_size`` ranks on this host.

    ``lead(ranks)`` runs as rank 0 in this process; ``follow(rank, rendezvous,
    *args)`` as each other rank in a child process. ``follow`` is a module-level
    function the child imports; ``args`` are JSON-able; it joins the group
    (``joined``) and returns a JSON-able summary. Returns the leader's result and
    the followers' summaries by rank. ``RankFailed`` when a follower dies or
    raises; the followers are ended whatever happens.
    """
    if follow.__module__ == "__main__" or "." in follow.__qualname__:
        raise ValueError(f"{follow.__qualname__}: a follower is a module-level function of an "
                         "importable module (not __main__), which the rank process imports")
    store, rendezvous = serve(host, world_size, timeout_s)
    target = f"{follow.__module__}:{follow.__qualname__}"
    command = [sys.executable, "-m", FOLLOWER_MODULE, target, json.dumps(asdict(rendezvous)),
               json.dumps(list(args)), str(os.getpid())]
    env = {**os.environ, "PYTHONPATH": _python_path()}
    followers = _Followers({r: subprocess.Popen([*command, str(r)], env=env)
                            for r in range(1, world_size)}, store)
    try:
        if on_spawned is not None:
            on_spawned(followers.pids())
        # init_process_group would wait the whole timeout for a rank that died loading
        followers.wait_until(
            lambda: store.check([READY_KEY.format(rank=r) for r in range(1, world_size)]),
            timeout_s, "the ranks did not all start")
        try:
            with joined(rendezvous, 0, device, store) as ranks:
                result = lead(ranks)
        except Exception as exc:
            # a peer's death shows here as a failed collective: say which rank died
            grace = PEER_EXIT_GRACE_S if isinstance(exc, RuntimeError) else 0.0
            failed = followers.failure(grace)
            if failed is not None:
                raise failed from exc
            raise
        followers.wait_until(lambda: all(p.poll() == 0 for p in followers.procs.values()),
                             FOLLOWER_EXIT_S, "the other ranks did not end after rank 0")
        return result, {r: json.loads(store.get(DONE_KEY.format(rank=r)).decode())
                        for r in range(1, world_size)}
    finally:
        followers.end()
