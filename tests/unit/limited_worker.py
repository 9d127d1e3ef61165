"""A worker's training under a memory limit, for ``test_data_larger_than_memory``.

Run as ``python -m tests.unit.limited_worker LIMIT_BYTES ARTIFACT_URL KEY``
from the repository root: sets ``RLIMIT_DATA`` to LIMIT_BYTES before anything
else, opens the prepared dataset as a worker does
(``prepared_data.open_for_training``, budget from ``MIXLAB_*`` settings) and
trains it; prints one JSON line: the outcome (``ok`` or the exception's name),
the path taken, metrics and the peak of the process's data segment it saw.
"""

import resource
import sys

LIMIT = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_DATA, (LIMIT, LIMIT))

import json  # noqa: E402 - after the limit: everything below runs under it
import time  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402

from app.ml.data.shards import ShardedDataset  # noqa: E402
from app.ml.mixing import MixSpec  # noqa: E402
from app.ml.models import ModelSpec  # noqa: E402
from app.ml.training import TrainHooks, TrainSpec, train  # noqa: E402
from app.services.prepared_data import open_for_training  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.storage import ArtifactStore  # noqa: E402


def vm_data() -> int:
    """The data segment's size now (what RLIMIT_DATA bounds), in bytes."""
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmData:"))
    return int(line.split()[1]) * 1024


class PeakHooks(TrainHooks):
    """Samples the data segment at every epoch's end."""

    def __init__(self) -> None:
        self.peak = vm_data()

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.peak = max(self.peak, vm_data())


def main() -> None:
    url, key = sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    out: dict[str, object] = {"limit": LIMIT, "baseline": vm_data()}
    try:
        start = time.perf_counter()
        data = open_for_training(ArtifactStore(url), key, Settings())
        out["path"] = "streamed" if isinstance(data, ShardedDataset) else "resident"
        hooks = PeakHooks()
        result = train(data, ModelSpec(kind="multimodal", dim=16),
                       MixSpec(method="mixup", alpha=0.2),
                       TrainSpec(epochs=1, batch_size=1024, optimizer="adamw", lr=3e-3,
                                 calibration="none", augment=(), device="cpu"), hooks)
        data.close()
        out.update(outcome="ok", seconds=time.perf_counter() - start,
                   test_acc=result.metrics["test_acc"], peak=max(hooks.peak, vm_data()))
    except Exception as exc:  # the parent reads what went wrong
        out.update(outcome=type(exc).__name__, message=str(exc)[:300],
                   where=traceback.format_exc()[-1500:])
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
