"""Quality: what mixing buys on real data, through the service's own code path.

The dataset and experiment specs are validated from JSON-like dicts by the
API's own schemas (``DatasetCreate``, ``ExperimentCreate``), the data comes
from ``app.ml.data.load_builtin`` with the options model's dump (what
``app.services.datasets.create_builtin`` calls, minus the database), and
training is ``app.ml.training.train(data, spec.model.to_ml(),
spec.augmentation.to_mix_spec(), spec.training.to_ml(), hooks,
task=spec.task)``, the call ``worker/execution.py`` makes. The hooks only
observe: they keep the per-epoch metrics and, from each epoch's checkpoint
(rebuilt by ``app.ml.checkpoint.load_model``, run through the loop's
``predict`` with its normalisation), evaluate what the loop does not; every
run checks that this evaluation reproduces the run's own final test accuracy.

Grids (issue 9: quality with the default recipe)
------------------------------------------------
* ``digits``: the **default recipe** exactly: the experiment spec sends
  ``model: {}`` and ``training: {"seed": s, "device": d}`` and nothing else
  (SmallCNN width 16, depth 3; SGD 0.1 Nesterov, weight decay 5e-4, batch
  128, 100 epochs, cosine after a 5-epoch warm-up, 1-pixel random crop,
  checkpoint ``last``, temperature calibration). Training-label noise
  0/20/40/60 %, ``none`` (ERM) vs ``mixup`` with α = 1, 3 seeds, the whole
  grid at 1 and at 2 torch threads, with a table that says whether the two
  thread counts give identical figures.
* ``fashion-mnist``: all 60,000 training images (a fixed stratified twelfth,
  5,000, is the val split; the 10,000 official test images are the test
  split), noise 0 and 40 %, ERM vs mixup α = 1, 1 seed, a paper-style recipe
  (``FASHION_RECIPE``: SGD 0.1, momentum 0.9 Nesterov, weight decay 5e-4,
  batch 128, cosine after a 5 % warm-up, random crop with the default
  ⌈28/8⌉ = 4 pixels) on a SmallCNN for as many epochs as the CPU allows
  (``CPU_DEFAULTS``), 2 threads; ``--device cuda`` trains preact_resnet18
  for longer instead (``CUDA_DEFAULTS``, not measured on a GPU yet).
  ``--recipe paper`` sends the mixup paper's CIFAR-10 recipe instead
  (``PAPER_RECIPE``: SGD 0.1, momentum 0.9 without Nesterov, weight decay
  1e-4, batch 128, no warm-up, lr ÷ 10 at 50 % and 75 % of the epochs — the
  paper's 100 and 150 of 200 —, random crop and horizontal flip), and
  ``--fashion-size 32`` pads the 28×28 images with 2 black pixels a side to
  the paper's 32×32 (the benchmark pads the loaded dataset: the service's
  built-in has no such option), so the crop pads by ⌈32/8⌉ = 4 as the paper's.
  ``benchmarks/gpu/run.sh`` runs preact_resnet18 that way on a GPU.
* ``avmnist`` (digit images paired with spoken digits; not in the default
  list, ``--datasets avmnist``): each fusion × ``none`` / ``cross_modal``.

The seed is the run's training seed *and* the label-noise seed, so the spread
covers both. Val and test labels are clean.

Metrics per run (test split)
----------------------------
* final: the last epoch's accuracy, ECE (15 bins) and NLL, as the run reports them;
* ECE after temperature scaling: the run's own (``training.calibration``
  defaults to ``temperature``: T fitted on the val split, ``test_ece_calibrated``);
* val-selected: the test accuracy/ECE of the epoch with the best val accuracy
  (ties: lower val loss), the honest early-stopping figure;
* best epoch (oracle): the highest test accuracy over epochs, the figure the
  mixup paper's "best" column gives; it needs a test pass per epoch, so it is
  computed only where that is cheap next to training (``--per-epoch-test``);
* avmnist: also the test accuracy with the image or the audio missing.

Targets (the issue's; ``TARGETS``), stated with ✓/✗ in the ``RESULT`` lines,
on the mean final-epoch test accuracy over seeds, per thread count: at 40 %
noise on digits mixup ≥ ERM + 10 points (aim: mixup ≥ 0.90); at 0 % noise
mixup within 1 point of ERM (digits and fashion-mnist).

Usage (from the repository root)::

    .venv/bin/python benchmarks/quality.py --datasets digits        # 48 runs, 10-16 min
    .venv/bin/python benchmarks/quality.py --datasets fashion-mnist # 4 runs, 30-75 min
    .venv/bin/python benchmarks/quality.py --quick                  # smoke run, ~1 min
    .venv/bin/python benchmarks/quality.py --device cuda            # longer fashion schedule

Issue 14's comparisons are suites of their own, run through this script (or
their modules) with their own options (``quality.py <suite> --help``):

    .venv/bin/python benchmarks/quality.py latent     # VAE on avmnist: latent_mixup vs none
    .venv/bin/python benchmarks/quality.py multitask  # multi-task heads vs single-task runs
    .venv/bin/python benchmarks/quality.py video      # moving-digits: cross-modal mixup or not
    .venv/bin/python benchmarks/quality.py hard       # hard avmnist: fusions × mixing methods

It prints a markdown table per dataset (mean ± sample std over seeds), the
thread comparison, and ``RESULT quality <dataset> …`` lines; ``--json``
keeps every run (with its spec and per-epoch history), ``--markdown`` writes
the tables.
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
from app.schemas.experiments import ExperimentCreate
from app.settings import get_settings

IMAGE_DATASETS = ("digits", "fashion-mnist")
DATASETS = (*IMAGE_DATASETS, "avmnist")
DEFAULT_DATASETS = IMAGE_DATASETS  # avmnist is not part of the grid
METHODS = ("none", "mixup", "cutmix", "mixup_cutmix")
FUSIONS = ("early", "late", "attention", "tensor", "gated")
AVMNIST_METHODS = ("none", "cross_modal")
FASHION_MODELS = ("cnn", "preact_resnet18")
# The benchmark fits the temperature itself (and asks the run for
# ``calibration: none``) only when this is set: the tests use it to check that
# both fits agree. Otherwise the run's own calibration (the default) is reported.
SELF_CALIBRATE = False

# The paper-style recipe for fashion-mnist, spelled out so that it stays the
# same if the service's defaults move (today it equals them, epochs aside):
# the mixup paper's SGD family with a cosine schedule instead of its steps.
FASHION_RECIPE: dict[str, Any] = {
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
    "weight_decay": 5e-4, "batch_size": 128, "schedule": "cosine", "augment": ["crop"],
}
# The mixup paper's CIFAR-10 recipe (Zhang et al. 2018, PreAct ResNet-18: SGD 0.1,
# momentum 0.9, weight decay 1e-4, batch 128, lr ÷ 10 at epochs 100 and 150 of
# 200, crop and flip); "step" puts the drops at 50 % and 75 % of any length.
PAPER_RECIPE: dict[str, Any] = {
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False,
    "weight_decay": 1e-4, "batch_size": 128, "schedule": "step", "warmup_epochs": 0,
    "augment": ["crop", "flip"],
}
RECIPES = {"fashion": FASHION_RECIPE, "paper": PAPER_RECIPE}
FASHION_SIZES = (28, 32)


@dataclass(frozen=True)
class Target:
    """One of the issue's targets on the mean final test accuracy of ``mixup``
    against ``none`` at one noise level: ``gain`` ≥ (points), or ``within``
    |difference| ≤ (points); ``aim`` an absolute mixup accuracy to aim for."""

    datasets: tuple[str, ...]
    noise: float
    kind: str  # "gain" or "within"
    points: float
    aim: float | None = None


TARGETS = (
    Target(("digits",), 0.4, "gain", 10.0, aim=0.90),
    Target(IMAGE_DATASETS, 0.0, "within", 1.0),
)


@dataclass
class Grid:
    """Everything one invocation trains; the command-line options fill it.

    Per dataset: ``noise``, ``seeds``, ``threads``, ``epochs`` (None: the
    spec's default, not sent), ``width`` (None: the model's default, not
    sent). ``alpha`` maps a noise level to its mixing α (unlisted:
    ``default_alpha``)."""

    datasets: list[str]
    noise: dict[str, list[float]]
    methods: list[str]
    fusions: list[str]
    seeds: dict[str, list[int]]
    threads: dict[str, list[int]]
    epochs: dict[str, int | None]
    width: dict[str, int | None]
    fashion_model: str
    default_alpha: float
    alpha: dict[float, float]
    fashion_subset: int | None
    avmnist_noise: float
    batch_size: int | None
    lr: float | None
    device: str
    per_epoch_test: str
    progress: bool = False
    recipe: str = "fashion"  # the fashion-mnist recipe: RECIPES' key
    fashion_size: int = 28  # 32: padded to the paper's input size
    compile: bool = False


@dataclass
class RunRecord:
    dataset: str
    variant: str  # label noise ("0.4") for image sets, fusion for avmnist
    method: str
    alpha: float | None
    seed: int
    threads: int
    epochs: int
    final: dict[str, float]
    val_selected: dict[str, float]
    best_test: dict[str, float] | None
    calibration: dict[str, Any]  # source, temperature, temperature_at_bound, test_*_calibrated
    spec: dict[str, Any] = field(default_factory=dict)  # model/augmentation/training as sent
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    wall_s: float = 0.0


# --------------------------------------------------------------------------- specs


def dataset_spec(name: str, options: dict[str, Any]) -> DatasetCreate:
    return DatasetCreate.model_validate({
        "name": f"quality-{name}", "source": {"kind": "builtin", "name": name,
                                              "options": options}})


def load_dataset(request: DatasetCreate, size: int | None = None) -> PreparedDataset:
    """What ``create_builtin`` does before it stores the result; ``size`` pads the
    images with zeros (black, Fashion-MNIST's background) to size × size."""
    roots = {"fashion-mnist": Path(get_settings().fashion_mnist_dir)}
    data = load_builtin(request.source.name, request.source.options.model_dump(), roots)
    return data if size is None else pad_images(data, size)


def pad_images(data: PreparedDataset, size: int) -> PreparedDataset:
    image = data.inputs["image"]
    height, width = image.shape[-2:]
    if (height, width) == (size, size):
        return data
    top, left = (size - height) // 2, (size - width) // 2
    padded = torch.nn.functional.pad(image, (left, size - width - left, top,
                                             size - height - top))
    data.inputs = {**data.inputs, "image": padded}
    data.provenance = {**data.provenance, "padded_to": [size, size]}
    return data


def experiment_spec(model: dict[str, Any], augmentation: dict[str, Any],
                    training: dict[str, Any]) -> ExperimentCreate:
    training = dict(training)
    if SELF_CALIBRATE:
        training["calibration"] = "none"
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


# the service's bracket (app.ml.calibration): T in [1/100, 100]; a fit that ends
# at either end is "at bound", a degenerate split rather than a calibration
LOG_T_BOUNDS = (-math.log(100.0), math.log(100.0))


def at_bound(temperature: float) -> bool:
    return min(abs(math.log(temperature) - b) for b in LOG_T_BOUNDS) < 1e-4


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the NLL of ``logits / T`` (Guo et al. 2017).

    NLL is convex in 1/T, hence unimodal in log T: a golden-section search over
    log T in ``LOG_T_BOUNDS`` finds it without a learning rate to tune. (An
    independent implementation, to check the run's own ``app.ml.calibration``.)
    """
    logits = logits.double()

    def nll(log_t: float) -> float:
        return float(nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    lo, hi = LOG_T_BOUNDS
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
               metadata: dict[str, str]) -> dict[str, Any]:
    """Temperature fitted on val logits, applied to test logits (no figures when
    the fit stopped at a bound, as the service does)."""
    val_logits, val_labels = evaluator.logits(state, metadata, "val")
    test_logits, test_labels = evaluator.logits(state, metadata, "test")
    temperature = fit_temperature(val_logits, val_labels)
    if at_bound(temperature):
        return {"temperature": temperature, "temperature_at_bound": True,
                "test_ece_calibrated": None, "test_nll_calibrated": None}
    scaled = classification_metrics(test_logits.double() / temperature, test_labels)
    return {"temperature": temperature, "temperature_at_bound": False,
            "test_ece_calibrated": float(scaled["ece"]),
            "test_nll_calibrated": float(scaled["loss"])}


class QualityHooks(TrainHooks):
    """Keeps per-epoch metrics, the best-val checkpoint and the last one, and
    (``per_epoch_test``) each epoch's test accuracy and ECE."""

    def __init__(self, evaluator: SplitEvaluator, per_epoch_test: bool,
                 progress: bool = False) -> None:
        self.evaluator, self.per_epoch_test, self.progress = evaluator, per_epoch_test, progress
        self.started = time.perf_counter()
        self.history: list[dict[str, float]] = []
        self.best_key: tuple[float, float] | None = None
        self.best: tuple[int, dict[str, torch.Tensor]] | None = None
        self.last: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.history.append({"epoch": epoch, **metrics})
        if self.progress:
            print(f"    epoch {epoch}: train loss {metrics['train_loss']:.3f}, val acc "
                  f"{metrics['val_acc']:.3f}, {time.perf_counter() - self.started:.0f}s",
                  flush=True)

    def on_checkpoint(self, epoch: int, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None:
        if self.last is not None and self.last[1].get("epoch") == metadata.get("epoch"):
            return  # the run's closing checkpoint: the last epoch's model again
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
            seed: int, per_epoch_test: bool, progress: bool = False) -> RunRecord:
    started = time.perf_counter()
    evaluator = SplitEvaluator(data, resolve_device(spec.training.device),
                               spec.model.kind == "multimodal")
    hooks = QualityHooks(evaluator, per_epoch_test, progress)
    # the worker's call (worker/execution.py), with these hooks as its reporter
    result = train(data, spec.model.to_ml(), spec.augmentation.to_mix_spec(),
                   spec.training.to_ml(), hooks, task=spec.task)
    if result.status != "completed" or hooks.last is None or hooks.best is None:
        raise RuntimeError(f"{dataset} {variant} {spec.augmentation.method} seed {seed}: "
                           f"run ended {result.status}")
    metrics = result.metrics
    final = {k: v for k, v in metrics.items() if k.startswith("test_")}
    state, metadata = hooks.last
    if "temperature" in metrics:
        # at its bound the run reports T and the flag but no calibrated figures
        calibration: dict[str, Any] = {
            "source": "run", "temperature": metrics["temperature"],
            "temperature_at_bound": bool(metrics.get("temperature_at_bound", 0.0)),
            "test_ece_calibrated": metrics.get("test_ece_calibrated"),
            "test_nll_calibrated": metrics.get("test_nll_calibrated")}
    else:
        calibration = {"source": "benchmark", **calibrated(evaluator, state, metadata)}
    # the loop's own test figures and the evaluator's must agree, or the other
    # columns would not describe the same model
    mine = evaluator.metrics(state, metadata, "test")
    # bf16 kernels on a GPU need not be bit-reproducible between two passes
    tolerance = 1e-6 if evaluator.device.type == "cpu" else 2e-3
    run_last = final.get("test_acc_last", final["test_acc"])  # checkpoint: best keeps both
    if abs(mine["acc"] - run_last) > tolerance:
        raise RuntimeError(f"evaluator disagrees with the run: test acc {mine['acc']} "
                           f"vs {run_last}")
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
    sent = {"model": spec.model.model_dump(), "augmentation": spec.augmentation.model_dump(),
            "training": spec.training.model_dump()}
    return RunRecord(dataset=dataset, variant=variant, method=method,
                     alpha=None if method == "none" else spec.augmentation.alpha, seed=seed,
                     threads=torch.get_num_threads(), epochs=result.epochs_completed,
                     final=final, val_selected=val_selected, best_test=best_test,
                     calibration=calibration, spec=sent, history=hooks.history,
                     train_time_s=metrics.get("train_time_s", 0.0),
                     wall_s=time.perf_counter() - started)


def _model(grid: Grid, dataset: str) -> dict[str, Any]:
    """The experiment's ``model`` block: ``{}`` (the defaults) for digits unless
    ``--width`` is given."""
    width = grid.width.get(dataset)
    if dataset == "avmnist":
        model: dict[str, Any] = {"kind": "multimodal"}
    elif dataset == "fashion-mnist":
        model = {"kind": grid.fashion_model}
    else:
        model = {}
    if width is not None:
        model["width"] = width
    return model


def _training(grid: Grid, dataset: str, seed: int) -> dict[str, Any]:
    """The experiment's ``training`` block: seed and device only for digits (the
    default recipe), ``FASHION_RECIPE`` for fashion-mnist, plus what the command
    line sets."""
    training: dict[str, Any] = dict(RECIPES[grid.recipe]) if dataset == "fashion-mnist" else {}
    training.update(seed=seed, device=grid.device)
    if grid.compile:
        training["compile"] = True
    if grid.epochs.get(dataset) is not None:
        training["epochs"] = grid.epochs[dataset]
    if grid.batch_size is not None:
        training["batch_size"] = grid.batch_size
    if grid.lr is not None:
        training["lr"] = grid.lr
    return training


def _augmentation(grid: Grid, method: str, noise: float) -> dict[str, Any]:
    # everything but the method and α stays at the spec's defaults
    if method == "none":
        return {"method": method}
    return {"method": method, "alpha": grid.alpha.get(noise, grid.default_alpha)}


def _dataset_options(grid: Grid, dataset: str, noise: float, seed: int) -> dict[str, Any]:
    options: dict[str, Any] = {"label_noise": noise, "seed": seed}
    if dataset == "fashion-mnist" and grid.fashion_subset is not None:
        options["subset"] = grid.fashion_subset
    return options


def _per_epoch_test(grid: Grid, data: PreparedDataset) -> bool:
    if grid.per_epoch_test == "auto":
        # a test pass per epoch is cheap next to training when the test split is
        # small, or small next to the training split (full fashion-mnist: 10,000
        # test images, forward only, against 55,000 trained on)
        n_test, n_train = len(data.split_indices("test")), len(data.split_indices("train"))
        return n_test <= 2000 or 4 * n_test <= n_train
    return grid.per_epoch_test == "on"


class _Threads:
    """Sets torch's intra-op threads for a block; 0 means torch's own default
    (what it had when the benchmark started)."""

    initial = torch.get_num_threads()

    def __init__(self, n: int) -> None:
        self.n = n or self.initial

    def __enter__(self) -> int:
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self.n

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def image_runs(grid: Grid, dataset: str) -> Iterable[RunRecord]:
    # each cell at every thread count back to back, so a grid cut short still
    # has both sides of each comparison it reached
    for noise in grid.noise[dataset]:
        for seed in grid.seeds[dataset]:
            size = grid.fashion_size if dataset == "fashion-mnist" else None
            data = load_dataset(dataset_spec(dataset, _dataset_options(grid, dataset, noise,
                                                                       seed)),
                                None if size == 28 else size)
            for method in grid.methods:
                spec = experiment_spec(_model(grid, dataset), _augmentation(grid, method, noise),
                                       _training(grid, dataset, seed))
                for threads in grid.threads[dataset]:
                    with _Threads(threads):
                        yield run_one(data, spec, dataset=dataset, variant=f"{noise:g}",
                                      seed=seed, per_epoch_test=_per_epoch_test(grid, data),
                                      progress=grid.progress)


def avmnist_runs(grid: Grid) -> Iterable[RunRecord]:
    for seed in grid.seeds["avmnist"]:
        data = load_dataset(dataset_spec("avmnist", {"label_noise": grid.avmnist_noise,
                                                     "seed": seed}))
        for fusion in grid.fusions:
            for method in AVMNIST_METHODS:
                model = {**_model(grid, "avmnist"), "fusion": fusion}
                spec = experiment_spec(model, _augmentation(grid, method, grid.avmnist_noise),
                                       _training(grid, "avmnist", seed))
                for threads in grid.threads["avmnist"]:
                    with _Threads(threads):
                        yield run_one(data, spec, dataset="avmnist", variant=fusion, seed=seed,
                                      per_epoch_test=_per_epoch_test(grid, data),
                                      progress=grid.progress)


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


def _method_rank(method: str) -> int:
    order = (*METHODS, *AVMNIST_METHODS)
    return order.index(method) if method in order else len(order)


def _groups(records: Sequence[RunRecord]) -> dict[tuple[str, str, int], list[RunRecord]]:
    """Runs by (variant, method, threads), ordered so that one cell's thread
    counts sit side by side."""
    groups: dict[tuple[str, str, int], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.variant, r.method, r.threads), []).append(r)
    variants = list(dict.fromkeys(r.variant for r in records))

    def order(key: tuple[str, str, int]) -> tuple[int, int, int]:
        return variants.index(key[0]), _method_rank(key[1]), key[2]

    return {k: groups[k] for k in sorted(groups, key=order)}


def _alpha(runs: Sequence[RunRecord]) -> str:
    alphas = {r.alpha for r in runs}
    return "–" if alphas == {None} else "/".join(f"{a:g}" for a in sorted(alphas))


def _scaled_ece(r: RunRecord) -> float | None:
    value = r.calibration.get("test_ece_calibrated")
    return None if value is None else float(value)


def _calibrated_cell(runs: Sequence[RunRecord]) -> str:
    """ECE after temperature scaling over the runs whose fit is not at a bound
    (those have no calibrated figure), saying how many were."""
    bound = sum(_scaled_ece(r) is None for r in runs)
    cell = _cell([_scaled_ece(r) for r in runs])
    return cell if not bound else f"{cell} ({bound} of {len(runs)} T at bound)"


def _noise_label(variant: str) -> str:
    return f"{float(variant):.0%}"


def image_table(records: Sequence[RunRecord]) -> str:
    head = ("| noise | method | α | threads | final acc | best-epoch acc (oracle) "
            "| val-selected acc | final ECE | ECE after T | T | val-selected ECE |\n"
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = [head]
    for (variant, method, threads), runs in _groups(records).items():
        rows.append("| " + " | ".join([
            _noise_label(variant), method, _alpha(runs), str(threads),
            _cell([r.final["test_acc"] for r in runs]),
            _cell([r.best_test["test_acc"] if r.best_test else None for r in runs]),
            _cell([r.val_selected["test_acc"] for r in runs]),
            _cell([r.final["test_ece"] for r in runs]),
            _calibrated_cell(runs),
            _cell([float(r.calibration["temperature"]) for r in runs], 2),
            _cell([r.val_selected["test_ece"] for r in runs]),
        ]) + " |")
    return "\n".join(rows)


def avmnist_table(records: Sequence[RunRecord]) -> str:
    head = ("| fusion | method | α | threads | test acc | ECE | ECE after T | T "
            "| acc without image | acc without audio | val-selected acc |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = [head]
    for (fusion, method, threads), runs in _groups(records).items():
        rows.append("| " + " | ".join([
            fusion, method, _alpha(runs), str(threads),
            _cell([r.final["test_acc"] for r in runs]),
            _cell([r.final["test_ece"] for r in runs]),
            _calibrated_cell(runs),
            _cell([float(r.calibration["temperature"]) for r in runs], 2),
            _cell([r.final.get("test_acc_without_image") for r in runs]),
            _cell([r.final.get("test_acc_without_audio") for r in runs]),
            _cell([r.val_selected["test_acc"] for r in runs]),
        ]) + " |")
    return "\n".join(rows)


def identical(a: RunRecord, b: RunRecord) -> bool:
    """Whether two runs of one cell gave the same figures bit for bit: every
    final test metric, the calibration, the val-selected epoch and its figures,
    and every epoch's training loss and validation metrics."""
    return (a.final == b.final and a.calibration == b.calibration
            and a.val_selected == b.val_selected and a.history == b.history)


def thread_pairs(records: Sequence[RunRecord]
                 ) -> dict[tuple[str, str], list[tuple[RunRecord, RunRecord]]]:
    """Per (variant, method): the runs at each other thread count paired with the
    same seed's run at the lowest thread count."""
    by_key: dict[tuple[str, str, int], dict[int, RunRecord]] = {}
    for r in records:
        by_key.setdefault((r.variant, r.method, r.seed), {})[r.threads] = r
    pairs: dict[tuple[str, str], list[tuple[RunRecord, RunRecord]]] = {}
    for (variant, method, _seed), runs in by_key.items():
        counts = sorted(runs)
        for t in counts[1:]:
            pairs.setdefault((variant, method), []).append((runs[counts[0]], runs[t]))
    return pairs


def threads_table(records: Sequence[RunRecord]) -> str | None:
    """Final test accuracy per thread count side by side, and how many run pairs
    (same cell and seed) are identical; None with a single thread count."""
    counts = sorted({r.threads for r in records})
    if len(counts) < 2:
        return None
    head = ("| noise | method | " + " | ".join(f"final acc, {t} thread{'s' * (t != 1)}"
                                            for t in counts)
            + " | identical run pairs | max abs Δ final acc | max abs Δ final ECE |\n"
            + "| ---: | --- | " + " | ".join("---:" for _ in counts) + " | ---: | ---: | ---: |")
    rows = [head]
    pairs = thread_pairs(records)
    for (variant, method), pair_list in pairs.items():
        cells = [_cell([r.final["test_acc"] for r in records if r.variant == variant
                        and r.method == method and r.threads == t]) for t in counts]
        same = sum(identical(a, b) for a, b in pair_list)
        d_acc = max(abs(a.final["test_acc"] - b.final["test_acc"]) for a, b in pair_list)
        d_ece = max(abs(a.final["test_ece"] - b.final["test_ece"]) for a, b in pair_list)
        label = _noise_label(variant) if records[0].dataset in IMAGE_DATASETS else variant
        rows.append(f"| {label} | {method} | " + " | ".join(cells)
                    + f" | {same}/{len(pair_list)} | {d_acc:.3f} | {d_ece:.3f} |")
    return "\n".join(rows)


def threads_summary(records: Sequence[RunRecord]) -> str | None:
    pairs = [p for ps in thread_pairs(records).values() for p in ps]
    if not pairs:
        return None
    same = sum(identical(a, b) for a, b in pairs)
    d_acc = max(abs(a.final["test_acc"] - b.final["test_acc"]) for a, b in pairs)
    counts = "/".join(str(t) for t in sorted({r.threads for r in records}))
    verdict = "identical" if same == len(pairs) else "not identical"
    return (f"threads {counts}: {verdict} ({same} of {len(pairs)} run pairs bit-identical; "
            f"largest |Δ final test acc| {d_acc:.3f})")


def _mean_acc(runs: Sequence[RunRecord]) -> float:
    return statistics.fmean(r.final["test_acc"] for r in runs)


def target_checks(dataset: str, records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Each target of ``TARGETS`` that applies to ``dataset`` and whose noise
    level was run, evaluated on ``records`` (one thread count)."""
    out = []
    for target in TARGETS:
        if dataset not in target.datasets:
            continue
        variant = next((v for v in dict.fromkeys(r.variant for r in records)
                        if math.isclose(float(v), target.noise)), None)
        none = [r for r in records if r.variant == variant and r.method == "none"]
        mixup = [r for r in records if r.variant == variant and r.method == "mixup"]
        if variant is None or not none or not mixup:
            continue
        base, mixed = _mean_acc(none), _mean_acc(mixup)
        delta = 100 * (mixed - base)
        check: dict[str, Any] = {"noise": target.noise, "kind": target.kind,
                                 "points": target.points, "none": base, "mixup": mixed,
                                 "delta_points": delta}
        if target.kind == "gain":
            check["met"] = delta >= target.points
            check["text"] = (f"mixup − none {delta:+.1f} ≥ +{target.points:g} points "
                             f"{'✓' if check['met'] else '✗'}")
        else:
            check["met"] = abs(delta) <= target.points
            check["text"] = (f"|mixup − none| {abs(delta):.1f} ≤ {target.points:g} point"
                             f"{'s' * (target.points != 1)} {'✓' if check['met'] else '✗'}")
        if target.aim is not None:
            check["aim"] = target.aim
            check["aim_met"] = mixed >= target.aim
            check["text"] += (f"; aim mixup {mixed:.3f} ≥ {target.aim:.2f} "
                              f"{'✓' if check['aim_met'] else '✗'}")
        out.append(check)
    return out


def _describe(runs: Sequence[RunRecord]) -> str:
    r = runs[0]
    model = r.spec.get("model", {})
    name = model.get("kind", "?")
    if name in ("cnn", "preact_resnet18", "multimodal") and "width" in model:
        name += f" width {model['width']}"
    seeds = len({x.seed for x in runs})
    threads = r.threads
    return (f"{threads} thread{'s' * (threads != 1)}, {seeds} seed{'s' * (seeds != 1)}, "
            f"{r.epochs} epochs, {name}")


def result_lines(dataset: str, records: Sequence[RunRecord]) -> list[str]:
    """``RESULT quality <dataset> (…)``, one line per thread count: per variant
    ERM's mean final test accuracy, each mixing method's difference in points,
    raw → temperature-scaled ECE, and the targets that apply with ✓/✗."""
    lines = []
    for threads in sorted({r.threads for r in records}):
        mine = [r for r in records if r.threads == threads]
        groups = _groups(mine)
        checks = target_checks(dataset, mine) if dataset in IMAGE_DATASETS else []
        parts = []
        for variant in dict.fromkeys(r.variant for r in mine):
            cell = {m: runs for (v, m, _t), runs in groups.items() if v == variant}
            if "none" not in cell:
                continue
            base = _mean_acc(cell["none"])

            def ece(runs: Sequence[RunRecord]) -> str:
                raw = statistics.fmean(r.final["test_ece"] for r in runs)
                present = [e for e in map(_scaled_ece, runs) if e is not None]
                scaled = f"{statistics.fmean(present):.3f}" if present else "–"
                bound = len(runs) - len(present)
                return f"ECE {raw:.3f}→{scaled}" + (f", {bound} T at bound" if bound else "")

            entries = [f"none {base:.3f} ({ece(cell['none'])})"]
            for method, runs in cell.items():
                if method != "none":
                    entries.append(f"{method} {_mean_acc(runs):.3f} "
                                   f"{100 * (_mean_acc(runs) - base):+.1f} ({ece(runs)})")
            label = _noise_label(variant) if dataset in IMAGE_DATASETS else variant
            targets = [c["text"] for c in checks if math.isclose(c["noise"], float(variant))] \
                if dataset in IMAGE_DATASETS else []
            parts.append(f"{label}: " + ", ".join(entries)
                         + "".join(f" [target: {t}]" for t in targets))
        lines.append(f"RESULT quality {dataset} ({_describe(mine)}): final test acc, "
                     "mixing − none in points; " + "; ".join(parts))
    return lines


def tables(records: Sequence[RunRecord]) -> dict[str, str]:
    out = {}
    for dataset in dict.fromkeys(r.dataset for r in records):
        mine = [r for r in records if r.dataset == dataset]
        table = avmnist_table(mine) if dataset == "avmnist" else image_table(mine)
        by_threads = threads_table(mine)
        if by_threads is not None:
            table += ("\n\nThread counts side by side (same cell, same seed):\n\n"
                      + by_threads + "\n\n" + (threads_summary(mine) or ""))
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


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise SystemExit(f"{option}: expected integers separated by commas, "
                         f"got {text!r}") from exc
    if not values or any(v < 0 for v in values):
        raise SystemExit(f"{option}: expected integers >= 0, got {text!r}")
    return sorted(set(values))


def _list(text: str, allowed: Sequence[str], option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise SystemExit(f"{option}: {unknown or text!r} not among {', '.join(allowed)}")
    return items


def _alphas(text: str) -> tuple[float, dict[float, float]]:
    """``--alpha``: one α for every noise level, or noise=α pairs (unlisted: 1)."""
    if "=" not in text:
        try:
            return float(text), {}
        except ValueError:
            raise SystemExit(f"--alpha: expected a number or noise=α pairs, "
                             f"got {text!r}") from None
    return 1.0, _mapping(text, float, float, "--alpha")


# Defaults per device; each entry can be overridden on the command line.
# digits: the service's default recipe and model (None: not sent), 3 seeds, at
# 1 and 2 threads: 48 runs of ~10-15 s (1 thread) on a quiet 2-vCPU machine.
# fashion-mnist on CPU: a SmallCNN width 16, 30 epochs at 2 threads: 4 runs of
# ~7 min on a quiet 2-vCPU machine (one training step 25 ms, ~14 s an epoch with
# the val and test passes), 15-30 min each when other jobs share the cores.
# Width 32 is 2.3x slower per step (57 ms), and preact_resnet18 60x (1.5 s a
# step: ~11 min an epoch), so both are left to a GPU.
CPU_DEFAULTS: dict[str, Any] = {
    "noise": {"digits": "0,0.2,0.4,0.6", "fashion-mnist": "0,0.4", "avmnist": "0"},
    "seeds": {"digits": 3, "fashion-mnist": 1, "avmnist": 3},
    "threads": {"digits": "1,2", "fashion-mnist": "2", "avmnist": "1"},
    "epochs": {"digits": None, "fashion-mnist": 30, "avmnist": 20},
    "width": {"digits": None, "fashion-mnist": 16, "avmnist": 8},
    "fashion_model": "cnn", "fashion_subset": None,
}
# not measured: no GPU was available when these were chosen. The paper's model
# (PreAct ResNet-18, width 64) for 100 epochs, 3 seeds.
CUDA_DEFAULTS: dict[str, Any] = {
    **CPU_DEFAULTS,
    "seeds": {"digits": 3, "fashion-mnist": 3, "avmnist": 3},
    "epochs": {"digits": None, "fashion-mnist": 100, "avmnist": 40},
    "width": {"digits": None, "fashion-mnist": None, "avmnist": 16},
    "fashion_model": "preact_resnet18",
}
QUICK: dict[str, Any] = {
    "noise": {"digits": "0,0.4", "fashion-mnist": "0.4", "avmnist": "0"},
    "seeds": {"digits": 1, "fashion-mnist": 1, "avmnist": 1},
    "threads": {"digits": "1,2", "fashion-mnist": "1", "avmnist": "1"},
    "epochs": {"digits": 20, "fashion-mnist": 3, "avmnist": 5},
    "width": {"digits": None, "fashion-mnist": 8, "avmnist": 8},
    "fashion_model": "cnn", "fashion_subset": 1000, "fusions": "early",
}


def parse_args(argv: Sequence[str] | None) -> tuple[Grid, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                   help=f"among {', '.join(DATASETS)} (default {','.join(DEFAULT_DATASETS)})")
    p.add_argument("--noise", help="training-label noise levels for every image dataset "
                                   "(default: digits 0,0.2,0.4,0.6; fashion-mnist 0,0.4)")
    p.add_argument("--methods", default="none,mixup", help=f"among {', '.join(METHODS)} "
                                                           "(default none,mixup)")
    p.add_argument("--fusions", help=f"avmnist fusions (default {','.join(FUSIONS)})")
    p.add_argument("--seeds", help="seeds 0..N-1: a number for every dataset, or "
                                   "dataset=N pairs (default digits 3, fashion-mnist 1)")
    p.add_argument("--epochs", help="a number for every dataset, or dataset=N pairs, e.g. "
                                    "fashion-mnist=30 (default: digits the spec's 100, not "
                                    "sent; fashion-mnist 30 on CPU, 100 with cuda)")
    p.add_argument("--width", help="model width: a number or dataset=N pairs (default: "
                                   "digits the model's default, not sent; fashion-mnist 16)")
    p.add_argument("--fashion-model", choices=FASHION_MODELS,
                   help="fashion-mnist's model (default cnn on CPU, preact_resnet18 with cuda)")
    p.add_argument("--alpha", default="1",
                   help="mixing α: one number for every noise level (default 1), or "
                        "noise=α pairs, e.g. 0.4=16,0.6=32 (unlisted: 1)")
    p.add_argument("--fashion-subset", type=int,
                   help="fashion-mnist training images used (default: all 60,000)")
    p.add_argument("--avmnist-noise", type=float, default=0.0,
                   help="avmnist training-label noise (default 0)")
    p.add_argument("--batch-size", type=int, help="default: the recipe's (128)")
    p.add_argument("--lr", type=float, help="default: the recipe's (0.1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--per-epoch-test", choices=("auto", "on", "off"), default="auto",
                   help="test pass every epoch for the oracle best-epoch column (auto: when "
                        "the test split has at most 2,000 samples or a quarter of train's)")
    p.add_argument("--threads", help="torch thread counts, e.g. 1,2, each running the "
                                     "whole grid of every dataset (default: digits 1,2; "
                                     "fashion-mnist 2; avmnist 1; 0: torch's default)")
    p.add_argument("--recipe", choices=tuple(RECIPES), default="fashion",
                   help="fashion-mnist's recipe: fashion (FASHION_RECIPE, the default) or "
                        "paper (the mixup paper's CIFAR-10 recipe, PAPER_RECIPE)")
    p.add_argument("--fashion-size", type=int, choices=FASHION_SIZES, default=28,
                   help="fashion-mnist's image side: 28, or 32 (zero-padded, the paper's)")
    p.add_argument("--compile", action="store_true", help="training.compile on every run")
    p.add_argument("--progress", action="store_true",
                   help="print a line per epoch (long fashion-mnist runs)")
    p.add_argument("--quick", action="store_true", help="a tiny grid, about a minute")
    p.add_argument("--json", type=Path, help="write every run here")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    args = p.parse_args(argv)

    base = QUICK if args.quick else (CUDA_DEFAULTS if args.device.startswith("cuda")
                                     else CPU_DEFAULTS)
    datasets = _list(args.datasets, DATASETS, "--datasets")

    def per_dataset(text: str | None, default: dict[str, Any], option: str,
                    convert: Callable[[str], Any] = int) -> dict[str, Any]:
        if text is None:
            return dict(default)
        if "=" not in text:
            try:
                return dict.fromkeys(DATASETS, convert(text.strip()))
            except ValueError:
                raise SystemExit(f"{option}: expected a number or dataset=number pairs, "
                                 f"got {text!r}") from None
        given = _mapping(text, str, convert, option)
        _list(",".join(given), DATASETS, option)
        return {**default, **given}

    seeds = per_dataset(args.seeds, base["seeds"], "--seeds")
    if any(n < 1 for n in seeds.values()):
        raise SystemExit("--seeds: must be at least 1")
    noise = {d: _floats(args.noise or base["noise"][d], "--noise") for d in DATASETS}
    threads = {d: _ints(args.threads or base["threads"][d], "--threads") for d in DATASETS}
    default_alpha, alpha = _alphas(args.alpha)
    grid = Grid(
        datasets=datasets, noise=noise,
        methods=_list(args.methods, METHODS, "--methods"),
        fusions=_list(args.fusions or base.get("fusions", ",".join(FUSIONS)), FUSIONS,
                      "--fusions"),
        seeds={d: list(range(n)) for d, n in seeds.items()}, threads=threads,
        epochs=per_dataset(args.epochs, base["epochs"], "--epochs"),
        width=per_dataset(args.width, base["width"], "--width"),
        fashion_model=args.fashion_model or base["fashion_model"],
        default_alpha=default_alpha, alpha=alpha,
        fashion_subset=args.fashion_subset if args.fashion_subset is not None
        else base["fashion_subset"],
        avmnist_noise=args.avmnist_noise, batch_size=args.batch_size, lr=args.lr,
        device=args.device, per_epoch_test=args.per_epoch_test, progress=args.progress,
        recipe=args.recipe, fashion_size=args.fashion_size, compile=args.compile)
    try:
        _validate(grid)
    except ValidationError as exc:
        raise SystemExit(f"the grid makes a spec the service would refuse: {exc}") from None
    return grid, args


def _validate(grid: Grid) -> None:
    """Every dataset and experiment spec of the grid, validated before any training,
    so a bad value stops the run at once rather than after an hour."""
    for dataset in grid.datasets:
        noises = [grid.avmnist_noise] if dataset == "avmnist" else grid.noise[dataset]
        seed = grid.seeds[dataset][-1]
        for noise in noises:
            dataset_spec(dataset, _dataset_options(grid, dataset, noise, seed))
            if dataset == "avmnist":
                models = [{**_model(grid, dataset), "fusion": f} for f in grid.fusions]
                methods: Sequence[str] = AVMNIST_METHODS
            else:
                models, methods = [_model(grid, dataset)], grid.methods
            for model in models:
                for method in methods:
                    experiment_spec(model, _augmentation(grid, method, noise),
                                    _training(grid, dataset, seed))


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
            platform.machine(), "cpus": os.cpu_count(), "device": grid.device,
            "default_threads": _Threads.initial}


# issue 14's comparisons, each a module of its own with its own options:
# `quality.py latent --seeds 3` runs benchmarks/quality_latent.py's main
SUITES = {"latent": "benchmarks.quality_latent", "multitask": "benchmarks.quality_multitask",
          "video": "benchmarks.quality_video", "hard": "benchmarks.quality_hard"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUITES:
        import importlib

        suite: Any = importlib.import_module(SUITES[argv[0]])
        return int(suite.main(argv[1:]))
    grid, args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        return _run(grid, args, argv)
    finally:
        torch.set_num_threads(threads)  # main() may be called in a longer-lived process


def _write_json(path: Path, grid: Grid, environment: dict[str, Any], records: list[RunRecord],
                wall_s: float, dataset_wall_s: dict[str, float], complete: bool) -> None:
    payload = {"environment": environment, "grid": vars(grid), "wall_s": wall_s,
               "dataset_wall_s": dataset_wall_s, "complete": complete,
               "targets": {f"{d} threads {t}": target_checks(
                   d, [r for r in records if r.dataset == d and r.threads == t])
                   for d in dict.fromkeys(r.dataset for r in records) if d in IMAGE_DATASETS
                   for t in sorted({r.threads for r in records if r.dataset == d})},
               "runs": [vars(r) for r in records]}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=1, default=str))
    # replaced whole, so a reader never sees a half-written file
    os.replace(partial, path)


def _fmt(value: float | None) -> str:
    return "– (at bound)" if value is None else f"{value:.3f}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def wall_summary(dataset: str, records: Sequence[RunRecord], wall_s: float) -> str:
    """The dataset's wall time, and per thread count the sum of its runs' wall
    and training times."""
    parts = []
    for t in sorted({r.threads for r in records}):
        mine = [r for r in records if r.threads == t]
        parts.append(f"{t} thread{'s' * (t != 1)}: runs {_minutes(sum(r.wall_s for r in mine))}"
                     f" (training {_minutes(sum(r.train_time_s for r in mine))})")
    return f"{dataset}: {len(records)} runs, wall {_minutes(wall_s)} — " + ", ".join(parts)


def _run(grid: Grid, args: argparse.Namespace, argv: list[str]) -> int:
    records: list[RunRecord] = []
    started = time.perf_counter()
    dataset_wall: dict[str, float] = {}
    # the code state the runs train with: taken now, not when a file is written
    environment = {**_environment(grid, argv),
                   "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for dataset in grid.datasets:
        dataset_started = time.perf_counter()
        runs = avmnist_runs(grid) if dataset == "avmnist" else image_runs(grid, dataset)
        for record in runs:
            records.append(record)
            dataset_wall[dataset] = time.perf_counter() - dataset_started
            if args.json:  # after every run: a long grid that dies keeps what it did
                _write_json(args.json, grid, environment, records, time.perf_counter() - started,
                            dataset_wall, complete=False)
            print(f"[{time.perf_counter() - started:7.1f}s] {dataset} {record.variant} "
                  f"{record.method} seed {record.seed} threads {record.threads}: final acc "
                  f"{record.final['test_acc']:.3f}, val-selected "
                  f"{record.val_selected['test_acc']:.3f} (epoch "
                  f"{record.val_selected['epoch']}), ECE {record.final['test_ece']:.3f} → "
                  f"{_fmt(_scaled_ece(record))} after T {record.calibration['temperature']:.3g}, "
                  f"train {record.train_time_s:.1f}s, run {record.wall_s:.1f}s", flush=True)
    total = time.perf_counter() - started
    out = tables(records)
    lines = [line for d in out for line in result_lines(d, [r for r in records
                                                             if r.dataset == d])]
    walls = [wall_summary(d, [r for r in records if r.dataset == d], dataset_wall[d])
             for d in out]
    sections = [f"### {d}\n\n{t}" for d, t in out.items()]
    print("\n\n".join(sections))
    print("\n".join(lines))
    print("wall time: " + "; ".join(walls) + f"; total {_minutes(total)}")
    if args.markdown:
        args.markdown.write_text("\n\n".join(sections) + "\n\n```\n" + "\n".join(lines)
                                 + "\n```\n\nWall time: " + "; ".join(walls)
                                 + f"; total {_minutes(total)}.\n")
    if args.json:
        _write_json(args.json, grid, environment, records, total, dataset_wall, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
