"""Dataset preparation as a queued job: 202 and ``preparing`` at submission, then the
real worker makes it ``ready`` or ``failed`` (with the problems listed, nothing
stored); URIs; what a dataset that is not ready refuses; claims, progress and
cancellation of the job itself."""

import io
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fastapi.testclient import TestClient

from app.db.models import DEFAULT_PROJECT_ID, Dataset
from app.db.session import session_scope
from app.ml.data import PreparedDataset
from app.ml.data.ingest_spec import PreparationStopped
from app.ml.data.shards import INDEX, ShardedDataset
from app.services import auth, prepared_data
from app.services import datasets as service
from app.settings import get_settings
from app.storage import dataset_prefix, get_store, shards_prefix, upload_key
from tests.conftest import TEST_PROJECT
from tests.integration.helpers import prepared, wait_for_dataset, wait_until
from tests.unit.test_parquet import png

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]
N = 40


def _table(n: int = N, **overrides: list) -> pa.Table:
    cols = {"img": [png(i, size=(6, 6)) for i in range(n)],
            "caption": [f"word{i % 7} and w{i % 3}" for i in range(n)],
            "age": [float(i % 11) for i in range(n)],
            "city": [["oslo", "rome", "lima"][i % 3] for i in range(n)],
            "label": [["ant", "bee"][i % 2] for i in range(n)]}
    cols.update(overrides)
    return pa.table(cols)


def _parquet(table: pa.Table, **kw: object) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _stored(dataset_id: str) -> set[str]:
    root = Path(get_settings().resolved_artifact_url.removeprefix("file://"))
    folder = root / dataset_prefix(dataset_id)
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _state(api_client: TestClient) -> tuple[int, set[str]]:
    root = Path(get_settings().resolved_artifact_url.removeprefix("file://")) / "datasets"
    return (api_client.get("/v1/datasets").json()["total"],
            {p.name for p in root.iterdir()} if root.exists() else set())


def _blob(ds: dict) -> PreparedDataset:
    """The stored prepared form, read whole (rows grouped by split)."""
    data = prepared_data.open_prepared(get_store(), f"{shards_prefix(ds['id'])}/{INDEX}",
                                       get_settings())
    assert isinstance(data, ShardedDataset)
    return data.to_resident()


def _shard_files(dataset_id: str) -> set[str]:
    root = Path(get_settings().resolved_artifact_url.removeprefix("file://"))
    return {p.name for p in (root / shards_prefix(dataset_id)).iterdir()}


def test_upload_is_accepted_then_prepared(api_client: TestClient) -> None:
    response = api_client.post("/v1/datasets", files={"file": ("zoo.parquet",
                                                               _parquet(_table()))})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "preparing" and accepted["stage"] == "queued"
    assert accepted["progress"] == 0.0 and accepted["errors"] is None
    assert accepted["num_samples"] is None and accepted["classes"] is None
    assert accepted["source"] == {"kind": "upload", "format": "parquet",
                                  "filename": "zoo.parquet"}
    ds = prepared(api_client, response)
    assert ds["progress"] == 1.0 and ds["stage"] is None and ds["error_count"] == 0
    assert ds["num_samples"] == N and ds["multilabel"] is False
    assert [c["name"] for c in ds["classes"]] == ["ant", "bee"]
    assert ds["started_at"] <= ds["finished_at"]
    # the raw upload is gone once prepared; the shards are the only files left
    assert _stored(ds["id"]) == {"prepared"}
    files = _shard_files(ds["id"])
    assert files == {INDEX, "train-00000.safetensors", "val-00000.safetensors",
                     "test-00000.safetensors"}
    assert ds["size_bytes"] == sum(get_store().size(f"{shards_prefix(ds['id'])}/{name}")
                                   for name in files)


def test_failed_preparation_lists_capped_problems_and_keeps_nothing(
        api_client: TestClient) -> None:
    table = _table(60, img=[b"not an image"] * 60)
    response = api_client.post("/v1/datasets", files={"file": ("bad.parquet",
                                                               _parquet(table))})
    ds = prepared(api_client, response, status="failed")
    assert ds["error_count"] == 60 and len(ds["errors"]) == 1
    error = ds["errors"][0]
    listed = ", ".join(str(i) for i in range(20))
    assert error["field"] == "img"
    # in words, not Pillow's "cannot identify image file <_io.BytesIO object at 0x7f…>"
    assert error["message"] == (f"unreadable image in 60 rows: {listed}, … (first: not an "
                                "image PIL can read (PNG, JPEG, GIF, BMP, TIFF, WebP, …))")
    assert _stored(ds["id"]) == set()
    # a value problem in an .npz passes the header check and fails the same way: every
    # bad sample counted, the first 20 listed
    image = np.zeros((30, 4, 4), np.float32)
    image[5:] = np.nan
    response = api_client.post("/v1/datasets", files={"file": ("nan.npz", _npz(
        image=image, label=np.arange(30) % 3))})
    ds = prepared(api_client, response, status="failed")
    listed = ", ".join(str(i) for i in range(5, 25))
    assert ds["errors"] == [{"field": "image", "message": "contains NaN or infinity in 25 "
                                                          f"samples: {listed}, …"}]
    assert ds["error_count"] == 25
    assert _stored(ds["id"]) == set()


