"""The whole flow over HTTP: real API process, Celery worker, Postgres, Redis."""

import os
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import torch
from safetensors.torch import load as st_load

from app.client import MixlabClient
from app.ml.models import ModelSpec, build_model
from tests.integration.helpers import auth_headers, experiment, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits(stack) -> dict:  # type: ignore[no-untyped-def]
    with MixlabClient(stack.base_url) as mx:
        created = mx.create_builtin_dataset("digits", name="digits", label_noise=0.2, seed=1)
        return mx.wait_for_dataset(created["id"], timeout=120)


def test_register_preview_train_metrics_checkpoint(client: MixlabClient, digits: dict) -> None:
    ds = client.get_dataset(digits["id"])
    assert ds["num_samples"] == 1797 and ds["status"] == "ready"
    assert ds["modalities"] == [{"name": "image", "kind": "image", "shape": [1, 8, 8],
                                 "dtype": "uint8"}]
    assert sum(ds["split_sizes"].values()) == 1797
    assert ds["noisy_train_labels"] == round(0.2 * ds["split_sizes"]["train"])
    assert sum(c["count"] for c in ds["classes"]) == 1797

    preview = client.preview(digits["id"], method="cutmix", alpha=1.0, seed=7, n=5)
    again = client.preview(digits["id"], method="cutmix", alpha=1.0, seed=7, n=5)
    assert preview["samples"] == again["samples"]
    for sample in preview["samples"]:
        assert sum(sample["label_mixture"].values()) == pytest.approx(1.0, abs=1e-5)
        y0, x0, y1, x1 = sample["box"]
        assert sample["lam"] == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 64)
    png = client.fetch(preview["image_url"])
    assert png.startswith(b"\x89PNG") and png == client.fetch(preview["image_url"])
    assert client.fetch(preview["samples"][0]["image_url"]).startswith(b"\x89PNG")

    run_id = experiment(client, digits["id"], training={"epochs": 3})
    run = client.wait_for_run(run_id, timeout=180)
    assert run["status"] == "succeeded", run["error"]
    assert run["attempt"] == 1 and run["worker"]["host"]
    assert run["worker"]["device"].startswith("cpu")
    assert run["progress"]["step"] == run["progress"]["total_steps"] > 0
    # the final checkpoint is the trained model, the last epoch's (checkpoint last)
    assert run["checkpoint"] == {"url": run["checkpoint_url"], "epoch": 3, "partial": False}
    for key in ("train_loss", "val_loss", "val_acc", "val_ece", "test_acc", "test_ece"):
        assert key in run["metrics"]
    assert 0.0 <= run["metrics"]["test_ece"] <= 1.0

    history = client.metrics(run_id, key="val_acc")["val_acc"]
    assert [p["epoch"] for p in history] == [1, 2, 3]
    assert [p["step"] for p in history] == sorted({p["step"] for p in history})
    assert set(client.metrics(run_id)) >= {"train_loss", "val_loss", "val_acc", "val_ece",
                                           "test_acc"}

    assert {"val_f1_macro", "val_brier", "test_f1_macro", "test_brier"} <= set(run["metrics"])
    evaluation = client.evaluation(run_id)
    confusion = torch.tensor(evaluation["confusion_matrix"])
    assert confusion.shape == (10, 10) and int(confusion.sum()) == ds["split_sizes"]["test"]
    assert float(confusion.trace() / confusion.sum()) == pytest.approx(run["metrics"]["test_acc"],
                                                                       abs=1e-6)
    assert [c["support"] for c in evaluation["per_class"]] == confusion.sum(1).tolist()
    assert [c["class"] for c in evaluation["per_class"]] == [str(i) for i in range(10)]

    tensors = st_load(client.download_checkpoint(run_id))
    model = build_model(ModelSpec(width=8, depth=2), (1, 8, 8), 10)
    model.load_state_dict(tensors)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_experiment_reply_and_listing(client: MixlabClient, stack, digits: dict) -> None:
    response = httpx.post(f"{stack.base_url}/v1/experiments", headers=auth_headers(),
                          json={"dataset_id": digits["id"], "model": {},
                                "training": {"epochs": 1}})
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"].endswith(f"/v1/runs/{body['run_ids'][0]}")
    exp = client.get_experiment(body["experiment_id"])
    assert exp["spec"]["model"] == {"kind": "cnn", "width": 16, "depth": 3, "dropout": 0.0}
    assert exp["spec"]["augmentation"]["method"] == "mixup"
    assert [r["id"] for r in exp["runs"]] == body["run_ids"]
    page = client.list_experiments(limit=1)
    assert page["total"] >= 1 and len(page["items"]) == 1
    client.wait_for_run(body["run_ids"][0], timeout=180)


