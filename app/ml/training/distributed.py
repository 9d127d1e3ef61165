"""Data-parallel training: one run over several processes (ranks), with
PyTorch's own machinery (``torch.distributed``, ``DistributedDataParallel``,
``torch.multiprocessing``).

Semantics (``docs/distributed.md`` says the same for users):

- **Global batch.** ``training.batch_size`` is the global batch: every step,
  all ranks draw the same permutation of the training rows (the ``order``
  generator is seeded alike everywhere) and rank ``r`` of ``W`` takes the rows
  ``r, r + W, …`` of the step's batch. Steps per epoch, the learning-rate
  schedule and ``lr`` are those of one process; each rank's loss is weighted by
  its share of the batch before DDP averages the gradients, so the update is
  the gradient of the global batch's mean loss.
- **Mixing** happens within each rank's share (partners from the local batch,
  as timm's ``Mixup`` does), with that rank's own generators: rank 0 keeps the
  seeds of a one-process run, rank ``r`` > 0 derives its own from the run's
  seed and ``r`` (``rank_seed``). BatchNorm normalises with the local batch's
  statistics (no SyncBatchNorm, timm's default); DDP gives every rank rank 0's
  running statistics at each forward.
- **Metrics.** The training losses are summed over the ranks' shares;
  validation, the final test and calibration run once, on rank 0, on the whole
  split, and rank 0 sends the figures to the others (early stopping and
  ``checkpoint: best`` then decide alike everywhere). Only rank 0 calls the
  hooks: progress, metrics, checkpoints, the log.
- **Stopping.** Every step the ranks agree, by one all-reduce on the CPU, on
  whether rank 0's hooks asked to stop (cancel, time limit): all stop at the
  same step.
- **Failure.** A collective waits at most ``Rendezvous.timeout_s``; a rank
  that dies closes its connections, so the others' next collective fails at
  once; ``launch_local`` then tears the rest down and raises ``RankFailed``.
- **Resume.** Rank 0's resume point also holds every other rank's generator
  states (``name@rank``) and the world size; a run resumes with the same one.

With ``SOLO`` (one process) every method is the identity and the loop runs
exactly as it did before data parallelism existed.
"""

import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from app.ml.resume import ResumePoint

log = logging.getLogger(__name__)

