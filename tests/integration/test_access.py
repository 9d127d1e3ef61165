"""Access over the real API (in process) on Postgres with a real worker: every /v1
route wants a key, a read key cannot write, another project's objects answer 404
exactly like missing ones, a revoked key fails at once, and the per-project
limits refuse work at submission with 429 / 422 naming the limit.

The routes come from the OpenAPI schema, so a route added later is covered (or
fails here until it is)."""

import io
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.api.deps import current_settings
from app.api.main import app
from app.db.base import utcnow
from app.db.models import ApiKey, Dataset, Experiment, Project, Run, Sweep
from app.db.session import get_sessionmaker, session_scope
from app.schemas.experiments import ExperimentCreate
from app.services import auth, limits
from app.services.errors import LimitExceeded
from app.settings import Settings, get_settings
from tests.integration.helpers import prepared, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]

OPERATIONS = [(method, path) for path, ops in app.openapi()["paths"].items()
              if path.startswith("/v1/") for method in ops]


def is_write(method: str, path: str) -> bool:
    """What a read key may not do: change anything (a preview or a prediction only
    computes), and manage keys."""
    return path.startswith("/v1/keys") or (
        method != "get" and not path.endswith(("/preview", "/predict")))


WRITES = [op for op in OPERATIONS if is_write(*op)]
READS = [op for op in OPERATIONS if not is_write(*op)]
BY_ID = [op for op in OPERATIONS if "{" in op[1]]
TINY = {"model": {"width": 4, "depth": 1}, "augmentation": {"method": "mixup"},
        "training": {"epochs": 1, "batch_size": 256}}


def _client(key: str | None = None, headers: dict[str, str] | None = None) -> TestClient:
    """Used without ``with``: no lifespan (no reconciler), just the routes."""
    return TestClient(app, headers=headers or ({"Authorization": f"Bearer {key}"} if key
                                               else {}))


def _project(name: str, limits: dict[str, Any] | None = None) -> uuid.UUID:
    with session_scope() as session:
        return auth.create_project(session, f"{name}-{uuid.uuid4().hex[:6]}", limits).id


def _key(project_id: uuid.UUID, scope: str = "write") -> tuple[uuid.UUID, str]:
    with session_scope() as session:
        row, key = auth.create_key(session, project_id, f"{scope} key", scope)
        return row.id, key


def _body(method: str, path: str, ids: dict[str, str]) -> dict[str, Any] | None:
    """A valid body for each operation that takes one (an invalid one must not
    get past the key check either, but this tests the check, not validation)."""
    if (method, path) == ("post", "/v1/datasets"):
        return {"name": "x", "source": {"kind": "builtin", "name": "digits"}}
    if (method, path) == ("post", "/v1/experiments"):
        return {"dataset_id": ids["dataset_id"], **TINY}
    if (method, path) == ("post", "/v1/keys"):
        return {"name": "x", "scope": "read"}
    if (method, path) == ("post", "/v1/sweeps"):
        return {"base": {"dataset_id": ids["dataset_id"], **TINY},
                "grid": {"training.seed": [0]}}
    if path.endswith("/preview"):
        return {"n": 2}
    if path.endswith("/predict"):
        return {"dataset_id": ids["dataset_id"], "indices": [0, 1]}
    return None


def _params(path: str, ids: dict[str, str]) -> dict[str, str] | None:
    if path == "/v1/runs/compare":
        return {"ids": f"{ids['run_id']},{ids['sweep_run_id']}"}
    return None


# the routes that read an autoencoder run's representation (422 for other runs)
LATENT_ROUTES = ("/embeddings", "/embeddings.png", "/reconstructions", "/generate")
LATENT = {"model": {"kind": "multimodal_vae", "width": 4, "depth": 1, "dim": 8,
                    "latent_dim": 2},
          "augmentation": {"method": "none"},
          "training": {"epochs": 1, "batch_size": 256, "optimizer": "adamw", "lr": 0.003}}


def call(http: TestClient, method: str, path: str, ids: dict[str, str]) -> Any:
    if path.endswith(LATENT_ROUTES):
        ids = {**ids, "run_id": ids["latent_run_id"]}
    return http.request(method.upper(), path.format(**ids), json=_body(method, path, ids),
                        params=_params(path, ids))


