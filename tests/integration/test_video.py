"""Video through the service: uploads (npz, a zip of frame folders) prepared by the
worker, the moving-digits built-in, video previews (JSON and PNG), and a video +
audio cross-modal run trained through the real API, worker, Postgres and Redis."""

import io
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.client import MixlabClient
from app.ml.render import video_strip_size
from tests.integration.helpers import prepared, zip_bytes

pytestmark = pytest.mark.integration


def _png(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (6, 4), value).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.usefixtures("worker")
def test_npz_video_upload(api_client: TestClient) -> None:
    clips = np.random.default_rng(0).integers(0, 256, (30, 5, 1, 8, 8)).astype(np.uint8)
    buf = io.BytesIO()
    np.savez(buf, video=clips, label=np.arange(30) % 3)
    response = api_client.post("/v1/datasets", files={"file": ("clips.npz", buf.getvalue())})
    ds = prepared(api_client, response)
    assert ds["modalities"] == [{"name": "video", "kind": "video", "shape": [5, 1, 8, 8],
                                 "dtype": "uint8"}]
    buf = io.BytesIO()
    np.savez(buf, video=clips[:, :, :, :, None], label=np.arange(30) % 3)
    bad = api_client.post("/v1/datasets", files={"file": ("bad.npz", buf.getvalue())})
    assert bad.status_code == 422, bad.text
    assert bad.json()["detail"][0]["loc"][-1] == "video"


@pytest.mark.usefixtures("worker")
def test_frame_folder_zip_upload_and_its_errors(api_client: TestClient) -> None:
    files = {f"clips/{cls}/c{c}/{t}.png": _png(40 * t + c)
             for cls in ("jump", "walk") for c in range(10) for t in range(3)}
    response = api_client.post("/v1/datasets", files={"file": ("clips.zip", zip_bytes(files))})
    ds = prepared(api_client, response)
    assert ds["modalities"] == [{"name": "video", "kind": "video", "shape": [3, 1, 4, 6],
                                 "dtype": "uint8"}]
    assert [c["name"] for c in ds["classes"]] == ["jump", "walk"]
    files["clips/walk/c2/1.png"] = Image.new("L", (5, 5)).tobytes()  # not an image file
    response = api_client.post("/v1/datasets", files={"file": ("bad.zip", zip_bytes(files))})
    failed = prepared(api_client, response, status="failed")
    assert failed["errors"][0]["field"] == "video"
    assert "unreadable frame at clip clips/walk/c2" in failed["errors"][0]["message"]
    assert "clips/walk/c2/1.png" in failed["errors"][0]["message"]


@pytest.fixture(scope="module")
def moving(stack) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with MixlabClient(stack.base_url) as mx:
        created = mx.create_builtin_dataset("moving-digits", name="moving", frames=4, seed=1)
        return mx.wait_for_dataset(created["id"], timeout=120)


def test_moving_digits_registered_and_previewed(client: MixlabClient,
                                                moving: dict[str, Any]) -> None:
    assert moving["status"] == "ready" and moving["num_samples"] == 1797
    assert moving["modalities"] == [
        {"name": "video", "kind": "video", "shape": [4, 1, 16, 16], "dtype": "uint8"},
        {"name": "audio", "kind": "audio", "shape": [1, 40, 32], "dtype": "float32"}]
    assert moving["split_sizes"] == {"train": 1259, "val": 269, "test": 269}
    preview = client.preview(moving["id"], method="cross_modal", seed=2, n=3,
                             ops={"video": "cutmix", "audio": "specmix"})
    assert preview["ops"] == {"video": "cutmix", "audio": "specmix"}
    for sample in preview["samples"]:
        video = sample["modalities"]["video"]
        assert video["kind"] == "video" and video["frames"] == 4
        y0, x0, y1, x1 = video["region"]
        assert sample["lam"] == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 256, abs=1e-6)
    png = Image.open(io.BytesIO(client.fetch(preview["image_urls"]["video"])))
    png.load()
    assert png.size == video_strip_size(3, 4, 16, 16)


def test_video_audio_cross_modal_run_trains(client: MixlabClient,
                                            moving: dict[str, Any]) -> None:
    created = client.create_experiment({
        "dataset_id": moving["id"],
        "model": {"kind": "multimodal", "fusion": "late", "dim": 32, "width": 8, "depth": 2},
        "augmentation": {"method": "cross_modal", "alpha": 1.0},
        "training": {"epochs": 10, "batch_size": 32, "optimizer": "adamw", "lr": 0.003,
                     "seed": 0}})
    run = client.wait_for_run(created["run_ids"][0], timeout=400)
    assert run["status"] == "succeeded", run["error"]
    metrics = run["metrics"]
    assert metrics["test_acc"] > 0.4, metrics  # 10 classes: chance is 0.1
    for modality in ("video", "audio"):
        assert 0.0 <= metrics[f"test_acc_without_{modality}"] <= 1.0
