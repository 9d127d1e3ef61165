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
from app.db.models import Experiment
from app.schemas.common import MAX_OFFSET, Page
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
                         sweep_id=experiment.sweep_id, runs=_run_refs(experiment, base))


@router.post("", status_code=202, response_model=ExperimentCreated,
             summary="Create an experiment and queue its run",
             responses={404: {"description": "model.init_from_run (or the run of a "
                                              "model.weights store: key) is not a run of "
                                              "the project"},
                        409: {"description": "The dataset is not ready: still preparing "
                                             "(poll GET /v1/datasets/{id} until ready), or "
                                             "its preparation failed"},
                        422: {"description": "Invalid spec, or a size limit of the project "
                                              "(epoch_samples, model_parameters): one "
                                              "`detail` entry per field, `loc` naming it"},
                        429: {"description": "The project's queued_runs limit; retry "
                                             "after `Retry-After` seconds"},
                        **WRITE_RESPONSES})
async def create_experiment(spec: ExperimentCreate, session: SessionDep, base: BaseUrlDep,
                            response: Response, principal: WriterDep) -> ExperimentCreated:
    experiment = await run_in_threadpool(service.create, session, principal.project_id, spec)
    runs = _run_refs(experiment, base)
    response.headers["Location"] = runs[0].url
    return ExperimentCreated(experiment_id=experiment.id, run_ids=[r.id for r in runs],
                             runs=runs, url=f"{base}/v1/experiments/{experiment.id}")


@router.get("", response_model=Page[ExperimentOut], summary="List experiments, newest first")
def list_experiments(session: SessionDep, base: BaseUrlDep, principal: ReaderDep,
                     limit: Annotated[int, Query(ge=1, le=500)] = 50,
                     offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> Page[ExperimentOut]:
    rows, total = service.list_page(session, principal.project_id, limit, offset)
    return Page(items=[to_out(e, base) for e in rows], total=total, limit=limit, offset=offset)


@router.get("/{experiment_id}", response_model=ExperimentOut)
def get_experiment(experiment_id: uuid.UUID, session: SessionDep, base: BaseUrlDep,
                   principal: ReaderDep) -> ExperimentOut:
    return to_out(service.get(session, principal.project_id, experiment_id), base)


@router.delete("/{experiment_id}", status_code=204,
               summary="Delete an experiment, its runs, metrics and checkpoints (live runs "
                       "are cancelled first)",
               responses={**WRITE_RESPONSES})
def delete_experiment(experiment_id: uuid.UUID, session: SessionDep, store: StoreDep,
                      principal: WriterDep) -> Response:
    service.delete(session, principal.project_id, store, experiment_id)
    return Response(status_code=204)
