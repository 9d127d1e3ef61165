"""Every rejection path names the field; nothing half-created stays behind."""

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.settings import get_settings
from tests.integration.helpers import prepared

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]


@pytest.fixture(scope="module")
def dataset_id(api_client: TestClient) -> str:
    response = api_client.post("/v1/datasets", json={
        "name": "digits", "source": {"kind": "builtin", "name": "digits"}})
    return str(prepared(api_client, response)["id"])


def _counts(api_client: TestClient) -> tuple[int, int]:
    return (api_client.get("/v1/datasets").json()["total"],
            api_client.get("/v1/experiments").json()["total"])


def _loc(response) -> list:  # type: ignore[no-untyped-def]
    assert response.status_code == 422, response.text
    return [tuple(e["loc"]) for e in response.json()["detail"]]


@pytest.mark.parametrize(("patch", "loc"), [
    ({"augmentation": {"alpha": 0}}, ("body", "augmentation", "alpha")),
    ({"augmentation": {"alpha": -1}}, ("body", "augmentation", "alpha")),
    ({"augmentation": {"method": "mixdown"}}, ("body", "augmentation", "method")),
    ({"augmentation": {"prob": 1.5}}, ("body", "augmentation", "prob")),
    ({"augmentation": {"method": "cutmix", "cutmix_minmax": [0.8, 0.2]}},
     ("body", "augmentation", "cutmix_minmax")),
    ({"augmentation": {"lam_mode": "pair", "pairing": "roll"}},
     ("body", "augmentation", "pairing")),
    ({"augmentation": {"method": "cross_modal", "ops": {"text": "token_cutmix"}}},
     ("body", "augmentation", "ops", "text")),
    ({"augmentation": {"method": "cross_modal", "ops": {"image": "token_cutmix"}}},
     ("body", "augmentation", "ops", "image")),
    ({"augmentation": {"method": "cross_modal", "ops": {"image": "shuffle"}}},
     ("body", "augmentation", "ops", "image")),
    ({"augmentation": {"method": "mixup", "ops": {"image": "cutmix"}}},
     ("body", "augmentation", "ops")),
    ({"augmentation": {"modalities": ["audio"]}}, ("body", "augmentation", "modalities", 0)),
    ({"augmentation": {"method": "mixgen"}}, ("body", "augmentation", "method")),
    ({"augmentation": {"method": "manifold_mixup", "manifold_layers": [0, 9]}},
     ("body", "augmentation", "manifold_layers")),
    ({"augmentation": {"off_epoch": -1}}, ("body", "augmentation", "off_epoch")),
    ({"training": {"epochs": 0}}, ("body", "training", "epochs")),
    ({"training": {"lr": 0}}, ("body", "training", "lr")),
    ({"training": {"batch_size": 0}}, ("body", "training", "batch_size")),
    ({"training": {"batch_size": 5000}}, ("body", "training", "batch_size")),
    ({"training": {"device": "tpu"}}, ("body", "training", "device")),
    ({"training": {"optimizer": "lamb"}}, ("body", "training", "optimizer")),
    ({"training": {"schedule": "linear"}}, ("body", "training", "schedule")),
    ({"training": {"augment": ["rotate"]}}, ("body", "training", "augment", 0)),
    ({"training": {"epochs": 10, "warmup_epochs": 10}}, ("body", "training", "warmup_epochs")),
    ({"training": {"schedule": "step", "epochs": 10, "milestones": [12]}},
     ("body", "training", "milestones")),
    ({"training": {"lr": -0.1}}, ("body", "training", "lr")),
    ({"training": {"ema": 1.5}}, ("body", "training", "ema")),
    ({"training": {"checkpoint": "first"}}, ("body", "training", "checkpoint")),
    ({"training": {"early_stopping": {"metric": "val_map"}}},
     ("body", "training", "early_stopping", "metric")),
    ({"training": {"checkpoint": "best", "checkpoint_metric": "val_recall"}},
     ("body", "training", "checkpoint_metric")),
    ({"model": {"kind": "torchvision", "name": "no_such_net"}}, ("body", "model", "name")),
    ({"model": {"width": 0}}, ("body", "model", "width")),
    ({"model": {"kind": "transformer"}}, ("body", "model", "kind")),
    ({"model": {"widht": 8}}, ("body", "model", "widht")),
    ({"task": "regression"}, ("body", "task")),
    ({"surprise": 1}, ("body", "surprise")),
])
def test_experiment_rejections_name_the_field(api_client: TestClient, dataset_id: str,
                                              patch: dict, loc: tuple) -> None:
    before = _counts(api_client)
    body: dict = {"dataset_id": dataset_id, "model": {}}
    for key, value in patch.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    assert loc in _loc(api_client.post("/v1/experiments", json=body))
    assert _counts(api_client) == before


