import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse

from app.api.deps import (
    WRITE_RESPONSES,
    BaseUrlDep,
    HotReadsDep,
    ReaderDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    WriterDep,
    db_read,
)
from app.api.uploads import body_errors, ingest_spec, save_upload, upload_form
from app.db.async_reads import Unavailable
from app.db.models import Run
from app.runs import logs as run_logs_service
from app.runs import service as lifecycle_service
from app.runs import status as run_status
from app.schemas.common import MAX_OFFSET, Page
from app.schemas.predictions import MAX_PREDICT_SAMPLES, PredictionsOut, PredictRequest
from app.schemas.runs import (
    CheckpointOut,
    EvaluationOut,
    LogLineOut,
    MetricHistory,
    Progress,
    RunLogOut,
    RunOut,
    RunStatus,
    WorkerInfo,
)
from app.schemas.sweeps import RunComparison
from app.services import compare, predictions
from app.services import run_events as run_events_service
from app.services import runs as service
from app.services.errors import FieldError, NotFoundError
from app.settings import get_settings

router = APIRouter(prefix="/runs", tags=["runs"])


def to_out(run: Run | service.RunRow, base: str) -> RunOut:
    epochs = int(run.experiment.spec["training"]["epochs"])
    checkpoint = CheckpointOut(url=f"{base}/v1/runs/{run.id}/checkpoint",
                               epoch=run.checkpoint_epoch,
                               partial=run.status != run_status.RunStatus.SUCCEEDED
                               ) if run.checkpoint_key else None
    augmentation = run.experiment.spec.get("augmentation") or {}
    return RunOut(
        id=run.id, experiment_id=run.experiment_id, name=run.experiment.name,
        sweep_id=run.experiment.sweep_id, method=augmentation.get("method", "mixup"),
        alpha=float(augmentation.get("alpha", 1.0)), status=run.status,  # type: ignore[arg-type]
        cancel_requested=run.cancel_requested, attempt=run.attempt,
        progress=Progress(epoch=run.epoch, epochs=epochs, step=run.step,
                          total_steps=run.total_steps, samples_per_s=run.samples_per_s,
                          eta_s=run.eta_s),
        metrics=run.metrics or {}, error=run.error,
        worker=WorkerInfo(host=run.worker_host, device=run.device,
                          world_size=int(run.experiment.spec["training"].get("world_size", 1))),
        created_at=run.created_at, started_at=run.started_at, finished_at=run.finished_at,
        heartbeat_at=run.heartbeat_at,
        checkpoint_url=checkpoint.url if checkpoint else None, checkpoint=checkpoint,
        init=run.init)


@router.get("", response_model=Page[RunOut], summary="List runs, newest first")
def list_runs(session: SessionDep, base: BaseUrlDep, principal: ReaderDep,
              status: RunStatus | None = None, experiment_id: uuid.UUID | None = None,
              sweep_id: uuid.UUID | None = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> Page[RunOut]:
    rows, total = service.list_page(session, principal.project_id, limit, offset, status,
                                    experiment_id, sweep_id)
    return Page(items=[to_out(r, base) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/compare", response_model=RunComparison,
            summary="Compare 2-20 runs: final metrics, specs, the spec fields that differ, "
                    "and metric curves aligned by step",
            responses={404: {"description": "An id is not a run of the project"},
                       422: {"description": "Fewer than 2 or more than 20 ids, or one that "
                                            "is not an id; `loc` is `[\"query\", \"ids\"]`"}})
def compare_runs(session: SessionDep, principal: ReaderDep,
                 ids: Annotated[str, Query(min_length=1, max_length=2000,
                                           description="Run ids, comma-separated")],
                 keys: Annotated[str, Query(max_length=1000,
                                            description="Metric keys of the histories, "
                                                        "comma-separated")
                                 ] = ",".join(compare.DEFAULT_KEYS),
                 max_points: Annotated[int | None, Query(ge=3, le=100_000)] = 1000,
                 ) -> RunComparison:
    run_ids = compare.parse_ids(ids)
    wanted = list(dict.fromkeys(k.strip() for k in keys.split(",") if k.strip()))
    return RunComparison(**compare.compare(session, principal.project_id, run_ids, wanted,
                                           max_points))


@router.get("/{run_id}", response_model=RunOut)
async def get_run(run_id: uuid.UUID, base: BaseUrlDep, principal: ReaderDep,
                  reads: HotReadsDep) -> RunOut:
    # clients poll this route: one query, on the event loop where Postgres's
    # asyncio pool is there (a threadpool hop cost more than the query), else in
    # a thread
    try:
        run = await service.read_hot(reads, principal.project_id, run_id)
    except Unavailable:
        run = await db_read(service.read, principal.project_id, run_id)
    return to_out(run, base)


@router.get("/{run_id}/events", response_class=Response,
            summary="Live events (server-sent): run changes, new metric points, the end",
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`event: run` (the run, as GET /v1/runs/{id}) "
                                            "when its status, step or epoch changes; "
                                            "`event: metrics` (`{\"points\": {key: "
                                            "[{step, epoch, value}]}}`, id = the last step "
                                            "sent) for new points; `event: end` once the "
                                            "run has ended. Reconnect with Last-Event-ID "
                                            "(or ?after_step=) to resume."}})
