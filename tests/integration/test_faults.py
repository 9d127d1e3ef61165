"""Faults injected for real, on loopback: a SIGKILLed worker, a Redis restart
that loses every message, a Postgres outage, and a burst of 200 experiments.
Every run must finish, exactly once, with a metric history without gaps.

Each fault is injected on an event, not after a delay: the workers hold a run
once a given epoch is recorded (``fault_stack(hold_epoch=...)``), the test
injects the fault while it is held, then releases it."""

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from app.client import MixlabClient
from tests.conftest import REDIS_URL
from tests.integration.faults import FaultStack, RedisServer, TcpProxy, fault_stack
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

TINY_MODEL = {"width": 4, "depth": 1}


def connect(stack: FaultStack) -> MixlabClient:
    # the tests project's key (the access fixture exports it as MIXLAB_API_KEY)
    return MixlabClient(stack.base_url, api_key=stack.env["MIXLAB_API_KEY"])


def ready_dataset(mx: MixlabClient, builtin: str = "digits", **options: Any) -> str:
    created = mx.create_builtin_dataset(builtin, name=f"fault-{builtin}", **options)
    dataset = mx.wait_for_dataset(str(created["id"]), timeout=120)
    assert dataset["status"] == "ready", dataset
    return str(dataset["id"])


def post_run(mx: MixlabClient, dataset_id: str, epochs: int, **training: Any) -> str:
    created = mx.create_experiment({
        "dataset_id": dataset_id, "model": TINY_MODEL,
        "augmentation": {"method": "mixup"},
        "training": {"epochs": epochs, "batch_size": 64, "seed": 0, **training}})
    return str(created["run_ids"][0])


def epochs_recorded(mx: MixlabClient, run_id: str, key: str = "val_acc") -> list[int]:
    return [p["epoch"] for p in mx.metrics(run_id, key=key).get(key, [])]


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.kill()


def test_a_sigkilled_worker_run_resumes_on_another_worker(database, access):
    with fault_stack(REDIS_URL, hold_epoch=3) as stack, connect(stack) as mx:
        first = stack.start_worker()
        dataset_id = ready_dataset(mx)
        run_id = post_run(mx, dataset_id, epochs=10)
        # kill it mid-run: held once epoch 3's checkpoint and resume point are recorded
        stack.wait_held(run_id)
        stack.kill_worker(first)
        killed_at = time.monotonic()
        run = mx.get_run(run_id)
        assert run["status"] == "running"  # nobody has noticed yet
        assert run["checkpoint"]["epoch"] == 3

        stack.release()  # the next attempt trains on without a hold
        stack.start_worker()
        done = mx.wait_for_run(run_id, timeout=180)
        assert done["status"] == "succeeded", done["error"]
        assert done["attempt"] == 2
        # every epoch's metrics once, none missing, none twice
        assert epochs_recorded(mx, run_id) == list(range(1, 11))
        # the run's own log: attempt 1 was cut off mid-run, attempt 2 says where it resumed
        assert mx.run_logs(run_id)["attempts"] == [1, 2]
        said = [line["message"] for line in mx.run_logs(run_id, attempt=2)["lines"]]
        prefix = f"run {run_id} attempt 2 resumes after epoch "
        resumed = [m for m in said if m.startswith(prefix)]
        assert len(resumed) == 1, said
        resumed_after = int(resumed[0][len(prefix):])
        assert resumed_after == 3  # the checkpoint recorded before the kill
        # detected within the heartbeat timeout (4 s) plus a sweep period or two
        print(f"recovered: resumed after epoch {resumed_after}, "
              f"{time.monotonic() - killed_at:.1f} s from kill to success")


