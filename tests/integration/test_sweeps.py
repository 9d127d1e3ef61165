"""Sweeps, run comparison and metric history over HTTP on the real stack (API
process, Celery worker, Postgres, Redis)."""

import json
import statistics
import uuid
from typing import Any

import httpx
import pytest

from app.client import MixlabClient
from app.db.models import Dataset, Experiment, Run
from app.db.session import session_scope
from app.runs import service as run_service
from app.services import auth
from tests.integration.helpers import auth_headers, wait_until
from tests.integration.test_cli import ok

pytestmark = pytest.mark.integration

RECIPE = {"epochs": 2, "optimizer": "adamw", "lr": 0.003, "schedule": "constant"}


@pytest.fixture(scope="module")
def digits(stack) -> dict:  # type: ignore[no-untyped-def]
    with MixlabClient(stack.base_url) as mx:
        created = mx.create_builtin_dataset("digits", name="sweep-digits", seed=1)
        return mx.wait_for_dataset(created["id"], timeout=120)


def _base(dataset_id: str, **training: Any) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "model": {"width": 8, "depth": 2},
            "training": {**RECIPE, **training}}


def _post(stack, body: dict[str, Any], headers: dict[str, str] | None = None  # type: ignore[no-untyped-def]
          ) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/sweeps", json=body,
                      headers=headers or auth_headers(), timeout=60)


def _counts(client: MixlabClient) -> tuple[int, int]:
    return client.sweeps()["total"], client.list_runs()["total"]


def test_a_grid_sweep_runs_to_done_and_is_summarised(client: MixlabClient, stack,  # type: ignore[no-untyped-def]
                                                     digits: dict) -> None:
    response = _post(stack, {"name": "grid", "base": _base(digits["id"]),
                             "grid": {"augmentation.method": ["none", "mixup"],
                                      "training.seed": [0, 1]}})
    assert response.status_code == 202, response.text
    created = response.json()
    assert len(created["run_ids"]) == 4
    assert response.headers["location"].endswith(f"/v1/sweeps/{created['sweep_id']}")

    sweep = client.wait_for_sweep(created["sweep_id"], timeout=600)
    assert sweep["done"] and sweep["progress"] == 1.0 and sweep["total"] == 4
    assert sweep["counts"] == {"succeeded": 4}, [r for r in sweep["runs"]]
    assert sweep["run_ids"] == created["run_ids"]
    points = [r["point"] for r in sweep["runs"]]
    assert points == [{"augmentation.method": m, "training.seed": s}
                      for m in ("none", "mixup") for s in (0, 1)]
    for run in sweep["runs"]:  # each run trained its point
        spec = client.get_experiment(run["experiment_id"])["spec"]
        assert spec["augmentation"]["method"] == run["point"]["augmentation.method"]
        assert spec["training"]["seed"] == run["point"]["training.seed"]
        assert spec["training"]["optimizer"] == "adamw"
    assert client.sweeps()["items"][0]["id"] == created["sweep_id"]

    summary = client.sweep_summary(created["sweep_id"], metric="test_acc")
    assert summary["order"] == "desc" and len(summary["rows"]) == 2
    by_method: dict[str, list[tuple[float, str]]] = {}
    for run in sweep["runs"]:
        by_method.setdefault(run["point"]["augmentation.method"], []).append(
            (run["metrics"]["test_acc"], run["id"]))
    for row in summary["rows"]:
        values = by_method[row["config"]["augmentation.method"]]
        assert row["config"] == {"augmentation.method": row["config"]["augmentation.method"]}
        assert row["n"] == row["runs"] == 2
        assert row["mean"] == pytest.approx(statistics.fmean(v for v, _ in values))
        assert row["std"] == pytest.approx(statistics.stdev(v for v, _ in values))
        assert (row["min"], row["max"]) == (min(values)[0], max(values)[0])
        assert row["best_run_id"] == max(values)[1]
    means = [row["mean"] for row in summary["rows"]]
    assert means == sorted(means, reverse=True)
    losses = client.sweep_summary(created["sweep_id"], metric="test_loss")
    assert losses["order"] == "asc"
    assert [r["mean"] for r in losses["rows"]] == sorted(r["mean"] for r in losses["rows"])

    # compare two runs of it: what differs, curves aligned by step
    first, last = sweep["runs"][0], sweep["runs"][3]
    compared = client.compare_runs([first["id"], last["id"]])
    assert [r["id"] for r in compared["runs"]] == [first["id"], last["id"]]
    assert compared["runs"][0]["metrics"] == first["metrics"]
    assert compared["runs"][0]["spec"]["training"]["seed"] == 0
    assert compared["differs"] == {
        "augmentation.method": {first["id"]: "none", last["id"]: "mixup"},
        "training.seed": {first["id"]: 0, last["id"]: 1}}
    assert set(compared["histories"]) == {"val_acc", "train_loss"}
    curve = compared["histories"]["val_acc"]
    assert len(curve["steps"]) == 2 and curve["steps"] == sorted(curve["steps"])
    for run_id in (first["id"], last["id"]):
        history = client.metrics(run_id, key="val_acc")["val_acc"]
        assert curve["runs"][run_id] == [p["value"] for p in history]


