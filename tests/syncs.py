"""Finding host–device synchronisation in training steps, on any machine.

On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` makes every synchronising
call raise. A CPU has no device to wait for, so ``ScalarReads`` records, below
autograd, the ops that would make the host wait for a GPU: reading a value
back (``item``, ``bool(t)``, ``float(t)``, ``tolist`` → ``_local_scalar_dense``),
ops whose output size depends on the data (``nonzero``, ``masked_select``,
boolean-mask indexing, ``unique``…) and, on CUDA, copies to the GPU from
pageable host memory (the driver drains the stream before those, which the
debug mode does not report). ``StepWindows`` switches the recording
(or CUDA's debug mode) on for the training steps only: from the start of an
epoch to the end of its last step; validation, metric flushes and checkpoints
may read values back.

A CPU run takes a few host-only paths that an accelerator does not (reads of
tensors that then live on the host), so ``HOST_READS`` lists the places that
may read on CPU, each with its reason.
"""

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from app.ml.training import Progress, TrainHooks

APP = str(Path(__file__).resolve().parents[1] / "app")
_WRAPPERS = ("/torch/_dynamo/", "/torch/_compile.py", "/torch/utils/_")

# ops that need the value (or the size) of a tensor's data on the host
SYNCING = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "masked_select",
           "_unique", "_unique2", "unique_dim", "unique_consecutive", "equal",
           "repeat_interleave"}

# function → reason: reads that happen on a CPU run only, of tensors on the host.
# Matched against the innermost frame in app/ and the innermost frame overall.
HOST_READS = {
    # manifold mixup draws its layer from the host generator, on the host by design
    "_manifold": "the manifold layer is drawn on the host (host generator)",
    # the CPU fast path of a shared cutmix box reads the box; on CUDA the
    # boxes stay on the device and go through a masked where
    "paste_boxes": "CPU-only fast path (boxes.device.type == 'cpu')",
    # F.one_hot checks class ids against num_classes for CPU tensors only
    "soft_targets": "F.one_hot's range check (CPU tensors only)",
    # optimizers keep step counts on the host unless fused (as they are on CUDA)
    "_get_value": "a non-fused optimizer's step count, a host tensor",
}


@dataclass
class Read:
    op: str
    where: str  # innermost frame in app/, else the innermost frame
    origin: str  # the innermost Python frame
    stack: str

    @property
    def on_host(self) -> bool:
        """One of ``HOST_READS``: no device sync on an accelerator."""
        return any(place.rsplit(" ", 1)[-1] in HOST_READS for place in (self.where, self.origin))


def _pageable_copy(name: str, args: tuple, kwargs: dict) -> bool:
    """A copy from pageable host memory to a GPU: CUDA drains the stream before it."""
    if name == "_to_copy":
        source, target = args[0], kwargs.get("device")
    elif name == "copy_":
        target, source = args[0].device, args[1]
    else:
        return False
    return (isinstance(source, torch.Tensor) and source.device.type == "cpu"
            and target is not None and torch.device(target).type == "cuda"
            and source.numel() > 0 and not source.is_pinned())


def _bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
               for i in indices or ())


class ScalarReads(TorchDispatchMode):
    """Records every op of ``SYNCING`` (and boolean-mask indexing) while ``active``."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.reads: list[Read] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        if self.active and (name in SYNCING or _pageable_copy(name, args, kwargs or {})
                            or (name in ("index", "index_put", "index_put_")
                                and _bool_index(args))):
            # torch's wrappers (the dynamo guard on .item(), context managers) aside
            frames = [f for f in traceback.extract_stack()[:-1]
                      if not any(part in f.filename for part in _WRAPPERS)]
            mine = [f for f in frames if f.filename.startswith(APP)]
            self.reads.append(Read(name, _place(mine[-1] if mine else frames[-1]),
                                   _place(frames[-1]),
                                   "".join(traceback.format_list(frames[-10:]))))
        return func(*args, **(kwargs or {}))

    def device_reads(self) -> list[Read]:
        """The reads outside ``HOST_READS``: what would sync a GPU."""
        return [r for r in self.reads if not r.on_host]


def _place(frame: traceback.FrameSummary) -> str:
    return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"


@dataclass
class StepWindows(TrainHooks):
    """Calls ``switch(True)`` when an epoch's steps begin and ``switch(False)`` after
    its last step, so only the steps are watched; counts the steps seen."""

    switch: Callable[[bool], None]
    steps_per_epoch: int
    epochs: int
    steps: int = 0
    starts: list[str] = field(default_factory=list)

    def on_start(self, device: str, total_steps: int) -> None:
        self.starts.append(device)
        self.switch(True)

    def on_progress(self, progress: Progress) -> None:
        self.steps += 1
        if progress.step % self.steps_per_epoch == 0:
            self.switch(False)  # validation and the flush come next

    def on_checkpoint(self, epoch: int, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None:
        if epoch < self.epochs and self.steps == epoch * self.steps_per_epoch:
            self.switch(True)  # the next epoch's steps