def test_unknown_choices_list_the_allowed_values(api_client: TestClient,
                                                 dataset_id: str) -> None:
    for field, value, allowed in (("optimizer", "lamb", "'sgd' or 'adamw'"),
                                  ("schedule", "linear", "'step' or 'onecycle'")):
        response = api_client.post("/v1/experiments", json={
            "dataset_id": dataset_id, "training": {field: value}})
        assert response.status_code == 422
        assert allowed in response.json()["detail"][0]["msg"]
    response = api_client.post("/v1/experiments", json={
        "dataset_id": dataset_id, "model": {"kind": "vgg"}})
    assert "'preact_resnet18'" in response.json()["detail"][0]["msg"]


@pytest.fixture(scope="module")
def tabular(api_client: TestClient) -> str:
    """A dataset without images: tabular and text."""
    response = api_client.post("/v1/datasets", json={
        "name": "table", "source": {"kind": "builtin", "name": "synthetic",
                                    "options": {"num_samples": 200,
                                                "modalities": ["tabular", "text"]}}})
    return str(prepared(api_client, response)["id"])


def test_crop_needs_images(api_client: TestClient, tabular: str) -> None:
    before = _counts(api_client)
    response = api_client.post("/v1/experiments", json={
        "dataset_id": tabular, "model": {"kind": "multimodal"},
        "training": {"augment": ["crop"]}})
    assert _loc(response) == [("body", "training", "augment")]
    assert "image" in response.json()["detail"][0]["msg"]
    assert _counts(api_client) == before
    # the default augmentation applies to images only: accepted without them
    accepted = api_client.post("/v1/experiments", json={
        "dataset_id": tabular, "model": {"kind": "multimodal"}, "training": {"epochs": 1}})
    assert accepted.status_code == 202, accepted.text


def test_every_field_error_of_a_request_is_reported_at_once(api_client: TestClient,
                                                           tabular: str) -> None:
    """A request that is wrong in several ways against its dataset hears of all of
    them in one 422 (one ``detail`` entry per field), not of the first check's only:
    here the image model the default kind builds, two ops and the batch size."""
    before = _counts(api_client)
    response = api_client.post("/v1/experiments", json={
        "dataset_id": tabular, "model": {},
        "augmentation": {"method": "cross_modal",
                         "ops": {"text": "cutmix", "audio": "specmix"}},
        "training": {"batch_size": 5000, "checkpoint": "best",
                     "checkpoint_metric": "val_recall"}})
    assert _loc(response) == [("body", "training", "checkpoint_metric"),
                              ("body", "training", "batch_size"),
                              ("body", "model", "kind"),
                              ("body", "augmentation", "ops", "text"),
                              ("body", "augmentation", "ops", "audio")]
    messages = [e["msg"] for e in response.json()["detail"]]
    assert "needs an image modality" in messages[2]
    assert "applies to image" in messages[3] and "no modality 'audio'" in messages[4]
    assert _counts(api_client) == before  # nothing stored
    # fixed one at a time, the rest are still named
    response = api_client.post("/v1/experiments", json={
        "dataset_id": tabular, "model": {"kind": "multimodal"},
        "augmentation": {"method": "cross_modal", "ops": {"audio": "specmix"}}})
    assert _loc(response) == [("body", "augmentation", "ops", "audio")]


def test_unknown_or_missing_dataset_id(api_client: TestClient) -> None:
    missing = str(uuid.uuid4())
    response = api_client.post("/v1/experiments", json={"dataset_id": missing})
    assert _loc(response) == [("body", "dataset_id")]
    assert missing in response.json()["detail"][0]["msg"]
    assert ("body", "dataset_id") in _loc(api_client.post("/v1/experiments", json={}))
    assert ("body", "dataset_id") in _loc(api_client.post("/v1/experiments",
                                                          json={"dataset_id": "nope"}))


@pytest.mark.parametrize(("body", "loc"), [
    ({"name": "x", "source": {"kind": "builtin", "name": "imagenet"}},
     ("body", "source", "name")),
    ({"name": "x", "source": {"kind": "builtin", "name": "digits",
                              "options": {"label_noise": 0.95}}},
     ("body", "source", "options", "label_noise")),
    ({"name": "x", "source": {"kind": "builtin", "name": "digits",
                              "options": {"noise": 0.1}}},
     ("body", "source", "options", "noise")),
    ({"name": "", "source": {"kind": "builtin", "name": "digits"}}, ("body", "name")),
    ({"source": {"kind": "builtin", "name": "digits"}}, ("body", "name")),
])
def test_dataset_spec_rejections(api_client: TestClient, body: dict, loc: tuple) -> None:
    before = _counts(api_client)
    assert loc in _loc(api_client.post("/v1/datasets", json=body))
    assert _counts(api_client) == before


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _images(n: int = 60) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, 6, 6), dtype=np.uint8)


def _labels(n: int = 60) -> np.ndarray:
    return np.arange(n) % 3


def _artifact_datasets() -> set[str]:
    root = Path(get_settings().resolved_artifact_url.removeprefix("file://")) / "datasets"
    return {p.name for p in root.iterdir()} if root.exists() else set()


