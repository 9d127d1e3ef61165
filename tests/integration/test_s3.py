"""The s3:// paths against a real S3-compatible server: moto's standalone server,
started here as a subprocess. Dataset and weights URIs must lie under the import
allow-list (MIXLAB_S3_IMPORT_PREFIXES), and a stack whose artifact store is on
s3:// (its own API and worker processes, as on several hosts) prepares a
dataset, trains a run and serves its checkpoint from the bucket.

Without s3fs or moto's server these tests skip; the refusals that need no
server run against the in-process API either way.
"""

import importlib.util
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load as st_load

from app.db.models import Run
from app.db.session import session_scope
from app.settings import Settings, get_settings
from app.storage import url_to_fs
from tests.conftest import TMP, Access, free_port, stop, wait_http
from tests.integration.helpers import auth_headers, prepared, wait_until
from tests.recipes import SHORT

pytestmark = pytest.mark.integration

BUCKET = f"mixlab-test-{uuid.uuid4().hex[:8]}"
SHARED = f"s3://{BUCKET}/shared/"
# {project}: the tests project (named "tests") may import from projects/tests/ only
PREFIXES = f"{SHARED},s3://{BUCKET}/projects/{{project}}/"
# botocore reads these; fixed, so no developer's ~/.aws or instance metadata is used
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(TMP / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(TMP / "no-aws-credentials")}


def _error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    return error


# --- the allow-list, in-process (no S3 server needed) ----------------------------------

def test_s3_uris_are_refused_when_no_prefix_is_configured(api_client: TestClient) -> None:
    if importlib.util.find_spec("s3fs") is None:
        pytest.skip("s3fs is not installed (the refusal then names s3fs)")
    assert get_settings().s3_import_prefixes == ""  # the default: secure
    error = _error(api_client.post("/v1/datasets", json={
        "name": "x", "source": {"uri": "s3://bucket-a/datasets/zoo.npz"}}))
    assert error["loc"] == ["body", "source", "uri"]
    assert "turned off" in error["msg"] and "MIXLAB_S3_IMPORT_PREFIXES" in error["msg"]


