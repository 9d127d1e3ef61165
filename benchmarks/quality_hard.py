"""Quality on a hard avmnist: can fusions and mixing methods be told apart?

On the default avmnist every fusion sits at 0.98–1.00 test accuracy (the 8×8
image alone gives 0.94–0.99), so nothing ranks. Here the built-in's options
take part of each modality away, seeded per sample (``HARD``): a 4×4 block
(a quarter of the pixels) hides part of each image after pixel noise of 10 %
of the range, and a span of 30 % of each utterance's frames is masked after
the default log-mel noise (0.5 std). Neither modality alone then suffices,
which the grid measures first:

* **unimodal**: the ``multimodal`` model (early fusion, no mixing) trained and
  tested on one modality only (the other removed from the dataset, not zeroed):
  what each modality alone is worth;
* **fused**: each fusion × ``none`` / ``cross_modal`` (mixup with one partner
  and λ for both modalities) / ``manifold_mixup`` (layers 0, 1, 2: inputs,
  encoder features, the fused representation), with the run's own
  "test accuracy with the image / audio missing" alongside.

Everything goes through ``benchmarks/quality.py``'s path: specs validated by
the API's schemas (``DatasetCreate``, ``ExperimentCreate``), data from
``load_builtin``, training by the worker's call ``train(...)`` (its
``run_one``, which also checks its evaluator against the run's own figures).
Mean ± sample std over seeds; the seed is the dataset's (pairing, noise,
occlusion positions) and the training seed. Each cell is compared with the
best fused cell and with its own fusion without mixing: "apart" when the gap
exceeds the sum of the two cells' stds (a loose criterion, not a test).

Usage (from the repository root)::

    .venv/bin/python benchmarks/quality_hard.py                  # 51 runs, ~9 min on 2 cores
    .venv/bin/python benchmarks/quality_hard.py --epochs 40      # ~25 min
    .venv/bin/python benchmarks/quality_hard.py --quick          # a smoke run
    .venv/bin/python benchmarks/quality_hard.py --options occlusion=0.5,audio_noise=1
    .venv/bin/python benchmarks/quality_hard.py --table runs.json  # a saved grid's table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml.data import PreparedDataset
from benchmarks.quality import (
    FUSIONS,
    RunRecord,
    _cell,
    _stats,
    _Threads,
    dataset_spec,
    experiment_spec,
    load_dataset,
    run_one,
)

# the hard variant's dataset options (docs/datasets.md "avmnist"); chosen so that
# each modality alone is well below the fused accuracy (benchmarks/RESULTS.md)
HARD: dict[str, Any] = {"occlusion": 0.3, "image_noise": 0.1, "audio_noise": 0.5,
                        "audio_mask": 0.3}
METHODS = ("none", "cross_modal", "manifold_mixup")
MODALITIES = ("image", "audio")
WIDTH, EPOCHS = 8, 20


def only(data: PreparedDataset, modality: str) -> PreparedDataset:
    """``data`` with one modality: a unimodal model sees nothing of the other."""
    return dataclasses.replace(
        data, inputs={modality: data.inputs[modality]},
        modality_kinds={modality: data.modality_kinds[modality]},
        present={m: p for m, p in data.present.items() if m == modality},
        provenance={**data.provenance, "only": modality})


def _spec(fusion: str, method: str, seed: int, epochs: int) -> Any:
    augmentation = {"method": method} if method == "none" else {"method": method, "alpha": 1.0}
    return experiment_spec({"kind": "multimodal", "width": WIDTH, "fusion": fusion},
                           augmentation, {"seed": seed, "epochs": epochs})


def runs(options: dict[str, Any], seeds: Sequence[int], fusions: Sequence[str],
         methods: Sequence[str], epochs: int) -> Iterable[RunRecord]:
    for seed in seeds:
        data = load_dataset(dataset_spec("avmnist", {**options, "seed": seed}))
        for modality in MODALITIES:
            yield run_one(only(data, modality), _spec("early", "none", seed, epochs),
                          dataset="avmnist-hard", variant=f"{modality} only", seed=seed,
                          per_epoch_test=False)
        for fusion in fusions:
            for method in methods:
                yield run_one(data, _spec(fusion, method, seed, epochs),
                              dataset="avmnist-hard", variant=fusion, seed=seed,
                              per_epoch_test=False)


def _groups(records: Sequence[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.variant, r.method), []).append(r)
    return groups


def _versus(group: Sequence[RunRecord], other: Sequence[RunRecord]) -> tuple[str, str]:
    """The gap in mean test accuracy from ``other`` to ``group`` in points, and
    whether it exceeds the two cells' stds together (one seed: no verdict)."""
    mean, std = _stats([r.final["test_acc"] for r in group])
    base, base_std = _stats([r.final["test_acc"] for r in other])
    if std is None or base_std is None:
        return f"{100 * (mean - base):+.1f}", "– (1 seed)"
    return f"{100 * (mean - base):+.1f}", "yes" if abs(mean - base) > std + base_std else "no"