@pytest.mark.parametrize(("filename", "content", "loc", "words"), [
    ("a.npz", _npz(image=np.zeros((30, 4), np.uint8), label=np.arange(30) % 3),
     ["body", "file", "image"], "expected shape (N, H, W)"),
    ("a.npz", _npz(image=np.zeros((30, 4, 4), np.uint8), label=np.arange(29) % 3),
     ["body", "file", "label"], "has 29 entries but image has 30"),
    ("a.parquet", _parquet(_table().drop_columns(["label"])), ["body", "file", "label"],
     "no label column"),
    ("a.parquet", b"PAR1 garbage", ["body", "file"], "not a readable Parquet"),
])
def test_what_the_headers_show_is_422_at_submission(api_client: TestClient, filename: str,
                                                    content: bytes, loc: list,
                                                    words: str) -> None:
    before = _state(api_client)
    response = api_client.post("/v1/datasets", files={"file": (filename, content)})
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == loc and words in error["msg"], error
    assert _state(api_client) == before


def _insert(status: str = "preparing", **values: object) -> str:
    """A dataset row of the tests' project no message refers to: it stays as written."""
    with session_scope() as session:
        ds = Dataset(project_id=auth.find_project(session, TEST_PROJECT).id, name="held",
                     status=status, source={"kind": "builtin", "name": "digits",
                                            "options": {}}, **values)
        session.add(ds)
        session.commit()
        return str(ds.id)


def test_an_experiment_on_a_dataset_not_ready_is_409(api_client: TestClient) -> None:
    """(Needs ``app.services.experiments.create`` to call ``datasets.require_ready``.)"""
    preparing = _insert(stage="reading", progress=0.5, attempt=1)
    experiment = api_client.post("/v1/experiments", json={"dataset_id": preparing})
    assert experiment.status_code == 409, experiment.text
    assert "still preparing (reading, 50%)" in experiment.json()["detail"]
    failed = _insert("failed", errors=[{"field": "img", "message": "unreadable"}],
                     error_count=1)
    experiment = api_client.post("/v1/experiments", json={"dataset_id": failed})
    assert experiment.status_code == 409 and "failed" in experiment.json()["detail"]
    # a status the operation gives is one its contract lists (schemathesis checks it too)
    documented = api_client.get("/openapi.json").json()["paths"]["/v1/experiments"]["post"]
    assert "409" in documented["responses"]


def test_a_dataset_not_ready_refuses_previews_and_can_be_deleted(
        api_client: TestClient) -> None:
    preparing = _insert(stage="reading", progress=0.5, attempt=1)
    shown = api_client.get(f"/v1/datasets/{preparing}").json()
    assert shown["status"] == "preparing" and shown["stage"] == "reading"
    assert shown["progress"] == 0.5 and shown["num_samples"] is None
    preview = api_client.post(f"/v1/datasets/{preparing}/preview", json={})
    assert preview.status_code == 409 and "preparing" in preview.json()["detail"]
    png_reply = api_client.get(f"/v1/datasets/{preparing}/preview.png?method=mixup")
    assert png_reply.status_code == 409
    failed = _insert("failed", errors=[{"field": "img", "message": "unreadable"}],
                     error_count=1)
    preview = api_client.post(f"/v1/datasets/{failed}/preview", json={})
    assert preview.status_code == 409 and "failed" in preview.json()["detail"]
    # deleting a dataset that is still preparing cancels it
    assert api_client.delete(f"/v1/datasets/{preparing}").status_code == 204
    assert api_client.get(f"/v1/datasets/{preparing}").status_code == 404
    assert api_client.delete(f"/v1/datasets/{failed}").status_code == 204


def _imports() -> Path:
    return get_settings().import_root_paths[0]


