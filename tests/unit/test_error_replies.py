"""422 replies for inputs Python's JSON parser reads but strict JSON cannot carry:
``Infinity`` and ``NaN`` are refused by name, and the reply that echoes them is
still valid JSON. (No database: validation answers before any query.)"""

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.api.deps import authenticate
from app.api.errors import json_safe
from app.api.main import app
from app.services.auth import DEFAULT_PRINCIPAL

client = TestClient(app)


@pytest.fixture(autouse=True)
def signed_in() -> Iterator[None]:
    """The default project, writing: no key row to look up."""
    app.dependency_overrides[authenticate] = lambda: DEFAULT_PRINCIPAL
    yield
    app.dependency_overrides.pop(authenticate)


def test_json_safe_spells_non_finite_floats() -> None:
    value = {"a": [float("inf"), -float("inf"), float("nan"), 1.5], "b": ("x", 2)}
    assert json_safe(value) == {"a": ["Infinity", "-Infinity", "NaN", 1.5], "b": ["x", 2]}


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN"])
def test_a_non_finite_float_is_a_422_naming_the_field(literal: str) -> None:
    body = ('{"name": "x", "dataset_id": "00000000-0000-0000-0000-000000000000", '
            f'"augmentation": {{"method": "mixup", "alpha": {literal}}}}}')
    reply = client.post("/v1/experiments", content=body,
                        headers={"content-type": "application/json"})
    assert reply.status_code == 422
    detail = json.loads(reply.text, parse_constant=lambda c: pytest.fail(f"{c} in reply"))
    locs = [e["loc"] for e in detail["detail"]]
    assert ["body", "augmentation", "alpha"] in locs
    assert all(e.get("input") != float("inf") for e in detail["detail"])


def test_a_bare_infinity_body_is_a_422_not_a_500() -> None:
    reply = client.post("/v1/experiments", content="Infinity",
                        headers={"content-type": "application/json"})
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["input"] == "Infinity"
