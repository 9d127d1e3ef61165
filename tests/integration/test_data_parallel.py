"""Data-parallel runs (training.world_size) on the real stack: two gloo processes on
the CPU per run. Faults are injected on events (the hold hook), never on timing."""

import os
import re
import signal
from datetime import datetime
from typing import Any

import pytest

from app.client import MixlabClient
from tests.conftest import REDIS_URL, Stack
from tests.integration.faults import fault_stack
from tests.integration.helpers import ready_digits, wait_until
from tests.integration.test_faults import connect, epochs_recorded, ready_dataset
from tests.recipes import SHORT

pytestmark = pytest.mark.integration

TINY_MODEL = {"width": 8, "depth": 2}
DEVICE = "2× cpu (1 thread, fp32, gloo)"


def spec(dataset_id: str, epochs: int, **training: Any) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "model": TINY_MODEL, "augmentation": {"method": "mixup"},
            "training": {"epochs": epochs, "batch_size": 64, "seed": 0, "world_size": 2,
                         **training}}


def beat(mx: MixlabClient, run_id: str) -> datetime:
    return datetime.fromisoformat(mx.get_run(run_id)["heartbeat_at"])


def log_text(mx: MixlabClient, run_id: str, attempt: int | None = None) -> str:
    return "\n".join(line["message"] for line in mx.iter_logs(run_id, attempt=attempt))


@pytest.fixture(scope="module")
def digits(stack: Stack) -> str:
    return str(ready_digits(stack.base_url, "digits-ddp")["id"])


def test_a_two_process_run_trains_through_the_api(client: MixlabClient, digits: str) -> None:
    # tests.recipes.SHORT: a recipe that learns within three epochs
    run_id = str(client.create_experiment(spec(digits, epochs=3, **SHORT))["run_ids"][0])
    queued = client.get_run(run_id)
    assert queued["worker"]["world_size"] == 2
    assert queued["progress"]["total_steps"] == 3 * 20  # 1259 rows, global batches of 64
    run = client.wait_for_run(run_id, timeout=240)
    assert run["status"] == "succeeded", run["error"]
    assert run["worker"] == {"host": run["worker"]["host"], "device": DEVICE, "world_size": 2}
    assert run["attempt"] == 1 and run["progress"]["step"] == 60
    assert run["metrics"]["test_acc"] > 0.5  # rank 0 tested the whole split
    assert epochs_recorded(client, run_id) == [1, 2, 3]  # reported once, by rank 0
    logs = log_text(client, run_id)
    assert "all 2 ranks completed at step 60" in logs


def test_a_world_size_beyond_the_workers_offer_fails_at_its_claim(client: MixlabClient,
                                                                   digits: str) -> None:
    run_id = str(client.create_experiment(spec(digits, epochs=1, world_size=3))["run_ids"][0])
    run = client.wait_for_run(run_id, timeout=120)
    assert run["status"] == "failed"
    assert run["error"] == ("training.world_size 3 > the 2 this worker offers "
                            "(MIXLAB_CPU_WORLD_SIZE)")
    assert run["progress"]["step"] == 0


@pytest.mark.parametrize(("training", "message"), [
    ({"world_size": 0}, "greater than or equal to 1"),
    ({"world_size": 9}, "at most 8 (MIXLAB_MAX_WORLD_SIZE)"),
    ({"world_size": 4, "batch_size": 6}, "use a batch_size of 8 or more"),
    ({"world_size": 2, "device": "cuda:1"}, "not cuda:1"),
])
def test_a_world_size_the_deployment_cannot_run_is_a_422(client: MixlabClient, digits: str,
                                                          training: dict, message: str) -> None:
    before = client.list_experiments()["total"]
    response = client.http.post("/v1/experiments", json={"dataset_id": digits,
                                                          "training": training})
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert [e["loc"] for e in errors] == [["body", "training", "world_size"]]
    assert message in errors[0]["msg"]
    assert client.list_experiments()["total"] == before


def test_cancel_reaches_every_rank(database, access) -> None:  # type: ignore[no-untyped-def]
    with fault_stack(REDIS_URL, hold_epoch=1) as stack, connect(stack) as mx:
        stack.start_worker()
        dataset_id = ready_dataset(mx)
        run_id = str(mx.create_experiment(spec(dataset_id, epochs=200))["run_ids"][0])
        stack.wait_held(run_id)  # both ranks are past epoch 1; rank 0 is held
        assert mx.cancel_run(run_id)["cancel_requested"] is True
        seen = beat(mx, run_id)
        # a heartbeat after the cancel was written by a flush that read the flag back
        wait_until(lambda: beat(mx, run_id) > seen, timeout=60,
                   what="rank 0's reporter to read the cancel")
        stack.release()
        run = mx.wait_for_run(run_id, timeout=120)
        assert run["status"] == "cancelled"
        # the first step after the hold stopped both ranks: none trained on alone
        assert run["progress"]["step"] == 20
        assert "all 2 ranks stopped at step 20" in log_text(mx, run_id)
        assert "rank 1 of 2 stopped at step 20" in stack.worker_logs()


def test_a_killed_rank_ends_the_attempt_and_the_run_resumes(database, access) -> None:  # type: ignore[no-untyped-def]
    with fault_stack(REDIS_URL, hold_epoch=2) as stack, connect(stack) as mx:
        stack.start_worker()
        dataset_id = ready_dataset(mx)
        run_id = str(mx.create_experiment(spec(dataset_id, epochs=4))["run_ids"][0])
        stack.wait_held(run_id)  # epoch 2 and its resume point recorded
        found = re.search(rf"run {run_id} attempt 1: 2 ranks, .*?ranks 1-1 are pids (\d+)",
                          stack.worker_logs())
        assert found, "the worker logs its ranks' pids"
        os.kill(int(found.group(1)), signal.SIGKILL)  # rank 1, as a lost process would die
        stack.release()
        run = mx.wait_for_run(run_id, timeout=240)
        assert run["status"] == "succeeded", run["error"]
        assert run["attempt"] == 2 and run["worker"]["device"] == DEVICE
        assert epochs_recorded(mx, run_id) == [1, 2, 3, 4]  # none lost, none twice
        first = log_text(mx, run_id, attempt=1)
        assert f"rank 1 (pid {found.group(1)}) was killed by SIGKILL" in first
        assert f"run {run_id} attempt 2 resumes after epoch 2" in log_text(mx, run_id, 2)