@pytest.fixture(scope="module")
def project_a(access) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Project A with write and read keys, a ready dataset and a succeeded run."""
    project_id = _project("a")
    _, write_key = _key(project_id)
    read_id, read_key = _key(project_id, "read")
    http = _client(write_key)
    ds = prepared(http, http.post("/v1/datasets", json={
        "name": "a-digits", "source": {"kind": "builtin", "name": "digits"}}))
    created = http.post("/v1/experiments", json={"dataset_id": ds["id"], **TINY})
    assert created.status_code == 202, created.text
    run_id = created.json()["run_ids"][0]
    latent = http.post("/v1/experiments", json={"dataset_id": ds["id"], **LATENT})
    assert latent.status_code == 202, latent.text
    latent_run_id = latent.json()["run_ids"][0]

    for rid in (run_id, latent_run_id):
        def finished(rid: str = rid) -> dict[str, Any] | None:
            run = http.get(f"/v1/runs/{rid}").json()
            return run if run["status"] in ("succeeded", "failed", "cancelled") else None

        run = wait_until(finished, timeout=120, what="A's run")
        assert run["status"] == "succeeded", run["error"]
    # a sweep of one cancelled run that no message refers to (so no worker touches it)
    with session_scope() as session:
        sweep = Sweep(project_id=project_id, name="a-sweep", spec={})
        sweep.experiments.append(Experiment(
            project_id=project_id, name="a-sweep", dataset_id=uuid.UUID(ds["id"]),
            task="classification", spec={"training": {"epochs": 1}},
            sweep_point={"training.seed": 0}, runs=[Run(status="cancelled")]))
        session.add(sweep)
        session.commit()
        sweep_ids = {"sweep_id": str(sweep.id),
                     "sweep_run_id": str(sweep.experiments[0].runs[0].id)}
    yield {"project_id": project_id, "write": write_key, "read": read_key,
           "ids": {"dataset_id": ds["id"], "experiment_id": created.json()["experiment_id"],
                   "run_id": run_id, "latent_run_id": latent_run_id,
                   "key_id": str(read_id), **sweep_ids}}


@pytest.fixture(scope="module")
def project_b(access) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    project_id = _project("b")
    key_id, key = _key(project_id)
    return {"project_id": project_id, "write": key, "key_id": str(key_id)}


def _random_ids() -> dict[str, str]:
    return {name: str(uuid.uuid4()) for name in ("dataset_id", "experiment_id", "run_id",
                                                 "latent_run_id", "key_id", "sweep_id",
                                                 "sweep_run_id")}


# --- no key, a bad key ----------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_every_v1_route_wants_a_key(access, method: str, path: str) -> None:  # type: ignore[no-untyped-def]
    ids = _random_ids()
    for headers in ({}, {"Authorization": "Bearer mxl_0123abcd_not-a-key"},
                    {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic dXNlcg=="},
                    {"Authorization": f"Token {access.key}"}):
        response = call(_client(headers=headers), method, path, ids)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer"), response.headers
        assert set(response.json()) == {"detail"} and isinstance(response.json()["detail"], str)


def test_health_and_readiness_need_no_key(database: str) -> None:
    http = _client()
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200


def test_the_schema_declares_the_bearer_scheme_on_every_v1_route() -> None:
    schema = app.openapi()
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                assert op.get("security") == [{"apiKey": []}], (method, path)
                assert "401" in op["responses"], (method, path)
                assert ("403" in op["responses"]) == is_write(method, path), (method, path)
            else:
                assert "security" not in op, (method, path)


# --- a read key -----------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), WRITES)
def test_a_read_key_cannot_write(project_a: dict, method: str, path: str) -> None:
    response = call(_client(project_a["read"]), method, path, project_a["ids"])
    assert response.status_code == 403, response.text
    assert "read-only" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), READS)
def test_a_read_key_reads(project_a: dict, method: str, path: str) -> None:
    response = call(_client(project_a["read"]), method, path, project_a["ids"])
    assert response.status_code == 200, response.text


# --- another project's key ----------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), BY_ID)
def test_another_projects_object_is_404_like_a_missing_one(project_a: dict, project_b: dict,
                                                           method: str, path: str) -> None:
    ids, missing = project_a["ids"], _random_ids()
    http = _client(project_b["write"])
    theirs = call(http, method, path, ids)
    absent = call(http, method, path, missing)
    assert theirs.status_code == absent.status_code == 404, theirs.text
    for name in ids:  # the same body, but for the id it names
        absent_body = absent.text.replace(missing[name], ids[name])
        if absent_body != absent.text:
            assert theirs.text == absent_body
    assert theirs.headers.get("content-type") == absent.headers.get("content-type")


def test_nothing_of_a_project_is_listed_or_touched_by_another(project_a: dict,
                                                             project_b: dict) -> None:
    ids = project_a["ids"]
    http = _client(project_b["write"])
    for path in ("/v1/datasets", "/v1/experiments", "/v1/runs", "/v1/sweeps",
                 f"/v1/runs?experiment_id={ids['experiment_id']}", "/v1/keys"):
        listing = http.get(path)
        assert listing.status_code == 200, listing.text
        assert not set(ids.values()) & {i["id"] for i in listing.json()["items"]}
        if path != "/v1/keys":
            assert listing.json()["total"] == 0, listing.json()
    # an experiment on A's dataset: refused as if the dataset did not exist
    for dataset_id in (ids["dataset_id"], str(uuid.uuid4())):
        refused = http.post("/v1/experiments", json={"dataset_id": dataset_id, **TINY})
        assert refused.status_code == 422, refused.text
        error = refused.json()["detail"][0]
        assert error["loc"] == ["body", "dataset_id"]
        assert error["msg"] == f"dataset {dataset_id} does not exist"
    # A's objects are as they were, and A's read key still works
    http = _client(project_a["read"])
    assert http.get(f"/v1/datasets/{ids['dataset_id']}").json()["status"] == "ready"
    assert http.get(f"/v1/runs/{ids['run_id']}").json()["status"] == "succeeded"
    assert http.get(f"/v1/experiments/{ids['experiment_id']}").status_code == 200
    runs = http.get("/v1/runs").json()
    assert {r["id"] for r in runs["items"]} == {ids["run_id"], ids["latent_run_id"],
                                                ids["sweep_run_id"]}


# --- keys: revocation, last use -----------------------------------------------------------

def test_a_revoked_key_fails_at_its_next_request(project_b: dict) -> None:
    http = _client(project_b["write"])
    created = http.post("/v1/keys", json={"name": "temp", "scope": "read"})
    assert created.status_code == 201, created.text
    new = created.json()
    assert new["key"].startswith(new["prefix"]) and new["scope"] == "read"
    listing = http.get("/v1/keys")
    assert new["key"] not in listing.text  # shown once, never listed
    assert new["prefix"] in [k["prefix"] for k in listing.json()["items"]]
    as_new = _client(new["key"])
    assert as_new.get("/v1/datasets").status_code == 200
    assert http.delete(f"/v1/keys/{new['id']}").status_code == 204
    refused = as_new.get("/v1/datasets")
    assert refused.status_code == 401, refused.text
    revoked = next(k for k in http.get("/v1/keys").json()["items"] if k["id"] == new["id"])
    assert revoked["revoked_at"] is not None
    assert http.delete(f"/v1/keys/{new['id']}").status_code == 204  # again: a no-op
    assert http.delete(f"/v1/keys/{uuid.uuid4()}").status_code == 404


def test_last_used_moves_at_most_once_a_minute(project_b: dict) -> None:
    key_id, key = _key(project_b["project_id"], "read")

    def last_used() -> Any:
        with session_scope() as session:
            return session.get(ApiKey, key_id).last_used_at  # type: ignore[union-attr]

    assert last_used() is None
    http = _client(key)
    assert http.get("/v1/runs").status_code == 200
    first = last_used()
    assert first is not None and utcnow() - first < timedelta(seconds=30)
    assert http.get("/v1/runs").status_code == 200
    assert last_used() == first  # no write per request
    with session_scope() as session:
        session.execute(update(ApiKey).where(ApiKey.id == key_id)
                        .values(last_used_at=first - timedelta(minutes=2)))
    auth.forget()  # as KEY_CACHE_S later: a key is read (and touched) when not cached
    assert http.get("/v1/runs").status_code == 200
    assert last_used() >= first


def test_with_auth_off_every_request_is_the_default_projects(project_a: dict) -> None:
    app.dependency_overrides[current_settings] = lambda: Settings(auth=False)
    try:
        http = _client()
        listing = http.get("/v1/datasets")
        missing = http.get(f"/v1/datasets/{project_a['ids']['dataset_id']}")
    finally:
        app.dependency_overrides.clear()
    assert listing.status_code == 200, listing.text
    assert project_a["ids"]["dataset_id"] not in listing.text  # A's is not the default's
    assert missing.status_code == 404


# --- limits -----------------------------------------------------------------------------

def _copy_dataset(source_id: str, project_id: uuid.UUID) -> str:
    """A ready dataset row of ``project_id`` that shares the source's prepared blob."""
    with session_scope() as session:
        source = session.get(Dataset, uuid.UUID(source_id))
        assert source is not None
        copy = Dataset(project_id=project_id, name="copy", status="ready",
                       source=source.source, summary=source.summary,
                       artifact_key=source.artifact_key, size_bytes=source.size_bytes,
                       progress=1.0)
        session.add(copy)
        session.commit()
        return str(copy.id)


