"""Previews of every modality over the API: the synthetic built-in, a text +
tabular upload, the JSON (λ, partners, label mixtures, tokens with their
source, tabular values) and a PNG per modality."""

import io
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.integration.helpers import prepared

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]

CROSS_MODAL = {"method": "cross_modal", "lam_mode": "sample", "seed": 4, "n": 6,
               "ops": {"image": "cutmix", "audio": "specmix", "text": "token_cutmix"}}


def _loc(response) -> list:  # type: ignore[no-untyped-def]
    assert response.status_code == 422, response.text
    return [tuple(e["loc"]) for e in response.json()["detail"]]


def _path(url: str) -> str:
    return url.split("testserver", 1)[-1]


def _png(api_client: TestClient, url: str) -> Image.Image:
    response = api_client.get(_path(url))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


@pytest.fixture(scope="module")
def synthetic(api_client: TestClient) -> dict:
    response = api_client.post("/v1/datasets", json={
        "name": "synthetic", "source": {"kind": "builtin", "name": "synthetic",
                                        "options": {"num_samples": 400, "seed": 1,
                                                    "signal": {"image": 0.8}}}})
    return prepared(api_client, response)


def test_register_synthetic(synthetic: dict) -> None:
    assert synthetic["num_samples"] == 400
    assert synthetic["source"]["name"] == "synthetic"
    assert synthetic["source"]["options"]["signal"] == {"image": 0.8}
    modalities = {m["name"]: m for m in synthetic["modalities"]}
    assert {m: v["kind"] for m, v in modalities.items()} == {
        "image": "image", "text": "text", "audio": "audio", "tabular": "tabular"}
    assert modalities["image"]["shape"] == [3, 16, 16]
    assert modalities["text"]["shape"] == [12] and modalities["text"]["dtype"] == "int64"
    assert modalities["audio"]["shape"] == [1, 32, 32]
    assert [c["name"] for c in synthetic["classes"]] == [f"class{k}" for k in range(4)]


@pytest.mark.parametrize(("options", "loc"), [
    ({"num_samples": 50}, ("body", "source", "options", "num_samples")),
    ({"num_classes": 1}, ("body", "source", "options", "num_classes")),
    ({"modalities": ["image", "smell"]}, ("body", "source", "options", "modalities", 1)),
    ({"modalities": []}, ("body", "source", "options", "modalities")),
    ({"signal": {"audio": 1.5}}, ("body", "source", "options", "signal", "audio")),
    ({"num_classes": 30, "vocab_size": 20}, ("body", "source", "options", "vocab_size")),
    ({"label_noise": 0.1}, ("body", "source", "options", "label_noise")),
    ({"num_samples": 100_000, "image_size": 64}, ("body", "source", "options")),
])
def test_synthetic_option_rejections(api_client: TestClient, options: dict, loc: tuple) -> None:
    before = api_client.get("/v1/datasets").json()["total"]
    response = api_client.post("/v1/datasets", json={
        "name": "bad", "source": {"kind": "builtin", "name": "synthetic", "options": options}})
    assert loc in _loc(response)
    assert api_client.get("/v1/datasets").json()["total"] == before


def test_cross_modal_preview_json(api_client: TestClient, synthetic: dict) -> None:
    response = api_client.post(f"/v1/datasets/{synthetic['id']}/preview", json=CROSS_MODAL)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ops"] == {"image": "cutmix", "audio": "specmix", "text": "token_cutmix",
                           "tabular": "mixup"}
    assert body["deferred"] == [] and body["layer"] is None
    assert body["spec"]["ops"] == CROSS_MODAL["ops"]
    assert set(body["image_urls"]) == {"image", "text", "audio", "tabular"}
    assert len(body["samples"]) == 6
    sources, unmixed = set(), 0
    for sample in body["samples"]:
        assert 0 < sample["lam"] <= 1
        assert sample["index_a"] != sample["index_b"]  # permute: never mixed with itself
        assert sum(sample["label_mixture"].values()) == pytest.approx(1.0, abs=1e-5)
        assert set(sample["label_mixture"]) <= {sample["label_a"], sample["label_b"]}
        mods = sample["modalities"]
        assert set(mods) == {"image", "text", "audio", "tabular"}
        assert mods["image"]["region"] == sample["box"]
        text = mods["text"]
        if sample["lam"] == 1:  # the box came out empty: nothing taken, in any modality
            assert {m["op"] for m in mods.values()} == {None}
            assert sample["box"] is None and text["region"] is None
            assert {t["source"] for t in text["tokens"]} == {"a"}
            unmixed += 1
            continue
        assert mods["image"]["op"] == "cutmix" and len(sample["box"]) == 4
        assert mods["audio"]["op"] == "specmix" and len(mods["audio"]["region"]) == 4
        start, end, _partner_start = text["region"]
        for token in text["tokens"]:
            assert token["source"] == ("b" if start <= token["position"] < end else "a")
            assert not token["token"].startswith("#")  # words from the stored vocabulary
            sources.add(token["source"])
        assert text["tokens_a"] and text["tokens_b"]
        values = mods["tabular"]["values"]
        assert values["features"] == [f"x{d}" for d in range(8)]
        lam = sample["lam"]
        for a, b, mixed in zip(values["a"], values["b"], values["mixed"], strict=True):
            assert mixed == pytest.approx(lam * a + (1 - lam) * b, abs=1e-4)
    assert sources == {"a", "b"} and unmixed < 6


