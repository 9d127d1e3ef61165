"""Quality of latent mixup: a VAE (``model.kind: multimodal_vae``) on avmnist
trained with ``augmentation.method`` ``none`` and ``latent_mixup``, over seeds.

As in ``benchmarks/quality.py``, the dataset and experiment specs are validated
from JSON-like dicts by the API's own schemas (``DatasetCreate``,
``ExperimentCreate``), the data comes from ``app.ml.data.load_builtin`` with the
options model's dump, and training is ``app.ml.training.train(data,
spec.model.to_ml(), spec.augmentation.to_mix_spec(), spec.training.to_ml(),
task=spec.task)``, the call ``worker/execution.py`` makes. The figures are the
run's own final test metrics:

* accuracy with both modalities, with the image missing and with the audio
  missing (``test_acc``, ``test_acc_without_image``, ``test_acc_without_audio``);
* reconstruction error (per-sample Gaussian NLL, ½ Σ (x − x̂)² in train-std units)
  of each modality from both (``test_recon_<m>``) and from the other alone
  (``test_recon_<b>_from_<a>``), and the KL and ELBO.

Each cell is mean ± sample std over the seeds (the run's training seed and the
dataset's pairing seed). Usage (from the repository root)::

    .venv/bin/python benchmarks/quality_latent.py                 # 2 methods × 3 seeds
    .venv/bin/python benchmarks/quality_latent.py --epochs 5 --seeds 0   # a smoke run

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
FIGURES = (("test_acc", "acc"), ("test_acc_without_image", "acc −image"),
           ("test_acc_without_audio", "acc −audio"), ("test_recon_image", "recon image"),
           ("test_recon_audio", "recon audio"),
           ("test_recon_image_from_audio", "image from audio"),
           ("test_recon_audio_from_image", "audio from image"), ("test_kl", "KL"),
           ("test_elbo", "ELBO"))


def dataset_spec(seed: int, label_noise: float) -> DatasetCreate:
    return DatasetCreate.model_validate({
        "name": "quality-latent", "source": {"kind": "builtin", "name": "avmnist",
                                             "options": {"seed": seed,
                                                         "label_noise": label_noise}}})


def load_dataset(request: DatasetCreate) -> PreparedDataset:
    return load_builtin(request.source.name, request.source.options.model_dump(), {})


def experiment_spec(method: str, alpha: float, epochs: int, seed: int) -> ExperimentCreate:
    return ExperimentCreate.model_validate({
        "name": "quality-latent", "dataset_id": str(uuid.uuid4()), "task": "classification",
        "model": MODEL, "augmentation": {"method": method, "alpha": alpha},
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


def table(runs: dict[str, list[dict[str, float]]]) -> str:
    head = "| method | " + " | ".join(label for _, label in FIGURES) + " |"
    lines = [head, "|" + " --- |" * (len(FIGURES) + 1)]
    for method, metrics in runs.items():
        cells = [_cell([m[key] for m in metrics], 3 if "acc" in key else 2)
                 for key, _ in FIGURES]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--label-noise", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every run's metrics here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    started = time.perf_counter()
    for seed in args.seeds:
        data = load_dataset(dataset_spec(seed, args.label_noise))
        for method in METHODS:
            t0 = time.perf_counter()
            metrics = run_one(data, experiment_spec(method, args.alpha, args.epochs, seed))
            runs[method].append(metrics)
            print(f"seed {seed} {method:13s} test_acc {metrics['test_acc']:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(f"VAE on avmnist (label noise {args.label_noise:g}), {args.epochs} epochs, "
          f"α = {args.alpha:g}, seeds {args.seeds}, {args.threads} torch thread(s), "
          f"{time.perf_counter() - started:.0f} s in all; test split, mean ± std over seeds\n")
    print(table(runs))
    for method, metrics in runs.items():
        acc = statistics.fmean(m["test_acc"] for m in metrics)
        print(f"RESULT quality_latent avmnist {method} test_acc={acc:.3f} "
              f"without_image={statistics.fmean(m['test_acc_without_image'] for m in metrics):.3f} "
              f"without_audio={statistics.fmean(m['test_acc_without_audio'] for m in metrics):.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