def _fake_run(project_id: uuid.UUID, dataset_id: str, status: str) -> uuid.UUID:
    """A run in ``status`` that no message refers to (so no worker touches it)."""
    with session_scope() as session:
        experiment = Experiment(project_id=project_id, name="fake",
                                dataset_id=uuid.UUID(dataset_id), task="classification",
                                spec={"training": {"epochs": 1}})
        experiment.runs.append(Run(status=status))
        session.add(experiment)
        session.commit()
        return experiment.runs[0].id


def _error(response: Any, status: int) -> Any:
    assert response.status_code == status, response.text
    return response.json()["detail"]


def test_run_limits_refuse_at_submission(project_a: dict) -> None:
    with session_scope() as session:
        size = session.get(Dataset, uuid.UUID(project_a["ids"]["dataset_id"])).size_bytes
    limits = {"epoch_samples": 2 * 1259, "model_parameters": 5000, "queued_runs": 1,
              "running_runs": 1}
    project_id = _project("limits", limits)
    _, key = _key(project_id)
    dataset_id = _copy_dataset(project_a["ids"]["dataset_id"], project_id)
    fake: list[uuid.UUID] = []
    spec = {"dataset_id": dataset_id, **TINY}
    try:
        http = _client(key)
        too_long = _error(http.post("/v1/experiments", json={
            **spec, "training": {"epochs": 3}}), 422)[0]
        assert too_long["loc"] == ["body", "training", "epochs"]
        assert "3 epochs × 1259 training samples" in too_long["msg"]
        assert "epoch_samples" in too_long["msg"]
        too_big = _error(http.post("/v1/experiments", json={
            **spec, "training": {"epochs": 2}, "model": {"width": 32, "depth": 3}}),
            422)[0]
        assert too_big["loc"] == ["body", "model", "width"]
        assert "94,186 parameters" in too_big["msg"] and "model_parameters" in too_big["msg"]

        fake.append(_fake_run(project_id, dataset_id, "queued"))
        queued = http.post("/v1/experiments", json=spec)
        assert "queued_runs" in _error(queued, 429)
        assert int(queued.headers["retry-after"]) == get_settings().limit_retry_after_s
        # nothing was created by the refused submissions
        assert http.get("/v1/runs").json()["total"] == 1

        # dataset bytes: the copy already takes the whole allowance
        with session_scope() as session:
            auth.set_limits(session, session.get(Project, project_id).name,
                            {"dataset_bytes": size})
        builtin = http.post("/v1/datasets", json={
            "name": "more", "source": {"kind": "builtin", "name": "digits"}})
        error = _error(builtin, 422)[0]
        assert error["loc"] == ["body", "source"] and "dataset_bytes" in error["msg"]
    finally:
        with session_scope() as session:
            session.execute(update(Run).where(Run.id.in_(fake)).values(status="cancelled"))


