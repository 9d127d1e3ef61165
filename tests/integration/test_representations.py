"""Autoencoder runs over the API (in-process, real Postgres, a real Celery worker):
a VAE with latent mixup trains on avmnist and reports its reconstruction, KL and
ELBO figures; its embeddings, reconstructions and cross-modal generations come
back as JSON and PNGs of the expected sizes; what cannot work is refused with
the field named and nothing stored."""

import io
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.client import MixlabClient
from app.db.models import Experiment, Run
from app.db.session import session_scope
from tests.conftest import Access, Stack
from tests.integration.helpers import prepared, wait_until
from tests.integration.test_cli import ok

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]

VAE = {"kind": "multimodal_vae", "width": 4, "depth": 1, "dim": 8, "latent_dim": 4,
       "modality_dropout": 0.3, "recon_weights": {"audio": 0.1}}
TRAINING = {"epochs": 2, "batch_size": 128, "optimizer": "adamw", "lr": 0.003}


@pytest.fixture(scope="module")
def avmnist(api_client: TestClient) -> dict[str, Any]:
    return prepared(api_client, api_client.post("/v1/datasets", json={
        "name": "avmnist-latent", "source": {"kind": "builtin", "name": "avmnist"}}))


@pytest.fixture(scope="module")
def vae_run(api_client: TestClient, avmnist: dict[str, Any]) -> dict[str, Any]:
    created = api_client.post("/v1/experiments", json={
        "dataset_id": avmnist["id"], "model": VAE,
        "augmentation": {"method": "latent_mixup", "alpha": 1.0}, "training": TRAINING})
    assert created.status_code == 202, created.text
    run_id = created.json()["run_ids"][0]

    def finished() -> dict[str, Any] | None:
        run = api_client.get(f"/v1/runs/{run_id}").json()
        return run if run["status"] in ("succeeded", "failed", "cancelled") else None

    run = wait_until(finished, timeout=240, what="the VAE run")
    assert run["status"] == "succeeded", run["error"]
    return run


def _png(response: Any) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def vae_run_dataset(api_client: TestClient, run: dict[str, Any]) -> str:
    return str(api_client.get(f"/v1/experiments/{run['experiment_id']}").json()["dataset_id"])


def _fake_run(project_id: uuid.UUID, dataset_id: str, kind: str, status: str) -> str:
    """A run row no queue message names (no worker touches it)."""
    with session_scope() as session:
        exp = Experiment(project_id=project_id, name="fake", dataset_id=uuid.UUID(dataset_id),
                         task="classification",
                         spec={"model": {"kind": kind}, "training": {"epochs": 1}})
        exp.runs.append(Run(status=status))
        session.add(exp)
        session.commit()
        return str(exp.runs[0].id)


def test_a_vae_run_reports_reconstruction_kl_and_elbo(api_client: TestClient,
                                                      vae_run: dict[str, Any]) -> None:
    metrics = vae_run["metrics"]
    for key in ("val_recon_image", "val_recon_audio", "val_kl", "val_elbo", "val_acc",
                "test_acc", "test_recon_image", "test_recon_audio", "test_elbo",
                "test_recon_image_from_audio", "test_recon_audio_from_image",
                "test_acc_without_image", "test_acc_without_audio"):
        assert key in metrics, key
    assert metrics["val_kl"] >= 0
    assert metrics["val_elbo"] == pytest.approx(
        -(metrics["val_recon_image"] + metrics["val_recon_audio"] + metrics["val_kl"]),
        rel=1e-4)
    history = api_client.get(f"/v1/runs/{vae_run['id']}/metrics",
                             params={"key": "val_elbo"}).json()["metrics"]
    assert history["val_elbo"]["epoch"] == [1, 2]
    # the checkpoint rebuilds the model: its head predicts the run's own test figure
    predicted = api_client.post(f"/v1/runs/{vae_run['id']}/predict", json={
        "dataset_id": vae_run_dataset(api_client, vae_run), "split": "test"})
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["accuracy"] == pytest.approx(metrics["test_acc"], abs=1e-9)


