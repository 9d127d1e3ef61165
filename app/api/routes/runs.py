import json
import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response

from app.api.deps import (
    WRITE_RESPONSES,
    BaseUrlDep,
    ReaderDep,
    SessionDep,
    StoreDep,
    WriterDep,
)
from app.db.models import Run
from app.schemas.common import MAX_OFFSET, Page
from app.schemas.runs import (
    EvaluationOut,
    MetricHistory,
    MetricPointOut,
    Progress,
    RunOut,
    RunStatus,
    WorkerInfo,
)
from app.services import runs as service
from app.services.errors import NotFoundError
from app.storage import evaluation_key

router = APIRouter(prefix="/runs", tags=["runs"])


def to_out(run: Run, base: str) -> RunOut:
    epochs = int(run.experiment.spec["training"]["epochs"])
    return RunOut(
        id=run.id, experiment_id=run.experiment_id, status=run.status,  # type: ignore[arg-type]
        cancel_requested=run.cancel_requested, attempt=run.attempt,
        progress=Progress(epoch=run.epoch, epochs=epochs, step=run.step,
                          total_steps=run.total_steps, samples_per_s=run.samples_per_s,
                          eta_s=run.eta_s),
        metrics=run.metrics or {}, error=run.error,
        worker=WorkerInfo(host=run.worker_host, device=run.device),
        created_at=run.created_at, started_at=run.started_at, finished_at=run.finished_at,
        heartbeat_at=run.heartbeat_at,
        checkpoint_url=(f"{base}/v1/runs/{run.id}/checkpoint" if run.checkpoint_key else None))


@router.get("", response_model=Page[RunOut], summary="List runs, newest first")
def list_runs(session: SessionDep, base: BaseUrlDep, principal: ReaderDep,
              status: RunStatus | None = None, experiment_id: uuid.UUID | None = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> Page[RunOut]:
    rows, total = service.list_page(session, principal.project_id, limit, offset, status,
                                    experiment_id)
    return Page(items=[to_out(r, base) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{run_id}", response_model=RunOut)
def get_run(run_id: uuid.UUID, session: SessionDep, base: BaseUrlDep,
            principal: ReaderDep) -> RunOut:
    return to_out(service.get(session, principal.project_id, run_id), base)


@router.post("/{run_id}/cancel", response_model=RunOut,
             summary="Cancel: queued runs stop at once, running ones within a step or two",
             responses={409: {"description": "The run already finished"},
                        **WRITE_RESPONSES})
def cancel_run(run_id: uuid.UUID, session: SessionDep, base: BaseUrlDep,
               principal: WriterDep) -> RunOut:
    return to_out(service.cancel(session, principal.project_id, run_id), base)


@router.get("/{run_id}/metrics", response_model=MetricHistory,
            summary="Metric history by step (all keys, or one with ?key=)")
def run_metrics(run_id: uuid.UUID, session: SessionDep, principal: ReaderDep,
                key: Annotated[str | None, Query(max_length=100)] = None) -> MetricHistory:
    history = service.metric_history(session, principal.project_id, run_id, key)
    return MetricHistory(run_id=run_id, metrics={
        k: [MetricPointOut(step=p.step, epoch=p.epoch, value=p.value) for p in points]
        for k, points in history.items()})


@router.get("/{run_id}/checkpoint", response_class=Response,
            summary="The run's latest checkpoint (safetensors)",
            responses={200: {"content": {"application/octet-stream": {}}}})
def run_checkpoint(run_id: uuid.UUID, session: SessionDep, store: StoreDep,
                   principal: ReaderDep) -> Response:
    run = service.get(session, principal.project_id, run_id)
    if not run.checkpoint_key:
        raise NotFoundError("checkpoint of run", run_id)
    filename = f"{run_id}.safetensors"
    local = store.local_path(run.checkpoint_key)
    if local is not None:
        return FileResponse(local, media_type="application/octet-stream", filename=filename)
    return Response(store.get(run.checkpoint_key), media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/{run_id}/evaluation", response_model=EvaluationOut, response_model_by_alias=True,
            summary="The test split's per-class scores, with the confusion matrix "
                    "(classification) or per-class AP and counts (multilabel)",
            responses={404: {"description": "Unknown run, or it has not succeeded"}})
def run_evaluation(run_id: uuid.UUID, session: SessionDep, store: StoreDep,
                   principal: ReaderDep) -> EvaluationOut:
    run = service.get(session, principal.project_id, run_id)
    key = evaluation_key(run.id)
    if run.status != "succeeded" or not store.exists(key):
        raise NotFoundError("evaluation of run", run_id)
    return EvaluationOut(run_id=run.id, **json.loads(store.get(key)))
