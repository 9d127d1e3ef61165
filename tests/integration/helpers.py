import io
import os
import time
import zipfile
from collections.abc import Callable
from typing import Any

import httpx

from app.client import MixlabClient


def wait_until(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.2,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def ready_digits(base_url: str, name: str, **options: Any) -> dict:
    """A built-in digits dataset registered and prepared (``options``: the
    built-in's, e.g. ``seed``); its reply once ready."""
    with MixlabClient(base_url) as mx:
        created = mx.create_builtin_dataset("digits", name=name, **options)
        return mx.wait_for_dataset(created["id"], timeout=120)


def experiment(client: MixlabClient, dataset_id: str, **overrides: Any) -> str:
    spec: dict[str, Any] = {"name": "t", "dataset_id": dataset_id,
                            "model": {"width": 8, "depth": 2},
                            "augmentation": {"method": "mixup", "alpha": 1.0},
                            "training": {"epochs": 2, "batch_size": 64, "seed": 0}}
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return str(client.create_experiment(spec)["run_ids"][0])


def wait_for_dataset(http: httpx.Client, dataset_id: str, timeout: float = 90) -> dict:
    """GET the dataset until its preparation is over (ready or failed)."""
    def done() -> dict | None:
        ds = http.get(f"/v1/datasets/{dataset_id}").json()
        return ds if ds["status"] != "preparing" else None

    return wait_until(done, timeout=timeout, interval=0.1,
                      what=f"dataset {dataset_id} to finish preparing")


def prepared(http: httpx.Client, response: httpx.Response, status: str = "ready") -> dict:
    """The outcome of a POST /v1/datasets: accepted (202, preparing), then ``status``.
    Needs a worker (the ``worker`` or ``stack`` fixture)."""
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "preparing", accepted
    # absolute, built like every URL in replies (the request's base URL here)
    assert response.headers["location"] == str(http.base_url.join(
        f"/v1/datasets/{accepted['id']}"))
    ds = wait_for_dataset(http, accepted["id"])
    assert ds["status"] == status, ds
    return ds


def auth_headers() -> dict[str, str]:
    """The session's API key as a header, for raw httpx calls (conftest's ``access``
    fixture, which ``stack`` and ``api_client`` use, exports it)."""
    return {"Authorization": f"Bearer {os.environ['MIXLAB_API_KEY']}"}


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip archive of ``files`` (member name → content), in memory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()