def test_cancel_queued_and_running(client: MixlabClient, digits: dict) -> None:
    long_run = experiment(client, digits["id"], model={"width": 32, "depth": 3},
                          training={"epochs": 400})
    # the first poll already knows the plan: 1259 training samples in batches of 64
    # → 20 steps an epoch (recorded at submission, not when training starts)
    assert client.get_run(long_run)["progress"]["total_steps"] == 400 * 20
    wait_until(lambda: client.get_run(long_run)["checkpoint"], timeout=120,
               what="the long run to save its first epoch")
    queued = experiment(client, digits["id"])
    assert client.get_run(queued)["status"] == "queued"
    assert client.get_run(queued)["progress"]["total_steps"] == 2 * 20

    cancelled = client.cancel_run(queued)
    assert cancelled["status"] == "cancelled" and cancelled["attempt"] == 0

    running = client.cancel_run(long_run)
    assert running["cancel_requested"] is True
    final = wait_until(lambda: (r := client.get_run(long_run))["status"] != "running" and r,
                       timeout=30, what="the running run to stop")
    assert final["status"] == "cancelled"
    assert final["progress"]["step"] < final["progress"]["total_steps"] == 400 * 20
    # its last epoch's weights stay downloadable, and the reply says they are partial
    checkpoint = final["checkpoint"]
    assert checkpoint["partial"] is True and checkpoint["url"] == final["checkpoint_url"]
    assert 1 <= checkpoint["epoch"] <= final["progress"]["epoch"] < 400
    assert client.fetch(checkpoint["url"])[:8]
    # nor has it an evaluation: that is a succeeded run's (409, the run is not done)
    response = client.http.get(f"/v1/runs/{long_run}/evaluation")
    assert response.status_code == 409 and "cancelled" in response.json()["detail"]
    # the queued run's message is still delivered; the worker must refuse it
    wait_until(lambda: "not claimable" in _worker_log(client), timeout=30,
               what="the worker to skip the cancelled run")
    after = client.get_run(queued)
    assert after["status"] == "cancelled" and after["attempt"] == 0
    # cancelling again is harmless
    assert client.cancel_run(queued)["status"] == "cancelled"


def _worker_log(client: MixlabClient) -> str:
    from tests.conftest import TMP

    return (TMP / "worker.log").read_text(errors="replace")


def test_failing_run_is_marked_failed_with_its_error(client: MixlabClient, digits: dict) -> None:
    run_id = experiment(client, digits["id"], training={"device": "cuda"})
    run = client.wait_for_run(run_id, timeout=120)
    assert run["status"] == "failed"
    assert "DeviceUnavailableError" in run["error"] and "CUDA" in run["error"]
    assert run["finished_at"] is not None
    assert client.http.get(f"/v1/runs/{run_id}/evaluation").status_code == 409


def test_cancel_of_finished_run_is_a_conflict(client: MixlabClient, digits: dict) -> None:
    run_id = experiment(client, digits["id"], training={"epochs": 1})
    assert client.wait_for_run(run_id, timeout=120)["status"] == "succeeded"
    response = client.http.post(f"/v1/runs/{run_id}/cancel")
    assert response.status_code == 409 and "succeeded" in response.json()["detail"]