def test_a_redis_restart_loses_no_run(database, access, private_redis: RedisServer):
    with fault_stack(private_redis.url, hold_epoch=1) as stack, connect(stack) as mx:
        stack.start_worker()
        dataset_id = ready_dataset(mx)
        run_ids = [post_run(mx, dataset_id, epochs=3) for _ in range(4)]
        # one run held mid-training by the only worker, three waiting in Redis
        held = stack.wait_held()
        assert held in run_ids
        private_redis.restart()  # every queued message is gone
        stack.release()
        runs = [mx.wait_for_run(r, timeout=240) for r in run_ids]
        assert [r["status"] for r in runs] == ["succeeded"] * 4, [r["error"] for r in runs]
        assert [r["attempt"] for r in runs] == [1] * 4  # each trained exactly once
        for run_id in run_ids:
            assert epochs_recorded(mx, run_id) == [1, 2, 3]
        # the reconciler (in the API process) found them missing from the broker
        assert "absent from the broker" in stack.worker_logs()


def test_a_postgres_outage_is_a_503_and_runs_finish_after_it(database, access):
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    try:
        # a heartbeat timeout longer than the outage: the worker is alive, only
        # the database is gone, so its run must not be given to another attempt
        with fault_stack(REDIS_URL, database_port=proxy.port, hold_epoch=2,
                         extra_env={"MIXLAB_HEARTBEAT_TIMEOUT_S": "30"}) as stack, \
                connect(stack) as mx:
            stack.start_worker()
            dataset_id = ready_dataset(mx)
            run_id = post_run(mx, dataset_id, epochs=8)
            stack.wait_held(run_id)  # epoch 2 recorded: the run is mid-training
            proxy.cut()
            cut_at = time.monotonic()
            ready = httpx.get(f"{stack.base_url}/readyz", timeout=30)
            assert ready.status_code == 503, ready.text
            write = httpx.post(f"{stack.base_url}/v1/experiments", timeout=30,
                               headers=access.headers, json={
                "dataset_id": dataset_id, "training": {"epochs": 1}})
            assert write.status_code == 503, write.text
            assert write.headers.get("retry-after")
            stack.release()  # it trains on through the outage, its writes retried
            time.sleep(max(0.0, 5 - (time.monotonic() - cut_at)))
            proxy.restore()
            wait_until(lambda: httpx.get(f"{stack.base_url}/readyz").status_code == 200 or None,
                       timeout=30, what="API ready again")
            recovered = time.monotonic() - cut_at
            done = mx.wait_for_run(run_id, timeout=180)
            assert done["status"] == "succeeded", done["error"]
            assert done["attempt"] == 1  # the worker rode out the outage
            assert epochs_recorded(mx, run_id) == list(range(1, 9))
            print(f"database outage: API ready again {recovered:.1f} s after the cut")
    finally:
        proxy.cut()


def test_a_burst_of_experiments_gives_one_successful_run_each(database, access):
    count = int(os.environ.get("MIXLAB_TEST_BURST", "200"))
    with fault_stack(REDIS_URL) as stack, connect(stack) as mx:
        stack.start_worker(concurrency=2)
        dataset_id = ready_dataset(mx, "synthetic", num_samples=100, num_classes=2,
                                   modalities=["image"], image_size=8)

        def post(_: int) -> str:
            with connect(stack) as client:
                return post_run(client, dataset_id, epochs=1, batch_size=32)

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            run_ids = list(pool.map(post, range(count)))
        assert len(set(run_ids)) == count
        pending, deadline = set(run_ids), time.monotonic() + 600
        while pending and time.monotonic() < deadline:
            time.sleep(1)
            pending = {r for r in pending
                       if mx.get_run(r)["status"] in ("queued", "running")}
        runs = [mx.get_run(r) for r in run_ids]
        assert sum(r["status"] == "succeeded" for r in runs) == count, \
            {r["status"] for r in runs}
        assert all(r["attempt"] == 1 for r in runs)
        assert all(epochs_recorded(mx, r) == [1] for r in run_ids[:20])
        print(f"{count} experiments: all succeeded once in {time.monotonic() - started:.0f} s")
