"""The FastAPI application: ``uvicorn app.api.main:app``."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from app import __version__
from app.api import access, errors
from app.api.deps import authenticate
from app.api.openapi import add_body_models, add_common_errors
from app.api.routes import datasets, experiments, health, keys, runs
from app.reconciler import Reconciler
from app.settings import get_settings

DESCRIPTION = """
mixlab trains models with mixup-style augmentation. Register a dataset, preview
what a mixing spec does to it, post an experiment, poll its run, read metrics.

Errors: body problems are 422 with `detail[].loc` naming the field; other
errors are `{"detail": "..."}`.
"""


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    # the API is up whenever runs are: it hosts the sweeps for lost and dead runs
    reconciler = Reconciler(get_settings())
    reconciler.start()
    try:
        yield
    finally:
        reconciler.stop()


def create_app() -> FastAPI:
    app = FastAPI(title="mixlab", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan)
    errors.install(app)
    access.install(app, get_settings())
    # every /v1 route needs an API key (routes that write also ask for the write
    # scope); health and readiness stay open for probes
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)])
    for module in (datasets, experiments, runs, keys):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)

    original_openapi = app.openapi

    def openapi() -> dict:  # type: ignore[type-arg]
        if app.openapi_schema is None:
            schema = original_openapi()
            add_body_models(schema)
            add_common_errors(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
