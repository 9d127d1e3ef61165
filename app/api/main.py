"""The FastAPI application: ``uvicorn app.api.main:app``."""

from fastapi import APIRouter, FastAPI

from app import __version__
from app.api import errors
from app.api.openapi import add_common_errors, add_dataset_create
from app.api.routes import datasets, experiments, health, runs

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
        if app.openapi_schema is None:
            schema = original_openapi()
            add_dataset_create(schema)
            add_common_errors(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