def test_dataset_in_use_cannot_be_deleted(client: MixlabClient, digits: dict) -> None:
    response = client.http.delete(f"/v1/datasets/{digits['id']}")
    assert response.status_code == 409
    spare = client.create_builtin_dataset("digits", name="spare")
    assert client.http.delete(f"/v1/datasets/{spare['id']}").status_code == 204
    assert client.http.get(f"/v1/datasets/{spare['id']}").status_code == 404


def test_experiment_delete_frees_its_dataset(client: MixlabClient) -> None:
    ds = client.wait_for_dataset(client.create_builtin_dataset("digits", name="short-lived")
                                 ["id"], timeout=120)
    created = client.create_experiment({"dataset_id": ds["id"], "training": {"epochs": 300}})
    run_id = created["run_ids"][0]
    wait_until(lambda: client.get_run(run_id)["progress"]["step"] > 0 or None, timeout=60,
               what="the run to be training")
    # a live experiment is deleted too: its running run is cancelled first
    assert client.http.delete(f"/v1/experiments/{created['experiment_id']}").status_code == 204
    assert client.http.get(f"/v1/runs/{run_id}").status_code == 404
    assert client.http.get(f"/v1/experiments/{created['experiment_id']}").status_code == 404
    assert client.http.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    # the worker stops and removes whatever it wrote after the deletion
    folder = Path(urlparse(os.environ["MIXLAB_ARTIFACT_URL"]).path) / "runs" / run_id
    wait_until(lambda: not folder.exists() or None, timeout=30, what="run files removed")


def test_readiness(stack) -> None:  # type: ignore[no-untyped-def]
    body = httpx.get(f"{stack.base_url}/readyz").json()
    # the shared stack does not sweep (MIXLAB_RECONCILE_INTERVAL_S=0)
    assert body == {"status": "ready", "database": "ok", "broker": "ok", "reconciler": "off",
                    "reconciler_passes": 0}
    assert httpx.get(f"{stack.base_url}/healthz").status_code == 200


def test_multimodal_experiment_end_to_end(client: MixlabClient) -> None:
    ds = client.create_builtin_dataset("synthetic", name="mm", num_samples=300, image_size=8,
                                       text_length=8, audio_bins=8, audio_frames=8,
                                       tabular_features=4)
    ds = client.wait_for_dataset(ds["id"], timeout=120)
    created = client.create_experiment({
        "dataset_id": ds["id"],
        "model": {"kind": "multimodal", "fusion": "attention", "dim": 16, "width": 8,
                  "depth": 2},
        "augmentation": {"method": "cross_modal", "ops": {"image": "cutmix",
                                                          "text": "token_cutmix",
                                                          "audio": "specmix"}},
        "training": {"epochs": 2, "batch_size": 32}})
    run = client.wait_for_run(created["run_ids"][0], timeout=180)
    assert run["status"] == "succeeded", run["error"]
    for modality in ("image", "text", "audio", "tabular"):
        assert 0.0 <= run["metrics"][f"test_acc_without_{modality}"] <= 1.0
    assert "test_acc_noise" in run["metrics"]
    bad = client.http.post("/v1/experiments", json={
        "dataset_id": ds["id"], "model": {"kind": "multimodal"},
        "augmentation": {"method": "manifold_mixup", "manifold_layers": [3]}})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "augmentation", "manifold_layers"]


def test_a_best_checkpoint_run_reports_both_epochs(client: MixlabClient, digits: dict) -> None:
    run_id = experiment(client, digits["id"], training={"epochs": 3, "checkpoint": "best"})
    run = client.wait_for_run(run_id, timeout=180)
    assert run["status"] == "succeeded", run["error"]
    m = run["metrics"]
    val = {p["epoch"]: p["value"] for p in client.metrics(run_id, key="val_acc")["val_acc"]}
    best = max(val, key=lambda e: (val[e], -e))
    assert m["selected_epoch"] == best and run["checkpoint"]["epoch"] == best
    assert {"test_acc", "test_acc_last", "test_ece_last"} <= set(m)
    assert {"lr", "train_loss_step"} <= set(client.metrics(run_id))
