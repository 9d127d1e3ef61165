"""The OpenAPI contract as generated clients and people read it: short operationIds,
links from the operations that create ids, example replies that fit their models,
every parameter a route reads, and /docs and /redoc that load nothing from the
internet. (No database: the schema and the docs pages need none.)"""

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.examples import REPLY_EXAMPLES
from app.api.main import app
from app.schemas.datasets import PreviewRequest
from app.services.previews import png_query

client = TestClient(app)  # no lifespan: the routes only
SCHEMA: dict[str, Any] = client.get("/openapi.json").json()
OPERATIONS = {op["operationId"]: (method, path, op)
              for path, item in SCHEMA["paths"].items() for method, op in item.items()}


def test_operation_ids_are_short_and_unique() -> None:
    ids = [op["operationId"] for item in SCHEMA["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for operation_id in ids:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", operation_id), operation_id
        assert "_v1_" not in operation_id and not operation_id.endswith(("_get_", "_post"))
    assert OPERATIONS["datasets_create"][:2] == ("post", "/v1/datasets")
    assert OPERATIONS["runs_get"][:2] == ("get", "/v1/runs/{run_id}")
    assert OPERATIONS["runs_evaluation"][:2] == ("get", "/v1/runs/{run_id}/evaluation")
    assert OPERATIONS["keys_revoke"][:2] == ("delete", "/v1/keys/{key_id}")


def _body_properties(operation: dict[str, Any]) -> set[str]:
    media = operation["requestBody"]["content"]["application/json"]["schema"]
    name = media["$ref"].rsplit("/", 1)[-1]
    return set(SCHEMA["components"]["schemas"][name]["properties"])


def test_links_lead_from_each_created_id_to_the_operations_that_take_it() -> None:
    expected = {"datasets_create": {"datasets_get", "datasets_delete", "datasets_preview",
                                    "datasets_preview_png", "experiments_create"},
                "experiments_create": {"experiments_get", "experiments_delete", "runs_get",
                                       "runs_cancel", "runs_metrics", "runs_evaluation",
                                       "runs_checkpoint", "runs_predict"},
                "keys_create": {"keys_revoke"}}
    for source, targets in expected.items():
        _, _, operation = OPERATIONS[source]
        [(_status, reply)] = [(s, r) for s, r in operation["responses"].items()
                             if s.startswith("2")]
        links = reply["links"]
        assert set(links) == targets
        for name, link in links.items():
            _, _, target = OPERATIONS[link["operationId"]]
            path_params = {p["name"] for p in target.get("parameters", []) if p["in"] == "path"}
            assert set(link.get("parameters", {})) <= path_params, name
            assert set(link.get("parameters", {})) | set(link.get("requestBody", {})), name
            if "requestBody" in link:
                assert set(link["requestBody"]) <= _body_properties(target), name
            for expression in (*link.get("parameters", {}).values(),
                               *link.get("requestBody", {}).values()):
                pointer = expression.removeprefix("$response.body#/").split("/")[0]
                ref = reply["content"]["application/json"]["schema"]["$ref"]
                model = SCHEMA["components"]["schemas"][ref.rsplit("/", 1)[-1]]
                assert pointer in model["properties"], expression


def test_every_example_reply_fits_its_model_and_is_in_the_schema() -> None:
    for operation_id, (status, model, examples) in REPLY_EXAMPLES.items():
        _, _, operation = OPERATIONS[operation_id]
        media = operation["responses"][status]["content"]["application/json"]
        assert media["schema"]["$ref"].endswith(f"/{model.__name__}"), operation_id
        assert set(media["examples"]) == set(examples)
        for name, (_, value) in examples.items():
            model.model_validate(value)
            assert media["examples"][name]["value"] == value


@pytest.mark.parametrize(("operation_id", "statuses"), [
    ("experiments_create", {"202", "400", "401", "403", "404", "409", "422", "429", "503"}),
    ("runs_evaluation", {"200", "401", "404", "409", "422", "503"}),
    ("runs_checkpoint", {"200", "401", "404", "422", "503"}),
    ("datasets_preview_png", {"200", "401", "404", "409", "422", "503"}),
])
def test_every_status_a_route_gives_is_documented(operation_id: str, statuses: set[str]) -> None:
    responses = OPERATIONS[operation_id][2]["responses"]
    assert set(responses) == statuses
    for status, reply in responses.items():  # every error with its body's shape
        if status.startswith(("4", "5")):
            assert reply["content"]["application/json"]["schema"]["$ref"], status


def test_preview_png_lists_every_query_parameter_it_reads() -> None:
    """The PNG reads the whole preview spec from its query: each field is a
    documented parameter, and the URLs previews hand out use only those."""
    _, _, operation = OPERATIONS["datasets_preview_png"]
    documented = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    assert set(PreviewRequest.model_fields) | {"sample", "modality"} == set(documented)
    assert documented["alpha"]["schema"]["type"] == "number"
    assert documented["method"]["schema"]["enum"][:2] == ["none", "mixup"]
    assert "JSON" in documented["ops"]["description"]
    assert "min,max" in documented["cutmix_minmax"]["description"]
    spec = PreviewRequest(method="cross_modal", alpha=0.4, ops={"image": "cutmix"},
                          modalities=["image"], cutmix_minmax=(0.2, 0.8), lam_mode="sample",
                          manifold_layers=[0, 1], seed=3, n=4, split="val")
    used = {pair.split("=", 1)[0] for pair in png_query(spec, sample=1, modality="image")
            .split("&")}
    assert used <= set(documented)


def test_the_run_reply_says_whether_its_checkpoint_is_partial() -> None:
    checkpoint = SCHEMA["components"]["schemas"]["CheckpointOut"]
    assert set(checkpoint["required"]) == {"url", "epoch", "partial"}
    assert "succeeded" in checkpoint["properties"]["partial"]["description"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_assets_this_server_serves(page: str) -> None:
    """No CDN: a machine without internet shows the same page."""
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assert not re.search(r"https?://", html.text), html.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert len(assets) >= 2 and all(a.startswith("/docs-assets/") for a in assets), assets
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200 and len(served.content) > 1000, asset
        kind = served.headers["content-type"]
        assert kind.startswith({"js": ("text/javascript", "application/javascript"),
                                "css": ("text/css",), "png": ("image/png",)}[
            asset.rsplit(".", 1)[-1]]), (asset, kind)
    assert "/openapi.json" in html.text
