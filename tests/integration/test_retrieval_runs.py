"""The retrieval task end to end through the real API and worker, and the
retrieval requests a dataset cannot serve, refused with 422 naming the field."""

from typing import Any

import httpx
import pytest

from app.client import MixlabClient
from tests.integration.helpers import auth_headers

pytestmark = pytest.mark.integration

PAIRED = {"num_samples": 240, "num_classes": 4, "image_size": 8, "text_length": 6,
          "vocab_size": 32, "modalities": ["image", "text"]}
TOWERS = {"kind": "multimodal", "dim": 16, "text_dim": 16, "width": 4, "depth": 1}


@pytest.fixture(scope="module")
def paired(stack) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with MixlabClient(stack.base_url) as mx:
        created = mx.create_builtin_dataset("synthetic", name="pairs", **PAIRED)
        return mx.wait_for_dataset(created["id"], timeout=120)


@pytest.mark.parametrize("method", ["mixgen", "m3mix"])
def test_a_retrieval_run_trains_and_reports_recall(client: MixlabClient, paired: dict,
                                                   method: str) -> None:
    assert paired["status"] == "ready", paired
    created = client.create_experiment({
        "name": f"pairs-{method}", "dataset_id": paired["id"], "task": "retrieval",
        "retrieval": {"query": "image", "target": "text"}, "model": TOWERS,
        "augmentation": {"method": method, "alpha": 1.0},
        "training": {"epochs": 2, "batch_size": 32, "seed": 0}})
    run = client.wait_for_run(str(created["run_ids"][0]), timeout=120)
    assert run["status"] == "succeeded", run["error"]
    metrics = run["metrics"]
    for key in ("train_loss", "val_mean_recall", "test_mean_recall", "test_r1_q2t",
                "test_r5_t2q", "test_r10_q2t", "test_mean_recall_query_noise"):
        assert key in metrics, key
    assert 0.0 <= metrics["test_r1_q2t"] <= metrics["test_r5_q2t"] <= metrics["test_r10_q2t"] <= 1
    history = client.metrics(str(run["id"]), key="val_mean_recall")["val_mean_recall"]
    assert [p["epoch"] for p in history] == [1, 2]
    stored = client.get_experiment(str(created["experiment_id"]))["spec"]
    assert stored["retrieval"] == {"query": "image", "target": "text", "m3mix_weight": 1.0}
    # per-class scores are a classifier's: the run's figures are its metrics (not a 404)
    response = client.http.get(f"/v1/runs/{run['id']}/evaluation")
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["path", "run_id"]
    assert error["msg"].startswith("evaluation is per-class scores of a classifier; task "
                                   "retrieval has none: its recall@K figures")


@pytest.mark.parametrize(("patch", "loc"), [
    ({"task": "retrieval"}, ["body", "retrieval"]),
    ({"retrieval": {"query": "image", "target": "text"}}, ["body", "retrieval"]),
    ({"task": "retrieval", "retrieval": {"query": "audio", "target": "text"}},
     ["body", "retrieval", "query"]),
    ({"task": "retrieval", "retrieval": {"query": "image", "target": "image"}},
     ["body", "retrieval", "target"]),
    ({"task": "retrieval", "retrieval": {"query": "image", "target": "text"},
      "augmentation": {"method": "cutmix"}}, ["body", "augmentation", "method"]),
    ({"augmentation": {"method": "m3mix"}}, ["body", "augmentation", "method"]),
    ({"task": "retrieval", "retrieval": {"query": "image", "target": "text",
                                         "m3mix_weight": -1}},
     ["body", "retrieval", "m3mix_weight"]),
])
def test_retrieval_requests_the_dataset_cannot_serve_are_refused(stack, paired: dict,
                                                                patch: dict,
                                                                loc: list) -> None:
    body = {"dataset_id": paired["id"], "model": TOWERS, "training": {"epochs": 1}, **patch}
    response = httpx.post(f"{stack.base_url}/v1/experiments", json=body,
                          headers=auth_headers())
    assert response.status_code == 422, response.text
    assert loc in [e["loc"] for e in response.json()["detail"]]


def test_m3mix_has_no_preview(stack, paired: dict) -> None:
    response = httpx.post(f"{stack.base_url}/v1/datasets/{paired['id']}/preview",
                          headers=auth_headers(),
                          json={"method": "m3mix"})
    assert response.status_code == 422, response.text
    assert ["body", "method"] in [e["loc"] for e in response.json()["detail"]]
