"""The FastAPI application: ``uvicorn app.api.main:app``."""

from fastapi import APIRouter, FastAPI

from app import __version__
from app.api import errors
from app.api.routes import datasets, experiments, health, runs
from app.schemas.datasets import DatasetCreate

DESCRIPTION = """
mixlab trains models with mixup-style augmentation. Register a dataset, preview
what a mixing spec does to it, post an experiment, poll its run, read metrics.

Errors: body problems are 422 with `detail[].loc` naming the field; other
errors are `{"detail": "..."}`.
"""


def create_app() -> FastAPI:
    app = FastAPI(title="mixlab", version=__version__, description=DESCRIPTION)
    errors.install(app)
    v1 = APIRouter(prefix="/v1")
    for module in (datasets, experiments, runs):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)

    original_openapi = app.openapi

    def openapi() -> dict:  # type: ignore[type-arg]
        # The dataset route reads its body by content type, so FastAPI does not
        # see DatasetCreate; add it (and what it references) to the components.
        if app.openapi_schema is None:
            schema = original_openapi()
            defs = DatasetCreate.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs.pop("$defs", {}))
            components["DatasetCreate"] = defs
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
