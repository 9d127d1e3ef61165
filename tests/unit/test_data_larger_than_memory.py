"""A worker trains a prepared dataset over twice the memory it may use.

The worker process (``tests/unit/limited_worker.py``: what the worker does
once it holds a run — open the dataset with ``open_for_training``, train) runs
under ``RLIMIT_DATA``, which bounds the process's own memory: heap,
anonymous and private writable mappings. It does not count read-only file
maps, whose pages are the kernel's page cache — which is the point of
mapping the shards. ``RLIMIT_AS`` cannot be used: it counts address space,
and torch's libraries and thread stacks alone reserve more than the data
here; a cgroup's ``memory.max`` (which counts page cache, reclaimably)
would need a writable cgroup tree this machine does not give tests.

The limit is the probe's footprint (torch and mixlab imported, ~235 MB here)
plus 176 MiB for training, and the dataset is 2.05 times the limit (~860 MB),
so it could not be held even once. The same run told to hold its data
(``MIXLAB_RESIDENT_DATA_BYTES`` huge) fails with ``MemoryError``: the limit bites.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from app.ml.data.shards import INDEX, ShardWriter

ROOT = Path(__file__).resolve().parents[2]
HEADROOM = 176 * 2**20
FEATURES = 192  # float64: 1.5 KiB a row, cheap enough to train ~600k rows in seconds
CLASSES = 4


def _worker(*args: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, "-m", "tests.unit.limited_worker", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write(folder: Path, total_bytes: int) -> int:
    """Rows of Gaussian noise plus a class centre (learnable, not memorisable in
    an epoch), 2 % val and 2 % test, written chunk by chunk: this process never
    holds more than a chunk and a shard of it. Returns the inputs' bytes."""
    gen = torch.Generator().manual_seed(0)
    chunk = 8192
    noise = torch.randn(chunk, FEATURES, generator=gen, dtype=torch.float64)
    centres = 0.3 * torch.randn(CLASSES, FEATURES, generator=gen, dtype=torch.float64)
    writer = ShardWriter(folder, [f"c{i}" for i in range(CLASSES)], {"x": "tabular"},
                         shard_bytes=16 * 2**20)
    rows = -(-total_bytes // (FEATURES * 8))
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        y = torch.randint(0, CLASSES, (n,), generator=gen)
        split = torch.zeros(n, dtype=torch.uint8)
        draw = torch.rand(n, generator=gen)
        split[draw < 0.02], split[draw > 0.98] = 1, 2
        writer.add({"x": noise[:n].roll(start // chunk, dims=1) + centres[y]}, y, split)
    writer.close()
    return rows * FEATURES * 8


def test_a_dataset_twice_the_workers_memory_limit_trains_streamed(tmp_path):
    baseline = _worker("probe")["baseline"]
    limit = baseline + HEADROOM
    artifacts = tmp_path / "artifacts"
    folder = artifacts / "datasets" / "big" / "prepared"
    size = _write(folder, int(2.05 * limit))
    assert size >= 2 * limit
    key = f"datasets/big/prepared/{INDEX}"

    # the default budget follows the limit (a quarter of it), so the data streams
    streamed = _worker(str(limit), artifacts.as_uri(), key)
    assert streamed["outcome"] == "ok", streamed
    assert streamed["path"] == "streamed"
    # one epoch over every train row, which alone are well over the limit
    assert streamed["train_rows"] * FEATURES * 8 > 1.9 * limit
    assert streamed["steps"] == -(-streamed["train_rows"] // 1024)
    assert streamed["test_acc"] > 0.6, streamed  # chance is 0.25
    assert streamed["peak"] <= limit

    resident = _worker(str(limit), artifacts.as_uri(), key,
                       env={"MIXLAB_RESIDENT_DATA_BYTES": str(10**12)})
    assert resident["outcome"] == "MemoryError", resident
    assert "do not fit in this process's memory" in resident["message"]
    assert "path" not in resident  # it failed reading the data in, before training
    print(json.dumps({"limit": limit, "data_bytes": size, "streamed": streamed}))  # -s shows it
