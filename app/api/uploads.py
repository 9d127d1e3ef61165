"""Multipart file uploads, shared by the routes that take one (a dataset to register,
samples to predict): the size cap, the ``file`` and ``spec`` form fields, and the
copy to disk, so every upload is refused and read the same way."""

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from app.ml.data.ingest_spec import IngestSpec
from app.schemas.ingest import IngestSpecIn
from app.services.errors import FieldError
from app.services.ingest import upload_suffix
from app.settings import Settings


def body_errors(exc: ValidationError, prefix: tuple[str, ...] = ("body",)) -> list[Any]:
    """A pydantic error as FastAPI's 422 ``detail``, located under ``prefix``."""
    errors = []
    for e in exc.errors(include_url=False):
        error = {**e, "loc": (*prefix, *e["loc"])}
        if isinstance(error.get("input"), bytes):  # a body that is not even UTF-8
            error["input"] = error["input"].decode("utf-8", "replace")
        errors.append(error)
    return errors


def ingest_spec(raw: object) -> IngestSpec | None:
    """The ``spec`` form field, validated; errors under ``body.spec``."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise FieldError(("body", "spec"), "spec must be a JSON form field, not a file")
    try:
        return IngestSpecIn.model_validate_json(raw).to_spec()
    except ValidationError as exc:
        raise RequestValidationError(body_errors(exc, ("body", "spec"))) from exc


async def upload_form(request: Request, settings: Settings,
                      max_fields: int = 4) -> tuple[FormData, UploadFile, str]:
    """The form, its ``file`` part and that file's name; a body declared over the
    upload cap is refused before it is read."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > settings.max_upload_bytes + 64 * 1024:
        raise FieldError(("body", "file"), f"file: too large (limit "
                                           f"{settings.max_upload_bytes} bytes)")
    form = await request.form(max_files=1, max_fields=max_fields)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise FieldError(("body", "file"), "missing file part")
    return form, upload, upload.filename or "upload.npz"


async def save_upload(upload: UploadFile, limit: int, folder: Path,
                      filename: str = "upload.npz") -> Path:
    """Copy the upload to disk in chunks, stopping at ``limit`` bytes."""
    path = folder / ("upload" + upload_suffix(filename))
    written = 0
    with path.open("wb") as out:
        while chunk := await upload.read(1024 * 1024):
            written += len(chunk)
            if written > limit:
                raise FieldError(("body", "file"), f"file: too large (limit {limit} bytes)")
            out.write(chunk)
    return path