def run_events(run_id: uuid.UUID, request: Request, session: SessionDep, base: BaseUrlDep,
               principal: ReaderDep,
               after_step: Annotated[int | None, Query(ge=-1)] = None) -> Response:
    service.get(session, principal.project_id, run_id)  # 404 before the stream starts
    last = request.headers.get("last-event-id", "")
    start = after_step if after_step is not None else int(last) if last.isdigit() else -1
    return EventSourceResponse(
        run_events_service.stream(principal.project_id, run_id,
                                  lambda run: to_out(run, base).model_dump(mode="json"),
                                  get_settings().control_poll_s, start),
        ping=15)


@router.post("/{run_id}/cancel", response_model=RunOut,
             summary="Cancel: queued runs stop at once, running ones within a step or two",
             responses={409: {"description": "The run already finished"},
                        **WRITE_RESPONSES})
def cancel_run(run_id: uuid.UUID, session: SessionDep, base: BaseUrlDep,
               principal: WriterDep) -> RunOut:
    return to_out(lifecycle_service.cancel(session, principal.project_id, run_id), base)


@router.get("/{run_id}/metrics", response_model=MetricHistory,
            summary="Metric history by step (all keys, or one with ?key=), as columns: "
                    "`{key: {step: [...], epoch: [...], value: [...]}}`")
def run_metrics(run_id: uuid.UUID, session: SessionDep, principal: ReaderDep,
                key: Annotated[str | None, Query(max_length=100)] = None,
                after_step: Annotated[int | None, Query(
                    ge=-1, le=2**31 - 1,
                    description="Only points with a later step (incremental fetches: the "
                                "last step already held)")] = None,
                max_points: Annotated[int | None, Query(
                    ge=3, le=100_000,
                    description="Down-sample each key's curve to at most this many points: "
                                "equal step ranges keep their lowest and highest value, and "
                                "the last point stays")] = None) -> dict[str, Any]:
    history = service.metric_history(session, principal.project_id, run_id, key,
                                     after_step=after_step, max_points=max_points)
    # a dict, not MetricHistory(...): FastAPI validates it once against the
    # response model and encodes it in pydantic-core
    return {"run_id": run_id, "metrics": history}


@router.get("/{run_id}/logs", response_model=RunLogOut,
            summary="What the worker logged for this run, one attempt at a time, paged by "
                    "line number")