@pytest.mark.parametrize(("content", "field", "words"), [
    (b"not a zip at all", "file", "not an .npz"),
    (_npz(label=_labels()), "image", "missing"),
    (_npz(image=_images()), "label", "missing"),
    (_npz(image=_images(), label=_labels(59)), "label", "59 entries"),
    (_npz(image=_images(), label=np.array([{"a": 1}] * 60, dtype=object)), "label", "object"),
    (_npz(image=np.zeros((60, 9, 4, 4), np.uint8), label=_labels()), "image", "channels"),
    (_npz(image=np.zeros((60, 4), np.uint8), label=_labels()), "image", "shape"),
    (_npz(image=_images(), label=_labels(), extra=np.zeros(3)), "extra", "unexpected"),
])
def test_upload_rejections(api_client: TestClient, content: bytes, field: str,
                           words: str) -> None:
    before, stored = _counts(api_client), _artifact_datasets()
    response = api_client.post("/v1/datasets", files={"file": ("d.npz", content)},
                               data={"name": "bad"})
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"][:2] == ["body", "file"]
    assert error["msg"].startswith(f"{field}:") and words in error["msg"]
    assert _counts(api_client) == before and _artifact_datasets() == stored


@pytest.mark.parametrize(("content", "field", "words"), [
    (_npz(image=np.full((60, 4, 4), np.nan, dtype=np.float32), label=_labels()), "image", "NaN"),
    (_npz(image=_images(), label=np.zeros(60, int)), "label", "2 classes"),
    (_npz(image=_images(), label=_labels(), split=np.full(60, 5)), "split", "0 (train)"),
])
def test_value_problems_fail_the_preparation(api_client: TestClient, content: bytes,
                                             field: str, words: str) -> None:
    """Only reading the arrays shows these: accepted, then failed, nothing stored."""
    stored = _artifact_datasets()
    response = api_client.post("/v1/datasets", files={"file": ("d.npz", content)},
                               data={"name": "bad"})
    ds = prepared(api_client, response, status="failed")
    assert ds["errors"][0]["field"] == field and words in ds["errors"][0]["message"]
    assert _artifact_datasets() == stored


def test_upload_too_large(api_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "max_upload_bytes", 1000)
    before = _counts(api_client)
    response = api_client.post("/v1/datasets", files={"file": ("d.npz", b"x" * 5000)})
    assert response.status_code == 422 and "too large" in response.json()["detail"][0]["msg"]
    assert _counts(api_client) == before


def test_upload_happy_path_and_preview(api_client: TestClient) -> None:
    rng = np.random.default_rng(1)
    images = rng.random((90, 3, 10, 12), dtype=np.float32)
    labels = np.array(["cat", "dog", "eel"])[np.arange(90) % 3]
    response = api_client.post("/v1/datasets", files={"file": ("pets.npz",
                                                                _npz(image=images,
                                                                     label=labels))})
    ds = prepared(api_client, response)
    assert ds["name"] == "pets" and ds["num_samples"] == 90
    assert ds["modalities"][0] == {"name": "image", "kind": "image", "shape": [3, 10, 12],
                                   "dtype": "float32"}
    assert [c["name"] for c in ds["classes"]] == ["cat", "dog", "eel"]
    assert all(v > 0 for v in ds["split_sizes"].values())
    preview = api_client.post(f"/v1/datasets/{ds['id']}/preview",
                              json={"method": "mixup", "n": 4, "seed": 2})
    assert preview.status_code == 200
    for sample in preview.json()["samples"]:
        assert set(sample["label_mixture"]) <= {"cat", "dog", "eel"}
    png = api_client.get(preview.json()["image_url"].split("testserver", 1)[-1])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


def test_preview_and_png_rejections(api_client: TestClient, dataset_id: str) -> None:
    assert ("body", "n") in _loc(api_client.post(f"/v1/datasets/{dataset_id}/preview",
                                                 json={"n": 0}))
    assert ("body", "method") in _loc(api_client.post(f"/v1/datasets/{dataset_id}/preview",
                                                      json={"method": "fancy"}))
    assert ("query", "alpha") in _loc(api_client.get(
        f"/v1/datasets/{dataset_id}/preview.png?alpha=-2"))
    assert ("query", "sample") in _loc(api_client.get(
        f"/v1/datasets/{dataset_id}/preview.png?n=2&sample=5"))
    missing = api_client.post(f"/v1/datasets/{uuid.uuid4()}/preview", json={})
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]


def test_not_found_and_paging(api_client: TestClient) -> None:
    for path in ("/v1/datasets/", "/v1/experiments/", "/v1/runs/"):
        response = api_client.get(f"{path}{uuid.uuid4()}")
        assert response.status_code == 404 and "not found" in response.json()["detail"]
    assert api_client.post(f"/v1/runs/{uuid.uuid4()}/cancel").status_code == 404
    assert ("query", "limit") in _loc(api_client.get("/v1/experiments?limit=0"))
    assert ("path", "run_id") in _loc(api_client.get("/v1/runs/not-a-uuid"))


def test_openapi_documents_both_dataset_bodies(api_client: TestClient) -> None:
    spec = api_client.get("/openapi.json").json()
    content = spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert "DatasetCreate" in spec["components"]["schemas"]
    assert api_client.get("/docs").status_code == 200
