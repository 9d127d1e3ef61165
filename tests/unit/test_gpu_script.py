"""benchmarks/gpu: the scripts parse, and the summary a GPU session pastes into
RESULTS.md reads the run's outputs (``run.sh --device cpu --quick`` runs the
whole script; it takes minutes on 2 cores, so it is run by hand, not here)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

GPU = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"


@pytest.fixture(scope="module")
def summary():
    spec = importlib.util.spec_from_file_location("gpu_summary", GPU / "summary.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("script", ["run.sh", "prepare.sh"])
def test_the_scripts_parse(script):
    subprocess.run(["bash", "-n", str(GPU / script)], check=True)


def test_run_sh_refuses_an_unknown_device():
    done = subprocess.run(["bash", str(GPU / "run.sh"), "--device", "tpu"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--device cuda or cpu" in done.stderr


def test_the_summary_reads_every_output(summary, tmp_path):
    (tmp_path / "run.log").write_text(
        "noise\nRESULT train_throughput: median ratio mixlab/dataloader = 4.20x (...)\n"
        "RESULT mixing: mixup = 1.30x D2D copy (target <= 1.6)\n")
    (tmp_path / "train_throughput.json").write_text(json.dumps({"machine": {
        "device": "cuda:0 (NVIDIA H200, bf16 autocast)", "torch": "2.11.0+cu130",
        "python": "3.12.3", "cores": 16, "cpu": "x86"}}))
    (tmp_path / "pytest.xml").write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.unit.test_step_sync" name="test_a"/>'
        '<testcase classname="tests.unit.test_step_sync" name="test_b"><failure/></testcase>'
        "</testsuite></testsuites>")
    (tmp_path / "quality.md").write_text("### fashion-mnist\n\n| noise | method |\n")
    assert summary.main([str(tmp_path), "quality: exit 0, 200s"]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith("### Measured with benchmarks/gpu/run.sh")
    assert "Machine: cuda:0 (NVIDIA H200, bf16 autocast); torch 2.11.0+cu130" in text
    assert "RESULT train_throughput: median ratio mixlab/dataloader = 4.20x" in text
    assert "2 passed, 1 failed, 0 errors, 1 skipped" in text
    assert "failed: tests.unit.test_step_sync::test_b" in text
    assert "| noise | method |" in text and "Stages: quality: exit 0, 200s." in text


def test_a_run_cut_short_still_summarises(summary, tmp_path):
    (tmp_path / "run.log").write_text("")
    text = summary.summary(tmp_path, [])
    assert "Machine: unknown" in text and "no report" in text and "no table" in text