def test_embeddings_json_and_png(api_client: TestClient, avmnist: dict[str, Any],
                                 vae_run: dict[str, Any]) -> None:
    run_id = vae_run["id"]
    reply = api_client.get(f"/v1/runs/{run_id}/embeddings", params={"split": "test"})
    assert reply.status_code == 200, reply.text
    emb = reply.json()
    n = avmnist["split_sizes"]["test"]
    assert emb["n"] == n == len(emb["labels"]) == len(emb["means"]) == len(emb["pca"])
    assert emb["latent_dim"] == 4 and all(len(row) == 4 for row in emb["means"])
    assert all(len(row) == 2 for row in emb["pca"])
    assert emb["class_names"] == [str(c) for c in range(10)]
    assert sorted(set(emb["labels"])) == list(range(10))
    assert 0 < emb["explained_variance"][1] <= emb["explained_variance"][0] <= 1
    few = api_client.get(f"/v1/runs/{run_id}/embeddings",
                         params={"split": "val", "limit": 10}).json()
    assert few["n"] == 10 and few["split"] == "val"
    # the scatter: 480 × 480 plot, a 120-pixel legend, an 18-pixel header
    for picture in (_png(api_client.get(f"/v1/runs/{run_id}/embeddings.png")),
                    _png(api_client.get(f"/v1/runs/{run_id}/embeddings",
                                        params={"format": "png"}))):
        assert picture.size == (600, 498)


def test_reconstructions_and_cross_modal_generation_pngs(api_client: TestClient,
                                                         vae_run: dict[str, Any]) -> None:
    run_id = vae_run["id"]
    # rows of 96-pixel panels and 6-pixel gaps under an 18-pixel header, a 120-pixel
    # caption column: image and audio, input | reconstruction each
    recon = _png(api_client.get(f"/v1/runs/{run_id}/reconstructions", params={"n": 4}))
    assert recon.size == (4 * 96 + 5 * 6 + 120, 18 + 4 * (96 + 6) + 6)
    gen = _png(api_client.get(f"/v1/runs/{run_id}/generate",
                              params={"from": "audio", "to": "image", "n": 3}))
    assert gen.size == (3 * 96 + 4 * 6 + 120, 18 + 3 * (96 + 6) + 6)
    bad = api_client.get(f"/v1/runs/{run_id}/generate", params={"from": "text"})
    assert bad.status_code == 422, bad.text
    assert bad.json()["detail"][0]["loc"] == ["query", "from"]


def test_runs_without_a_latent_or_not_succeeded_are_refused(
        api_client: TestClient, access: Access, avmnist: dict[str, Any]) -> None:
    cnn = _fake_run(access.project_id, avmnist["id"], "multimodal", "succeeded")
    for path in ("embeddings", "embeddings.png", "reconstructions", "generate"):
        reply = api_client.get(f"/v1/runs/{cnn}/{path}")
        assert reply.status_code == 422, reply.text
        detail = reply.json()["detail"][0]
        assert detail["loc"] == ["path", "run_id"] and "has no latent" in detail["msg"]
    queued = _fake_run(access.project_id, avmnist["id"], "multimodal_vae", "queued")
    assert api_client.get(f"/v1/runs/{queued}/embeddings").status_code == 409
    assert api_client.get(f"/v1/runs/{uuid.uuid4()}/embeddings").status_code == 404


def _loc(response: Any) -> list[tuple[Any, ...]]:
    assert response.status_code == 422, response.text
    return [tuple(e["loc"]) for e in response.json()["detail"]]


@pytest.mark.parametrize(("model", "augmentation", "loc"), [
    ({"kind": "multimodal"}, {"method": "latent_mixup"}, ("body", "augmentation", "method")),
    ({"kind": "cnn"}, {"method": "latent_mixup"}, ("body", "augmentation", "method")),
    ({**VAE, "recon_weights": {"text": 1.0}}, {"method": "none"},
     ("body", "model", "recon_weights", "text")),
    (VAE, {"method": "mixup"}, ("body", "augmentation", "method")),
])
def test_what_cannot_train_is_refused_and_nothing_stored(
        api_client: TestClient, avmnist: dict[str, Any], model: dict[str, Any],
        augmentation: dict[str, Any], loc: tuple[Any, ...]) -> None:
    before = api_client.get("/v1/experiments").json()["total"]
    reply = api_client.post("/v1/experiments", json={
        "dataset_id": avmnist["id"], "model": model, "augmentation": augmentation,
        "training": TRAINING})
    assert loc in _loc(reply)
    assert api_client.get("/v1/experiments").json()["total"] == before