T = TypeVar("T")
# what ProcessContext.join raises for a failed process
ProcessFailure = (mp.ProcessRaisedException, mp.ProcessExitedException)
READY_KEY = "mixlab/ready/{rank}"
DONE_KEY = "mixlab/done/{rank}"
# how long the leader waits for a failed collective's peer to be seen dead
PEER_EXIT_GRACE_S = 10.0
# how long followers get to end by themselves once the leader is done
FOLLOWER_EXIT_S = 60.0
# SIGTERM → SIGKILL grace when tearing followers down
FOLLOWER_GRACE_S = 5.0


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rank_seed(seed: int, stream: int, rank: int) -> int:
    """The seed of random stream ``stream`` on ``rank``: rank 0 keeps a one-process
    run's (``seed + stream``), the others get unrelated 63-bit seeds."""
    if rank == 0:
        return seed + stream
    digest = hashlib.blake2b(f"mixlab/{seed}/{stream}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _Replica(DistributedDataParallel):
    """DDP that still answers the wrapped model's own attributes (a retriever's
    ``scale()``), since objectives reach their model through one attribute."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


@dataclass(frozen=True)
class Rendezvous:
    """Where the ranks of one run meet: rank 0's TCPStore, and how many they are."""

    host: str
    port: int
    world_size: int
    timeout_s: float = 1800.0


class Ranks:
    """This process's place in a data-parallel run (see the module docstring)."""

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | None = None,
                 backend: str = "", control: Any = None) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.backend = backend
        self.control = control  # a gloo group: control traffic stays on the host

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    # --- the batch ------------------------------------------------------------
    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch."""
        return rows[self.rank::self.world_size] if self.parallel else rows

    def for_backward(self, loss: torch.Tensor, n_local: int, n_global: int) -> torch.Tensor:
        """The local mean loss weighted so that DDP's average over the ranks is the
        global batch's mean (the last batch may split unevenly)."""
        return loss * (n_local * self.world_size / n_global) if self.parallel else loss

    def share(self, n_local: int, n_global: int) -> float:
        """This rank's share of a global batch (summed over the ranks: 1)."""
        return n_local / n_global if self.parallel else 1.0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model every training step runs through: DDP when parallel (it
        broadcasts rank 0's weights and buffers, then averages the gradients)."""
        if not self.parallel:
            return model
        ids = [self.device.index] if self.device is not None and self.device.type == "cuda" \
            else None
        return _Replica(model, device_ids=ids)

    def seed_process(self, seed: int) -> None:
        """Give ranks > 0 their own global RNG (dropout, modality dropout)."""
        if self.rank > 0:
            torch.manual_seed(rank_seed(seed, 5, self.rank))

    # --- agreement ------------------------------------------------------------
    def any(self, flag: bool) -> bool:
        """True on every rank if it is on any (one CPU all-reduce)."""
        if not self.parallel:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item())

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (float64, on the CPU)."""
        if not self.parallel:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, group=self.control)
        return tensor.tolist()  # type: ignore[no-any-return]

    def from_leader(self, value: Any) -> Any:
        """Rank 0's JSON-able ``value`` on every rank (others pass anything)."""
        if not self.parallel:
            return value
        blob = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8) \
            if self.is_leader else torch.zeros(0, dtype=torch.uint8)
        size = torch.tensor([blob.numel()], dtype=torch.int64)
        dist.broadcast(size, src=0, group=self.control)
        if not self.is_leader:
            blob = torch.empty(int(size.item()), dtype=torch.uint8)
        dist.broadcast(blob, src=0, group=self.control)
        return json.loads(bytes(blob.numpy()).decode())

    # --- resume points ----------------------------------------------------------
    def gather_rng(self, generators: dict[str, torch.Generator],
                   device: torch.device) -> dict[str, torch.Tensor]:
        """Every other rank's generator states, ``name@rank``, on rank 0 ({} elsewhere);
        called by every rank."""
        if not self.parallel:
            return {}
        states = {name: g.get_state() for name, g in generators.items()}
        states["torch"] = torch.get_rng_state()
        if device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(device)
        names = sorted(states)
        flat = torch.cat([states[n].view(-1) for n in names])  # same layout on every rank
        gathered = [torch.empty_like(flat) for _ in range(self.world_size)] \
            if self.is_leader else None
        dist.gather(flat, gathered, dst=0, group=self.control)
        if gathered is None:
            return {}
        sizes = [states[n].numel() for n in names]
        return {f"{name}@{rank}": part.clone()
                for rank in range(1, self.world_size)
                for name, part in zip(names, gathered[rank].split(sizes), strict=True)}

    def attach(self, point: ResumePoint, others: dict[str, torch.Tensor]) -> ResumePoint:
        """Rank 0's resume point with the other ranks' generator states added."""
        if self.parallel:
            point.generators.update(others)
            point.extra["world_size"] = self.world_size
        return point

    def own_point(self, point: ResumePoint) -> ResumePoint:
        """The resume point as this rank loads it: its own generator states."""
        written = int(point.extra.get("world_size", 1))
        if written != self.world_size:
            raise ValueError(f"training.world_size: the resume point was written by {written} "
                             f"process(es), this run has {self.world_size}")
        if self.rank == 0:
            return point
        suffix = f"@{self.rank}"
        mine = {k.removesuffix(suffix): v for k, v in point.generators.items()
                if k.endswith(suffix)}
        torch_rng, cuda_rng = mine.pop("torch"), mine.pop("cuda", None)
        return replace(point, generators=mine, torch_rng=torch_rng,
                       cuda_rng=[cuda_rng] if cuda_rng is not None else [])

    def describe(self, device_name: str) -> str:
        """``2× cpu (1 thread, fp32, gloo)`` from one rank's ``cpu (1 thread, fp32)``."""
        if not self.parallel:
            return device_name
        head, _, rest = device_name.partition(" ")
        inner = rest[1:-1] if rest.startswith("(") and rest.endswith(")") else rest
        details = ", ".join(p for p in (inner, self.backend) if p)
        return f"{self.world_size}× {head.split(':')[0]} ({details})"


SOLO = Ranks()


def _store(rendezvous: Rendezvous, rank: int) -> dist.TCPStore:
    """A client of rank 0's store (rank 0 makes the store itself: ``serve``)."""
    return dist.TCPStore(rendezvous.host, rendezvous.port, is_master=False,
                         timeout=timedelta(seconds=rendezvous.timeout_s))


def serve(host: str, world_size: int, timeout_s: float, port: int = 0
          ) -> tuple[dist.TCPStore, Rendezvous]:
    """Rank 0's TCPStore on ``host`` (port 0: a free one) and the rendezvous it makes."""
    store = dist.TCPStore(host, port, None, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=timeout_s))
    return store, Rendezvous(host, store.port, world_size, timeout_s)


@contextmanager
def joined(rendezvous: Rendezvous, rank: int, device: torch.device,
           store: dist.Store | None = None) -> Iterator[Ranks]:
    """This process as ``rank`` of the run's process group (left on exit). Rank 0
    passes the store it serves; the others connect to it and announce themselves
    (``READY_KEY``) first, so a leader can tell a slow rank from a dead one."""
    if store is None:
        store = _store(rendezvous, rank)
    if rank > 0:
        store.set(READY_KEY.format(rank=rank), str(os.getpid()))
    backend = backend_for(device)
    dist.init_process_group(backend, store=store, rank=rank, world_size=rendezvous.world_size,
                            timeout=timedelta(seconds=rendezvous.timeout_s),
                            device_id=device if device.type == "cuda" else None)
    try:
        # NCCL moves CUDA tensors only; flags and figures go through gloo
        control = dist.new_group(backend="gloo") if backend == "nccl" else None
        yield Ranks(rank, rendezvous.world_size, device, backend, control)
    finally:
        dist.destroy_process_group()


