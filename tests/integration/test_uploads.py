"""Parquet and archive uploads through the API and the worker: accepted (202), prepared,
described, previewable; what the file's headers show is wrong → 422 at submission."""

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from app.settings import get_settings
from tests.integration.helpers import prepared, zip_bytes
from tests.unit.test_parquet import png, wav

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]
N = 30


def _parquet(**overrides: list) -> bytes:
    cols = {"img": [{"bytes": png(i), "path": None} for i in range(N)],
            "caption": [f"word{i % 5} more words" for i in range(N)],
            "sound": [wav() for _ in range(N)],
            "age": [float(i) for i in range(N)],
            "label": [["ant", "bee", "cow"][i % 3] for i in range(N)]}
    cols.update(overrides)
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


def _counts(api_client: TestClient) -> tuple[int, set[str]]:
    root = Path(get_settings().resolved_artifact_url.removeprefix("file://")) / "datasets"
    stored = {p.name for p in root.iterdir()} if root.exists() else set()
    return api_client.get("/v1/datasets").json()["total"], stored


def test_parquet_upload_with_spec_and_preview(api_client: TestClient) -> None:
    spec = {"modalities": {
        "photo": {"kind": "image", "column": "img", "size": [16, 16]},
        "text": {"kind": "text", "column": "caption", "max_length": 6},
        "audio": {"kind": "audio", "column": "sound", "clip_seconds": 0.05},
        "tabular": {"kind": "tabular", "columns": ["age"]}}}
    response = api_client.post("/v1/datasets", files={"file": ("zoo.parquet", _parquet())},
                               data={"spec": json.dumps(spec)})
    ds = prepared(api_client, response)
    assert ds["name"] == "zoo" and ds["num_samples"] == N
    shapes = {m["name"]: (m["kind"], m["shape"]) for m in ds["modalities"]}
    assert shapes == {"photo": ("image", [3, 16, 16]), "text": ("text", [6]),
                      "audio": ("audio", [400]), "tabular": ("tabular", [1])}
    assert [c["name"] for c in ds["classes"]] == ["ant", "bee", "cow"]
    preview = api_client.post(f"/v1/datasets/{ds['id']}/preview",
                              json={"method": "mixup", "n": 4, "seed": 1})
    assert preview.status_code == 200, preview.text
    png_url = preview.json()["image_url"].split("testserver", 1)[-1]
    assert api_client.get(png_url).headers["content-type"] == "image/png"


def test_parquet_inferred_and_zip_folder_upload(api_client: TestClient) -> None:
    response = api_client.post("/v1/datasets", files={"file": ("z.parquet", _parquet())})
    kinds = {m["name"]: m["kind"] for m in prepared(api_client, response)["modalities"]}
    assert kinds == {"img": "image", "caption": "text", "sound": "audio", "tabular": "tabular"}
    files = {f"pets/{c}/{i}.png": png(i) for c in ("cat", "dog") for i in range(12)}
    response = api_client.post("/v1/datasets", files={"file": ("pets.zip", zip_bytes(files))},
                               data={"spec": json.dumps({"modalities": {"image": {
                                   "kind": "image", "column": "file", "size": [8, 8]}}})})
    ds = prepared(api_client, response)
    assert ds["modalities"][0]["shape"] == [3, 8, 8] and ds["num_samples"] == 24
    preview = api_client.post(f"/v1/datasets/{ds['id']}/preview",
                              json={"method": "cutmix", "n": 2, "seed": 0})
    assert preview.status_code == 200, preview.text


@pytest.mark.parametrize(("filename", "content", "spec", "loc", "words"), [
    ("d.parquet", b"garbage", None, ["body", "file"], "not a readable Parquet"),
    ("d.parquet", _parquet(label=[None] * N), None, ["body", "file", "label"],
     "label column type null is not integer, string or a list"),
    ("d.parquet", _parquet(), {"modalities": {"x": {"kind": "image", "column": "nope"}}},
     ["body", "file", "nope"], "no such column"),
    ("d.parquet", _parquet(), {"modalities": {"x": {"kind": "video"}}},
     ["body", "spec", "modalities", "x"], ""),
    ("d.parquet", _parquet(), {"bogus": 1}, ["body", "spec", "bogus"], ""),
    ("d.parquet", _parquet(), {"modalities": {"x": {"kind": "image", "column": "img",
                                                    "size": [600, 8]}}},
     ["body", "spec", "modalities", "x"], "less than or equal to 512"),
    ("d.parquet", _parquet(), "{not json", ["body", "spec"], ""),
    ("d.npz", b"x", {}, ["body", "spec"], "not .npz"),
    ("d.zip", zip_bytes({"../x.png": b"1"}), None, ["body", "file"], "traversal"),
    ("d.zip", zip_bytes({"manifest.csv": b"image,label\nimgs/a.png,1\n"}), None,
     ["body", "file", "image"], "missing file imgs/a.png at manifest row 1"),
])
def test_bad_uploads_store_nothing(api_client: TestClient, filename: str, content: bytes,
                                   spec: object, loc: list, words: str) -> None:
    before = _counts(api_client)
    data = {} if spec is None else {"spec": spec if isinstance(spec, str) else json.dumps(spec)}
    response = api_client.post("/v1/datasets", files={"file": (filename, content)}, data=data)
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"][:len(loc)] == loc, error
    assert words in error["msg"], error
    assert _counts(api_client) == before


def test_bad_rows_are_found_by_the_preparation(api_client: TestClient) -> None:
    """Problems only the data shows: accepted at submission, then ``failed`` with the
    problems listed by column, and nothing left in the artifact store."""
    images = [{"bytes": png(i) if i % 3 else b"bad", "path": None} for i in range(N)]
    labels: list[str | None] = [["ant", "bee", "cow"][i % 3] for i in range(N)]
    labels[4] = labels[7] = None
    response = api_client.post("/v1/datasets", files={"file": ("d.parquet", _parquet(
        img=images, label=labels))})
    ds = prepared(api_client, response, status="failed")
    assert [e["field"] for e in ds["errors"]] == ["label", "img"]
    assert ds["errors"][0]["message"] == "missing in 2 rows: 4, 7"
    assert ds["errors"][1]["message"].startswith(
        "unreadable image in 10 rows: 0, 3, 6, 9, 12, 15, 18, 21, 24, 27 (first: ")
    assert ds["error_count"] == 12
    assert ds["num_samples"] is None and ds["modalities"] is None and ds["stage"] is None
    root = Path(get_settings().resolved_artifact_url.removeprefix("file://"))
    assert not (root / "datasets" / ds["id"]).exists()