def table(records: Sequence[RunRecord]) -> str:
    """Per cell: test accuracy (mean ± std); its gap to the best fused cell and
    to the same model without mixing, each with whether it exceeds the two
    cells' stds together ("apart"); ECE; accuracy with a modality missing
    (fused models only)."""
    groups = _groups(records)
    fused = {k: v for k, v in groups.items() if not k[0].endswith(" only")}
    best = max(fused, key=lambda k: _stats([r.final["test_acc"] for r in fused[k]])[0])
    rows = ["| model | method | test acc | Δ to best (points) | apart? | Δ to its none "
            "(points) | apart? | ECE | acc without image | acc without audio "
            "| val-selected acc |",
            "| --- | --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for (variant, method), group in groups.items():
        to_best = ("+0.0", "best") if (variant, method) == best \
            else _versus(group, fused[best])
        plain = groups.get((variant, "none"))
        to_none = ("–", "–") if method == "none" or plain is None else _versus(group, plain)
        # a unimodal model "without" its one modality is at chance: not shown
        unimodal = variant.endswith(" only")
        rows.append("| " + " | ".join([
            variant, method, _cell([r.final["test_acc"] for r in group]), *to_best, *to_none,
            _cell([r.final["test_ece"] for r in group]),
            _cell([None if unimodal else r.final.get("test_acc_without_image") for r in group]),
            _cell([None if unimodal else r.final.get("test_acc_without_audio") for r in group]),
            _cell([r.val_selected["test_acc"] for r in group])]) + " |")
    return "\n".join(rows)


def _options(text: str | None) -> dict[str, Any]:
    options = dict(HARD)
    for pair in (text or "").split(","):
        if pair.strip():
            name, _, value = pair.partition("=")
            options[name.strip()] = float(value)
    return options


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"default {EPOCHS}")
    p.add_argument("--fusions", default=",".join(FUSIONS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--options", help="dataset options over HARD, e.g. occlusion=0.6")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="1 seed, 3 epochs, early fusion")
    p.add_argument("--json", type=Path, help="write every run here")
    p.add_argument("--table", type=Path, help="print the table of a --json file; no training")
    args = p.parse_args(argv)
    if args.table:
        print(table([RunRecord(**r) for r in json.loads(args.table.read_text())["runs"]]))
        return 0
    seeds = range(1 if args.quick else args.seeds)
    epochs = 3 if args.quick else args.epochs
    fusions = ["early"] if args.quick else args.fusions.split(",")
    options = _options(args.options)
    dataset_spec("avmnist", options)  # bad options fail here, before any training
    print(f"avmnist options {options}, {len(seeds)} seeds, {epochs} epochs, width {WIDTH}, "
          f"{args.threads} thread(s)", flush=True)
    started, records = time.perf_counter(), []
    with _Threads(args.threads):
        for record in runs(options, seeds, fusions, args.methods.split(","), epochs):
            records.append(record)
            if args.json:  # after every run: a grid cut short keeps what it measured
                _write(args.json, options, epochs, records)
            print(f"  {record.variant:>11} {record.method:<15} seed {record.seed}: test acc "
                  f"{record.final['test_acc']:.3f} ({record.wall_s:.0f}s)", flush=True)
    print(table(records))
    print(f"wall {statistics.fsum(r.wall_s for r in records) / 60:.1f} min of training, "
          f"{(time.perf_counter() - started) / 60:.1f} min in all")
    return 0


def _write(path: Path, options: dict[str, Any], epochs: int,
           records: Sequence[RunRecord]) -> None:
    path.write_text(json.dumps({"options": options, "epochs": epochs,
                                "runs": [dataclasses.asdict(r) for r in records]}, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