class RankFailed(RuntimeError):
    """A rank of a data-parallel run died or raised, which ends the attempt.
    ``died``: killed by a signal or exited without a Python error (the run may
    resume from its checkpoint); otherwise ``detail`` is the rank's traceback."""

    def __init__(self, rank: int, message: str, died: bool, detail: str = "") -> None:
        super().__init__(message)
        self.rank, self.died, self.detail = rank, died, detail


def _as_failure(exc: mp.ProcessRaisedException | mp.ProcessExitedException) -> RankFailed:
    rank = exc.error_index + 1
    if isinstance(exc, mp.ProcessRaisedException):
        lines = exc.msg.strip().splitlines()
        return RankFailed(rank, f"rank {rank} failed: {lines[-1] if lines else 'an error'}",
                          died=False, detail=exc.msg)
    signal_name = getattr(exc, "signal_name", None)
    how = f"was killed by {signal_name}" if signal_name \
        else f"exited with code {getattr(exc, 'exit_code', '?')}"
    return RankFailed(rank, f"rank {rank} (pid {exc.error_pid}) {how}", died=True)


def _failure(context: mp.ProcessContext, timeout: float) -> RankFailed | None:
    """The first follower seen failed within ``timeout`` (torch then terminates
    the others), or None."""
    try:
        context.join(timeout=timeout, grace_period=FOLLOWER_GRACE_S)
    except ProcessFailure as exc:
        return _as_failure(exc)
    return None


def _wait_ready(store: dist.TCPStore, context: mp.ProcessContext, world_size: int,
                timeout_s: float) -> None:
    """Until every follower has loaded its data and announced itself; RankFailed if
    one died first (init_process_group would wait the whole timeout for it)."""
    keys = [READY_KEY.format(rank=r) for r in range(1, world_size)]
    deadline = time.monotonic() + timeout_s
    while not store.check(keys):
        failed = _failure(context, 0.05)  # also the pause between two looks
        if failed is not None:
            raise failed
        if time.monotonic() > deadline:
            raise TimeoutError(f"the ranks did not all start within {timeout_s} s")


def _follower(index: int, follow: Callable[..., dict[str, Any]], rendezvous: Rendezvous,
              args: tuple[Any, ...]) -> None:
    """A spawned rank: run ``follow(rank, rendezvous, *args)``, then leave its
    summary (JSON) in the store for the leader."""
    rank = index + 1
    summary = follow(rank, rendezvous, *args)
    _store(rendezvous, rank).set(DONE_KEY.format(rank=rank), json.dumps(summary))


def launch_local(lead: Callable[[Ranks], T], follow: Callable[..., dict[str, Any]],
                 args: tuple[Any, ...], world_size: int, device: torch.device,
                 timeout_s: float, host: str = "127.0.0.1",
                 on_spawned: Callable[[list[int]], None] | None = None
                 ) -> tuple[T, dict[int, Any]]:
    """Run one data-parallel job on this host: ``lead(ranks)`` as rank 0 in this
    process, and ``follow(rank, rendezvous, *args)`` as ranks 1…W-1 in processes
    spawned here (a picklable top-level function that calls ``joined`` and
    returns a JSON-able summary). Returns the leader's result and the followers'
    summaries by rank.

    Raises ``RankFailed`` when a follower dies or raises (the others are torn
    down); when the leader raises, the followers are terminated. A follower
    whose parent dies gets SIGINT (torch sets the parent-death signal).
    """
    store, rendezvous = serve(host, world_size, timeout_s)
    context = mp.start_processes(_follower, args=(follow, rendezvous, args),
                                 nprocs=world_size - 1, join=False, start_method="spawn")
    try:
        if on_spawned is not None:
            on_spawned(context.pids())
        _wait_ready(store, context, world_size, timeout_s)
        try:
            with joined(rendezvous, 0, device, store) as ranks:
                result = lead(ranks)
        except Exception as exc:
            # a peer's death shows here as a failed collective: say which rank died
            grace = PEER_EXIT_GRACE_S if isinstance(exc, RuntimeError) else 0.0
            failed = _failure(context, grace)
            if failed is not None:
                raise failed from exc
            raise
        try:
            ended = context.join(timeout=FOLLOWER_EXIT_S, grace_period=FOLLOWER_GRACE_S)
        except ProcessFailure as exc:
            raise _as_failure(exc) from None
        if not ended:
            raise RankFailed(0, f"the other ranks did not end within {FOLLOWER_EXIT_S} s "
                                "of rank 0", died=True)
        summaries = {r: json.loads(store.get(DONE_KEY.format(rank=r)).decode())
                     for r in range(1, world_size)}
        return result, summaries
    finally:
        _terminate(context)


def _terminate(context: mp.ProcessContext) -> None:
    """End the followers still running: SIGTERM, then SIGKILL after a grace."""
    alive = [p for p in context.processes if p.is_alive()]
    for p in alive:
        p.terminate()
    for p in alive:
        p.join(FOLLOWER_GRACE_S)
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGKILL)
            p.join()
