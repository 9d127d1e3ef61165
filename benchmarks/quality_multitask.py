"""Quality of task multitask: one shared model with a head per task against the
same tasks trained one head (one model) at a time.

Through the service's own code path, as ``benchmarks/quality.py``: the dataset
and experiment specs are validated by the API's schemas (``DatasetCreate``,
``ExperimentCreate``), the data comes from ``app.ml.data.load_builtin`` with
the options model's dump, and training is the worker's call
``train(data, spec.model.to_ml(), spec.augmentation.to_mix_spec(),
spec.training.to_ml(), task=spec.task, task_weights=spec.task_weights)``.

The data: the ``synthetic`` built-in with ``tasks: 3`` (task ``class`` = the
sample's class, ``group1`` and ``group2`` = the classes put into K/2 groups by a
permutation each), image + tabular with weak signals, so a task is not solved
in an epoch. Multi-task: one ``multitask`` run (task_weights 1 each). Single
task: per task, a ``classification`` run on the same rows and splits with
that task's labels as its only label column. Same model, recipe, mixing and
seeds; figures are the final test accuracy per task, mean ± std over seeds.

    python -m benchmarks.quality_multitask                 # 3 seeds, none and mixup
    python -m benchmarks.quality_multitask --seeds 1 --epochs 3 --methods mixup
"""

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from app.ml.data.builtin import load_builtin
from app.ml.data.prepared import PreparedDataset
from app.ml.training import train
from app.schemas.datasets import DatasetCreate
from app.schemas.experiments import ExperimentCreate

DATASET_OPTIONS: dict[str, Any] = {
    "num_samples": 1200, "num_classes": 8, "tasks": 3, "modalities": ["image", "tabular"],
    "image_size": 12, "tabular_features": 8, "signal": {"image": 0.5, "tabular": 0.3}}
MODEL: dict[str, Any] = {"kind": "multimodal", "fusion": "early", "dim": 32, "width": 8,
                         "depth": 2}
METHODS = ("none", "mixup", "cutmix", "cross_modal")


@dataclass
class Record:
    method: str
    mode: str  # "multi" or "single"
    seed: int
    test_acc: dict[str, float]  # task -> final test accuracy
    train_time_s: float


def dataset_spec(options: dict[str, Any]) -> DatasetCreate:
    return DatasetCreate.model_validate({
        "name": "quality-multitask", "source": {"kind": "builtin", "name": "synthetic",
                                                "options": options}})


def experiment_spec(task: str, method: str, epochs: int, seed: int) -> ExperimentCreate:
    augmentation = {"method": method} if method == "none" else {"method": method, "alpha": 1.0}
    return ExperimentCreate.model_validate({
        "name": "quality-multitask", "dataset_id": str(uuid.uuid4()), "task": task,
        "model": MODEL, "augmentation": augmentation,
        "training": {"epochs": epochs, "batch_size": 64, "optimizer": "adamw", "lr": 3e-3,
                     "weight_decay": 5e-4, "seed": seed, "device": "cpu", "augment": []}})


def one_task(data: PreparedDataset, task: str) -> PreparedDataset:
    """``data`` with ``task``'s labels as its only label column (same rows, splits)."""
    y = data.labels_of(task)
    return replace(data, labels=y, clean_labels=y.clone(), class_names=list(data.tasks[task]),
                   tasks={}, task_labels={})


def run(data: PreparedDataset, spec: ExperimentCreate) -> dict[str, float]:
    # the worker's call (worker/execution.py)
    result = train(data, spec.model.to_ml(), spec.augmentation.to_mix_spec(),
                   spec.training.to_ml(), task=spec.task, task_weights=spec.task_weights)
    if result.status != "completed":
        raise RuntimeError(f"{spec.task} run ended {result.status}")
    return result.metrics


def measure(methods: Sequence[str], seeds: int, epochs: int,
            options: dict[str, Any]) -> list[Record]:
    request = dataset_spec(options)
    data = load_builtin("synthetic", request.source.options.model_dump(), {})
    tasks = list(data.tasks)
    records = []
    started = time.perf_counter()
    for method in methods:
        for seed in range(seeds):
            metrics = run(data, experiment_spec("multitask", method, epochs, seed))
            records.append(Record(method, "multi", seed,
                                  {t: metrics[f"test_acc.{t}"] for t in tasks},
                                  metrics["train_time_s"]))
            single: dict[str, float] = {}
            spent = 0.0
            for t in tasks:
                metrics = run(one_task(data, t),
                              experiment_spec("classification", method, epochs, seed))
                single[t], spent = metrics["test_acc"], spent + metrics["train_time_s"]
            records.append(Record(method, "single", seed, single, spent))
            print(f"[{time.perf_counter() - started:6.1f}s] {method} seed {seed}: multi "
                  + " ".join(f"{t} {records[-2].test_acc[t]:.3f}" for t in tasks)
                  + " | single " + " ".join(f"{t} {single[t]:.3f}" for t in tasks),
                  flush=True)
    return records


def _cell(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def table(records: Sequence[Record]) -> str:
    tasks = list(records[0].test_acc)
    lines = ["| method | task | single-task heads | multi-task (shared) | Δ (multi − single) |",
             "| --- | --- | --- | --- | --- |"]
    for method in dict.fromkeys(r.method for r in records):
        multi = [r for r in records if r.method == method and r.mode == "multi"]
        single = [r for r in records if r.method == method and r.mode == "single"]
        for t in [*tasks, "mean"]:
            def acc(r: Record, t: str = t) -> float:
                return statistics.fmean(r.test_acc.values()) if t == "mean" else r.test_acc[t]
            diffs = [acc(m) - acc(s) for m, s in zip(multi, single, strict=True)]
            lines.append(f"| {method} | {t} | {_cell([acc(r) for r in single])} | "
                         f"{_cell([acc(r) for r in multi])} | {_cell(diffs)} |")
        times = (statistics.fmean(r.train_time_s for r in single),
                 statistics.fmean(r.train_time_s for r in multi))
        lines.append(f"| {method} | training time (s, per seed) | {times[0]:.1f} | "
                     f"{times[1]:.1f} | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--methods", default="none,mixup",
                   help=f"comma-separated, among {', '.join(METHODS)}")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--num-samples", type=int, default=DATASET_OPTIONS["num_samples"],
                   help="samples of the synthetic dataset (70/15/15 split)")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or args.seeds < 1 or args.epochs < 1:
        raise SystemExit(f"--methods among {', '.join(METHODS)}; --seeds and --epochs >= 1")
    options = {**DATASET_OPTIONS, "num_samples": args.num_samples}
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        records = measure(methods, args.seeds, args.epochs, options)
    finally:
        torch.set_num_threads(threads)
    print(f"synthetic {options}, model {MODEL}, {args.epochs} epochs, "
          f"{args.seeds} seeds, {args.threads} thread(s); final test accuracy per task")
    print(table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
