"""The multi-task quality benchmark runs end to end on a tiny grid and compares
each task's single-task run with the shared model's head on the same rows."""

import pytest
import torch

from app.ml.data.synthetic import load_synthetic
from benchmarks import quality_multitask as bench


def test_one_task_keeps_rows_and_splits() -> None:
    data = load_synthetic(num_samples=200, tasks=3, modalities=["tabular"])
    single = bench.one_task(data, "group2")
    assert torch.equal(single.labels, data.labels_of("group2"))
    assert single.class_names == data.tasks["group2"] and not single.multitask
    assert torch.equal(single.split, data.split)


def test_benchmark_prints_a_row_per_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--seeds", "1", "--epochs", "1", "--methods", "none"]) == 0
    out = capsys.readouterr().out
    for task in ("class", "group1", "group2", "mean"):
        assert f"| none | {task} |" in out
