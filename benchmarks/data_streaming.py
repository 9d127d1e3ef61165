"""Data streaming: training samples/s with rows streamed from shards against the
tensor-resident path, on data that fits both (issue 13, item 4).

What is measured
----------------
Data: a synthetic, seeded CIFAR-shaped set (3x32x32 uint8, 10 classes, a
per-class colour plus noise): ``--train-size`` training images (default
20,000) and 2,000 val + 2,000 test, written once as a sharded prepared dataset
(``app.ml.data.shards``) of ``--shard-bytes`` shards (default 4 MiB, ~1,365
images: 15 train shards).

Sides, each one ``app.ml.training.train`` call (1 epoch, mixup alpha=1, AdamW
3e-3, batch 128, no augmentation; validation and test included):

- ``resident``: the dataset read into tensors once, before the rounds
  (``to_resident``; that read is timed apart, as ``load``), and held, as a
  worker holds data that fits — today's path;
- ``streamed``: the same shards opened and streamed (a shuffle window of
  ``--window-bytes``, default 16 MiB = 4 shards, so the epoch runs over 4
  windows; the background reader 4 batches ahead), page cache warm;
- ``cold``: as ``streamed`` after ``posix_fadvise(DONTNEED)`` on the shard
  files, so the epoch reads them from disk (only this benchmark's files are
  evicted; nothing system-wide is dropped).

Two models: ``cnn`` (SmallCNN width 32, depth 3: compute-bound on a CPU, as
real training is) and ``tiny`` (SmallCNN width 4, depth 1: a step costs
little, so the data path shows). The ratio is a side's training-epoch
samples/s (train rows / time from ``on_start`` to the last ``on_progress``)
over the resident side's in the same round; sides are interleaved, the order
alternating per round; the summary is the median (min, max) over rounds. An
untimed warm-up (every side and model, twice, on 4,096 images) runs first:
with 2 threads the first epochs of a process run several times slower.
The resident copy stays allocated throughout, so every side trains with the
same allocator state (a copy allocated afresh before each resident call made
that side ~20 % slower in early runs — malloc, not the data path).

Usage (from the repository root)::

    .venv/bin/python benchmarks/data_streaming.py            # 20,000 images, 3 rounds
    .venv/bin/python benchmarks/data_streaming.py --quick    # 5,000 images, 2 rounds
    .venv/bin/python benchmarks/data_streaming.py --device cuda --train-size 50000

The last lines are ``RESULT data_streaming[<model>]: ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make ``app`` importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml.data.prepared import PreparedDataset
from app.ml.data.shards import FolderSource, ShardWriter, open_sharded
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec
from app.ml.training import Progress, TrainHooks, TrainSpec, train

CLASSES = 10
SHAPE = (3, 32, 32)
MODELS = {"cnn": ModelSpec(width=32, depth=3), "tiny": ModelSpec(width=4, depth=1)}
SIDES = ("resident", "streamed", "cold")


def write_dataset(folder: Path, n_train: int, n_eval: int, shard_bytes: int) -> None:
    """Chunk by chunk, as a dataset larger than memory would be written."""
    gen = torch.Generator().manual_seed(0)
    colours = torch.randint(40, 200, (CLASSES, 3, 1, 1), generator=gen)
    writer = ShardWriter(folder, [f"c{i}" for i in range(CLASSES)], {"image": "image"},
                         {"synthetic": "benchmarks/data_streaming.py"}, shard_bytes)
    for code, n in enumerate((n_train, n_eval, n_eval)):
        for start in range(0, n, 8192):
            k = min(8192, n - start)
            y = torch.randint(0, CLASSES, (k,), generator=gen)
            noise = torch.randint(-40, 40, (k, *SHAPE), generator=gen)
            x = (colours[y] + noise).clamp(0, 255).to(torch.uint8)
            writer.add({"image": x}, y, torch.full((k,), code, dtype=torch.uint8))
    writer.close()


def evict(folder: Path) -> None:
    """Drop this folder's files from the page cache (unmapped pages only)."""
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class Timing(TrainHooks):
    def __init__(self) -> None:
        self.t_start = self.t_last = 0.0

    def on_start(self, device: str, total_steps: int) -> None:
        self.t_start = time.perf_counter()

    def on_progress(self, progress: Progress) -> None:
        self.t_last = time.perf_counter()


