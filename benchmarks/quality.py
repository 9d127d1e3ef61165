"""Quality: what mixing buys on real data, through the service's own code path.

Issue 4 asks for measured gains of mixing on the built-in datasets, run the way
the service runs them: the dataset and experiment specs are validated from
JSON-like dicts by the API's own schemas (``DatasetCreate``, ``ExperimentCreate``),
the data comes from ``app.ml.data.load_builtin`` with the options model's dump
(what ``app.services.datasets.create_builtin`` calls, minus the database), and
training is ``app.ml.train.train(data, spec.model.to_ml(),
spec.augmentation.to_mix_spec(), spec.training.to_ml(), hooks, task=spec.task)``,
the call ``worker/execution.py`` makes. The hooks only observe: they keep the
per-epoch metrics and, from each epoch's checkpoint (rebuilt by
``app.ml.checkpoint.load_model``, run through the loop's ``predict`` with its
normalisation), evaluate what the loop does not; every run checks that this
evaluation reproduces the run's own final test accuracy.

Grids
-----
* ``digits`` and ``fashion-mnist`` (a stratified ``subset`` of the training
  images; the 10,000 official test images are always the test split): each
  training-label noise level × ``none`` / ``mixup`` / ``cutmix`` /
  ``mixup_cutmix``, several seeds. The seed is the run's training seed *and*
  the label-noise seed, so the spread covers both. Val and test labels are clean.
* ``avmnist`` (digit images paired with spoken digits): each fusion ×
  ``none`` / ``cross_modal`` (default ops: mixup on both modalities).

Metrics per run (test split)
----------------------------
* final: the last epoch's accuracy, ECE (15 bins) and NLL, as the run reports them;
* best epoch (oracle): the highest test accuracy over epochs, the figure the
  mixup paper's "best" column gives; needs a test pass per epoch, so it is
  computed only where the test split is small (``--per-epoch-test``);
* val-selected: the test accuracy/ECE of the epoch with the best val accuracy
  (ties: lower val loss), the honest early-stopping figure;
* ECE after temperature scaling fitted on the val split. When the run spec has
  ``training.calibration`` the run does it (``temperature``,
  ``test_ece_calibrated``, ``test_nll_calibrated``); otherwise this benchmark
  fits the temperature itself on the final model's val logits (its own
  fallback, marked ``"source": "benchmark"`` under ``calibration`` in the JSON);
* avmnist: also the test accuracy with the image or the audio missing.

Usage (from the repository root)::

    .venv/bin/python benchmarks/quality.py                     # default grid, ~30 min CPU
    .venv/bin/python benchmarks/quality.py --quick             # smoke run, about a minute
    .venv/bin/python benchmarks/quality.py --datasets digits --seeds 5 --json d.json
    .venv/bin/python benchmarks/quality.py --device cuda       # larger default grid

It prints a markdown table per dataset (mean ± sample std over seeds) and one
``RESULT quality <dataset>: ...`` line each; ``--json`` keeps every run (with
its per-epoch history), ``--markdown`` writes the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml.checkpoint import load_model
from app.ml.data import PreparedDataset, load_builtin
from app.ml.device import autocast_dtype, resolve_device
from app.ml.metrics import classification_metrics
from app.ml.tasks import get_task
from app.ml.training import TrainHooks, predict, train
from app.ml.training.normalization import fit as loop_normalizer  # the loop's own normalisation
from app.schemas.datasets import DatasetCreate
from app.schemas.experiments import ExperimentCreate, TrainingSpecIn
from app.settings import get_settings

IMAGE_DATASETS = ("digits", "fashion-mnist")
DATASETS = (*IMAGE_DATASETS, "avmnist")
METHODS = ("none", "mixup", "cutmix", "mixup_cutmix")
FUSIONS = ("early", "late", "attention", "tensor", "gated")
AVMNIST_METHODS = ("none", "cross_modal")
RUN_CALIBRATION = "calibration" in TrainingSpecIn.model_fields


@dataclass
class Grid:
    """Everything one invocation trains; the command-line options fill it."""

    datasets: list[str]
    noise: list[float]
    methods: list[str]
    fusions: list[str]
    seeds: list[int]
    epochs: dict[str, int]
    width: dict[str, int]
    alpha: dict[float, float]
    fashion_subset: int
    avmnist_noise: float
    batch_size: int | None
    lr: float | None
    device: str
    per_epoch_test: str
    threads: int


@dataclass
class RunRecord:
    dataset: str
    variant: str  # label noise ("0.4") for image sets, fusion for avmnist
    method: str
    alpha: float | None
    seed: int
    epochs: int
    final: dict[str, float]
    val_selected: dict[str, float]
    best_test: dict[str, float] | None
    calibration: dict[str, float | str]
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0


# --------------------------------------------------------------------------- specs


def dataset_spec(name: str, options: dict[str, Any]) -> DatasetCreate:
    return DatasetCreate.model_validate({
        "name": f"quality-{name}", "source": {"kind": "builtin", "name": name,
                                              "options": options}})


def load_dataset(request: DatasetCreate) -> PreparedDataset:
    """What ``create_builtin`` does before it stores the result."""
    roots = {"fashion-mnist": Path(get_settings().fashion_mnist_dir)}
    return load_builtin(request.source.name, request.source.options.model_dump(), roots)


def experiment_spec(model: dict[str, Any], augmentation: dict[str, Any],
                    training: dict[str, Any]) -> ExperimentCreate:
    training = dict(training)
    if RUN_CALIBRATION:
        training["calibration"] = "temperature"
    return ExperimentCreate.model_validate({
        "name": "quality", "dataset_id": str(uuid.uuid4()), "task": "classification",
        "model": model, "augmentation": augmentation, "training": training})


# --------------------------------------------------------------------- evaluation


class SplitEvaluator:
    """Evaluates checkpoints on the val and test splits the way ``train()``
    evaluates its live model: the model rebuilt from the checkpoint by
    ``app.ml.checkpoint.load_model``, the loop's normalisation (train-split
    statistics), its ``predict`` and the classification task's metrics."""

    def __init__(self, data: PreparedDataset, device: torch.device, multimodal: bool) -> None:
        self.device, self.amp = device, autocast_dtype(device)
        self.task = get_task("classification")
        modalities = list(data.inputs) if multimodal else ["image"]
        train_rows = data.split_indices("train")
        present = {m: data.present[m].bool() for m in modalities if m in data.present}
        normalize = {m: loop_normalizer(data.modality_kinds.get(m, m), data.inputs[m][train_rows],
                                        device, present[m][train_rows] if m in present else None)
                     for m in modalities}
        self.splits: dict[str, tuple[Any, torch.Tensor, Any, dict[str, torch.Tensor]]] = {}
        for split in ("val", "test"):
            rows = data.split_indices(split)
            masks = {m: p[rows] for m, p in present.items()}
            labels = data.labels[rows].to(device)
            if multimodal:
                inputs: Any = {m: data.inputs[m][rows] for m in modalities}
                self.splits[split] = (inputs, labels, normalize, masks)
            else:
                self.splits[split] = (data.inputs["image"][rows], labels, normalize["image"],
                                      masks)

    def logits(self, state: dict[str, torch.Tensor], metadata: dict[str, str],
               split: str) -> tuple[torch.Tensor, torch.Tensor]:
        model = load_model(state, metadata).model.to(self.device)
        inputs, labels, normalize, masks = self.splits[split]
        return predict(model, inputs, normalize, self.device, 1024, self.amp,
                       present=masks), labels

    def metrics(self, state: dict[str, torch.Tensor], metadata: dict[str, str],
                split: str) -> dict[str, float]:
        logits, labels = self.logits(state, metadata, split)
        return {k: float(v) for k, v in self.task.metrics(logits, labels).items()}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the NLL of ``logits / T`` (Guo et al. 2017).

    NLL is convex in 1/T, hence unimodal in log T: a golden-section search over
    log T in [log 0.05, log 20] finds it without a learning rate to tune.
    """
    def nll(log_t: float) -> float:
        return float(nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def calibrated(evaluator: SplitEvaluator, state: dict[str, torch.Tensor],
               metadata: dict[str, str]) -> dict[str, float]:
    """Temperature fitted on val logits, applied to test logits."""
    val_logits, val_labels = evaluator.logits(state, metadata, "val")
    test_logits, test_labels = evaluator.logits(state, metadata, "test")
    temperature = fit_temperature(val_logits, val_labels)
    scaled = classification_metrics(test_logits / temperature, test_labels)
    return {"temperature": temperature, "test_ece_calibrated": float(scaled["ece"]),
            "test_nll_calibrated": float(scaled["loss"])}


class QualityHooks(TrainHooks):
    """Keeps per-epoch metrics, the best-val checkpoint and the last one, and
    (``per_epoch_test``) each epoch's test accuracy and ECE."""

    def __init__(self, evaluator: SplitEvaluator, per_epoch_test: bool) -> None:
        self.evaluator, self.per_epoch_test = evaluator, per_epoch_test
        self.history: list[dict[str, float]] = []
        self.best_key: tuple[float, float] | None = None
        self.best: tuple[int, dict[str, torch.Tensor]] | None = None
        self.last: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.history.append({"epoch": epoch, **metrics})

    def on_checkpoint(self, epoch: int, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None:
        row = self.history[-1]
        key = (row["val_acc"], -row["val_loss"])
        if self.best_key is None or key > self.best_key:
            # the loop hands over a fresh CPU copy each epoch, safe to keep
            self.best_key, self.best = key, (epoch, tensors)
        self.last = (tensors, metadata)
        if self.per_epoch_test:
            test = self.evaluator.metrics(tensors, metadata, "test")
            row.update({"test_acc": test["acc"], "test_ece": test["ece"]})


# ----------------------------------------------------------------------- one run


def run_one(data: PreparedDataset, spec: ExperimentCreate, *, dataset: str, variant: str,
            seed: int, per_epoch_test: bool) -> RunRecord:
    evaluator = SplitEvaluator(data, resolve_device(spec.training.device),
                               spec.model.kind == "multimodal")
    hooks = QualityHooks(evaluator, per_epoch_test)
    # the worker's call (worker/execution.py), with these hooks as its reporter
    result = train(data, spec.model.to_ml(), spec.augmentation.to_mix_spec(),
                   spec.training.to_ml(), hooks, task=spec.task)
    if result.status != "completed" or hooks.last is None or hooks.best is None:
        raise RuntimeError(f"{dataset} {variant} {spec.augmentation.method} seed {seed}: "
                           f"run ended {result.status}")
    metrics = result.metrics
    final = {k: v for k, v in metrics.items() if k.startswith("test_")}
    state, metadata = hooks.last
    if RUN_CALIBRATION and "test_ece_calibrated" in metrics:
        calibration: dict[str, float | str] = {
            "source": "run", **{k: metrics[k] for k in
                                ("temperature", "test_ece_calibrated", "test_nll_calibrated")}}
    else:
        calibration = {"source": "benchmark", **calibrated(evaluator, state, metadata)}
    # the loop's own test figures and the evaluator's must agree, or the other
    # columns would not describe the same model
    mine = evaluator.metrics(state, metadata, "test")
    # bf16 kernels on a GPU need not be bit-reproducible between two passes
    tolerance = 1e-6 if evaluator.device.type == "cpu" else 2e-3
    if abs(mine["acc"] - final["test_acc"]) > tolerance:
        raise RuntimeError(f"evaluator disagrees with the run: test acc {mine['acc']} "
                           f"vs {final['test_acc']}")
    best_epoch, best_state = hooks.best
    selected = evaluator.metrics(best_state, metadata, "test")
    val_selected = {"epoch": best_epoch, "val_acc": hooks.history[best_epoch - 1]["val_acc"],
                    "test_acc": selected["acc"], "test_ece": selected["ece"]}
    best_test = None
    if per_epoch_test:
        top = max(hooks.history, key=lambda r: (r["test_acc"], -r["epoch"]))
        best_test = {"epoch": top["epoch"], "test_acc": top["test_acc"],
                     "test_ece": top["test_ece"]}
    method = spec.augmentation.method
    return RunRecord(dataset=dataset, variant=variant, method=method,
                     alpha=None if method == "none" else spec.augmentation.alpha, seed=seed,
                     epochs=result.epochs_completed, final=final, val_selected=val_selected,
                     best_test=best_test, calibration=calibration, history=hooks.history,
                     train_time_s=metrics.get("train_time_s", 0.0))


def _training(grid: Grid, dataset: str, seed: int) -> dict[str, Any]:
    training: dict[str, Any] = {"epochs": grid.epochs[dataset], "seed": seed,
                                "device": grid.device}
    if grid.batch_size is not None:
        training["batch_size"] = grid.batch_size
    if grid.lr is not None:
        training["lr"] = grid.lr
    return training


def _augmentation(grid: Grid, method: str, noise: float) -> dict[str, Any]:
    # everything but the method and α stays at the spec's defaults
    if method == "none":
        return {"method": method}
    return {"method": method, "alpha": grid.alpha.get(noise, 1.0)}


def _per_epoch_test(grid: Grid, data: PreparedDataset) -> bool:
    if grid.per_epoch_test == "auto":
        # a test pass per epoch is cheap next to training only on small test splits
        return len(data.split_indices("test")) <= 2000
    return grid.per_epoch_test == "on"


def image_runs(grid: Grid, dataset: str) -> Iterable[RunRecord]:
    for noise in grid.noise:
        for seed in grid.seeds:
            options: dict[str, Any] = {"label_noise": noise, "seed": seed}
            if dataset == "fashion-mnist":
                options["subset"] = grid.fashion_subset
            data = load_dataset(dataset_spec(dataset, options))
            for method in grid.methods:
                spec = experiment_spec({"kind": "cnn", "width": grid.width[dataset]},
                                       _augmentation(grid, method, noise),
                                       _training(grid, dataset, seed))
                yield run_one(data, spec, dataset=dataset, variant=f"{noise:g}", seed=seed,
                              per_epoch_test=_per_epoch_test(grid, data))


def avmnist_runs(grid: Grid) -> Iterable[RunRecord]:
    for seed in grid.seeds:
        data = load_dataset(dataset_spec("avmnist", {"label_noise": grid.avmnist_noise,
                                                     "seed": seed}))
        for fusion in grid.fusions:
            for method in AVMNIST_METHODS:
                model = {"kind": "multimodal", "fusion": fusion,
                         "width": grid.width["avmnist"]}
                spec = experiment_spec(model, _augmentation(grid, method, grid.avmnist_noise),
                                       _training(grid, "avmnist", seed))
                yield run_one(data, spec, dataset="avmnist", variant=fusion, seed=seed,
                              per_epoch_test=_per_epoch_test(grid, data))


# ----------------------------------------------------------------------- tables


def _stats(values: Sequence[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _cell(values: Sequence[float | None], digits: int = 3) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    mean, std = _stats(present)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _groups(records: Sequence[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.variant, r.method), []).append(r)
    return groups


def _alpha(runs: Sequence[RunRecord]) -> str:
    alphas = {r.alpha for r in runs}
    return "–" if alphas == {None} else "/".join(f"{a:g}" for a in sorted(alphas))


def image_table(records: Sequence[RunRecord]) -> str:
    head = ("| noise | method | α | final acc | best-epoch acc (oracle) | val-selected acc "
            "| final ECE | ECE after T | T | val-selected ECE |\n"
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = [head]
    for (variant, method), runs in _groups(records).items():
        rows.append("| " + " | ".join([
            f"{float(variant):.0%}", method, _alpha(runs),
            _cell([r.final["test_acc"] for r in runs]),
            _cell([r.best_test["test_acc"] if r.best_test else None for r in runs]),
            _cell([r.val_selected["test_acc"] for r in runs]),
            _cell([r.final["test_ece"] for r in runs]),
            _cell([float(r.calibration["test_ece_calibrated"]) for r in runs]),
            _cell([float(r.calibration["temperature"]) for r in runs], 2),
            _cell([r.val_selected["test_ece"] for r in runs]),
        ]) + " |")
    return "\n".join(rows)


def avmnist_table(records: Sequence[RunRecord]) -> str:
    head = ("| fusion | method | α | test acc | ECE | ECE after T | T | acc without image "
            "| acc without audio | val-selected acc |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = [head]
    for (fusion, method), runs in _groups(records).items():
        rows.append("| " + " | ".join([
            fusion, method, _alpha(runs),
            _cell([r.final["test_acc"] for r in runs]),
            _cell([r.final["test_ece"] for r in runs]),
            _cell([float(r.calibration["test_ece_calibrated"]) for r in runs]),
            _cell([float(r.calibration["temperature"]) for r in runs], 2),
            _cell([r.final.get("test_acc_without_image") for r in runs]),
            _cell([r.final.get("test_acc_without_audio") for r in runs]),
            _cell([r.val_selected["test_acc"] for r in runs]),
        ]) + " |")
    return "\n".join(rows)


def result_line(dataset: str, records: Sequence[RunRecord]) -> str:
    """``RESULT quality <dataset>``: per variant, each mixing method's mean final
    test accuracy minus the ``none`` baseline's (in points), with the pooled std."""
    groups = _groups(records)
    parts = []
    for variant in dict.fromkeys(r.variant for r in records):
        base = groups.get((variant, "none"))
        if not base:
            continue
        base_mean = statistics.fmean(r.final["test_acc"] for r in base)
        deltas = []
        for (v, method), runs in groups.items():
            if v != variant or method == "none":
                continue
            mean = statistics.fmean(r.final["test_acc"] for r in runs)
            deltas.append(f"{method} {100 * (mean - base_mean):+.1f}")
        label = f"{float(variant):.0%}" if dataset in IMAGE_DATASETS else variant
        parts.append(f"{label}: none {base_mean:.3f}, " + ", ".join(deltas))
    seeds = len({r.seed for r in records})
    epochs = records[0].epochs if records else 0
    return (f"RESULT quality {dataset}: final test acc, mixing − none in points "
            f"({seeds} seed{'s' * (seeds != 1)}, {epochs} epochs): " + "; ".join(parts))


def tables(records: Sequence[RunRecord]) -> dict[str, str]:
    out = {}
    for dataset in dict.fromkeys(r.dataset for r in records):
        mine = [r for r in records if r.dataset == dataset]
        table = avmnist_table(mine) if dataset == "avmnist" else image_table(mine)
        out[dataset] = table
    return out


# ------------------------------------------------------------------------ CLI


def _mapping(text: str, key: Callable[[str], Any], value: Callable[[str], Any],
             option: str) -> dict[Any, Any]:
    try:
        pairs = [item.split("=", 1) for item in text.split(",") if item]
        return {key(k.strip()): value(v.strip()) for k, v in pairs}
    except ValueError as exc:
        raise SystemExit(f"{option}: expected name=value pairs separated by commas, "
                         f"got {text!r}") from exc


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise SystemExit(f"{option}: expected numbers separated by commas, got {text!r}") from exc


def _list(text: str, allowed: Sequence[str], option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise SystemExit(f"{option}: {unknown or text!r} not among {', '.join(allowed)}")
    return items


# Defaults per device; each entry can be overridden on the command line. The
# CPU grid takes about 30 minutes on a quiet 2-vCPU machine (digits ~10, fashion
# ~15, avmnist ~6). Widths are small on purpose: on 1,259 digits (or a 2,000-image
# subset of fashion-mnist) a wider CNN also memorises the noisy labels under
# mixup within these schedules, and the comparison then shows two collapses.
CPU_DEFAULTS: dict[str, Any] = {
    "seeds": 3, "epochs": {"digits": 100, "fashion-mnist": 40, "avmnist": 20},
    "width": {"digits": 16, "fashion-mnist": 8, "avmnist": 8}, "fashion_subset": 2000,
}
# not measured: no GPU was available when these were chosen
CUDA_DEFAULTS: dict[str, Any] = {
    "seeds": 5, "epochs": {"digits": 100, "fashion-mnist": 100, "avmnist": 40},
    "width": {"digits": 16, "fashion-mnist": 16, "avmnist": 16}, "fashion_subset": 10_000,
}
QUICK: dict[str, Any] = {
    "seeds": 1, "epochs": {"digits": 20, "fashion-mnist": 3, "avmnist": 5},
    "width": {"digits": 16, "fashion-mnist": 8, "avmnist": 8}, "fashion_subset": 1000,
    "noise": "0,0.4", "methods": "none,mixup", "fusions": "early",
}
# larger α under heavier noise, as in the mixup paper's label-corruption table
# (α = 8 at 20 %, 32 at 50 % and 80 %); α = 1, the spec's default, on clean labels
DEFAULT_ALPHA = "0=1,0.2=8,0.4=16,0.6=32"


def parse_args(argv: Sequence[str] | None) -> tuple[Grid, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--noise", help="training-label noise levels (default 0,0.2,0.4,0.6)")
    p.add_argument("--methods", help=f"default {','.join(METHODS)}")
    p.add_argument("--fusions", help=f"avmnist fusions (default {','.join(FUSIONS)})")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (CPU default 3)")
    p.add_argument("--epochs", help="per dataset, e.g. digits=150,fashion-mnist=40; "
                                    "a bare number sets all")
    p.add_argument("--width", help="CNN width per dataset, e.g. digits=32; a number sets all")
    p.add_argument("--alpha", default=DEFAULT_ALPHA,
                   help=f"mixing α per noise level (default {DEFAULT_ALPHA}; unlisted: 1)")
    p.add_argument("--fashion-subset", type=int, help="fashion-mnist training images used")
    p.add_argument("--avmnist-noise", type=float, default=0.0,
                   help="avmnist training-label noise (default 0)")
    p.add_argument("--batch-size", type=int, help="default: the run spec's")
    p.add_argument("--lr", type=float, help="default: the run spec's")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--per-epoch-test", choices=("auto", "on", "off"), default="auto",
                   help="test pass every epoch for the oracle best-epoch column "
                        "(auto: when the test split has at most 2,000 samples)")
    # small models on a shared 2-core machine: a second thread buys little and
    # makes timings depend on the neighbours
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1; 0: torch's default)")
    p.add_argument("--quick", action="store_true", help="a tiny grid, about a minute")
    p.add_argument("--json", type=Path, help="write every run here")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    args = p.parse_args(argv)

    base = QUICK if args.quick else (CUDA_DEFAULTS if args.device.startswith("cuda")
                                     else CPU_DEFAULTS)
    datasets = _list(args.datasets, DATASETS, "--datasets")

    def per_dataset(text: str | None, default: dict[str, int], option: str) -> dict[str, int]:
        if text is None:
            return dict(default)
        if "=" not in text:
            if not text.strip().isdigit():
                raise SystemExit(f"{option}: expected a number or name=number pairs, "
                                 f"got {text!r}")
            return dict.fromkeys(DATASETS, int(text))
        given = _mapping(text, str, int, option)
        _list(",".join(given), DATASETS, option)
        return {**default, **given}

    grid = Grid(
        datasets=datasets,
        noise=_floats(args.noise or base.get("noise", "0,0.2,0.4,0.6"), "--noise"),
        methods=_list(args.methods or base.get("methods", ",".join(METHODS)), METHODS,
                      "--methods"),
        fusions=_list(args.fusions or base.get("fusions", ",".join(FUSIONS)), FUSIONS,
                      "--fusions"),
        seeds=list(range(args.seeds if args.seeds is not None else base["seeds"])),
        epochs=per_dataset(args.epochs, base["epochs"], "--epochs"),
        width=per_dataset(args.width, base["width"], "--width"),
        alpha=_mapping(args.alpha, float, float, "--alpha"),
        fashion_subset=args.fashion_subset or base["fashion_subset"],
        avmnist_noise=args.avmnist_noise, batch_size=args.batch_size, lr=args.lr,
        device=args.device, per_epoch_test=args.per_epoch_test, threads=args.threads)
    if not grid.seeds:
        raise SystemExit("--seeds: must be at least 1")
    try:
        _validate(grid)
    except ValidationError as exc:
        raise SystemExit(f"the grid makes a spec the service would refuse: {exc}") from None
    return grid, args


def _validate(grid: Grid) -> None:
    """Every dataset and experiment spec of the grid, validated before any training,
    so a bad value stops the run at once rather than after an hour."""
    for dataset in grid.datasets:
        noises = [grid.avmnist_noise] if dataset == "avmnist" else grid.noise
        for noise in noises:
            options: dict[str, Any] = {"label_noise": noise, "seed": grid.seeds[-1]}
            if dataset == "fashion-mnist":
                options["subset"] = grid.fashion_subset
            dataset_spec(dataset, options)
            if dataset == "avmnist":
                models = [{"kind": "multimodal", "fusion": f, "width": grid.width[dataset]}
                          for f in grid.fusions]
                methods: Sequence[str] = AVMNIST_METHODS
            else:
                models, methods = [{"kind": "cnn", "width": grid.width[dataset]}], grid.methods
            for model in models:
                for method in methods:
                    experiment_spec(model, _augmentation(grid, method, noise),
                                    _training(grid, dataset, grid.seeds[-1]))


def _environment(grid: Grid, argv: Sequence[str]) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False, timeout=10).stdout.strip()
        changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, check=False,
                                 timeout=10).stdout.strip()
        commit += "+uncommitted changes" if commit and changes else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"argv": list(argv), "commit": commit, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.processor() or
            platform.machine(), "threads": torch.get_num_threads(), "device": grid.device,
            "run_calibration_option": RUN_CALIBRATION}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    grid, args = parse_args(argv)
    threads = torch.get_num_threads()
    if grid.threads:
        torch.set_num_threads(grid.threads)
    try:
        return _run(grid, args, argv)
    finally:
        torch.set_num_threads(threads)  # main() may be called in a longer-lived process


def _write_json(path: Path, grid: Grid, argv: list[str], records: list[RunRecord],
                wall_s: float, complete: bool) -> None:
    payload = {"environment": _environment(grid, argv), "grid": vars(grid), "wall_s": wall_s,
               "complete": complete, "runs": [vars(r) for r in records]}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=1, default=str))
    # replaced whole, so a reader never sees a half-written file
    os.replace(partial, path)


def _run(grid: Grid, args: argparse.Namespace, argv: list[str]) -> int:
    records: list[RunRecord] = []
    started = time.perf_counter()
    for dataset in grid.datasets:
        runs = avmnist_runs(grid) if dataset == "avmnist" else image_runs(grid, dataset)
        for record in runs:
            records.append(record)
            if args.json:  # after every run: a long grid that dies keeps what it did
                _write_json(args.json, grid, argv, records, time.perf_counter() - started,
                            complete=False)
            print(f"[{time.perf_counter() - started:7.1f}s] {dataset} {record.variant} "
                  f"{record.method} seed {record.seed}: final acc "
                  f"{record.final['test_acc']:.3f}, val-selected "
                  f"{record.val_selected['test_acc']:.3f} (epoch "
                  f"{record.val_selected['epoch']}), ECE {record.final['test_ece']:.3f} → "
                  f"{float(record.calibration['test_ece_calibrated']):.3f} after T, "
                  f"{record.train_time_s:.1f}s", flush=True)
    out = tables(records)
    lines = [result_line(d, [r for r in records if r.dataset == d]) for d in out]
    sections = [f"### {d}\n\n{t}" for d, t in out.items()]
    print("\n\n".join(sections))
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n\n".join(sections) + "\n\n```\n" + "\n".join(lines)
                                 + "\n```\n")
    if args.json:
        _write_json(args.json, grid, argv, records, time.perf_counter() - started,
                    complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
