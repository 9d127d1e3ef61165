"""Tasks end to end through the real API and worker: a multi-label synthetic
dataset with missing modalities → a multilabel experiment → metrics, evaluation
and checkpoint; and the requests a dataset cannot serve, refused with 422."""

from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load as st_load

from app.client import MixlabClient
from app.ml.checkpoint import load_model
from app.ml.safetensors_meta import header_metadata
from tests.integration.helpers import auth_headers

pytestmark = pytest.mark.integration

TINY = {"num_samples": 300, "num_classes": 4, "image_size": 8, "tabular_features": 4,
        "modalities": ["image", "tabular"]}
MODEL = {"kind": "multimodal", "fusion": "late", "dim": 8, "width": 4, "depth": 1}


def _ready(client: MixlabClient, created: dict[str, Any]) -> dict[str, Any]:
    """The dataset once prepared (or failed)."""
    return client.wait_for_dataset(created["id"], timeout=120)


@pytest.fixture(scope="module")
def tagged(stack) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with MixlabClient(stack.base_url) as mx:
        return _ready(mx, mx.create_builtin_dataset(
            "synthetic", name="tags", labels_per_sample=2, missing_rate=0.2, **TINY))


@pytest.fixture(scope="module")
def digits(stack) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with MixlabClient(stack.base_url) as mx:
        return _ready(mx, mx.create_builtin_dataset("digits", name="digits"))




def test_multilabel_dataset_trains_end_to_end(client: MixlabClient, tagged: dict) -> None:
    assert tagged["status"] == "ready", tagged
    assert tagged["multilabel"] is True
    positives = sum(c["count"] for c in tagged["classes"])
    assert positives > tagged["num_samples"]  # some samples have several classes
    missing = {m["name"]: m["missing"] for m in tagged["modalities"]}
    assert sum(missing.values()) == round(0.2 * 300)
    for m in tagged["modalities"]:
        assert sum(m["missing_split_counts"].values()) == m["missing"]

    run_id = str(client.create_experiment({
        "name": "tags", "dataset_id": tagged["id"], "task": "multilabel", "model": MODEL,
        "augmentation": {"method": "mixup", "alpha": 1.0, "label_smoothing": 0.1},
        "training": {"epochs": 2, "batch_size": 32, "seed": 0}})["run_ids"][0])
    run = client.wait_for_run(run_id, timeout=120)
    assert run["status"] == "succeeded", run["error"]
    metrics = run["metrics"]
    for key in ("train_loss", "val_loss", "val_map", "val_f1_micro", "test_loss", "test_map",
                "test_f1_micro", "test_f1_macro", "test_ece", "test_brier", "temperature",
                "test_ece_calibrated", "test_nll_calibrated", "test_map_without_image",
                "test_map_without_tabular", "test_map_noise"):
        assert key in metrics, key
    assert "test_acc" not in metrics and 0.0 <= metrics["test_map"] <= 1.0
    assert [p["epoch"] for p in client.metrics(run_id, key="val_map")["val_map"]] == [1, 2]

    evaluation = client.evaluation(run_id)
    assert evaluation["task"] == "multilabel" and evaluation["confusion_matrix"] is None
    assert evaluation["class_names"] == [c["name"] for c in tagged["classes"]]
    test_positives = [c["split_counts"]["test"] for c in tagged["classes"]]
    assert [row["support"] for row in evaluation["per_class"]] == test_positives
    test_size = tagged["split_sizes"]["test"]
    for counts, row in zip(evaluation["class_confusion"], evaluation["per_class"], strict=True):
        assert sum(map(sum, counts)) == test_size and counts[1][0] + counts[1][1] == \
            row["support"]
    aps = [row["ap"] for row in evaluation["per_class"] if row["ap"] is not None]
    assert sum(aps) / len(aps) == pytest.approx(metrics["test_map"], abs=1e-5)

    blob = client.download_checkpoint(run_id)
    meta = header_metadata(blob)
    assert meta["task"] == "multilabel"
    assert float(meta["temperature"]) == pytest.approx(metrics["temperature"])
    loaded = load_model(st_load(blob), meta)
    probs = loaded.probabilities(loaded.model({"image": torch.zeros(3, 3, 8, 8),
                                               "tabular": torch.zeros(3, 4)}))
    assert probs.shape == (3, 4) and ((probs > 0) & (probs < 1)).all()


@pytest.mark.parametrize(("which", "patch", "loc"), [
    ("tagged", {"task": "classification"}, ["body", "task"]),
    ("digits", {"task": "multilabel"}, ["body", "task"]),
    ("tagged", {"task": "multilabel", "model": {"kind": "cnn"}}, ["body", "model", "kind"]),
    ("digits", {"training": {"calibration": "platt"}}, ["body", "training", "calibration"]),
    ("digits", {"task": "regression"}, ["body", "task"]),
])
def test_requests_the_dataset_cannot_serve_are_refused(stack, tagged: dict, digits: dict,
                                                      which: str, patch: dict,
                                                      loc: list) -> None:
    dataset = tagged if which == "tagged" else digits

    def total() -> int:
        return httpx.get(f"{stack.base_url}/v1/experiments",
                         headers=auth_headers()).json()["total"]

    before = total()
    body = {"dataset_id": dataset["id"], "model": MODEL if which == "tagged" else {},
            "training": {"epochs": 1}, **patch}
    response = httpx.post(f"{stack.base_url}/v1/experiments", json=body,
                          headers=auth_headers())
    assert response.status_code == 422, response.text
    assert loc in [e["loc"] for e in response.json()["detail"]]
    assert total() == before
