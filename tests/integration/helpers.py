import time
from collections.abc import Callable
from typing import Any

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


def experiment(client: MixlabClient, dataset_id: str, **overrides: Any) -> str:
    spec: dict[str, Any] = {"name": "t", "dataset_id": dataset_id,
                            "model": {"width": 8, "depth": 2},
                            "augmentation": {"method": "mixup", "alpha": 1.0},
                            "training": {"epochs": 2, "batch_size": 64, "seed": 0}}
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return str(client.create_experiment(spec)["run_ids"][0])
