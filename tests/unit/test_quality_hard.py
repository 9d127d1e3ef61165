"""benchmarks/quality_hard.py: the runs it makes (a tiny grid) and its verdicts."""

import json
from pathlib import Path

import pytest

from benchmarks import quality_hard
from benchmarks.quality import RunRecord


def _record(variant: str, method: str, acc: float, seed: int) -> RunRecord:
    return RunRecord(dataset="avmnist-hard", variant=variant, method=method, alpha=None,
                     seed=seed, threads=1, epochs=20,
                     final={"test_acc": acc, "test_ece": 0.1, "test_acc_without_image": 0.3,
                            "test_acc_without_audio": 0.6},
                     val_selected={"test_acc": acc}, best_test=None, calibration={})


def test_a_tiny_grid_trains_unimodal_and_fused_models(tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs.json"
    quality_hard.main(["--seeds", "1", "--epochs", "1", "--fusions", "late",
                       "--methods", "none,manifold_mixup", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["options"] == quality_hard.HARD
    runs = saved["runs"]
    assert [(r["variant"], r["method"]) for r in runs] == [
        ("image only", "none"), ("audio only", "none"), ("late", "none"),
        ("late", "manifold_mixup")]
    # a unimodal model never saw the other modality; a fused one is tested without each
    assert [sorted(k for k in r["final"] if k.startswith("test_acc_without_"))
            for r in runs] == [["test_acc_without_image"], ["test_acc_without_audio"],
                               *[["test_acc_without_audio", "test_acc_without_image"]] * 2]
    assert runs[3]["spec"]["augmentation"]["method"] == "manifold_mixup"
    capsys.readouterr()
    quality_hard.main(["--table", str(out)])  # the table again from the file, no training
    shown = capsys.readouterr().out
    assert shown.count("\n| ") == 5 and f"| late | none | {runs[2]['final']['test_acc']:.3f}" \
        in shown


def test_cells_are_apart_from_the_best_only_beyond_both_spreads() -> None:
    records = [_record(v, m, acc, seed) for v, m, accs in [
        ("image only", "none", (0.60, 0.62, 0.64)),
        ("late", "none", (0.89, 0.90, 0.91)),        # best: 0.900 ± 0.010
        ("late", "cross_modal", (0.875, 0.885, 0.895)),  # 1.5 below, within 0.02
        ("late", "manifold_mixup", (0.84, 0.85, 0.86)),  # 5 below: apart
        ("gated", "none", (0.85, 0.86, 0.87)),           # 4 below: apart
    ] for seed, acc in enumerate(accs)]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line
            for line in quality_hard.table(records).splitlines()[2:]}
    # gap to the best fused cell, then to the same fusion without mixing
    assert "| +0.0 | best | – | – |" in rows[("late", "none")]
    assert "| -1.5 | no | -1.5 | no |" in rows[("late", "cross_modal")]
    assert "| -5.0 | yes | -5.0 | yes |" in rows[("late", "manifold_mixup")]
    assert "| -4.0 | yes | – | – |" in rows[("gated", "none")]
    assert "| -28.0 | yes | – | – |" in rows[("image only", "none")]
    # the unimodal row shows no "without" figures; fused rows do
    assert "| – | – |" in rows[("image only", "none")]
    assert "0.300" in rows[("gated", "none")]


@pytest.mark.parametrize("text", ["occlusion=2", "audio_mask=-1"])
def test_bad_options_fail_before_training(text: str) -> None:
    with pytest.raises(ValueError, match=r"source\.options\.(occlusion|audio_mask)"):
        quality_hard.main(["--options", text, "--seeds", "1"])