@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_mixup_cutmix_preview_says_what_each_sample_ran(api_client: TestClient, synthetic: dict,
                                                        lam_mode: str) -> None:
    """mixup_cutmix cuts some samples and interpolates the others: each sample's op is
    the one that ran on it, and only a sample that was cut has a box."""
    url = f"/v1/datasets/{synthetic['id']}/preview"
    seen = set()
    for seed in range(4):
        body = api_client.post(url, json={"method": "mixup_cutmix", "lam_mode": lam_mode,
                                          "n": 6, "seed": seed}).json()
        assert body["ops"]["image"] == "cutmix"  # the plan
        ops = []
        for sample in body["samples"]:
            image, lam = sample["modalities"]["image"], sample["lam"]
            assert image["region"] == sample["box"]
            if image["op"] == "cutmix":
                y0, x0, y1, x1 = sample["box"]
                assert lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 256, abs=1e-6)
            else:  # interpolated (mixup), or nothing taken (λ = 1): no box
                assert image["op"] in ("mixup", None) and sample["box"] is None
                assert (image["op"] is None) == (lam == 1.0)
            values = sample["modalities"]["tabular"]["values"]
            assert values["mixed"][0] == pytest.approx(
                lam * values["a"][0] + (1 - lam) * values["b"][0], abs=1e-4)
            ops.append(image["op"])
        if lam_mode == "batch":
            assert len(set(ops)) == 1
        seen.update(ops)
    assert {"mixup", "cutmix"} <= seen


def test_same_seed_same_json(api_client: TestClient, synthetic: dict) -> None:
    url = f"/v1/datasets/{synthetic['id']}/preview"
    one = api_client.post(url, json=CROSS_MODAL).json()
    two = api_client.post(url, json=CROSS_MODAL).json()
    other = api_client.post(url, json={**CROSS_MODAL, "seed": 5}).json()
    assert one == two
    assert one["samples"] != other["samples"]


def test_a_png_per_modality(api_client: TestClient, synthetic: dict) -> None:
    body = api_client.post(f"/v1/datasets/{synthetic['id']}/preview", json=CROSS_MODAL).json()
    sizes, pictures = {}, {}
    for modality, url in body["image_urls"].items():
        query = parse_qs(urlsplit(url).query)
        assert query["modality"] == [modality]
        image = _png(api_client, url)
        sizes[modality], pictures[modality] = image.size, image.tobytes()
    assert len(set(pictures.values())) == 4  # four different renderings
    # the default PNG is the image grid
    assert _png(api_client, body["image_url"]).tobytes() == pictures["image"]
    for modality, section in body["samples"][2]["modalities"].items():
        one = _png(api_client, section["image_url"])
        assert one.height < sizes[modality][1], modality


def test_png_rejects_an_unknown_modality(api_client: TestClient, synthetic: dict) -> None:
    url = f"/v1/datasets/{synthetic['id']}/preview.png?method=mixup&modality=smell"
    assert _loc(api_client.get(url)) == [("query", "modality")]


def test_deferred_text_and_manifold(api_client: TestClient, synthetic: dict) -> None:
    url = f"/v1/datasets/{synthetic['id']}/preview"
    body = api_client.post(url, json={"method": "mixup", "n": 3}).json()
    assert body["deferred"] == ["text"]
    text = body["samples"][0]["modalities"]["text"]
    assert text["op"] == "embedding_mixup" and text["deferred"] and text["tokens"] is None
    assert text["tokens_a"] and text["tokens_b"] and any(text["mask"])
    _png(api_client, body["image_urls"]["text"])
    body = api_client.post(url, json={"method": "manifold_mixup", "n": 3,
                                      "manifold_layers": [2]}).json()
    assert body["layer"] == 2 and body["ops"] == {}
    sample = body["samples"][0]
    assert sample["modalities"]["tabular"]["values"]["mixed"] == \
        sample["modalities"]["tabular"]["values"]["a"]
    _png(api_client, body["image_urls"]["audio"])


