"""benchmarks/quality.py on tiny grids: the specs it sends, the tables and JSON
it writes, the thread comparison, the targets, its temperature fit, and its
refusal of bad options."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from app.ml.training import TrainSpec

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_default_grid_is_the_default_recipe_with_alpha_1(quality) -> None:
    grid, _ = quality.parse_args([])
    assert grid.datasets == ["digits", "fashion-mnist"]  # avmnist only on request
    assert grid.methods == ["none", "mixup"]
    assert grid.noise["digits"] == [0.0, 0.2, 0.4, 0.6]
    assert grid.noise["fashion-mnist"] == [0.0, 0.4]
    assert grid.seeds["digits"] == [0, 1, 2] and grid.seeds["fashion-mnist"] == [0]
    assert grid.threads["digits"] == [1, 2] and grid.threads["fashion-mnist"] == [2]
    assert {quality._augmentation(grid, "mixup", n)["alpha"] for n in grid.noise["digits"]} \
        == {1.0}
    # digits: the experiment sends the defaults, nothing else
    assert quality._model(grid, "digits") == {}
    assert quality._training(grid, "digits", 2) == {"seed": 2, "device": "cpu"}
    spec = quality.experiment_spec({}, {"method": "mixup", "alpha": 1.0},
                                   quality._training(grid, "digits", 2))
    assert spec.training.to_ml() == TrainSpec(seed=2, device="cpu")
    assert spec.model.to_ml().width == 16 and spec.model.to_ml().depth == 3
    # fashion-mnist: all 60,000 training images, the paper-style recipe, a CNN
    assert grid.fashion_subset is None
    assert "subset" not in quality._dataset_options(grid, "fashion-mnist", 0.4, 0)
    training = quality._training(grid, "fashion-mnist", 0)
    assert training == {**quality.FASHION_RECIPE, "seed": 0, "device": "cpu",
                        "epochs": grid.epochs["fashion-mnist"]}
    fashion = quality.experiment_spec(quality._model(grid, "fashion-mnist"), {"method": "none"},
                                      training).training.to_ml()
    assert (fashion.optimizer, fashion.nesterov, fashion.schedule, fashion.augmentations) == (
        "sgd", True, "cosine", ("crop",))
    assert quality._model(grid, "fashion-mnist") == {"kind": "cnn", "width": 16}
    cuda, _ = quality.parse_args(["--device", "cuda"])
    assert quality._model(cuda, "fashion-mnist") == {"kind": "preact_resnet18"}


def test_paper_recipe_at_32x32(quality) -> None:
    """What benchmarks/gpu/run.sh asks for: the mixup paper's recipe, images padded
    to its 32×32, as specs the service accepts."""
    grid, _ = quality.parse_args(["--device", "cuda", "--recipe", "paper", "--fashion-size",
                                  "32", "--epochs", "fashion-mnist=20", "--compile"])
    training = quality._training(grid, "fashion-mnist", 0)
    assert training == {**quality.PAPER_RECIPE, "seed": 0, "device": "cuda", "epochs": 20,
                        "compile": True}
    spec = quality.experiment_spec(quality._model(grid, "fashion-mnist"),
                                   quality._augmentation(grid, "mixup", 0.0), training)
    recipe = spec.training.to_ml()
    assert (recipe.nesterov, recipe.weight_decay, recipe.warmup, recipe.step_milestones(),
            recipe.augmentations) == (False, 1e-4, 0, (10, 15), ("crop", "flip"))
    assert spec.model.to_ml().kind == "preact_resnet18"
    images = torch.full((3, 1, 28, 28), 7, dtype=torch.uint8)
    data = quality.PreparedDataset(inputs={"image": images}, labels=torch.zeros(3),
                                   clean_labels=torch.zeros(3), split=torch.zeros(3),
                                   class_names=["a"], modality_kinds={"image": "image"})
    padded = quality.pad_images(data, 32).inputs["image"]
    assert padded.shape == (3, 1, 32, 32) and padded.dtype == torch.uint8
    assert torch.equal(padded[..., 2:30, 2:30], images) and int(padded.sum()) == 7 * images.numel()


def test_alpha_and_threads_overrides(quality) -> None:
    grid, _ = quality.parse_args(["--alpha", "4", "--threads", "2,1,2"])
    assert quality._augmentation(grid, "mixup", 0.6)["alpha"] == 4.0
    assert grid.threads["digits"] == [1, 2] and grid.threads["fashion-mnist"] == [1, 2]
    grid, _ = quality.parse_args(["--alpha", "0.4=16", "--epochs", "digits=50"])
    assert quality._augmentation(grid, "mixup", 0.4)["alpha"] == 16.0
    assert quality._augmentation(grid, "mixup", 0.2)["alpha"] == 1.0
    assert quality._training(grid, "digits", 0)["epochs"] == 50


def test_tiny_digits_grid_at_two_thread_counts(quality, tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "runs.json", tmp_path / "tables.md"
    rc = quality.main(["--datasets", "digits", "--noise", "0,0.4", "--epochs", "2",
                       "--seeds", "1", "--width", "8", "--threads", "1,2",
                       "--json", str(out_json), "--markdown", str(out_md)])
    assert rc == 0
    payload = json.loads(out_json.read_text())
    assert payload["complete"] is True
    assert not list(tmp_path.glob("*.partial"))
    runs = payload["runs"]
    assert sorted((r["variant"], r["method"], r["threads"]) for r in runs) == [
        (v, m, t) for v in ("0", "0.4") for m in ("mixup", "none") for t in (1, 2)]
    for r in runs:
        assert r["dataset"] == "digits" and r["epochs"] == 2 and r["seed"] == 0
        assert r["spec"]["training"]["epochs"] == 2 and r["spec"]["model"]["width"] == 8
        assert len(r["history"]) == 2
        for key in ("test_acc", "test_ece", "test_loss"):
            assert _is_number(r["final"][key])
        assert 0 <= r["final"]["test_acc"] <= 1
        assert r["val_selected"]["epoch"] in (1, 2)
        # digits' test split is small, so the oracle column is computed per epoch
        assert r["best_test"]["test_acc"] >= r["final"]["test_acc"] - 1e-9
        assert r["best_test"]["test_acc"] == max(h["test_acc"] for h in r["history"])
        assert r["calibration"]["source"] == "run"
        assert r["calibration"]["temperature"] > 0
        assert _is_number(r["calibration"]["test_ece_calibrated"])
        assert (r["alpha"] is None) == (r["method"] == "none")
    assert {r["alpha"] for r in runs if r["method"] == "mixup"} == {1.0}
    assert set(payload["targets"]) == {"digits threads 1", "digits threads 2"}

    table = out_md.read_text()
    rows = [line for line in table.splitlines()
            if line.startswith(("| 0% | none | –", "| 0% | mixup | 1", "| 40% | none | –",
                                "| 40% | mixup | 1"))]
    assert len(rows) == 8  # one per (noise, method, threads)
    assert all(len(row.strip("|").split("|")) == 11 for row in rows)
    assert "final acc, 1 thread | final acc, 2 threads" in table
    assert "threads 1/2:" in table and "run pairs bit-identical" in table
    results = [line for line in table.splitlines() if line.startswith("RESULT quality digits")]
    assert len(results) == 2 and "(1 thread," in results[0] and "(2 threads," in results[1]
    assert all("[target: mixup − none" in r and "[target: |mixup − none|" in r for r in results)
    assert "Wall time: digits: 8 runs" in table


def _record(quality, variant: str, method: str, acc: float, seed: int = 0, threads: int = 1,
            history: list | None = None):
    return quality.RunRecord(
        dataset="digits", variant=variant, method=method,
        alpha=None if method == "none" else 1.0, seed=seed, threads=threads, epochs=100,
        final={"test_acc": acc, "test_ece": 0.1, "test_loss": 0.5},
        val_selected={"epoch": 50, "val_acc": acc, "test_acc": acc, "test_ece": 0.1},
        best_test=None, calibration={"source": "run", "temperature": 1.0,
                                     "test_ece_calibrated": 0.05},
        spec={"model": {"kind": "cnn", "width": 16}},
        history=history if history is not None else [{"epoch": 1, "val_acc": acc}])


def test_targets_are_stated_met_or_not(quality) -> None:
    records = [_record(quality, "0", "none", 0.995), _record(quality, "0", "mixup", 0.980),
               _record(quality, "0.4", "none", 0.70), _record(quality, "0.4", "mixup", 0.85),
               _record(quality, "0.4", "mixup", 0.87, seed=1),
               _record(quality, "0.4", "none", 0.72, seed=1)]
    checks = {c["noise"]: c for c in quality.target_checks("digits", records)}
    assert checks[0.4]["met"] is True and checks[0.4]["aim_met"] is False
    assert checks[0.4]["delta_points"] == pytest.approx(15.0)
    assert checks[0.0]["met"] is False and checks[0.0]["delta_points"] == pytest.approx(-1.5)
    [line] = quality.result_lines("digits", records)
    assert "mixup − none +15.0 ≥ +10 points ✓" in line
    assert "aim mixup 0.860 ≥ 0.90 ✗" in line
    assert "|mixup − none| 1.5 ≤ 1 point ✗" in line
    assert "(1 thread, 2 seeds, 100 epochs, cnn width 16)" in line
    # fashion-mnist has the 0 % target only; a noise level not run has none
    fashion = [quality.RunRecord(**{**vars(r), "dataset": "fashion-mnist"}) for r in records]
    assert [c["noise"] for c in quality.target_checks("fashion-mnist", fashion)] == [0.0]
    assert quality.target_checks("digits", records[:2])[0]["noise"] == 0.0


def test_a_temperature_at_its_bound_has_no_calibrated_figure(quality) -> None:
    fitted = _record(quality, "0", "none", 1.0)
    bound = _record(quality, "0", "none", 1.0, seed=1)
    bound.calibration = {"source": "run", "temperature": 0.01, "temperature_at_bound": True,
                         "test_ece_calibrated": None, "test_nll_calibrated": None}
    mixup = _record(quality, "0", "mixup", 1.0)
    table = quality.image_table([fitted, bound, mixup])
    assert "| 0.050 (1 of 2 T at bound) |" in table
    [line] = quality.result_lines("digits", [fitted, bound, mixup])
    assert "none 1.000 (ECE 0.100→0.050, 1 T at bound)" in line
    assert quality.at_bound(0.01) and quality.at_bound(100.0) and not quality.at_bound(0.05)


def test_thread_comparison_pairs_runs_by_seed(quality) -> None:
    one = _record(quality, "0.4", "mixup", 0.9, threads=1, history=[{"epoch": 1, "x": 1.0}])
    same = _record(quality, "0.4", "mixup", 0.9, threads=2, history=[{"epoch": 1, "x": 1.0}])
    drift = _record(quality, "0.4", "mixup", 0.9, threads=2, history=[{"epoch": 1, "x": 1.5}])
    assert quality.identical(one, same) and not quality.identical(one, drift)
    other = _record(quality, "0.4", "mixup", 0.8, seed=1, threads=1)
    moved = _record(quality, "0.4", "mixup", 0.7, seed=1, threads=2)
    records = [one, same, other, moved]
    assert quality.threads_summary(records) == (
        "threads 1/2: not identical (1 of 2 run pairs bit-identical; largest "
        "|Δ final test acc| 0.100)")
    table = quality.threads_table(records)
    assert table is not None and "| 40% | mixup | 0.850 ± 0.071 | 0.800 ± 0.141 | 1/2 | 0.100" \
        in table
    assert quality.threads_table([one, other]) is None


def test_avmnist_grid_reports_missing_modalities(quality, tmp_path: Path) -> None:
    out_json = tmp_path / "runs.json"
    quality.main(["--datasets", "avmnist", "--fusions", "late", "--epochs", "1",
                  "--seeds", "1", "--width", "4", "--json", str(out_json)])
    runs = json.loads(out_json.read_text())["runs"]
    assert [(r["variant"], r["method"]) for r in runs] == [("late", "none"),
                                                           ("late", "cross_modal")]
    for r in runs:
        assert _is_number(r["final"]["test_acc_without_image"])
        assert _is_number(r["final"]["test_acc_without_audio"])


def test_own_temperature_fit_matches_the_runs(quality, monkeypatch, tmp_path: Path) -> None:
    # the benchmark's own fit (the run asked for calibration none) must give
    # what the run's calibration gives on the same model
    argv = ["--datasets", "digits", "--noise", "0.2", "--methods", "mixup", "--epochs", "2",
            "--seeds", "1", "--width", "8", "--threads", "1", "--json"]
    quality.main([*argv, str(tmp_path / "run.json")])
    monkeypatch.setattr(quality, "SELF_CALIBRATE", True)
    quality.main([*argv, str(tmp_path / "own.json")])
    by_run = json.loads((tmp_path / "run.json").read_text())["runs"][0]
    own = json.loads((tmp_path / "own.json").read_text())["runs"][0]
    assert by_run["calibration"]["source"] == "run"
    assert own["calibration"]["source"] == "benchmark"
    assert own["spec"]["training"]["calibration"] == "none"
    assert own["final"]["test_acc"] == by_run["final"]["test_acc"]
    assert own["calibration"]["temperature_at_bound"] is False
    assert by_run["calibration"]["temperature_at_bound"] is False
    for key in ("temperature", "test_ece_calibrated", "test_nll_calibrated"):
        assert own["calibration"][key] == pytest.approx(by_run["calibration"][key], rel=1e-3)


def test_fit_temperature_recovers_the_scale_of_overconfident_logits(quality) -> None:
    gen = torch.Generator().manual_seed(0)
    true_logits = 2 * torch.randn(20_000, 5, generator=gen)
    labels = torch.multinomial(true_logits.softmax(-1), 1, generator=gen).squeeze(1)
    # the model's logits are 3x too sharp: the fit should undo that
    assert quality.fit_temperature(3 * true_logits, labels) == pytest.approx(3.0, rel=0.05)
    assert quality.fit_temperature(true_logits / 2, labels) == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize(("argv", "message"), [
    (["--methods", "mixup,shuffle"], "--methods"),
    (["--datasets", "cifar"], "--datasets"),
    (["--alpha", "0.4:8"], "--alpha"),
    (["--seeds", "0"], "--seeds"),
    (["--noise", "0.2,lots"], "--noise"),
    (["--epochs", "digits=ten"], "--epochs"),
    (["--threads", "1,two"], "--threads"),
    (["--threads", "-1"], "--threads"),
    # a value the service's own schema refuses, caught before anything trains
    (["--noise", "0.95"], "label_noise"),
    (["--fashion-subset", "10"], "subset"),
])
def test_bad_options_are_refused_by_name(quality, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        quality.parse_args(argv)
