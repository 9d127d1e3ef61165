"""The fashion-mnist and avmnist built-ins over the API (in-process, real Postgres, the
worker prepares them): registration, the missing-files 422, and an audio-visual
cross-modal preview."""

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.ml.data.fashion_mnist import CLASS_NAMES, FILES
from tests.integration.helpers import prepared, wait_for_dataset

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]


def _fashion_dir() -> Path:
    from app.settings import get_settings

    return Path(get_settings().fashion_mnist_dir)


@pytest.fixture(scope="module")
def avmnist(api_client: TestClient) -> dict:
    response = api_client.post("/v1/datasets", json={
        "name": "avmnist", "source": {"kind": "builtin", "name": "avmnist",
                                      "options": {"label_noise": 0.2, "seed": 3}}})
    return prepared(api_client, response)


def test_register_avmnist(avmnist: dict) -> None:
    assert avmnist["num_samples"] == 1797
    assert avmnist["source"]["options"] == {"label_noise": 0.2, "seed": 3,
                                            "audio_noise": 0.5, "image_noise": 0.0,
                                            "occlusion": 0.0, "audio_mask": 0.0}
    modalities = {m["name"]: m for m in avmnist["modalities"]}
    assert modalities["image"] == {"name": "image", "kind": "image", "shape": [1, 8, 8],
                                   "dtype": "uint8"}
    assert modalities["audio"] == {"name": "audio", "kind": "audio", "shape": [1, 40, 32],
                                   "dtype": "float32"}
    assert avmnist["split_sizes"] == {"train": 1259, "val": 269, "test": 269}
    assert avmnist["noisy_train_labels"] == round(0.2 * 1259)


def test_avmnist_cross_modal_preview(api_client: TestClient, avmnist: dict) -> None:
    spec = {"method": "cross_modal", "seed": 1, "n": 4, "ops": {"audio": "specmix"}}
    url = f"/v1/datasets/{avmnist['id']}/preview"
    response = api_client.post(url, json=spec)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ops"]["audio"] == "specmix"
    assert set(body["image_urls"]) == {"image", "audio"}
    assert len(body["samples"]) == 4
    for sample in body["samples"]:
        audio = sample["modalities"]["audio"]
        assert audio["op"] == "specmix" and len(audio["region"]) == 4
        f0, f1, t0, t1 = audio["region"]
        assert 0 <= f0 <= f1 <= 40 and 0 <= t0 <= t1 <= 32
        assert sum(sample["label_mixture"].values()) == pytest.approx(1.0, abs=1e-5)
    assert api_client.post(url, json=spec).json() == body  # same seed, same preview
    png = api_client.get(body["image_urls"]["audio"].split("testserver", 1)[-1])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    Image.open(io.BytesIO(png.content)).load()


@pytest.mark.parametrize(("option", "value"), [("audio_noise", 50), ("occlusion", 0.95),
                                               ("audio_mask", -0.1), ("occlusion", "half")])
def test_avmnist_option_rejection(api_client: TestClient, option: str, value: object) -> None:
    response = api_client.post("/v1/datasets", json={
        "name": "bad", "source": {"kind": "builtin", "name": "avmnist",
                                  "options": {option: value}}})
    assert response.status_code == 422, response.text
    locs = [tuple(e["loc"]) for e in response.json()["detail"]]
    assert ("body", "source", "options", option) in locs


@pytest.mark.skipif(not all((_fashion_dir() / n).is_file() for n in FILES.values()),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_register_fashion_mnist_subset(api_client: TestClient) -> None:
    response = api_client.post("/v1/datasets", json={
        "name": "fashion", "source": {"kind": "builtin", "name": "fashion-mnist",
                                      "options": {"subset": 2000, "label_noise": 0.1}}})
    assert response.status_code == 202, response.text
    body = wait_for_dataset(api_client, response.json()["id"], timeout=180)
    assert body["status"] == "ready", body
    assert body["num_samples"] == 12_000
    assert body["split_sizes"] == {"train": 1833, "val": 167, "test": 10_000}
    assert [c["name"] for c in body["classes"]] == CLASS_NAMES
    assert all(c["split_counts"]["test"] == 1000 for c in body["classes"])
    assert body["modalities"] == [{"name": "image", "kind": "image", "shape": [1, 28, 28],
                                   "dtype": "uint8"}]
    assert body["noisy_train_labels"] == round(0.1 * 1833)
    preview = api_client.post(f"/v1/datasets/{body['id']}/preview",
                              json={"method": "cutmix", "seed": 0, "n": 4})
    assert preview.status_code == 200, preview.text
    assert all(s["label_a"] in CLASS_NAMES for s in preview.json()["samples"])


def test_fashion_mnist_missing_files_422(api_client: TestClient, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import get_settings

    monkeypatch.setattr(get_settings(), "fashion_mnist_dir", tmp_path / "absent")
    before = api_client.get("/v1/datasets").json()["total"]
    response = api_client.post("/v1/datasets", json={
        "name": "fashion", "source": {"kind": "builtin", "name": "fashion-mnist"}})
    assert response.status_code == 422, response.text
    text = " ".join(e["msg"] for e in response.json()["detail"])
    assert f"fashion-mnist files not found under {tmp_path / 'absent'}" in text
    assert "apt-get install dataset-fashion-mnist" in text
    assert "MIXLAB_FASHION_MNIST_DIR" in text
    assert api_client.get("/v1/datasets").json()["total"] == before