def test_s3_uris_outside_the_prefixes_are_refused(api_client: TestClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("s3fs") is None:
        pytest.skip("s3fs is not installed")
    monkeypatch.setattr(get_settings(), "s3_import_prefixes",
                        "s3://bucket-a/datasets,s3://tenants/{project}/")
    before = api_client.get("/v1/datasets").json()["total"]
    allowed = "(s3://bucket-a/datasets/, s3://tenants/tests/)"  # the tests project's own
    for uri in ("s3://bucket-a/datasets-evil/zoo.npz", "s3://bucket-a/zoo.npz",
                "s3://bucket-b/datasets/zoo.npz", "s3://tenants/other/zoo.npz",
                "s3://tenants/tests-evil/zoo.npz"):
        error = _error(api_client.post("/v1/datasets", json={"name": "x",
                                                              "source": {"uri": uri}}))
        assert error["loc"] == ["body", "source", "uri"], error
        assert error["msg"] == f"{uri} is outside the prefixes s3:// URIs may read {allowed}"
    error = _error(api_client.post("/v1/datasets", json={"name": "x", "source": {
        "uri": "s3://bucket-a/datasets/../secret/zoo.npz"}}))
    assert "'..'" in error["msg"]
    assert api_client.get("/v1/datasets").json()["total"] == before


# --- a real S3 server ------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    """moto's S3 server on a free port, its endpoint URL; the AWS_* variables set
    for this process (and the processes it starts) while it runs."""
    if importlib.util.find_spec("s3fs") is None or importlib.util.find_spec("moto") is None \
            or importlib.util.find_spec("flask") is None:
        pytest.skip("needs s3fs and moto[server] (the dev extra)")
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    port = free_port()
    log = TMP / "moto.log"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited:\n{log.read_text()[-4000:]}")
        try:
            return httpx.get(f"{url}/moto-api/", timeout=2).status_code < 500
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, timeout=60, what="moto's S3 server to answer")
        yield url
    finally:
        stop(proc)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def bucket(moto: str) -> Any:
    """The test bucket on moto, as an s3fs filesystem reached the way the service
    reaches it (app.storage.url_to_fs with the endpoint setting)."""
    fs, _ = url_to_fs(f"s3://{BUCKET}", Settings(s3_endpoint_url=moto))
    fs.mkdir(BUCKET)
    return fs


@dataclass
class S3Stack:
    base_url: str
    http: httpx.Client


@pytest.fixture(scope="module")
def s3_stack(database: str, access: Access, moto: str, bucket: Any) -> Iterator[S3Stack]:
    """An API and a worker process whose artifact store is the bucket, on queues of
    their own (the suite's shared worker keeps its artifacts in a local folder).
    Its datasets are stored in shards of 64 rows, and its runs stream them from
    the bucket (no resident budget), through the run's own cache folder."""
    tag = uuid.uuid4().hex[:8]
    env = {**os.environ, "MIXLAB_ARTIFACT_URL": f"s3://{BUCKET}/artifacts",
           "MIXLAB_S3_ENDPOINT_URL": moto, "MIXLAB_S3_IMPORT_PREFIXES": PREFIXES,
           "MIXLAB_QUEUE": f"gpu-s3-{tag}", "MIXLAB_INGEST_QUEUE": f"ingest-s3-{tag}",
           "MIXLAB_DATA_DIR": str(TMP / f"data-s3-{tag}"), "MIXLAB_SHARD_BYTES": "4096",
           "MIXLAB_RESIDENT_DATA_BYTES": "0"}
    worker_log, api_log = TMP / "s3-worker.log", TMP / "s3-api.log"
    worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env,
                              stdout=worker_log.open("wb"), stderr=subprocess.STDOUT)
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.api.main:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env=env, stdout=api_log.open("wb"), stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_http(base_url, api, api_log)
        with httpx.Client(base_url=base_url, headers=auth_headers(), timeout=60) as http:
            yield S3Stack(base_url, http)
    finally:
        stop(api)
        stop(worker)


def _npz() -> bytes:
    """90 8×8 grey images in 3 classes: a format the service takes as it is."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, image=rng.integers(0, 256, (90, 8, 8), dtype=np.uint8),
             label=np.repeat(np.array(["a", "b", "c"]), 30))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def s3_dataset(s3_stack: S3Stack, bucket: Any) -> dict[str, Any]:
    """A dataset imported from an s3:// URI under a shared prefix, prepared by the
    stack's worker into the bucket."""
    bucket.pipe(f"{BUCKET}/shared/shapes.npz", _npz())
    uri = f"{SHARED}shapes.npz"
    ds = prepared(s3_stack.http, s3_stack.http.post("/v1/datasets", json={
        "name": "s3-shapes", "source": {"uri": uri}}))
    assert ds["source"]["uri"] == uri and ds["num_samples"] == 90
    return ds


def test_a_dataset_is_imported_from_s3_and_prepared_into_the_bucket(
        s3_stack: S3Stack, bucket: Any, s3_dataset: dict[str, Any]) -> None:
    assert bucket.exists(f"{BUCKET}/artifacts/datasets/{s3_dataset['id']}/"
                         "prepared/index.safetensors")
    # the project's own prefix ({project} = tests) is allowed, another project's is not
    bucket.pipe(f"{BUCKET}/projects/tests/mine.npz", _npz())
    bucket.pipe(f"{BUCKET}/projects/other/theirs.npz", _npz())
    mine = prepared(s3_stack.http, s3_stack.http.post("/v1/datasets", json={
        "name": "s3-mine", "source": {"uri": f"s3://{BUCKET}/projects/tests/mine.npz"}}))
    assert mine["num_samples"] == 90
    allowed = f"({SHARED}, s3://{BUCKET}/projects/tests/)"
    for uri in (f"s3://{BUCKET}/projects/other/theirs.npz",
                f"s3://{BUCKET}/shared-evil/shapes.npz"):
        error = _error(s3_stack.http.post("/v1/datasets", json={"name": "x",
                                                                 "source": {"uri": uri}}))
        assert error["loc"] == ["body", "source", "uri"]
        assert error["msg"] == f"{uri} is outside the prefixes s3:// URIs may read {allowed}"
    # the store holds every project's files: never a source, whatever the prefixes say
    error = _error(s3_stack.http.post("/v1/datasets", json={"name": "x", "source": {
        "uri": f"s3://{BUCKET}/artifacts/datasets/{s3_dataset['id']}/prepared.npz"}}))
    assert error["loc"] == ["body", "source", "uri"] and "artifact store" in error["msg"]


def _experiment(http: httpx.Client, dataset_id: str, **model: Any) -> httpx.Response:
    return http.post("/v1/experiments", json={
        "name": "s3", "dataset_id": dataset_id, "model": {"width": 8, "depth": 2, **model},
        "training": {**SHORT, "epochs": 1, "batch_size": 32, "seed": 0}})


def _wait_run(http: httpx.Client, run_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        run = http.get(f"/v1/runs/{run_id}").json()
        return run if run["status"] in ("succeeded", "failed", "cancelled") else None

    run: dict[str, Any] = wait_until(finished, timeout=300, interval=0.2,
                                     what=f"run {run_id} to finish")
    assert run["status"] == "succeeded", run
    return run


def test_a_run_keeps_its_checkpoint_in_the_bucket_and_serves_it(
        s3_stack: S3Stack, bucket: Any, s3_dataset: dict[str, Any]) -> None:
    response = _experiment(s3_stack.http, s3_dataset["id"])
    assert response.status_code == 202, response.text
    run_id = response.json()["run_ids"][0]
    _wait_run(s3_stack.http, run_id)
    # it streamed the shards through a cache folder of its own, gone at its end
    logs = s3_stack.http.get(f"/v1/runs/{run_id}/logs").json()["lines"]
    assert any("streamed from" in line["message"] for line in logs), logs
    caches = list(TMP.glob("data-s3-*/shard-cache/*"))
    assert caches == [], caches
    with session_scope() as session:
        key = session.get(Run, uuid.UUID(run_id)).checkpoint_key  # type: ignore[union-attr]
    assert key is not None and key.startswith(f"runs/{run_id}/")
    stored = bucket.cat_file(f"{BUCKET}/artifacts/{key}")
    download = s3_stack.http.get(f"/v1/runs/{run_id}/checkpoint")
    assert download.status_code == 200
    assert download.content == stored  # what the worker wrote on "another host"
    assert st_load(download.content)  # a safetensors file with tensors

    # the checkpoint, put under the shared prefix, starts another run from s3
    bucket.pipe(f"{BUCKET}/shared/start.safetensors", download.content)
    weights = f"{SHARED}start.safetensors"
    response = _experiment(s3_stack.http, s3_dataset["id"], weights=weights)
    assert response.status_code == 202, response.text
    run = _wait_run(s3_stack.http, response.json()["run_ids"][0])
    assert run["init"]["source"] == weights and run["init"]["loaded"] > 0, run["init"]
    # weights outside the prefixes: refused at model.weights, naming them
    bucket.pipe(f"{BUCKET}/projects/other/w.safetensors", download.content)
    error = _error(_experiment(s3_stack.http, s3_dataset["id"],
                               weights=f"s3://{BUCKET}/projects/other/w.safetensors"))
    assert error["loc"] == ["body", "model", "weights"]
    assert f"({SHARED}, s3://{BUCKET}/projects/tests/)" in error["msg"]
