"""Quality of latent mixup: a VAE (``model.kind: multimodal_vae``) on avmnist
or the synthetic built-in, trained with ``augmentation.method`` ``none`` and
``latent_mixup``, over seeds.

As in ``benchmarks/quality.py``, the dataset and experiment specs are validated
from JSON-like dicts by the API's own schemas (``DatasetCreate``,
``ExperimentCreate``), the data comes from ``app.ml.data.load_builtin`` with the
options model's dump, and training is ``app.ml.training.train(data,
spec.model.to_ml(), spec.augmentation.to_mix_spec(), spec.training.to_ml(),
task=spec.task)``, the call ``worker/execution.py`` makes. The figures are the
run's own final test metrics:

* accuracy with every modality and with each modality missing for every test
  sample (``test_acc``, ``test_acc_without_<m>``);
* reconstruction error of each modality from all of them (``test_recon_<m>``):
  per-sample Gaussian NLL, ½ Σ (x − x̂)² in train-std units, for float
  modalities, the summed token cross-entropy for text;
* the cross-modal reconstruction of each modality decoded from one other
  alone (``test_recon_<b>_from_<a>``), and the KL and ELBO.

``--dataset avmnist`` (the default): image + audio, 1,797 samples; its table has
the cross-modal columns inline. ``--dataset synthetic``: the ``synthetic``
built-in (``SYNTHETIC_OPTIONS``: image, text, audio spectrogram and tabular,
8 classes, each modality showing the class only part of the time, so no
modality and not even all four together solve the task); with four
modalities the twelve cross-modal figures come as a second table, one row per
method and source modality. The synthetic model is avmnist's with
``recon_weights`` scaled to the modalities' sizes (``SYNTHETIC_MODEL``).

Each cell is mean ± sample std over the seeds (the run's training seed and the
dataset's seed: avmnist's pairing / label-noise seed, the synthetic data's
generation seed). Usage (from the repository root)::

    .venv/bin/python benchmarks/quality_latent.py                 # 2 methods × 3 seeds
    .venv/bin/python benchmarks/quality_latent.py --epochs 5 --seeds 0   # a smoke run
    .venv/bin/python benchmarks/quality_latent.py --dataset synthetic   # 200 epochs

It prints a markdown table and ``RESULT quality_latent …`` lines; ``--json``
keeps every run's metrics.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml.data import PreparedDataset, load_builtin
from app.ml.training import train
from app.schemas.datasets import DatasetCreate
from app.schemas.experiments import ExperimentCreate

METHODS = ("none", "latent_mixup")
# a small VAE: the audio's 1,280 values weighed down to about the image's 64,
# and the head weighed up so the latent carries the class
MODEL = {"kind": "multimodal_vae", "width": 8, "depth": 3, "dim": 32, "latent_dim": 16,
         "beta": 1.0, "recon_weights": {"audio": 0.1}, "classifier_weight": 10.0,
         "modality_dropout": 0.3}
TRAINING = {"batch_size": 64, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0005,
            "augment": [], "device": "cpu"}
# the synthetic built-in: four modalities, 8 classes, each modality showing the
# sample's class half the time (tabular: class means at half scale), so the
# `none` VAE's test accuracy stays near 0.7; small arrays, so a 200-epoch run
# takes under a minute on one thread
SYNTHETIC_OPTIONS: dict[str, Any] = {
    "num_samples": 1200, "num_classes": 8, "modalities": ["image", "text", "audio", "tabular"],
    "image_size": 12, "text_length": 12, "vocab_size": 64, "audio_bins": 16,
    "audio_frames": 16, "tabular_features": 8,
    "signal": {"image": 0.5, "text": 0.5, "audio": 0.5, "tabular": 0.5}}
# avmnist's model with recon_weights scaled so each modality weighs about as much
# as avmnist's 64 image values: image 3·12·12 = 432 values, audio 16·16 = 256,
# tabular 8 values, text a cross-entropy summed over its 12 tokens
SYNTHETIC_MODEL = {**MODEL, "recon_weights": {"image": 0.15, "audio": 0.25}}
DATASETS: dict[str, tuple[str, ...]] = {"avmnist": ("image", "audio"),
                                        "synthetic": tuple(SYNTHETIC_OPTIONS["modalities"])}


def figures(modalities: Sequence[str], cross: bool = True) -> tuple[tuple[str, str], ...]:
    """(metric, column label) of the table: accuracy with all modalities and with
    each missing, reconstruction per modality, then (with ``cross``) each modality
    decoded from each other one alone, then KL and ELBO."""
    out = [("test_acc", "acc"), *((f"test_acc_without_{m}", f"acc −{m}") for m in modalities),
           *((f"test_recon_{m}", f"recon {m}") for m in modalities)]
    if cross:
        out += [(f"test_recon_{b}_from_{a}", f"{b} from {a}")
                for b in modalities for a in modalities if a != b]
    return (*out, ("test_kl", "KL"), ("test_elbo", "ELBO"))


FIGURES = figures(DATASETS["avmnist"])
# the synthetic runs are short (1,200 small samples) and still improve their
# ELBO past 100 epochs of the cosine schedule
DEFAULT_EPOCHS = {"avmnist": 30, "synthetic": 200}


def dataset_spec(seed: int, label_noise: float, dataset: str = "avmnist") -> DatasetCreate:
    if dataset == "avmnist":
        options: dict[str, Any] = {"seed": seed, "label_noise": label_noise}
    elif dataset == "synthetic":
        if label_noise:
            raise ValueError("the synthetic built-in has no label_noise option")
        options = {**SYNTHETIC_OPTIONS, "seed": seed}
    else:
        raise ValueError(f"unknown dataset {dataset!r}; known: " + ", ".join(DATASETS))
    return DatasetCreate.model_validate({
        "name": "quality-latent", "source": {"kind": "builtin", "name": dataset,
                                             "options": options}})


def load_dataset(request: DatasetCreate) -> PreparedDataset:
    return load_builtin(request.source.name, request.source.options.model_dump(), {})


def experiment_spec(method: str, alpha: float, epochs: int, seed: int,
                    dataset: str = "avmnist") -> ExperimentCreate:
    return ExperimentCreate.model_validate({
        "name": "quality-latent", "dataset_id": str(uuid.uuid4()), "task": "classification",
        "model": SYNTHETIC_MODEL if dataset == "synthetic" else MODEL,
        "augmentation": {"method": method, "alpha": alpha},
        "training": {**TRAINING, "epochs": epochs, "seed": seed}})


def run_one(data: PreparedDataset, spec: ExperimentCreate) -> dict[str, float]:
    result = train(data, spec.model.to_ml(), spec.augmentation.to_mix_spec(),
                   spec.training.to_ml(), task=spec.task)
    if result.status != "completed":
        raise RuntimeError(f"run ended {result.status}")
    return result.metrics


def _cell(values: Sequence[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(runs: dict[str, list[dict[str, float]]],
          columns: Sequence[tuple[str, str]] = FIGURES) -> str:
    head = "| method | " + " | ".join(label for _, label in columns) + " |"
    lines = [head, "|" + " --- |" * (len(columns) + 1)]
    for method, metrics in runs.items():
        cells = [_cell([m[key] for m in metrics], 3 if "acc" in key else 2)
                 for key, _ in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cross_table(runs: dict[str, list[dict[str, float]]], modalities: Sequence[str]) -> str:
    """``test_recon_<b>_from_<a>``: a row per method and source a, a column per
    decoded modality b (— where b is a)."""
    lines = ["| method | from | " + " | ".join(modalities) + " |",
             "|" + " --- |" * (len(modalities) + 2)]
    for method, metrics in runs.items():
        for a in modalities:
            cells = ["—" if a == b else _cell([m[f"test_recon_{b}_from_{a}"] for m in metrics], 2)
                     for b in modalities]
            lines.append(f"| {method} | {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="avmnist")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int,
                        help=f"default {DEFAULT_EPOCHS['avmnist']} (avmnist), "
                             f"{DEFAULT_EPOCHS['synthetic']} (synthetic)")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--label-noise", type=float, default=0.0, help="avmnist only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every run's metrics here")
    args = parser.parse_args(argv)
    if args.dataset != "avmnist" and args.label_noise:
        parser.error("--label-noise is avmnist's option")
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS[args.dataset]
    torch.set_num_threads(args.threads)
    modalities = DATASETS[args.dataset]
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    started = time.perf_counter()
    for seed in args.seeds:
        data = load_dataset(dataset_spec(seed, args.label_noise, args.dataset))
        for method in METHODS:
            t0 = time.perf_counter()
            metrics = run_one(data, experiment_spec(method, args.alpha, args.epochs, seed,
                                                    args.dataset))
            runs[method].append(metrics)
            print(f"seed {seed} {method:13s} test_acc {metrics['test_acc']:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    if args.dataset == "avmnist":
        data_line = f"avmnist (label noise {args.label_noise:g})"
    else:
        data_line = (f"synthetic {SYNTHETIC_OPTIONS}, "
                     f"recon_weights {SYNTHETIC_MODEL['recon_weights']}")
    print(f"VAE on {data_line}, {args.epochs} epochs, "
          f"α = {args.alpha:g}, seeds {args.seeds}, {args.threads} torch thread(s), "
          f"{time.perf_counter() - started:.0f} s in all; test split, mean ± std over seeds\n")
    # two modalities: the cross-modal figures inline; more: a table of their own
    inline = len(modalities) <= 2
    print(table(runs, figures(modalities, cross=inline)))
    if not inline:
        print("\nReconstruction error of each modality (column) decoded from one (from) alone:\n")
        print(cross_table(runs, modalities))
    for method, metrics in runs.items():
        acc = statistics.fmean(m["test_acc"] for m in metrics)
        without = " ".join(
            f"without_{mod}={statistics.fmean(m[f'test_acc_without_{mod}'] for m in metrics):.3f}"
            for mod in modalities)
        print(f"RESULT quality_latent {args.dataset} {method} test_acc={acc:.3f} {without}")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
