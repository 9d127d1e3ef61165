"""benchmarks/quality.py on a tiny grid: the tables and JSON it writes, its
temperature fit, and its refusal of bad options."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

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


def test_tiny_digits_grid_writes_every_run(quality, tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "runs.json", tmp_path / "tables.md"
    rc = quality.main(["--datasets", "digits", "--noise", "0,0.4", "--methods", "none,mixup",
                       "--epochs", "2", "--seeds", "1", "--width", "8", "--threads", "1",
                       "--json", str(out_json), "--markdown", str(out_md)])
    assert rc == 0
    payload = json.loads(out_json.read_text())
    assert payload["complete"] is True
    assert not list(tmp_path.glob("*.partial"))
    runs = payload["runs"]
    assert sorted((r["variant"], r["method"]) for r in runs) == [
        ("0", "mixup"), ("0", "none"), ("0.4", "mixup"), ("0.4", "none")]
    for r in runs:
        assert r["dataset"] == "digits" and r["epochs"] == 2 and r["seed"] == 0
        assert len(r["history"]) == 2
        for key in ("test_acc", "test_ece", "test_loss"):
            assert _is_number(r["final"][key])
        assert 0 <= r["final"]["test_acc"] <= 1
        assert r["val_selected"]["epoch"] in (1, 2)
        # digits' test split is small, so the oracle column is computed per epoch
        assert r["best_test"]["test_acc"] >= r["final"]["test_acc"] - 1e-9
        assert r["best_test"]["test_acc"] == max(h["test_acc"] for h in r["history"])
        assert r["calibration"]["temperature"] > 0
        assert _is_number(r["calibration"]["test_ece_calibrated"])
        assert (r["alpha"] is None) == (r["method"] == "none")
    # α follows the noise level by default
    assert {r["variant"]: r["alpha"] for r in runs if r["method"] == "mixup"} == {
        "0": 1.0, "0.4": 16.0}

    table = out_md.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 0%")
            or line.startswith("| 40%")]
    assert len(rows) == 4
    assert all(len(row.strip("|").split("|")) == 10 for row in rows)
    assert "RESULT quality digits:" in table


def test_avmnist_grid_reports_missing_modalities(quality, tmp_path: Path) -> None:
    out_json = tmp_path / "runs.json"
    quality.main(["--datasets", "avmnist", "--fusions", "late", "--epochs", "1",
                  "--seeds", "1", "--width", "4", "--threads", "1", "--json", str(out_json)])
    runs = json.loads(out_json.read_text())["runs"]
    assert [(r["variant"], r["method"]) for r in runs] == [("late", "none"),
                                                           ("late", "cross_modal")]
    for r in runs:
        assert _is_number(r["final"]["test_acc_without_image"])
        assert _is_number(r["final"]["test_acc_without_audio"])


def test_own_temperature_fit_matches_the_runs(quality, monkeypatch, tmp_path: Path) -> None:
    # the benchmark's fallback (for a service without training.calibration) must
    # give what the run option gives on the same model
    argv = ["--datasets", "digits", "--noise", "0.2", "--methods", "mixup", "--epochs", "2",
            "--seeds", "1", "--width", "8", "--threads", "1", "--json"]
    if not quality.RUN_CALIBRATION:
        pytest.skip("this service has no training.calibration option to compare with")
    quality.main([*argv, str(tmp_path / "run.json")])
    monkeypatch.setattr(quality, "RUN_CALIBRATION", False)
    quality.main([*argv, str(tmp_path / "own.json")])
    by_run = json.loads((tmp_path / "run.json").read_text())["runs"][0]
    own = json.loads((tmp_path / "own.json").read_text())["runs"][0]
    assert by_run["calibration"]["source"] == "run"
    assert own["calibration"]["source"] == "benchmark"
    assert own["final"]["test_acc"] == by_run["final"]["test_acc"]
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
    # a value the service's own schema refuses, caught before anything trains
    (["--noise", "0.95"], "label_noise"),
])
def test_bad_options_are_refused_by_name(quality, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        quality.parse_args(argv)
