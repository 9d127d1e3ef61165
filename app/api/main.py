"""The FastAPI application: ``uvicorn app.api.main:app``."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from app import __version__
from app.api import access, docs, errors
from app.api.deps import authenticate
from app.api.examples import add_examples
from app.api.openapi import add_body_models, add_common_errors, add_links, operation_id
from app.api.routes import datasets, experiments, health, keys, representations, runs, sweeps
from app.api.routes import metrics as prometheus
from app.db.async_reads import HotReads
from app.observability.metrics import LatencyMiddleware, install_collector
from app.runs.reconciler import Reconciler
from app.settings import get_settings
from app.web import routes as web

DESCRIPTION = """
mixlab trains models with mixup-style augmentation. Register a dataset, preview
what a mixing spec does to it, post an experiment, poll its run, read metrics.

Errors: request problems are 422 with one `detail[]` entry per field, `loc`
naming it (every problem of a request at once); other errors are
`{"detail": "..."}`. Operations that create an object link to those that take
its id (OpenAPI `links`).
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # the API is up whenever runs are: it hosts the sweeps for lost and dead runs
    # (in one API process of the deployment at a time: app.runs.leader)
    reconciler = Reconciler(get_settings())
    app.state.reconciler = reconciler  # /readyz reports its role
    reconciler.start()
    # hot reads (GET /v1/runs/{id}) on asyncio connections: app.db.async_reads
    app.state.hot_reads = await HotReads.open(get_settings().resolved_database_url)
    try:
        yield
    finally:
        reconciler.stop()
        if app.state.hot_reads is not None:
            await app.state.hot_reads.close()
        app.state.hot_reads = None


def create_app() -> FastAPI:
    # docs_url/redoc_url None: FastAPI's pages load from a CDN; app.api.docs serves
    # the same pages from an installed package
    app = FastAPI(title="mixlab", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None,
                  generate_unique_id_function=operation_id)
    docs.install(app)
    errors.install(app)
    access.install(app, get_settings())
    # every /v1 route needs an API key (routes that write also ask for the write
    # scope); health and readiness stay open for probes
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)])
    for module in (datasets, experiments, sweeps, runs, representations, keys):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)
    # GET /metrics (Prometheus) and the latency of every request
    app.include_router(prometheus.router)
    app.add_middleware(LatencyMiddleware)
    install_collector()
    web.install(app)

    original_openapi = app.openapi

    def openapi() -> dict:  # type: ignore[type-arg]
        if app.openapi_schema is None:
            schema = original_openapi()
            add_body_models(schema)
            add_common_errors(schema)
            add_links(schema)
            add_examples(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
