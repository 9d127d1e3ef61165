"""Dataset files by format: quick checks at submission, the preparation in the job.

``check_file`` runs in the API before a preparation is queued and reads only
what is fast to read (an .npz's array headers, a Parquet footer and a few
cells, a zip's directory and manifest); ``prepare_file`` is the full, streaming
preparation the worker runs (``prepared_data.write`` stores its canonical form).
``read_samples`` reads a file sent for prediction with the same readers, checks
and caps (at most ``max_rows`` samples).
"""

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from app.ml.data import NpzLimits, PreparedDataset, prepare_npz
from app.ml.data.archive import prepare_archive, probe_archive, read_archive_samples
from app.ml.data.ingest_spec import IngestLimits, IngestSpec, ProgressFn
from app.ml.data.npz import read_npz_samples
from app.ml.data.npz_header import probe_npz
from app.ml.data.parquet import prepare_parquet, probe_parquet, read_parquet_samples
from app.ml.data.samples import Samples
from app.services.errors import FieldError
from app.settings import Settings

TABLE_FORMATS = {".parquet": "parquet", ".zip": "zip", ".tar.gz": "tar.gz", ".tgz": "tar.gz"}
FORMAT_SUFFIX = {"npz": ".npz", "parquet": ".parquet", "zip": ".zip", "tar.gz": ".tar.gz"}


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


def npz_limits(settings: Settings) -> NpzLimits:
    return NpzLimits(max_samples=settings.max_dataset_samples, max_side=settings.max_image_side,
                     max_uncompressed_bytes=settings.max_upload_bytes * 8)


def check_file(settings: Settings, path: Path, fmt: str, spec: IngestSpec | None,
               spec_loc: tuple[str, ...] = ("body", "spec")) -> None:
    """Refuse what can be known without preparing (``DataValidationError`` /
    ``FieldError``); what needs every row is found by ``prepare_file``."""
    if fmt == "npz":
        if spec is not None:
            raise FieldError(spec_loc, "spec applies to .parquet, .zip and .tar.gz "
                                       "files, not .npz")
        probe_npz(path, npz_limits(settings))
    elif fmt == "parquet":
        probe_parquet(path, spec, limits(settings))
    else:
        probe_archive(path, spec, limits(settings))


def prepare_file(settings: Settings, path: Path, fmt: str, spec: IngestSpec | None,
                 original_name: str, progress: ProgressFn | None = None) -> PreparedDataset:
    if fmt == "npz":
        return prepare_npz(path, npz_limits(settings), original_name=original_name)
    if fmt == "parquet":
        return prepare_parquet(path, spec, limits(settings), original_name=original_name,
                               progress=progress)
    return prepare_archive(path, spec, limits(settings), original_name=original_name,
                           progress=progress)


def read_samples(settings: Settings, path: Path, fmt: str, spec: IngestSpec | None,
                 fit: Callable[[IngestSpec], IngestSpec], max_rows: int,
                 original_name: str, spec_loc: tuple[str, ...] = ("body", "spec")) -> Samples:
    """A file sent for prediction, read synchronously: the upload checks and caps
    of its format, and no more than ``max_rows`` samples."""
    if fmt == "npz":
        if spec is not None:
            raise FieldError(spec_loc, "spec applies to .parquet, .zip and .tar.gz "
                                       "files, not .npz")
        caps = replace(npz_limits(settings),
                       max_samples=min(max_rows, settings.max_dataset_samples))
        probe_npz(path, caps, labelled=False)
        return read_npz_samples(path, caps, original_name=original_name)
    table = replace(limits(settings), max_rows=min(max_rows, settings.max_dataset_samples))
    if fmt == "parquet":
        return read_parquet_samples(path, spec, fit, table, original_name=original_name)
    return read_archive_samples(path, spec, fit, table, original_name=original_name)


