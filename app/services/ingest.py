"""Dispatch an uploaded file to the preparer for its format."""

from pathlib import Path

from app.ml.data import NpzLimits, PreparedDataset, prepare_npz
from app.ml.data.archive import prepare_archive
from app.ml.data.ingest_spec import IngestLimits, IngestSpec
from app.ml.data.parquet import prepare_parquet
from app.services.errors import FieldError
from app.settings import Settings

TABLE_FORMATS = {".parquet": "parquet", ".zip": "zip", ".tar.gz": "tar.gz", ".tgz": "tar.gz"}


def upload_suffix(filename: str) -> str:
    """The suffix an upload is saved under: its format's, or .npz."""
    lower = filename.lower()
    return next((s for s in TABLE_FORMATS if lower.endswith(s)), ".npz")


def upload_format(filename: str) -> str:
    """parquet, zip, tar.gz, or npz (the default, as before formats were added)."""
    return TABLE_FORMATS.get(upload_suffix(filename), "npz")


def limits(settings: Settings) -> IngestLimits:
    return IngestLimits(max_rows=settings.max_dataset_samples, max_side=settings.max_image_side,
                        max_total_bytes=settings.max_upload_bytes * 8)


def prepare_upload(settings: Settings, path: Path, filename: str,
                   spec: IngestSpec | None) -> tuple[str, PreparedDataset]:
    fmt = upload_format(filename)
    if fmt == "npz":
        if spec is not None:
            raise FieldError(("body", "spec"), "spec applies to .parquet, .zip and .tar.gz "
                                               "uploads, not .npz")
        npz_limits = NpzLimits(max_samples=settings.max_dataset_samples,
                               max_side=settings.max_image_side,
                               max_uncompressed_bytes=settings.max_upload_bytes * 8)
        return fmt, prepare_npz(path, npz_limits, original_name=filename)
    if fmt == "parquet":
        return fmt, prepare_parquet(path, spec, limits(settings), original_name=filename)
    return fmt, prepare_archive(path, spec, limits(settings), original_name=filename)
