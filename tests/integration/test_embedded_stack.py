"""``mixlab up`` with no MIXLAB_* URLs: SQLite, filesystem broker, local artifacts."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.client import MixlabClient
from tests.conftest import free_port, wait_http
from tests.integration.helpers import experiment

pytestmark = pytest.mark.integration


def test_embedded_stack_trains_a_run(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXLAB_")}
    env["MIXLAB_DATA_DIR"] = str(tmp_path / "state")
    log = tmp_path / "up.log"
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(port)],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}", proc, log, timeout=90)
        # embedded, authentication is off, and says so: no key needed
        assert "WARNING: authentication is OFF" in log.read_text(), log.read_text()
        anonymous = httpx.get(f"http://127.0.0.1:{port}/v1/datasets")
        assert anonymous.status_code == 200, anonymous.text
        with MixlabClient(f"http://127.0.0.1:{port}", api_key="") as mx:
            ds = mx.create_builtin_dataset("digits", label_noise=0.1)
            assert ds["status"] == "preparing"
            # prepared through the ingest queue of the filesystem broker, by the same worker
            ds = mx.wait_for_dataset(ds["id"], timeout=120)
            assert ds["status"] == "ready" and ds["num_samples"] == 1797, ds
            run_id = experiment(mx, ds["id"], training={"epochs": 2})
            run = mx.wait_for_run(run_id, timeout=180)
            assert run["status"] == "succeeded", run["error"]
            assert [p["epoch"] for p in mx.metrics(run_id, "val_acc")["val_acc"]] == [1, 2]
            assert mx.download_checkpoint(run_id)[:8]
        state = tmp_path / "state"
        assert (state / "mixlab.db").exists()
        assert list((state / "artifacts" / "runs").glob("*/attempt-1/checkpoint.safetensors"))
        assert (state / "artifacts" / "datasets" / ds["id"] / "prepared" /
                "index.safetensors").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