def run_side(side: str, folder: Path, model: ModelSpec, args: argparse.Namespace,
             seed: int, resident: PreparedDataset) -> dict[str, Any]:
    if side == "cold":
        evict(folder)
    sharded = open_sharded(FolderSource(folder), window_bytes=args.window_bytes,
                           prefetch_batches=args.prefetch)
    data: PreparedDataset = resident if side == "resident" else sharded
    n_train = int((data.split == 0).sum())
    spec = TrainSpec(epochs=1, batch_size=args.batch_size, optimizer="adamw", lr=3e-3,
                     weight_decay=0.01, schedule="constant", augment=(), seed=seed,
                     device=args.device, calibration="none")
    hooks = Timing()
    t1 = time.perf_counter()
    result = train(data, model, MixSpec(method="mixup", alpha=1.0), spec, hooks)
    t2 = time.perf_counter()
    sharded.close()
    train_s = hooks.t_last - hooks.t_start
    return {"call_s": t2 - t1, "setup_s": hooks.t_start - t1,
            "train_s": train_s, "samples_per_s": n_train / train_s,
            "test_acc": round(result.metrics["test_acc"], 4)}


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-size", type=int, default=None, help="default 20,000")
    p.add_argument("--eval-size", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=None, help="default 3")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--shard-bytes", type=int, default=4 * 2**20)
    p.add_argument("--window-bytes", type=int, default=16 * 2**20)
    p.add_argument("--prefetch", type=int, default=4, help="batches read ahead")
    p.add_argument("--models", default="cnn,tiny")
    p.add_argument("--device", default="cpu",
                   help="training device: cpu, cuda (the resident side then holds the data "
                        "on the GPU; the streamed ones pin batches and copy them)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default torch's: the cores)")
    p.add_argument("--quick", action="store_true", help="5,000 images, 2 rounds")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.train_size = args.train_size or (5000 if args.quick else 20000)
    args.rounds = args.rounds or (2 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    info = machine()
    print("== mixlab data streaming: streamed from shards vs tensor-resident (issue 13) ==")
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
          f"({info['torch_threads']} threads), load average {os.getloadavg()[0]:.2f}, "
          f"device {args.device}")
    with tempfile.TemporaryDirectory(prefix="mixlab-stream-bench-") as tmp:
        folder = Path(tmp) / "prepared"
        t = time.perf_counter()
        write_dataset(folder, args.train_size, args.eval_size, args.shard_bytes)
        size = sum(p.stat().st_size for p in folder.iterdir())
        shards = len(list(folder.iterdir())) - 1
        print(f"data:    {args.train_size:,} train + {args.eval_size:,} val + {args.eval_size:,} "
              f"test 3x32x32 uint8, {size / 2**20:.0f} MiB in {shards} shards of "
              f"{args.shard_bytes / 2**20:g} MiB (written in {time.perf_counter() - t:.1f} s); "
              f"window {args.window_bytes / 2**20:g} MiB, reader {args.prefetch} batches ahead")
        t = time.perf_counter()
        resident = open_sharded(FolderSource(folder)).to_resident()
        load_s = time.perf_counter() - t
        print(f"load:    the resident copy read from the shards in {load_s:.2f} s")
        warm = Path(tmp) / "warm-up"
        write_dataset(warm, 4096, 256, args.shard_bytes // 4)
        warm_resident = open_sharded(FolderSource(warm)).to_resident()
        t = time.perf_counter()
        for _ in range(2):
            for name in models:
                for side in SIDES:
                    run_side(side, warm, MODELS[name], args, 0, warm_resident)
        print(f"warm-up: {time.perf_counter() - t:.1f} s (untimed, 4,096 images)")
        rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
        print(f"\n{'model':<6}{'round':>6} {'order':<26}" +
              "".join(f"{s + ' /s':>14}" for s in SIDES) +
              "".join(f"{s + '/res':>13}" for s in SIDES[1:]) + f"{'load':>7}")
        for i in range(args.rounds):
            for name in models:
                order = list(SIDES) if i % 2 == 0 else list(SIDES)[::-1]
                load = os.getloadavg()[0]
                res = {side: run_side(side, folder, MODELS[name], args, i, resident)
                       for side in order}
                rounds[name].append(res)
                base = res["resident"]["samples_per_s"]
                print(f"{name:<6}{i + 1:>6} {','.join(order):<26}" +
                      "".join(f"{res[s]['samples_per_s']:>14,.0f}" for s in SIDES) +
                      "".join(f"{res[s]['samples_per_s'] / base:>12.3f}x"
                              for s in SIDES[1:]) +
                      f"{load:>7.2f}", flush=True)
    summary: dict[str, Any] = {}
    print()
    for name in models:
        rs = rounds[name]
        summary[name] = {
            "samples_per_s": {s: _stats([r[s]["samples_per_s"] for r in rs]) for s in SIDES},
            "ratio": {s: _stats([r[s]["samples_per_s"] / r["resident"]["samples_per_s"]
                                 for r in rs]) for s in SIDES[1:]},
            "test_acc": {s: rs[-1][s]["test_acc"] for s in SIDES}}
        ratio = summary[name]["ratio"]
        print(f"RESULT data_streaming[{name}]: streamed/resident samples/s = "
              f"{ratio['streamed']['median']:.2f}x (min {ratio['streamed']['min']:.2f}, "
              f"max {ratio['streamed']['max']:.2f}), cold {ratio['cold']['median']:.2f}x "
              f"(min {ratio['cold']['min']:.2f}, max {ratio['cold']['max']:.2f}); resident "
              f"{summary[name]['samples_per_s']['resident']['median']:,.0f}/s, rounds="
              f"{len(rs)}, n_train={args.train_size}")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "config": vars(args) | {
            "json": str(args.json)}, "resident_load_s": load_s, "rounds": rounds,
            "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
