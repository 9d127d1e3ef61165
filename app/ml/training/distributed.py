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
  once; ``app.ml.training.launch`` then ends the rest and raises ``RankFailed``.
- **Resume.** Rank 0's resume point also holds every other rank's generator
  states (``name@rank``) and the world size; a run resumes with the same one.

With ``SOLO`` (one process) every method is the identity and the loop runs
exactly as it did before data parallelism existed.
"""

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from app.ml.resume import ResumePoint

# a rank > 0 sets it once its data is loaded, before it joins the group
READY_KEY = "mixlab/ready/{rank}"
# a rank > 0 sets it once it has left the group; rank 0 keeps its store up until then
LEFT_KEY = "mixlab/left/{rank}"


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


def connect(rendezvous: Rendezvous) -> dist.TCPStore:
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
        store = connect(rendezvous)
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
    # Reached on a normal exit only. Rank 0's store dies with its process; a rank
    # still leaving the group then aborts (gloo loses the store), so rank 0 waits
    # for every rank's word.
    if rank > 0:
        store.set(LEFT_KEY.format(rank=rank), "1")
    else:
        store.wait([LEFT_KEY.format(rank=r) for r in range(1, rendezvous.world_size)])