def test_compare_refuses_too_few_or_foreign_ids(client: MixlabClient, stack) -> None:  # type: ignore[no-untyped-def]
    url = f"{stack.base_url}/v1/runs/compare"
    one = httpx.get(url, params={"ids": str(uuid.uuid4())}, headers=auth_headers())
    assert one.status_code == 422 and one.json()["detail"][0]["loc"] == ["query", "ids"]
    many = httpx.get(url, params={"ids": ",".join(str(uuid.uuid4()) for _ in range(21))},
                     headers=auth_headers())
    assert many.status_code == 422
    missing = httpx.get(url, params={"ids": f"{uuid.uuid4()},{uuid.uuid4()}"},
                        headers=auth_headers())
    assert missing.status_code == 404, missing.text


def test_a_random_search_is_reproducible_cancel_and_delete(client: MixlabClient, stack,  # type: ignore[no-untyped-def]
                                                          digits: dict) -> None:
    body = {"name": "random", "base": {k: v for k, v in _base(digits["id"]).items()
                                       if k != "dataset_id"},
            "dataset_id": digits["id"],
            "random": {"n": 3, "seed": 7, "space": {
                "augmentation.alpha": {"log_uniform": [0.1, 32]},
                "training.lr": {"uniform": [0.001, 0.01]},
                "augmentation.method": {"choice": ["none", "mixup", "cutmix"]}}}}
    ids = []
    for _ in range(2):
        response = _post(stack, body)
        assert response.status_code == 202, response.text
        ids.append(response.json()["sweep_id"])
        client.cancel_sweep(ids[-1])  # keep the worker free
    first, second = (client.sweep(i) for i in ids)
    assert [r["point"] for r in first["runs"]] == [r["point"] for r in second["runs"]]
    assert len({json.dumps(r["point"], sort_keys=True) for r in first["runs"]}) == 3
    for point in (r["point"] for r in first["runs"]):
        assert 0.1 <= point["augmentation.alpha"] <= 32
        assert 0.001 <= point["training.lr"] <= 0.01
    for sweep in (first, second):
        wait_until(lambda s=sweep: client.sweep(s["id"])["done"], timeout=60,
                   what="the cancelled sweep to end")
        assert set(client.sweep(sweep["id"])["counts"]) <= {"cancelled", "succeeded", "failed"}
        assert client.sweep(sweep["id"])["counts"].get("cancelled", 0) >= 1

    client.delete_sweep(ids[0])
    gone = httpx.get(f"{stack.base_url}/v1/sweeps/{ids[0]}", headers=auth_headers())
    assert gone.status_code == 404
    for run in first["runs"]:
        assert httpx.get(f"{stack.base_url}/v1/runs/{run['id']}",
                         headers=auth_headers()).status_code == 404
    assert client.sweep(ids[1])["total"] == 3
    client.delete_sweep(ids[1])


def test_bad_sweeps_are_422_naming_the_field_and_store_nothing(client: MixlabClient, stack,  # type: ignore[no-untyped-def]
                                                               digits: dict) -> None:
    before = _counts(client)
    bad_path = _post(stack, {"base": _base(digits["id"]),
                             "grid": {"augmentation.alpah": [1, 2]}})
    assert bad_path.status_code == 422, bad_path.text
    error = bad_path.json()["detail"][0]
    assert error["loc"] == ["body", "grid", "augmentation.alpah"]
    assert "augmentation.alpah is not a field" in error["msg"]

    bad_value = _post(stack, {"base": _base(digits["id"]),
                              "grid": {"augmentation.alpha": [0.2, -1],
                                       "training.seed": [0, 1]}})
    assert bad_value.status_code == 422, bad_value.text
    error = bad_value.json()["detail"][0]
    assert error["loc"] == ["body", "grid", "augmentation.alpha"]
    assert "combination 3 of 4 (augmentation.alpha=-1, training.seed=0)" in error["msg"]

    # a dataset check (the batch against the training split), as experiments make it
    too_big = _post(stack, {"base": _base(digits["id"]),
                            "grid": {"training.batch_size": [64, 5000]}})
    assert too_big.status_code == 422, too_big.text
    error = too_big.json()["detail"][0]
    assert error["loc"] == ["body", "grid", "training.batch_size"]
    assert "combination 2 of 2" in error["msg"] and "training split" in error["msg"]

    # a base field wrong for every point
    base = _post(stack, {"base": {**_base(digits["id"]), "training": {"epochs": 0}},
                         "grid": {"training.seed": [0, 1]}})
    assert base.status_code == 422
    assert base.json()["detail"][0]["loc"] == ["body", "base", "training", "epochs"]

    foreign = _post(stack, {"base": _base(str(uuid.uuid4())), "grid": {"training.seed": [0]}})
    assert foreign.status_code == 422
    assert foreign.json()["detail"][0]["loc"] == ["body", "base", "dataset_id"]
    assert _counts(client) == before