def test_file_uri_under_an_import_root(api_client: TestClient, tmp_path: Path) -> None:
    (_imports() / "zoo.parquet").write_bytes(_parquet(_table()))
    uri = (_imports() / "zoo.parquet").as_uri()
    spec = {"modalities": {"photo": {"kind": "image", "column": "img", "size": [4, 4]}}}
    response = api_client.post("/v1/datasets", json={
        "name": "zoo", "source": {"uri": uri, "spec": spec}})
    ds = prepared(api_client, response)
    assert ds["source"]["kind"] == "uri" and ds["source"]["uri"] == uri
    assert [(m["name"], m["shape"]) for m in ds["modalities"]] == [("photo", [3, 4, 4])]
    assert (_imports() / "zoo.parquet").exists()  # the user's file is only read
    assert _stored(ds["id"]) == {"prepared"}


def test_file_uris_outside_the_roots_are_refused(api_client: TestClient, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "secret.parquet"
    outside.write_bytes(_parquet(_table()))
    link = _imports() / f"link-{uuid.uuid4().hex}.parquet"
    os.symlink(outside, link)
    before = _state(api_client)
    for uri, words in ((outside.as_uri(), "outside the folders"),
                       (link.as_uri(), "outside the folders"),
                       (f"file://{_imports()}/../{outside.name}", "outside the folders"),
                       (f"file://otherhost{outside}", "names a path on this server"),
                       ((_imports() / "absent.parquet").as_uri(), "no such file"),
                       ("ftp://example.com/a.parquet", "unsupported scheme ftp://"),
                       ((_imports() / "notes.txt").as_uri(), "cannot tell the format")):
        response = api_client.post("/v1/datasets", json={"name": "x", "source": {"uri": uri}})
        assert response.status_code == 422, (uri, response.text)
        error = response.json()["detail"][0]
        assert error["loc"] == ["body", "source", "uri"] and words in error["msg"], error
    inside = (_imports() / "zoo.parquet").as_uri()
    monkeypatch.setattr(get_settings(), "import_roots", "")
    response = api_client.post("/v1/datasets", json={"name": "x", "source": {"uri": inside}})
    assert response.status_code == 422 and "turned off" in response.json()["detail"][0]["msg"]
    assert _state(api_client) == before


def test_file_uri_headers_and_spec_are_checked_at_submission(api_client: TestClient) -> None:
    (_imports() / "nolabel.parquet").write_bytes(_parquet(_table().drop_columns(["label"])))
    response = api_client.post("/v1/datasets", json={"name": "x", "source": {
        "uri": (_imports() / "nolabel.parquet").as_uri()}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "source", "uri", "label"]
    (_imports() / "ok.parquet").write_bytes(_parquet(_table()))
    response = api_client.post("/v1/datasets", json={"name": "x", "source": {
        "uri": (_imports() / "ok.parquet").as_uri(), "spec": {"modalities": {
            "x": {"kind": "image", "column": "nope"}}}}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "source", "uri", "nope"]


def test_s3_without_s3fs_is_a_clear_422(api_client: TestClient) -> None:
    from app.services.sources import s3_available

    if s3_available():
        pytest.skip("s3fs is installed here")
    response = api_client.post("/v1/datasets", json={"name": "x", "source": {
        "uri": "s3://bucket/zoo.parquet"}})
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "source", "uri"] and "s3fs" in error["msg"]


def test_row_groups_do_not_change_the_prepared_tensors(api_client: TestClient) -> None:
    table = _table(90)
    one = prepared(api_client, api_client.post("/v1/datasets", files={"file": (
        "one.parquet", _parquet(table))}))
    many = prepared(api_client, api_client.post("/v1/datasets", files={"file": (
        "many.parquet", _parquet(table, row_group_size=8))}))
    a, b = _blob(one), _blob(many)
    assert a.inputs.keys() == b.inputs.keys() == {"img", "caption", "tabular"}
    for k in a.inputs:
        assert torch.equal(a.inputs[k], b.inputs[k]), k
    assert torch.equal(a.labels, b.labels) and torch.equal(a.split, b.split)
    assert a.provenance["vocab"] == b.provenance["vocab"]


def test_multilabel_parquet_is_prepared_multi_hot(api_client: TestClient) -> None:
    tags = [["ant"], ["ant", "bee"], ["cow"], []]
    table = _table(N, label=[tags[i % 4] for i in range(N)])
    ds = prepared(api_client, api_client.post("/v1/datasets", files={"file": (
        "tags.parquet", _parquet(table))}))
    data = _blob(ds)
    assert data.class_names == ["ant", "bee", "cow"]
    assert data.labels.dtype == torch.uint8 and data.labels.shape == (N, 3)
    # rows are grouped by split in the stored form: compare as a multiset
    expected = [[int(c in tags[i % 4]) for c in ("ant", "bee", "cow")] for i in range(N)]
    assert sorted(data.labels.tolist()) == sorted(expected)
    assert ds["multilabel"] is True


# --- the job itself, in this process (no message is published for these rows) ---------

def _held_upload(content: bytes, fmt: str = "parquet") -> uuid.UUID:
    dataset_id = uuid.uuid4()
    with session_scope() as session:
        session.add(Dataset(id=dataset_id, name="held", status="preparing", source={
            "kind": "upload", "format": fmt, "filename": f"held.{fmt}"}))
        session.commit()
    path = Path(get_settings().data_dir) / f"held-{dataset_id}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    get_store().put_file(upload_key(dataset_id, f".{fmt}"), path)
    path.unlink()
    return dataset_id


def test_claims_are_exclusive_and_a_stale_claim_is_taken_over(database: str) -> None:
    dataset_id = _held_upload(_parquet(_table()))
    with session_scope() as session:
        first = service.claim(session, dataset_id, stale_after_s=60)
        assert first is not None and first.attempt == 1
        assert service.claim(session, dataset_id, stale_after_s=60) is None
        assert service.record_progress(session, dataset_id, 1, "reading", 0.3)
        assert service.claim(session, dataset_id, stale_after_s=0.0) is not None  # stale
        assert not service.record_progress(session, dataset_id, 1, "reading", 0.4)
        assert not service.mark_ready(session, dataset_id, 1, {}, "k", 1)
        assert service.mark_failed(session, dataset_id, 2, [("img", "bad")], 1)
        row = session.get(Dataset, dataset_id)
        session.refresh(row)
        assert row.status == "failed" and row.attempt == 2
        assert service.claim(session, dataset_id, stale_after_s=0.0) is None  # finished
    get_store().delete_prefix(dataset_prefix(dataset_id))


def test_an_interrupted_job_gives_up_after_its_attempts(database: str) -> None:
    from worker.ingestion import execute_preparation

    dataset_id = _held_upload(_parquet(_table()))
    with session_scope() as session:
        session.get(Dataset, dataset_id).attempt = get_settings().ingest_max_attempts
        session.commit()
    assert execute_preparation(dataset_id) == "failed"
    with session_scope() as session:
        row = session.get(Dataset, dataset_id)
        assert row.status == "failed" and "interrupted 3 times" in row.errors[0]["message"]
    assert _stored(str(dataset_id)) == set()


def test_progress_is_written_and_a_deleted_dataset_stops_the_job(database: str) -> None:
    from worker.ingestion import PreparationReporter

    dataset_id = _held_upload(_parquet(_table()))
    with session_scope() as session:
        attempt = service.claim(session, dataset_id, stale_after_s=60).attempt
    reporter = PreparationReporter(dataset_id, attempt, period_s=0.05)
    reporter.start()
    try:
        reporter("reading", 0.5)
        reporter("reading", 0.2)  # progress never goes back
        assert reporter.progress == pytest.approx(0.25 + 0.65 * 0.5)

        def written() -> bool:
            with session_scope() as session:
                row = session.get(Dataset, dataset_id)
                return row.stage == "reading" and abs(row.progress - reporter.progress) < 1e-3

        wait_until(written, timeout=10, what="the reporter to write progress")
        with session_scope() as session:
            service.delete(session, DEFAULT_PROJECT_ID, get_store(), dataset_id)

        def stopped() -> bool:
            try:
                reporter("reading", 0.9)
            except PreparationStopped:
                return True
            return False

        wait_until(stopped, timeout=10, what="the reporter to notice the deletion")
    finally:
        reporter.close()


def test_a_job_whose_dataset_is_deleted_leaves_nothing(database: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import ingestion

    dataset_id = _held_upload(_parquet(_table()))
    real = ingestion.ingest.prepare_file

    def delete_midway(*args: object, **kwargs: object) -> object:
        progress = kwargs["progress"] if "progress" in kwargs else args[-1]
        with session_scope() as session:
            service.delete(session, DEFAULT_PROJECT_ID, get_store(), dataset_id)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the next progress call after the flush stops
            progress("reading", 0.1)  # type: ignore[operator]
            time.sleep(0.05)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingestion.ingest, "prepare_file", delete_midway)
    assert ingestion.execute_preparation(dataset_id) == "cancelled"
    assert _stored(str(dataset_id)) == set()
    with session_scope() as session:
        assert session.get(Dataset, dataset_id) is None


def test_builtins_take_the_same_path(api_client: TestClient) -> None:
    response = api_client.post("/v1/datasets", json={
        "name": "d", "source": {"kind": "builtin", "name": "digits",
                                "options": {"label_noise": 0.1}}})
    assert response.status_code == 202 and response.json()["status"] == "preparing"
    ds = wait_for_dataset(api_client, response.json()["id"])
    assert ds["status"] == "ready" and ds["num_samples"] == 1797
    assert ds["noisy_train_labels"] == round(0.1 * 1259)