def test_the_cli_and_the_client(stack: Stack, vae_run: dict[str, Any], tmp_path: Path) -> None:
    picture = tmp_path / "embeddings.png"
    out = ok(stack.base_url, "runs", "embeddings", vae_run["id"], "--split", "val",
             "--png", str(picture))
    assert re.search(r"\d+ val rows in a 4-d latent", " ".join(out.split())), out
    assert f"wrote {picture}" in out
    assert Image.open(picture).size == (600, 498)
    with MixlabClient(stack.base_url) as mx:
        emb = mx.embeddings(vae_run["id"], "val", limit=5)
        assert emb["n"] == 5 and len(emb["pca"]) == 5
        gen = Image.open(io.BytesIO(mx.generate_png(vae_run["id"], "image", "audio", n=2)))
        recon = Image.open(io.BytesIO(mx.reconstructions_png(vae_run["id"], n=2)))
    assert gen.height == recon.height == 18 + 2 * (96 + 6) + 6
    recon_file, gen_file = tmp_path / "recon.png", tmp_path / "gen.png"
    ok(stack.base_url, "runs", "reconstructions", vae_run["id"], "--n", "2",
       "-o", str(recon_file))
    ok(stack.base_url, "runs", "generate", vae_run["id"], "--from", "image", "--to", "audio",
       "--n", "2", "-o", str(gen_file))
    assert Image.open(recon_file).size == recon.size
    assert Image.open(gen_file).size == gen.size


def test_a_preview_of_latent_mixup_leaves_the_inputs_to_the_model(
        api_client: TestClient, avmnist: dict[str, Any]) -> None:
    reply = api_client.post(f"/v1/datasets/{avmnist['id']}/preview",
                            json={"method": "latent_mixup", "n": 2})
    assert reply.status_code == 200, reply.text
    preview = reply.json()
    # no op at the inputs, but a partner, a λ and the targets mixed with it
    assert preview["ops"] == {} and preview["layer"] is None
    for sample in preview["samples"]:
        assert 0 < sample["lam"] < 1 and sample["index_a"] != sample["index_b"]
        assert sum(sample["label_mixture"].values()) == pytest.approx(1.0)
    assert _png(api_client.get(preview["image_url"])).height > 0


def test_a_diverging_run_fails_saying_so(api_client: TestClient) -> None:
    # the default recipe (SGD, lr 0.1) blows a small VAE's summed reconstruction
    # up on digits: the run must end failed with the reason, not hang in running
    digits = prepared(api_client, api_client.post("/v1/datasets", json={
        "name": "digits-diverge", "source": {"kind": "builtin", "name": "digits"}}))
    created = api_client.post("/v1/experiments", json={
        "dataset_id": digits["id"], "augmentation": {"method": "none"},
        "model": {"kind": "multimodal_vae", "width": 4, "depth": 1, "dim": 8, "latent_dim": 2},
        "training": {"epochs": 1, "batch_size": 256}})
    assert created.status_code == 202, created.text
    run_id = created.json()["run_ids"][0]

    def finished() -> dict[str, Any] | None:
        run = api_client.get(f"/v1/runs/{run_id}").json()
        return run if run["status"] in ("succeeded", "failed", "cancelled") else None

    run = wait_until(finished, timeout=240, what="the diverging run")
    assert run["status"] == "failed"
    assert "training diverged in epoch 1: val_loss is inf" in run["error"], run["error"]
    assert "training.lr" in run["error"]
    history = api_client.get(f"/v1/runs/{run_id}/metrics")
    assert history.status_code == 200  # what was recorded reads back as JSON
