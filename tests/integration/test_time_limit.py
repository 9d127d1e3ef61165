"""training.time_limit_s: a run past its limit stops and fails with the reason."""

import pytest

from app.client import MixlabClient

pytestmark = pytest.mark.integration


def test_a_run_past_its_time_limit_fails_with_the_reason(client: MixlabClient) -> None:
    created = client.create_builtin_dataset("digits", name="time-limit")
    dataset = client.wait_for_dataset(str(created["id"]), timeout=120)
    run_id = str(client.create_experiment({
        "dataset_id": dataset["id"], "model": {"width": 4, "depth": 1},
        "training": {"epochs": 500, "batch_size": 32, "time_limit_s": 2}})["run_ids"][0])
    run = client.wait_for_run(run_id, timeout=120)
    assert run["status"] == "failed"
    assert run["error"] == "time limit of 2 s (training.time_limit_s) exceeded"
    assert run["progress"]["epoch"] < 500
