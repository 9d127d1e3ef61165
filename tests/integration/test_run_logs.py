"""A run's own log (GET /v1/runs/{id}/logs, `mixlab runs logs`) and the worker's
JSON log lines that name the run, attempt and project."""

import json
import os
import subprocess
import sys
import uuid

import httpx
import pytest

from app.client import MixlabClient, MixlabError
from tests.integration.helpers import experiment, ready_digits

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits(stack) -> dict:  # type: ignore[no-untyped-def]
    return ready_digits(stack.base_url, "digits-logs", seed=3)


@pytest.fixture(scope="module")
def finished(stack, digits: dict) -> str:  # type: ignore[no-untyped-def]
    with MixlabClient(stack.base_url) as mx:
        run_id = experiment(mx, digits["id"], training={"epochs": 3})
        assert mx.wait_for_run(run_id, timeout=300)["status"] == "succeeded"
    return run_id


def test_a_run_logs_its_start_epochs_and_outcome(client: MixlabClient, finished: str) -> None:
    page = client.run_logs(finished)
    assert page["attempts"] == [1] and page["attempt"] == 1 and page["status"] == "succeeded"
    assert page["more"] is False
    lines = page["lines"]
    assert [line["line"] for line in lines] == list(range(1, len(lines) + 1))
    messages = [line["message"] for line in lines]
    assert "attempt 1 started on" in messages[0] and "mixup, 3 epochs" in messages[0]
    epochs = [m for m in messages if m.startswith("epoch ")]
    assert [m.split()[1] for m in epochs] == ["1/3", "2/3", "3/3"]
    assert all("val_acc=" in m for m in epochs)
    assert messages[-1].endswith("reports: succeeded")
    assert {line["level"] for line in lines} == {"INFO"}
    assert page["next_after_line"] == lines[-1]["line"]


def test_log_pages_follow_the_line_numbers(client: MixlabClient, finished: str) -> None:
    everything = client.run_logs(finished)["lines"]
    first = client.run_logs(finished, limit=2)
    assert [x["line"] for x in first["lines"]] == [1, 2] and first["more"] is True
    rest = client.run_logs(finished, after_line=first["next_after_line"])
    assert first["lines"] + rest["lines"] == everything and rest["more"] is False
    past = client.run_logs(finished, after_line=everything[-1]["line"])
    assert past["lines"] == [] and past["next_after_line"] == everything[-1]["line"]
    assert list(client.iter_logs(finished)) == [{"attempt": 1, **x} for x in everything]
    assert client.run_logs(finished, attempt=7)["lines"] == []


def test_a_failed_run_logs_why(client: MixlabClient, digits: dict) -> None:
    run_id = experiment(client, digits["id"], model={"width": 4, "depth": 1},
                        training={"epochs": 500, "batch_size": 32, "time_limit_s": 2})
    assert client.wait_for_run(run_id, timeout=120)["status"] == "failed"
    last = client.run_logs(run_id)["lines"][-1]
    assert last["message"].endswith(
        "reports: failed: time limit of 2 s (training.time_limit_s) exceeded")


@pytest.mark.parametrize("query, field", [
    ("attempt=0", "attempt"), ("after_line=-1", "after_line"), ("limit=0", "limit"),
    ("limit=5001", "limit"), ("attempt=x", "attempt")])
def test_bad_log_parameters_are_422_naming_them(stack, access, finished: str,  # type: ignore[no-untyped-def]
                                                query: str, field: str) -> None:
    reply = httpx.get(f"{stack.base_url}/v1/runs/{finished}/logs?{query}",
                      headers=access.headers)
    assert reply.status_code == 422
    assert ["query", field] in [e["loc"] for e in reply.json()["detail"]]


def test_logs_of_an_unknown_run_are_404(client: MixlabClient) -> None:
    with pytest.raises(MixlabError) as caught:
        client.run_logs(str(uuid.uuid4()))
    assert caught.value.status_code == 404


def test_the_worker_logs_json_naming_run_attempt_and_project(stack, access,  # type: ignore[no-untyped-def]
                                                            finished: str) -> None:
    records = []
    for raw in stack.worker_log.read_text().splitlines():
        try:
            record = json.loads(raw)
        except ValueError:  # Celery's start-up banner is printed, not logged
            continue
        if isinstance(record, dict):
            records.append(record)
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    mine = [r for r in records if r.get("run_id") == finished]
    assert mine and all(r["attempt"] == 1 and r["project_id"] == str(access.project_id)
                        for r in mine)
    assert any(r["message"].startswith("epoch 3/3") for r in mine)
    # lines outside any run say so rather than leaving the fields out
    assert any(r.get("run_id", "absent") is None for r in records)


def test_cli_follows_a_run_until_it_ends(stack, client: MixlabClient, digits: dict) -> None:  # type: ignore[no-untyped-def]
    run_id = experiment(client, digits["id"], training={"epochs": 2})
    follow = subprocess.run(
        [sys.executable, "-m", "app.cli", "runs", "logs", run_id, "--follow", "--json",
         "--url", stack.base_url], capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "200"})
    assert follow.returncode == 0, follow.stderr
    followed = [json.loads(line) for line in follow.stdout.splitlines()]
    # it returned because the run ended, with every line the run stored
    assert client.get_run(run_id)["status"] == "succeeded"
    assert followed == list(client.iter_logs(run_id))
    assert followed[-1]["message"].endswith("reports: succeeded")
    shown = subprocess.run(
        [sys.executable, "-m", "app.cli", "runs", "logs", run_id[:8], "--url", stack.base_url],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == "── attempt 1 ──"
    assert "epoch 2/2" in shown.stdout and "Traceback" not in shown.stderr
