"""Data-parallel training on CPU: ``training.world_size`` 2 against 1 on the same
global batch (issue 13, item 5).

Two questions, on the machine's cores shared fairly: one process with every
core's torch threads against two gloo ranks with ``cores / 2`` threads each.

1. **Correctness.** The same recipe (global batch 64) on scikit-learn's digits
   with 1 and 2 processes, over seeds: two ranks mix within their halves of the
   batch with their own streams and normalise BatchNorm over 32 rows, so the
   runs differ draw by draw; the final test accuracy must agree within the
   seeds' noise (|mean difference| ≤ 2 standard errors of that difference, or
   one point).
2. **Throughput.** One process against two ranks on 1×28×28 synthetic images
   (``train_throughput.py``'s seeded stand-in for Fashion-MNIST), SmallCNN
   width 32, batch 128, mixup α = 1, AdamW: samples/s of the training epochs
   (rank 0's clock, from the first step to the last of each epoch; setup,
   validation and the follower's start-up excluded) and of the whole call
   (start-up included: the second rank is a fresh Python process that imports
   torch and builds its data). Rounds interleave the two and alternate which
   goes first; the ratio is a median of per-round ratios. One process on one
   thread runs too, for context: on a shared machine the two-thread process
   suffers most from other load (its OpenMP threads wait for each other). Not a
   target on a 2-core machine: two ranks there only trade intra-op threads for
   processes and add an all-reduce per step.

Usage (from the repository root)::

    .venv/bin/python benchmarks/data_parallel.py            # ~4 min on 2 cores
    .venv/bin/python benchmarks/data_parallel.py --quick    # smoke run, ~1 min
    .venv/bin/python benchmarks/data_parallel.py --json out.json

The last lines are ``RESULT data_parallel_accuracy: …`` and
``RESULT data_parallel_throughput: …``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make ``app`` importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml.data import load_digits
from app.ml.data.prepared import PreparedDataset
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec
from app.ml.training import Progress, TrainHooks, TrainResult, TrainSpec, train
from app.ml.training.distributed import Ranks, Rendezvous, joined
from app.ml.training.launch import launch_local

CPU = torch.device("cpu")
MIXING = MixSpec("mixup", alpha=1.0)


def recipe(config: dict[str, Any], world_size: int, seed: int) -> TrainSpec:
    return TrainSpec(epochs=config["epochs"], batch_size=config["batch"], seed=seed,
                     device="cpu", world_size=world_size, optimizer="adamw", lr=3e-3,
                     weight_decay=0.01, schedule="constant", augment=(),
                     calibration="none")


def dataset(config: dict[str, Any]) -> PreparedDataset:
    if config["data"] == "digits":
        return load_digits()
    # a sibling script, imported by path (benchmarks/ is not a package)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import synthetic_dataset

    return synthetic_dataset(config["n_train"], 1000, 1000, seed=0)


class EpochClock(TrainHooks):
    """Rank 0's training time: from an epoch's first step to its last progress."""

    def __init__(self) -> None:
        self.epoch_s: list[float] = []
        self._first: float | None = None
        self._last = 0.0

    def on_progress(self, progress: Progress) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = now
        self._last = now

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        assert self._first is not None
        self.epoch_s.append(self._last - self._first)
        self._first = None


def follow(rank: int, rendezvous: Rendezvous, config: dict[str, Any], seed: int,
           threads: int) -> dict[str, Any]:
    """Rank 1 (a process ``launch_local`` starts): the same data and recipe."""
    torch.set_num_threads(threads)
    data = dataset(config)
    with joined(rendezvous, rank, CPU) as ranks:
        result = train(data, ModelSpec(width=config["width"], depth=config["depth"]), MIXING,
                       recipe(config, rendezvous.world_size, seed), ranks=ranks)
    return {"steps": result.steps}


def run(data: PreparedDataset, config: dict[str, Any], world_size: int, seed: int,
        threads: int | None = None) -> tuple[TrainResult, EpochClock, float]:
    """One call; each rank gets ``threads`` torch threads (default: the cores shared out)."""
    threads = threads or max(1, (os.cpu_count() or 1) // world_size)
    torch.set_num_threads(threads)
    model = ModelSpec(width=config["width"], depth=config["depth"])
    clock = EpochClock()
    started = time.perf_counter()
    if world_size == 1:
        result = train(data, model, MIXING, recipe(config, 1, seed), clock)
    else:
        def lead(ranks: Ranks) -> TrainResult:
            return train(data, model, MIXING, recipe(config, world_size, seed), clock,
                         ranks=ranks)

        # this module under its importable name, so the rank process can import ``follow``
        me = importlib.import_module("benchmarks.data_parallel")
        result, _ = launch_local(lead, me.follow, (config, seed, threads), world_size, CPU,
                                 timeout_s=600)
    return result, clock, time.perf_counter() - started


def accuracy(seeds: int, epochs: int) -> dict[str, Any]:
    config = {"data": "digits", "epochs": epochs, "batch": 64, "width": 16, "depth": 3}
    data = dataset(config)
    acc: dict[int, list[float]] = {1: [], 2: []}
    for seed in range(seeds):
        for world_size in (1, 2):
            result, _, wall = run(data, config, world_size, seed)
            acc[world_size].append(result.metrics["test_acc"])
            print(f"digits seed {seed} world_size {world_size}: test_acc "
                  f"{result.metrics['test_acc']:.4f} ({wall:.1f} s, {result.device})", flush=True)
    diff = statistics.mean(acc[2]) - statistics.mean(acc[1])
    se = (statistics.variance(acc[1]) / seeds + statistics.variance(acc[2]) / seeds) ** 0.5 \
        if seeds > 1 else 0.0
    return {"config": config, "test_acc": acc, "diff": diff, "se": se,
            "within_noise": abs(diff) <= max(2 * se, 0.01)}


# (label, world size, torch threads per rank; None: the cores shared out)
VARIANTS = (("W=1", 1, None), ("W=2", 2, None), ("W=1, 1 thread", 1, 1))


def throughput(rounds: int, n_train: int, epochs: int) -> dict[str, Any]:
    config = {"data": "synthetic", "n_train": n_train, "epochs": epochs, "batch": 128,
              "width": 32, "depth": 3}
    data = dataset(config)
    run(dataset({**config, "n_train": 2000}), {**config, "epochs": 1}, 1, 0)  # warm-up
    rows = []
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]  # rotated
        # the machine is shared: the 1-minute load says how much the round competed
        row: dict[str, Any] = {"order": [v[0] for v in order], "load": os.getloadavg()[0]}
        for label, world_size, threads in order:
            result, clock, wall = run(data, config, world_size, 0, threads)
            row[label] = {"train_samples_per_s": n_train * epochs / sum(clock.epoch_s),
                          "call_samples_per_s": n_train * epochs / wall,
                          "epoch_s": clock.epoch_s, "wall_s": wall,
                          "device": result.device, "test_acc": result.metrics["test_acc"]}
        row["ratio"] = row["W=2"]["train_samples_per_s"] / row["W=1"]["train_samples_per_s"]
        row["call_ratio"] = row["W=2"]["call_samples_per_s"] / row["W=1"]["call_samples_per_s"]
        row["ratio_1_thread"] = (row["W=2"]["train_samples_per_s"]
                                 / row["W=1, 1 thread"]["train_samples_per_s"])
        print(f"round {r + 1} (load {row['load']:.2f}): " + ", ".join(
            f"{label} {row[label]['train_samples_per_s']:.0f} samples/s "
            f"({row[label]['wall_s']:.1f} s call)" for label, _, _ in order)
            + f": W=2/W=1 {row['ratio']:.2f}× training, {row['call_ratio']:.2f}× call; "
            f"W=2/(W=1, 1 thread) {row['ratio_1_thread']:.2f}×", flush=True)
        rows.append(row)
    return {"config": config, "rounds": rows,
            **{key: statistics.median(r[key] for r in rows)
               for key in ("ratio", "call_ratio", "ratio_1_thread")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (~1 min)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    seeds, epochs = (2, 3) if args.quick else (3, 15)
    rounds, n_train, tp_epochs = (1, 2000, 1) if args.quick else (3, 6000, 2)
    environment = {"machine": platform.processor() or platform.machine(),
                   "cores": os.cpu_count(), "torch": torch.__version__,
                   "python": platform.python_version()}
    print(f"environment: {environment}", flush=True)
    threads = torch.get_num_threads()
    try:
        acc = accuracy(seeds, epochs)
        speed = throughput(rounds, n_train, tp_epochs)
    finally:
        torch.set_num_threads(threads)
    if args.json:
        args.json.write_text(json.dumps({"environment": environment, "accuracy": acc,
                                         "throughput": speed}, indent=1, default=str))
    means = {w: statistics.mean(v) for w, v in acc["test_acc"].items()}
    print(f"RESULT data_parallel_accuracy: digits test_acc world_size 1 {means[1]:.4f} vs 2 "
          f"{means[2]:.4f} (diff {acc['diff']:+.4f}, 2 SE {2 * acc['se']:.4f}, seeds={seeds}, "
          f"epochs={epochs}): {'within noise' if acc['within_noise'] else 'NOT within noise'}")
    print(f"RESULT data_parallel_throughput: world_size 2 / 1 = {speed['ratio']:.2f}x training "
          f"samples/s, {speed['call_ratio']:.2f}x whole call; against 1 process on 1 thread "
          f"{speed['ratio_1_thread']:.2f}x (medians of {rounds} rounds, n_train={n_train}, "
          f"batch 128, {os.cpu_count()} cores; not a target)")
    return 0 if acc["within_noise"] else 1


if __name__ == "__main__":
    sys.exit(main())
