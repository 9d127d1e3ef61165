"""Finishing touches on the generated OpenAPI schema, which is the API's contract.

FastAPI documents what each route declares; the errors every route can give
(an unknown id, the database being down) come from the exception handlers in
``app.api.errors``, so they are added here once instead of on every route.
"""

from typing import Any

from app.schemas.datasets import DatasetCreate
from app.schemas.predictions import PredictRequest

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
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


def add_common_errors(schema: dict[str, Any]) -> None:
    """404 on every operation that names an object by id, 400 on every one with a
    body (unparseable), 401 (no valid API key)
    and 503 (the database or broker is unavailable) on every /v1 operation, one
    error body shape."""
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
