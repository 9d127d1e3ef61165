import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool

from app.api.deps import (
    WRITE_RESPONSES,
    BaseUrlDep,
    ReaderDep,
    SessionDep,
    StoreDep,
    WriterDep,
)
from app.db.models import Sweep
from app.schemas.common import MAX_OFFSET, Page
from app.schemas.sweeps import SweepCreate, SweepCreated, SweepOut, SweepRun, SweepSummary
from app.services import sweeps as service

router = APIRouter(prefix="/sweeps", tags=["sweeps"])


def to_out(sweep: Sweep) -> SweepOut:
    pairs = service.runs_of(sweep)
    return SweepOut(id=sweep.id, name=sweep.name, spec=sweep.spec, created_at=sweep.created_at,
                    run_ids=[r.id for _, r in pairs],
                    runs=[SweepRun(id=r.id, experiment_id=e.id, status=r.status,
                                   point=e.sweep_point or {}, metrics=r.metrics or {})
                          for e, r in pairs],
                    **service.status(sweep))


@router.post("", status_code=202, response_model=SweepCreated,
             summary="Create a sweep: one experiment and queued run per point",
             responses={404: {"description": "model.init_from_run is not a run of the "
                                             "project"},
                        409: {"description": "The dataset is not ready"},
                        422: {"description": "A dotted path that is not a field, or a point "
                                             "that is not a valid experiment: `loc` names the "
                                             "axis (`[\"body\", \"grid\", PATH]`, `[\"body\", "
                                             "\"random\", \"space\", PATH]`) or the base "
                                             "field, `msg` the combination"},
                        429: {"description": "The sweep's runs would pass the project's "
                                             "queued_runs limit; nothing is stored"},
                        **WRITE_RESPONSES})
async def create_sweep(request: SweepCreate, session: SessionDep, base: BaseUrlDep,
                       response: Response, principal: WriterDep) -> SweepCreated:
    sweep, runs = await run_in_threadpool(service.create, session, principal.project_id,
                                          request)
    url = f"{base}/v1/sweeps/{sweep.id}"
    response.headers["Location"] = url
    return SweepCreated(sweep_id=sweep.id, run_ids=[r.id for r in runs], url=url)


@router.get("", response_model=Page[SweepOut], summary="List sweeps, newest first")
def list_sweeps(session: SessionDep, principal: ReaderDep,
                limit: Annotated[int, Query(ge=1, le=500)] = 50,
                offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> Page[SweepOut]:
    rows, total = service.list_page(session, principal.project_id, limit, offset)
    return Page(items=[to_out(s) for s in rows], total=total, limit=limit, offset=offset)


@router.get("/{sweep_id}", response_model=SweepOut,
            summary="A sweep: its runs, counts by status, progress, done")
def get_sweep(sweep_id: uuid.UUID, session: SessionDep, principal: ReaderDep) -> SweepOut:
    return to_out(service.get(session, principal.project_id, sweep_id))


@router.get("/{sweep_id}/summary", response_model=SweepSummary,
            summary="One row per configuration (the point without training.seed): n, mean, "
                    "std, min, max of a metric over its succeeded runs, best run; best first")
def sweep_summary(sweep_id: uuid.UUID, session: SessionDep, principal: ReaderDep,
                  metric: Annotated[str, Query(min_length=1, max_length=100)] = "test_acc",
                  ) -> SweepSummary:
    return SweepSummary(**service.summary(session, principal.project_id, sweep_id, metric))


@router.post("/{sweep_id}/cancel", response_model=SweepOut,
             summary="Cancel the sweep's live runs (queued at once, running within a step)",
             responses={**WRITE_RESPONSES})
def cancel_sweep(sweep_id: uuid.UUID, session: SessionDep, principal: WriterDep) -> SweepOut:
    return to_out(service.cancel(session, principal.project_id, sweep_id))


@router.delete("/{sweep_id}", status_code=204,
               summary="Delete a sweep with its experiments, runs, metrics and checkpoints "
                       "(live runs are cancelled first)",
               responses={**WRITE_RESPONSES})
def delete_sweep(sweep_id: uuid.UUID, session: SessionDep, store: StoreDep,
                 principal: WriterDep) -> Response:
    service.delete(session, principal.project_id, store, sweep_id)
    return Response(status_code=204)