def test_a_sweep_past_queued_runs_is_429_and_stores_nothing(stack, digits: dict) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        project = auth.create_project(session, f"sweep-limits-{uuid.uuid4().hex[:6]}",
                                      {"queued_runs": 2})
        _, key = auth.create_key(session, project.id, "k", "write")
        source = session.get(Dataset, uuid.UUID(digits["id"]))
        copy = Dataset(project_id=project.id, name="copy", status="ready", source=source.source,
                       summary=source.summary, artifact_key=source.artifact_key,
                       size_bytes=source.size_bytes, progress=1.0)
        session.add(copy)
        session.commit()
        dataset_id = str(copy.id)
    headers = {"Authorization": f"Bearer {key}"}
    refused = _post(stack, {"base": _base(dataset_id), "grid": {"training.seed": [0, 1, 2]}},
                    headers)
    assert refused.status_code == 429, refused.text
    assert "queued_runs" in refused.json()["detail"] and refused.headers["retry-after"]
    with MixlabClient(stack.base_url, api_key=key) as mx:
        assert mx.sweeps()["total"] == 0 and mx.list_runs()["total"] == 0
    # another project's dataset is refused as if it did not exist
    theirs = _post(stack, {"base": _base(digits["id"]), "grid": {"training.seed": [0]}},
                   headers)
    assert theirs.status_code == 422
    assert theirs.json()["detail"][0]["msg"].endswith(f"dataset {digits['id']} does not exist")


def _run_with_metrics(access, digits: dict, name: str,  # type: ignore[no-untyped-def]
                      points: list[tuple[int, int, dict[str, float]]]) -> uuid.UUID:
    """A succeeded run stored directly, with ``points`` (epoch, step, figures) recorded."""
    with session_scope() as session:
        experiment = Experiment(project_id=access.project_id, name=name,
                                dataset_id=uuid.UUID(digits["id"]), task="classification",
                                spec={"training": {"epochs": 1}})
        experiment.runs.append(Run(status="succeeded"))
        session.add(experiment)
        session.commit()
        run_id = experiment.runs[0].id
        run_service.record_metrics(session, run_id, points)
    return run_id


def test_metric_history_after_step_and_max_points(client: MixlabClient, access,  # type: ignore[no-untyped-def]
                                                  digits: dict) -> None:
    # a noisy curve with one spike up and one down
    values = {step: ((step * 7919) % 101) / 100 for step in range(3000)}
    values[1234], values[2345] = 50.0, -50.0
    run_id = _run_with_metrics(access, digits, "curve", [(step // 100, step, {"curve": v})
                                                         for step, v in values.items()])
    full = client.metrics(str(run_id), key="curve")["curve"]
    assert len(full) == 3000
    later = client.metrics(str(run_id), key="curve", after_step=2989)["curve"]
    assert [p["step"] for p in later] == list(range(2990, 3000))
    small = client.metrics(str(run_id), key="curve", max_points=101)["curve"]
    assert 50 <= len(small) <= 101
    steps = [p["step"] for p in small]
    assert steps == sorted(set(steps))
    assert {1234, 2345, 2999} <= set(steps)  # the extremes and the last point survive
    assert all(p["value"] == values[p["step"]] for p in small)
    assert max(p["value"] for p in small) == 50.0 and min(p["value"] for p in small) == -50.0
    # a curve shorter than max_points comes whole
    assert len(client.metrics(str(run_id), key="curve", after_step=2949,
                              max_points=100)["curve"]) == 50


def test_figures_json_cannot_hold_are_left_out(client: MixlabClient, access,  # type: ignore[no-untyped-def]
                                              digits: dict) -> None:
    run_id = _run_with_metrics(access, digits, "nonfinite", [
        (1, 10, {"val_loss": 0.5, "val_recon_image": float("inf"), "val_ap": float("nan")})])
    assert client.get_run(str(run_id))["metrics"] == {"val_loss": 0.5}
    assert set(client.metrics(str(run_id))) == {"val_loss"}


def test_cli_sweep_submit_watch_prints_the_summary(stack, digits: dict, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps({"name": "cli-sweep", "base": _base(digits["id"], epochs=1),
                                "grid": {"augmentation.method": ["none", "mixup"]}}))
    out = ok(stack.base_url, "sweep", "submit", str(spec), "--watch")
    assert "2 runs" in out and "test_acc" in out
    assert "augmentation.method=none" in out and "augmentation.method=mixup" in out
    listing = ok(stack.base_url, "sweep", "list")
    assert "cli-sweep" in listing
    sweep_id = next(s["id"] for s in json.loads(ok(stack.base_url, "sweep", "list", "--json"))
                    ["items"] if s["name"] == "cli-sweep")
    runs = json.loads(ok(stack.base_url, "runs", "list", "--sweep", sweep_id[:8], "--json"))
    assert runs["total"] == 2 and {r["sweep_id"] for r in runs["items"]} == {sweep_id}
    assert sorted(r["method"] for r in runs["items"]) == ["mixup", "none"]
    with MixlabClient(stack.base_url) as mx:
        assert mx.get_experiment(runs["items"][0]["experiment_id"])["sweep_id"] == sweep_id