def run_logs(run_id: uuid.UUID, session: SessionDep, principal: ReaderDep,
             attempt: Annotated[int | None, Query(
                 ge=1, le=1000, description="Which attempt (default: the latest that "
                                            "logged)")] = None,
             after_line: Annotated[int, Query(
                 ge=0, le=2**31 - 1, description="Only lines after this one (the "
                                                 "previous page's `next_after_line`)")] = 0,
             limit: Annotated[int, Query(ge=1, le=5000)] = 1000) -> RunLogOut:
    run = service.get(session, principal.project_id, run_id)
    page = run_logs_service.page(session, run_id, attempt, after_line, limit)
    return RunLogOut(
        run_id=run_id, status=run_status.RunStatus(run.status), attempts=page.attempts,
        attempt=page.attempt,
        lines=[LogLineOut(line=r.line, at=r.at, level=r.level, logger=r.logger,
                          message=r.message) for r in page.lines],
        next_after_line=page.lines[-1].line if page.lines else after_line, more=page.more)


@router.get("/{run_id}/checkpoint", response_class=Response,
            summary="The run's latest checkpoint (safetensors)",
            description="The file `checkpoint.url` of the run names. Unless the run "
                        "succeeded it is partial (`checkpoint.partial`): the weights of its "
                        "last finished epoch (`checkpoint.epoch`).",
            responses={200: {"content": {"application/octet-stream": {}}},
                       404: {"description": "Unknown run, or no checkpoint yet"}})
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
            responses={404: {"description": "Unknown run, or a succeeded run without a stored "
                                            "evaluation"},
                       409: {"description": "The run has not succeeded (yet): the evaluation "
                                            "is written when it does"},
                       422: {"description": "The run's task has no per-class evaluation "
                                            "(retrieval: its recall@K figures are in the "
                                            "run's metrics); `loc` is `[\"path\", \"run_id\"]`"}})
def run_evaluation(run_id: uuid.UUID, session: SessionDep, store: StoreDep,
                   principal: ReaderDep) -> EvaluationOut:
    report = service.evaluation(session, store, principal.project_id, run_id)
    return EvaluationOut(run_id=run_id, **report)


_PREDICT_UPLOAD = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "Samples in any dataset upload format: .npz (prepared-form "
                                "arrays: image, text token ids, audio, tabular; label "
                                "optional), .parquet, or .zip / .tar.gz / .tgz (manifest, "
                                "class folders, or just files). At most "
                                f"{MAX_PREDICT_SAMPLES} samples."},
        "spec": {"type": "string", "description": "JSON IngestSpecIn (Parquet and archives "
                                                  "only). Default: the columns the run's "
                                                  "training dataset was read with."},
    },
}


@router.post(
    "/{run_id}/predict", response_model=PredictionsOut,
    summary="Predict with a succeeded run's model: rows of a dataset split (JSON) or the "
            "samples of a file (multipart); changes nothing, so a read key may call it",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"},
                             "example": PredictRequest.model_config["json_schema_extra"]
                             ["examples"][0]},  # type: ignore[index]
        "multipart/form-data": {"schema": _PREDICT_UPLOAD}}}},
    responses={409: {"description": "The run has not succeeded, its checkpoint predates "
                                    "stored normalisation, or the dataset is not ready"},
               422: {"description": "Invalid request or file, too many samples, inputs that "
                                    "do not fit the model (naming the modality), or a "
                                    "retrieval run; `loc` names the field"}})
async def predict(run_id: uuid.UUID, request: Request, session: SessionDep, store: StoreDep,
                  settings: SettingsDep, principal: ReaderDep) -> PredictionsOut:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form, upload, filename = await upload_form(request, settings, max_fields=2)
        spec = ingest_spec(form.get("spec"))
        folder = Path(tempfile.mkdtemp(prefix="mixlab-predict-"))
        try:
            path = await save_upload(upload, settings.max_upload_bytes, folder, filename)
            return await run_in_threadpool(predictions.predict_file, session, store, settings,
                                           principal.project_id, run_id, path, filename, spec)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if not content_type.startswith("application/json"):
        raise FieldError(("header", "content-type"),
                         "use application/json (rows of a dataset split) or "
                         "multipart/form-data (a file of samples)")
    try:
        body = PredictRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(body_errors(exc)) from exc
    return await run_in_threadpool(predictions.predict_split, session, store,
                                   principal.project_id, run_id, body)
