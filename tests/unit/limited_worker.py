"""A worker's training under a memory limit, for ``test_data_larger_than_memory``.

``python -m tests.unit.limited_worker LIMIT_BYTES ARTIFACT_URL KEY`` (from the
repository root) sets ``RLIMIT_DATA`` to LIMIT_BYTES before anything else,
opens the prepared dataset at KEY as a worker does
(``prepared_data.open_for_training``, its budget from the ``MIXLAB_*``
settings) and trains one epoch of a small multimodal model on it; it prints
one JSON line: the outcome (``ok`` or the exception's name), the path taken,
the test accuracy and the data segment's size. ``... probe`` prints only the
data segment's size after the imports (what a limit must leave room above).
"""

import resource
import sys

if sys.argv[1] != "probe":
    LIMIT = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_DATA, (LIMIT, LIMIT))

# imported after the limit: everything below runs under it
import json
import time
import traceback

import torch

from app.ml.data.shards import ShardedDataset
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec
from app.ml.training import TrainHooks, TrainSpec, train
from app.services.prepared_data import open_for_training
from app.settings import Settings
from app.storage import ArtifactStore


def vm_data() -> int:
    """The data segment's size now (what RLIMIT_DATA bounds), in bytes."""
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmData:"))
    return int(line.split()[1]) * 1024


class PeakHooks(TrainHooks):
    """Samples the data segment every 50 steps and at each epoch's end."""

    def __init__(self) -> None:
        self.peak, self.steps = vm_data(), 0

    def on_progress(self, progress: object) -> None:
        self.steps += 1
        if self.steps % 50 == 0:
            self.peak = max(self.peak, vm_data())

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.peak = max(self.peak, vm_data())


def main() -> None:
    if sys.argv[1] == "probe":
        print(json.dumps({"baseline": vm_data()}), flush=True)
        return
    url, key = sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    out: dict[str, object] = {"limit": LIMIT, "baseline": vm_data()}
    try:
        start = time.perf_counter()
        data = open_for_training(ArtifactStore(url), key, Settings())
        out["path"] = "streamed" if isinstance(data, ShardedDataset) else "resident"
        out["train_rows"] = int((data.split == 0).sum())
        hooks = PeakHooks()
        result = train(data, ModelSpec(kind="multimodal", dim=16),
                       MixSpec(method="mixup", alpha=0.2),
                       TrainSpec(epochs=1, batch_size=1024, optimizer="adamw", lr=3e-3,
                                 calibration="none", augment=(), device="cpu"), hooks)
        data.close()
        out.update(outcome="ok", seconds=time.perf_counter() - start, steps=result.steps,
                   test_acc=result.metrics["test_acc"], peak=max(hooks.peak, vm_data()))
    except Exception as exc:  # the parent reads what went wrong
        out.update(outcome=type(exc).__name__, message=str(exc)[:300],
                   where=traceback.format_exc()[-1500:])
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
