import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.api.deps import (
    WRITE_RESPONSES,
    BaseUrlDep,
    ReaderDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    WriterDep,
)
from app.api.openapi import query_parameters
from app.api.uploads import body_errors, ingest_spec, save_upload, upload_form
from app.db.models import Dataset
from app.schemas.common import MAX_OFFSET, Page
from app.schemas.datasets import (
    DatasetCreate,
    DatasetOut,
    PreviewOut,
    PreviewRequest,
    UriSource,
)
from app.services import datasets as service
from app.services import previews
from app.services.errors import FieldError
from app.services.ingest import upload_suffix

router = APIRouter(prefix="/datasets", tags=["datasets"])

_UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "name": {"type": "string", "maxLength": 200, "description": "Defaults to the file name."},
        "file": {"type": "string", "format": "binary",
                 "description": ".npz with one array per modality (image, text, audio, "
                                "tabular) and label (N,); optional split, class_names, vocab. "
                                "Or .parquet, or "
                                ".zip / .tar.gz / .tgz with manifest.csv / manifest.jsonl or "
                                "<class>/<file> folders."},
        "spec": {"type": "string", "description": "JSON IngestSpecIn (Parquet and archives "
                                                  "only): which column is which modality. "
                                                  "Omit to infer."},
    },
}


def to_out(dataset: Dataset) -> DatasetOut:
    """The reply; what only a prepared dataset has (its summary) is null until ready."""
    s = dataset.summary or {}
    stage = (dataset.stage or "queued") if dataset.status == "preparing" else None
    return DatasetOut.model_validate({
        "id": dataset.id, "name": dataset.name, "status": dataset.status,
        "source": dataset.source, "progress": dataset.progress, "stage": stage,
        "errors": dataset.errors, "error_count": dataset.error_count,
        "num_samples": s.get("num_samples"),
        "multilabel": bool(s.get("multilabel")) if s else None,
        "modalities": s.get("modalities"), "classes": s.get("classes"),
        "tasks": s.get("tasks"),
        "split_sizes": s.get("split_sizes"), "noisy_train_labels": s.get("noisy_train_labels"),
        "size_bytes": dataset.size_bytes, "created_at": dataset.created_at,
        "started_at": dataset.started_at, "finished_at": dataset.finished_at})


def _accepted(dataset: Dataset, response: Response, base: str) -> DatasetOut:
    response.headers["Location"] = f"{base}/v1/datasets/{dataset.id}"
    return to_out(dataset)


@router.post(
    "", status_code=202, response_model=DatasetOut,
    summary="Register a dataset: a built-in or a URI (JSON), or a file upload (multipart); "
            "it is prepared by a worker: poll it until ready",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/DatasetCreate"},
                             "example": DatasetCreate.model_config["json_schema_extra"]
                             ["examples"][0]},  # type: ignore[index]
        "multipart/form-data": {"schema": _UPLOAD_SCHEMA}}}},
    responses={202: {"description": "Queued for preparation (status preparing); "
                                    "`Location` is the dataset to poll"},
               422: {"description": "Invalid request, spec or file (what can be known "
                                    "before preparing it), or the project's dataset_bytes "
                                    "limit; `loc` names the field"},
               **WRITE_RESPONSES},
)
async def create_dataset(request: Request, response: Response, session: SessionDep,
                         store: StoreDep, settings: SettingsDep, base: BaseUrlDep,
                         principal: WriterDep) -> DatasetOut:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form, upload, filename = await upload_form(request, settings)
        spec = ingest_spec(form.get("spec"))
        suffix = upload_suffix(filename)
        stem = (filename[:-len(suffix)] if filename.lower().endswith(suffix)
                else Path(filename).stem) or filename
        name = str(form.get("name") or Path(stem).name)[:200]
        for field, text in (("name", name), ("file", filename)):
            if "\x00" in text:  # Postgres text cannot hold NUL
                raise FieldError(("body", field), f"{field}: must not contain NUL characters")
        folder = Path(tempfile.mkdtemp(prefix="mixlab-upload-"))
        try:
            path = await save_upload(upload, settings.max_upload_bytes, folder, filename)
            dataset = await run_in_threadpool(service.submit_upload, session,
                                              principal.project_id, store, settings, name,
                                              path, filename, spec)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return _accepted(dataset, response, base)
    if not content_type.startswith("application/json"):
        raise FieldError(("header", "content-type"),
                         "use application/json (built-in or URI) or multipart/form-data "
                         "(upload)")
    try:
        body = DatasetCreate.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(body_errors(exc)) from exc
    submit = service.submit_uri if isinstance(body.source, UriSource) else \
        service.submit_builtin
    dataset = await run_in_threadpool(submit, session, principal.project_id, settings, body)
    return _accepted(dataset, response, base)