def test_spec_rejections_against_the_dataset(api_client: TestClient, synthetic: dict) -> None:
    url = f"/v1/datasets/{synthetic['id']}/preview"
    assert ("body", "ops", "smell") in _loc(api_client.post(
        url, json={"method": "cross_modal", "ops": {"smell": "mixup"}}))
    assert ("body", "ops", "tabular") in _loc(api_client.post(
        url, json={"method": "cross_modal", "ops": {"tabular": "specmix"}}))
    assert ("body", "modalities", 0) in _loc(api_client.post(
        url, json={"method": "mixup", "modalities": ["smell"]}))
    assert ("body", "method") in _loc(api_client.post(
        url, json={"method": "cutmix", "modalities": ["text"]}))
    png = (f"/v1/datasets/{synthetic['id']}/preview.png?method=cross_modal"
           "&ops=%7B%22smell%22:%22mixup%22%7D")
    assert ("query", "ops", "smell") in _loc(api_client.get(png))


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def text_tabular(api_client: TestClient) -> dict:
    rng = np.random.default_rng(0)
    n = 90
    labels = np.arange(n) % 3
    lengths = rng.integers(3, 9, n)
    text = rng.integers(1, 20, (n, 8))
    text[np.arange(8)[None] >= lengths[:, None]] = 0
    vocab = np.array(["<pad>"] + [f"w{i}" for i in range(1, 20)])
    tabular = rng.normal(size=(n, 5)) + labels[:, None]
    response = api_client.post("/v1/datasets", files={"file": ("notes.npz", _npz(
        text=text, vocab=vocab, tabular=tabular, label=labels))})
    return prepared(api_client, response)


def test_upload_text_and_tabular_without_image(api_client: TestClient,
                                               text_tabular: dict) -> None:
    assert text_tabular["name"] == "notes"
    assert [(m["name"], m["kind"], m["shape"]) for m in text_tabular["modalities"]] == [
        ("text", "text", [8]), ("tabular", "tabular", [5])]
    url = f"/v1/datasets/{text_tabular['id']}/preview"
    body = api_client.post(url, json={"method": "cross_modal", "n": 4, "seed": 1,
                                      "ops": {"text": "token_cutmix"}}).json()
    assert set(body["image_urls"]) == {"text", "tabular"}
    assert body["samples"][0]["box"] is None
    for sample in body["samples"]:
        tokens = sample["modalities"]["text"]["tokens"]
        assert tokens and all(t["token"].startswith("w") for t in tokens)
        assert len(sample["modalities"]["tabular"]["values"]["mixed"]) == 5
    # with no image, the default PNG is the first modality: text
    default = _png(api_client, body["image_url"])
    assert default.size == _png(api_client, body["image_urls"]["text"]).size
    _png(api_client, body["image_urls"]["tabular"])
    assert ("body", "method") in _loc(api_client.post(url, json={"method": "cutmix"}))


def test_upload_waveform_audio_preview(api_client: TestClient) -> None:
    rng = np.random.default_rng(2)
    labels = np.arange(60) % 2
    t = np.arange(2000) / 2000.0
    audio = np.sin(2 * np.pi * (100 + 200 * labels[:, None]) * t) + 0.1 * rng.normal(
        size=(60, 2000))
    response = api_client.post("/v1/datasets", files={"file": ("waves.npz", _npz(
        audio=audio.astype(np.float32), label=labels))})
    ds = prepared(api_client, response)
    url = f"/v1/datasets/{ds['id']}/preview"
    body = api_client.post(url, json={"method": "mixup", "n": 3}).json()
    assert body["ops"] == {"audio": "mixup"}
    _png(api_client, body["image_url"])
    assert ("body", "ops", "audio") in _loc(api_client.post(
        url, json={"method": "cross_modal", "ops": {"audio": "specmix"}}))


@pytest.mark.parametrize(("arrays", "field", "words"), [
    ({"tabular": np.ones((60, 2)), "audio": np.ones((59, 8)), "label": np.arange(60) % 3},
     "tabular", "60 samples but audio has 59"),
    ({"label": np.arange(60) % 3}, "image", "missing"),
])
def test_multimodal_upload_rejections(api_client: TestClient, arrays: dict, field: str,
                                      words: str) -> None:
    response = api_client.post("/v1/datasets", files={"file": ("bad.npz", _npz(**arrays))})
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "file", field]
    assert error["msg"].startswith(f"{field}:") and words in error["msg"]


@pytest.mark.parametrize(("arrays", "field", "words"), [
    ({"text": -np.ones((60, 4), int), "label": np.arange(60) % 3}, "text", "negative"),
    ({"tabular": np.full((60, 2), np.nan), "label": np.arange(60) % 3}, "tabular", "NaN"),
])
def test_multimodal_value_problems_fail_the_preparation(api_client: TestClient, arrays: dict,
                                                        field: str, words: str) -> None:
    response = api_client.post("/v1/datasets", files={"file": ("bad.npz", _npz(**arrays))})
    ds = prepared(api_client, response, status="failed")
    assert ds["errors"][0]["field"] == field and words in ds["errors"][0]["message"]