def test_an_upload_past_the_dataset_bytes_limit_is_422(access) -> None:  # type: ignore[no-untyped-def]
    project_id = _project("bytes", {"dataset_bytes": 1000})
    _, key = _key(project_id)
    buffer = io.BytesIO()
    np.savez(buffer, image=np.zeros((64, 1, 8, 8), np.uint8), label=np.arange(64) % 2)
    http = _client(key)
    response = http.post("/v1/datasets", files={"file": ("big.npz", buffer.getvalue())})
    error = _error(response, 422)[0]
    assert error["loc"] == ["body", "file"]
    assert f"this one {len(buffer.getvalue())}" in error["msg"]
    assert "1000 bytes (dataset_bytes)" in error["msg"]
    assert http.get("/v1/datasets").json()["total"] == 0



def test_a_projects_submissions_are_counted_one_at_a_time(project_a: dict) -> None:
    """The project's row is locked while a submission counts its runs: a second
    submission waits for the first to commit, then sees its run."""
    project_id = _project("serial", {"queued_runs": 1})
    dataset_id = _copy_dataset(project_a["ids"]["dataset_id"], project_id)
    request = ExperimentCreate.model_validate({"dataset_id": dataset_id, **TINY})
    with session_scope() as session:
        summary = session.get(Dataset, uuid.UUID(dataset_id)).summary  # type: ignore[union-attr]
    outcome: list[BaseException | None] = []

    def second() -> None:
        with session_scope() as session:
            try:
                limits.check_experiment(session, get_settings(), project_id, request, summary)
                outcome.append(None)
            except LimitExceeded as exc:
                outcome.append(exc)

    first = get_sessionmaker()()
    run_id = None
    try:
        limits.check_experiment(first, get_settings(), project_id, request, summary)
        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not outcome  # blocked on the first's lock
        experiment = Experiment(project_id=project_id, name="first",
                                dataset_id=uuid.UUID(dataset_id), task="classification",
                                spec={"training": {"epochs": 1}})
        experiment.runs.append(Run(status="queued"))  # never published: no worker sees it
        first.add(experiment)
        first.commit()
        run_id = experiment.runs[0].id
        waiter.join(timeout=30)
        assert len(outcome) == 1 and isinstance(outcome[0], LimitExceeded), outcome
        assert "queued_runs" in str(outcome[0])
    finally:
        first.close()
        if run_id is not None:
            with session_scope() as session:
                session.execute(update(Run).where(Run.id == run_id)
                                .values(status="cancelled"))
