"""Finishing touches on the generated OpenAPI schema, which is the API's contract.

FastAPI documents what each route declares; the errors every route can give
(an unknown id, the database being down) come from the exception handlers in
``app.api.errors``, so they are added here once instead of on every route.
"""

from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel

from app.schemas.datasets import DatasetCreate
from app.schemas.predictions import PredictRequest

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
_FIELD_ERRORS = {"application/json": {"schema": {
    "$ref": "#/components/schemas/HTTPValidationError"}}}
_ERROR_SCHEMA = {"title": "ErrorOut", "type": "object", "required": ["detail"],
                 "properties": {"detail": {"title": "Detail", "type": "string"}}}


def add_body_models(schema: dict[str, Any]) -> None:
    """The routes that take JSON or a multipart upload read their body by content
    type, so FastAPI does not see their JSON models (DatasetCreate,
    PredictRequest); add them (and what they reference) to the components."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (DatasetCreate, PredictRequest):
        defs = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(defs.pop("$defs", {}))
        components[model.__name__] = defs


def operation_id(route: APIRoute) -> str:
    """Short operationIds, the method names generated clients get: ``<tag>_<action>``
    from the route's tag and function, the resource's own word dropped
    (``create_dataset`` under ``datasets`` → ``datasets_create``, ``run_metrics``
    → ``runs_metrics``); untagged routes keep the function's name."""
    if not route.tags or route.tags[0] == "health":
        return route.name
    tag = str(route.tags[0])
    action = [w for w in route.name.split("_") if w not in (tag, tag.removesuffix("s"))]
    return f"{tag}_{'_'.join(action) or route.name}"


def add_common_errors(schema: dict[str, Any]) -> None:
    """404 on every operation that names an object by id, 400 on every one with a
    body (unparseable), 401 (no valid API key)
    and 503 (the database or broker is unavailable) on every /v1 operation, one
    error body shape; every documented error without a body schema gets its
    shape (``ErrorOut``; 422: FastAPI's ``HTTPValidationError``)."""
    schema.setdefault("components", {}).setdefault("schemas", {})["ErrorOut"] = _ERROR_SCHEMA
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith("/v1/"):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", {"description": "Missing, invalid or revoked API "
                                                        "key (`WWW-Authenticate: Bearer`)",
                                         "content": _ERROR})
            if "{" in path:
                responses.setdefault("404", {"description": "No such object",
                                             "content": _ERROR})
            if "requestBody" in operation:
                responses.setdefault("400", {"description": "A body that cannot be parsed "
                                                            "at all (not JSON, not multipart)",
                                             "content": _ERROR})
            responses.setdefault("503", {"description": "Database or broker unavailable; "
                                                        "retry after `Retry-After` seconds",
                                         "content": _ERROR})
            for status, response in responses.items():
                if status.startswith("4") and "content" not in response:
                    response["content"] = _FIELD_ERRORS if status == "422" else _ERROR


_SCALARS = {"string", "number", "integer", "boolean"}


def _scalar(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of a value a query parameter holds as is (an optional one without
    its null: leaving the parameter out gives the default); None for a list or map."""
    options = [o for o in schema.get("anyOf", [schema]) if o.get("type") != "null"]
    if len(options) == 1 and (options[0].get("type") in _SCALARS or "enum" in options[0]):
        keep = {k: v for k, v in options[0].items() if k not in ("title", "description")}
        if "default" in schema and schema["default"] is not None:
            keep["default"] = schema["default"]
        return keep
    return None


def query_parameters(model: type[BaseModel], encodings: dict[str, str]) -> list[dict[str, Any]]:
    """OpenAPI query parameters for every field of ``model`` (a spec a GET route
    reads from its query string): scalars with their own schema, lists and maps as
    strings encoded as ``encodings`` says (e.g. JSON), so the route's contract
    lists every parameter it reads and stays in step with the model."""
    params = []
    for name, prop in model.model_json_schema()["properties"].items():
        scalar = _scalar(prop)
        description = prop.get("description", "")
        if scalar is None:
            how = encodings.get(name, "JSON")
            scalar = {"type": "string"}
            description = f"{description} Encoded as {how}.".strip()
        params.append({"name": name, "in": "query", "required": False, "schema": scalar,
                       **({"description": description} if description else {})})
    return params


# Operations that create an object → those that take its id, for generated clients
# and for schemathesis's stateful phase: {source: (status, {target: parameters})};
# a "body." parameter is merged into the target's request body.
_DATASET = {"dataset_id": "$response.body#/id"}
_EXPERIMENT = {"experiment_id": "$response.body#/experiment_id"}
_RUN = {"run_id": "$response.body#/run_ids/0"}
LINKS: dict[str, tuple[str, dict[str, dict[str, str]]]] = {
    "datasets_create": ("202", {
        "datasets_get": _DATASET, "datasets_delete": _DATASET, "datasets_preview": _DATASET,
        "datasets_preview_png": _DATASET,
        "experiments_create": {"body.dataset_id": "$response.body#/id"}}),
    "experiments_create": ("202", {
        "experiments_get": _EXPERIMENT, "experiments_delete": _EXPERIMENT,
        "runs_get": _RUN, "runs_cancel": _RUN, "runs_metrics": _RUN,
        "runs_evaluation": _RUN, "runs_checkpoint": _RUN, "runs_predict": _RUN}),
    "keys_create": ("201", {"keys_revoke": {"key_id": "$response.body#/id"}}),
}


def add_links(schema: dict[str, Any]) -> None:
    """OpenAPI ``links`` on the replies of the operations in ``LINKS``."""
    operations = {op["operationId"]: op for item in schema.get("paths", {}).values()
                  for op in item.values() if isinstance(op, dict) and "operationId" in op}
    for source, (status, targets) in LINKS.items():
        links = operations[source]["responses"][status].setdefault("links", {})
        for target, parameters in targets.items():
            assert target in operations, f"link to unknown operation {target}"
            link: dict[str, Any] = {"operationId": target}
            body = {k.removeprefix("body."): v for k, v in parameters.items()
                    if k.startswith("body.")}
            params = {k: v for k, v in parameters.items() if not k.startswith("body.")}
            if params:
                link["parameters"] = params
            if body:
                link["requestBody"] = body
            links[target] = link
