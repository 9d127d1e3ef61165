"""Quality on video + audio: moving-digits with and without (cross-modal) mixup.

The ``moving-digits`` built-in (each sklearn digit moving along a bouncing line
over T frames, paired with a spoken digit of its class, val/test utterances
unseen in training) trained as ``benchmarks/quality.py`` trains: specs
validated by the API's schemas (``DatasetCreate``, ``ExperimentCreate``), data
from ``load_builtin`` with the options model's dump, training by the worker's
call (``quality.run_one``, which also checks that its own evaluation of the
final checkpoint reproduces the run's test accuracy).

Grid: ``none``, ``cross_modal`` (one partner and λ for both modalities,
interpolated: what method ``mixup`` does too) and ``cross_modal_cut``
(the same partner and λ, a cutmix box on every frame of the video and a
spec_cutmix box on the log-mel), α = 1, × seeds (the
seed is the run's training seed and the dataset's: trajectories, pairing,
audio noise) on a ``multimodal`` model (late fusion, per-frame CNN + mean over
frames for the video, the spectrogram CNN for the audio). Per run: test
accuracy and ECE, accuracy with the video or the audio missing (the run's
``test_acc_without_<modality>``, the model's missing-modality path), and the
val-selected test accuracy. Which op each method applies to each modality is
printed from a preview of the same spec.

Usage (from the repository root)::

    .venv/bin/python benchmarks/quality_video.py                  # 9 runs
    .venv/bin/python benchmarks/quality_video.py --quick          # 2 runs, 2 epochs
    .venv/bin/python benchmarks/quality_video.py --epochs 20 --seeds 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml.preview import preview_mix
from benchmarks.quality import (
    RunRecord,
    _cell,
    dataset_spec,
    experiment_spec,
    load_dataset,
    run_one,
)

DATASET = "moving-digits"
# name -> augmentation (α added): method mixup interpolates both modalities with one
# partner and λ, which is cross_modal with its default ops, so the grid's third
# arm is cross_modal with region ops instead
METHODS: dict[str, dict[str, Any]] = {
    "none": {"method": "none"},
    "cross_modal": {"method": "cross_modal"},
    "cross_modal_cut": {"method": "cross_modal", "ops": {"video": "cutmix",
                                                         "audio": "spec_cutmix"}},
}
MODEL: dict[str, Any] = {"kind": "multimodal", "fusion": "late", "dim": 32, "width": 8,
                         "depth": 2}
# a short recipe a 2-core CPU finishes in minutes: adamw at 3e-3, the default cosine
TRAINING: dict[str, Any] = {"batch_size": 32, "optimizer": "adamw", "lr": 0.003}


def augmentation(arm: str, alpha: float) -> dict[str, Any]:
    spec = dict(METHODS[arm])
    return spec if spec["method"] == "none" else {**spec, "alpha": alpha}


def ops_applied(data: Any, spec: Any) -> dict[str, str | None]:
    """What the spec mixes, per modality: the op of a preview of it (None: not mixed)."""
    batch = preview_mix(data, spec.augmentation.to_mix_spec(), seed=0, n=8)
    return {m: mm.op for m, mm in batch.modalities.items()}


def runs(methods: Sequence[str], seeds: int, epochs: int, frames: int, alpha: float,
         progress: bool) -> tuple[list[RunRecord], dict[str, dict[str, str | None]]]:
    records, ops = [], {}
    for seed in range(seeds):
        data = load_dataset(dataset_spec(DATASET, {"seed": seed, "frames": frames}))
        for method in methods:
            spec = experiment_spec(dict(MODEL), augmentation(method, alpha),
                                   {**TRAINING, "epochs": epochs, "seed": seed})
            ops.setdefault(method, ops_applied(data, spec))
            record = run_one(data, spec, dataset=DATASET, variant="late", seed=seed,
                             per_epoch_test=False)
            record.method = method  # the arm, which may be cross_modal with other ops
            records.append(record)
            if progress:
                print(f"  {method} seed {seed}: test acc {record.final['test_acc']:.3f} "
                      f"({record.wall_s:.0f} s)", file=sys.stderr, flush=True)
    return records, ops


def table(records: Sequence[RunRecord], ops: dict[str, dict[str, str | None]]) -> str:
    lines = ["| method | ops (video, audio) | test acc | ECE | acc without video "
             "| acc without audio | val-selected acc |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for method in dict.fromkeys(r.method for r in records):
        mine = [r for r in records if r.method == method]
        applied = ops.get(method, {})
        lines.append("| " + " | ".join([
            method, f"{applied.get('video') or '–'}, {applied.get('audio') or '–'}",
            _cell([r.final["test_acc"] for r in mine]),
            _cell([r.final["test_ece"] for r in mine]),
            _cell([r.final.get("test_acc_without_video") for r in mine]),
            _cell([r.final.get("test_acc_without_audio") for r in mine]),
            _cell([r.val_selected["test_acc"] for r in mine])]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="arms: " + ", ".join(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (small models on shared cores: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="none and cross_modal, 1 seed, 2 epochs")
    parser.add_argument("--json", type=Path, help="write every run here")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if args.quick:
        methods, args.seeds, args.epochs = ["none", "cross_modal"], 1, 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    records, ops = runs(methods, args.seeds, args.epochs, args.frames, args.alpha,
                        progress=True)
    print(f"### moving-digits (video {args.frames}x1x16x16 + audio 1x40x32), "
          f"{args.epochs} epochs, {args.seeds} seeds, {args.threads} thread(s)\n")
    print(table(records, ops))
    for method in dict.fromkeys(r.method for r in records):
        accs = [r.final["test_acc"] for r in records if r.method == method]
        print(f"RESULT quality_video {method} test_acc {_cell(accs)}")
    print(f"\n{len(records)} runs in {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in records], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
