import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool

from app.api.deps import BaseUrlDep, SessionDep, StoreDep
from app.db.models import Experiment
from app.schemas.common import Page
from app.schemas.experiments import ExperimentCreate, ExperimentCreated, ExperimentOut, RunRef
from app.services import experiments as service

router = APIRouter(prefix="/experiments", tags=["experiments"])


def _run_refs(experiment: Experiment, base: str) -> list[RunRef]:
    return [RunRef(id=r.id, status=r.status, url=f"{base}/v1/runs/{r.id}")
            for r in experiment.runs]


def to_out(experiment: Experiment, base: str) -> ExperimentOut:
    return ExperimentOut(id=experiment.id, name=experiment.name,
                         dataset_id=experiment.dataset_id, task=experiment.task,
                         spec=experiment.spec, created_at=experiment.created_at,
                         runs=_run_refs(experiment, base))


@router.post("", status_code=202, response_model=ExperimentCreated,
             summary="Create an experiment and queue its run",
             responses={422: {"description": "Invalid spec; `loc` names the field"}})
async def create_experiment(spec: ExperimentCreate, session: SessionDep, base: BaseUrlDep,
                            response: Response) -> ExperimentCreated:
    experiment = await run_in_threadpool(service.create, session, spec)
    runs = _run_refs(experiment, base)
    response.headers["Location"] = runs[0].url
    return ExperimentCreated(experiment_id=experiment.id, run_ids=[r.id for r in runs],
                             runs=runs, url=f"{base}/v1/experiments/{experiment.id}")


@router.get("", response_model=Page[ExperimentOut], summary="List experiments, newest first")
def list_experiments(session: SessionDep, base: BaseUrlDep,
                     limit: Annotated[int, Query(ge=1, le=500)] = 50,
                     offset: Annotated[int, Query(ge=0)] = 0) -> Page[ExperimentOut]:
    rows, total = service.list_page(session, limit, offset)
    return Page(items=[to_out(e, base) for e in rows], total=total, limit=limit, offset=offset)


@router.get("/{experiment_id}", response_model=ExperimentOut)
def get_experiment(experiment_id: uuid.UUID, session: SessionDep,
                   base: BaseUrlDep) -> ExperimentOut:
    return to_out(service.get(session, experiment_id), base)


@router.delete("/{experiment_id}", status_code=204,
               summary="Delete a finished experiment, its runs, metrics and checkpoints",
               responses={409: {"description": "A run is still queued or running"}})
def delete_experiment(experiment_id: uuid.UUID, session: SessionDep,
                      store: StoreDep) -> Response:
    service.delete(session, store, experiment_id)
    return Response(status_code=204)