@router.get("", response_model=Page[DatasetOut], summary="List datasets, newest first")
def list_datasets(session: SessionDep, principal: ReaderDep,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> Page[DatasetOut]:
    rows, total = service.list_page(session, principal.project_id, limit, offset)
    return Page(items=[to_out(d) for d in rows], total=total, limit=limit, offset=offset)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: uuid.UUID, session: SessionDep, principal: ReaderDep) -> DatasetOut:
    return to_out(service.get(session, principal.project_id, dataset_id))


@router.delete("/{dataset_id}", status_code=204,
               summary="Remove a dataset and its files; one still preparing is cancelled",
               responses={409: {"description": "An experiment uses the dataset"},
                          **WRITE_RESPONSES})
def delete_dataset(dataset_id: uuid.UUID, session: SessionDep, store: StoreDep,
                   principal: WriterDep) -> Response:
    service.delete(session, principal.project_id, store, dataset_id)
    return Response(status_code=204)


@router.post("/{dataset_id}/preview", response_model=PreviewOut,
             summary="Mix samples of every modality under an augmentation spec "
                     "(seeded, reproducible)",
             responses={409: {"description": "The dataset is not ready"}})
def preview(dataset_id: uuid.UUID, spec: PreviewRequest, session: SessionDep,
            store: StoreDep, base: BaseUrlDep, principal: ReaderDep) -> PreviewOut:
    dataset = service.get(session, principal.project_id, dataset_id)
    data = service.load_prepared(store, service.require_ready(dataset))
    batch = previews.compute(data, spec)
    return previews.describe(dataset_id, data, spec, batch, base)


# how preview.png's query holds the spec's lists and maps (``previews.png_query``)
_PNG_ENCODINGS = {"cutmix_minmax": "`min,max` (e.g. `0.2,0.8`)",
                  "ops": 'JSON (e.g. `{"image":"cutmix","audio":"specmix"}`)',
                  "modalities": 'JSON (e.g. `["image","text"]`)',
                  "manifold_layers": "JSON (e.g. `[0,1]`)"}


@router.get("/{dataset_id}/preview.png", response_class=Response,
            summary="PNG of a preview, one modality: images A | B | mixed (cutmix box "
                    "outlined), audio spectrograms, text tokens coloured by source, tabular "
                    "values",
            description="The preview's spec is read from the query string, one parameter "
                        "per field of the POST /preview body (the `png_url`s of a preview "
                        "reply carry them); lists and maps are JSON, `cutmix_minmax` is "
                        "`min,max`. Unknown parameters are ignored.",
            openapi_extra={"parameters": query_parameters(PreviewRequest, _PNG_ENCODINGS)},
            responses={200: {"content": {"image/png": {}}},
                       409: {"description": "The dataset is not ready"},
                       422: {"description": "Invalid spec, sample or modality; `loc` names "
                                            "the query parameter"}})
def preview_png(dataset_id: uuid.UUID, request: Request, session: SessionDep,
                store: StoreDep, principal: ReaderDep,
                sample: Annotated[int | None, Query(ge=0, le=63)] = None,
                modality: Annotated[str | None, Query(
                    min_length=1, max_length=64,
                    description="Which modality to draw (default: the first image modality, "
                                "else the first).")] = None) -> Response:
    params = previews.parse_png_query(dict(request.query_params))
    try:
        spec = PreviewRequest.model_validate(params)
    except ValidationError as exc:
        raise RequestValidationError(body_errors(exc, ("query",))) from exc
    if sample is not None and sample >= spec.n:
        raise FieldError(("query", "sample"), f"sample must be below n ({spec.n})")
    dataset = service.get(session, principal.project_id, dataset_id)
    data = service.load_prepared(store, service.require_ready(dataset))
    chosen = previews.check_modality(data, modality)
    batch = previews.compute(data, spec, where="query")
    return Response(previews.render(data, batch, sample, chosen), media_type="image/png")
