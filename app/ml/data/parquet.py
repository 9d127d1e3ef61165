"""Ingest a Parquet table (pandas or Hugging Face ``datasets`` export) into the prepared form.

Columns become modalities as an ``IngestSpec`` says, or, without one, by type:
binary columns and ``{bytes, path}`` structs are images (audio when the bytes
are WAV/FLAC/OGG), the first string column is text, further string and
dictionary columns are categorical features, numeric and boolean columns are
tabular features; ``label`` is the label and ``split`` (if present) the split.
A label column of lists (``list<string>`` / ``list<int>``) makes a multi-label
dataset: uint8 (N, K) multi-hot labels.

Streaming: the file is read in batches of ``IngestLimits.batch_size`` rows (fewer
when rows are large: about ``BATCH_BYTES`` of encoded cells), only the needed
columns, data page by data page within a row group (no pre-buffering of whole
column chunks), into a ``TableBuilder`` whose arrays are allocated once from
the row count in the footer. Peak memory is the prepared size plus one batch of
encoded cells and a few Parquet pages (writers make them about 1 MB), whatever
the file's size or row-group layout. Problems are
collected per column and reported together (rows are 0-based, as in a pandas
index); reading stops once ``max_errors`` problems were seen.

``probe_parquet`` does the checks that need only the footer and a few cells
(readable, row count, label and spec columns, inferred modalities), so a
service can refuse a bad file before queueing its preparation.
"""

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.ml.data.errors import DataValidationError
from app.ml.data.ingest_spec import IngestLimits, IngestSpec, ModalitySpec, ProgressFn
from app.ml.data.media import looks_like_audio
from app.ml.data.prepared import PreparedDataset
from app.ml.data.samples import Samples
from app.ml.data.table import (
    TableBuilder,
    check_columns,
    check_spec,
    modality_name,
    needed_columns,
)

_READ_BUFFER = 1024 * 1024  # bytes read at a time within a column chunk
_SNIFF_ROWS = 64  # cells looked at to tell images from audio
BATCH_BYTES = 64 * 1024 * 1024  # encoded cells decoded at a time, about


def open_parquet(path: Path, limits: IngestLimits) -> Any:
    """The ``ParquetFile``, streaming-configured, or a ``DataValidationError``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError("file", f"not a readable Parquet file: {exc}") from exc
    n = pf.metadata.num_rows
    if n > limits.max_rows:
        raise DataValidationError("file", f"parquet: {n} rows is over the limit of "
                                  f"{limits.max_rows}")
    if n == 0:
        raise DataValidationError("file", "has no rows")
    columns = pf.metadata.num_columns
    if columns > limits.max_columns:
        raise DataValidationError("file", f"parquet: {columns} columns is over the limit of "
                                  f"{limits.max_columns}")
    return pf


def batch_rows(pf: Any, columns: list[str], limits: IngestLimits) -> int:
    """Rows per batch: ``limits.batch_size``, fewer when rows are large (images,
    audio), so a batch holds about ``BATCH_BYTES`` of encoded cells."""
    meta = pf.metadata
    wanted = set(columns)
    total = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            if chunk.path_in_schema.split(".", 1)[0] in wanted:
                total += chunk.total_uncompressed_size
    per_row = total / max(meta.num_rows, 1)
    return max(1, min(limits.batch_size, int(BATCH_BYTES / max(per_row, 1.0))))


def _sniff(pf: Any, column: str) -> str:
    """image or audio, from the first non-empty cells of a binary column."""
    batch = next(pf.iter_batches(batch_size=_SNIFF_ROWS, columns=[column]), None)
    for v in batch.column(0).to_pylist() if batch is not None else []:
        data = v.get("bytes") if isinstance(v, dict) else v
        if data:
            return "audio" if looks_like_audio(data) else "image"
    return "image"


def _infer(pf: Any, spec: IngestSpec) -> tuple[IngestSpec, list[str]]:
    import pyarrow as pa

    schema = pf.schema_arrow
    split = spec.split or ("split" if "split" in schema.names else None)
    modalities: dict[str, ModalitySpec] = {}
    numeric: list[str] = []
    categorical: list[str] = []
    ignored: list[str] = []
    text_seen = False
    for f in schema:
        if f.name in (*spec.label_columns(), split):
            continue
        t = f.type
        binary = pa.types.is_binary(t) or pa.types.is_large_binary(t)
        struct = pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
        if binary or struct:
            modalities[modality_name(f.name, set(modalities))] = ModalitySpec(
                kind=_sniff(pf, f.name), column=f.name)
        elif pa.types.is_dictionary(t):
            categorical.append(f.name)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            if text_seen:
                categorical.append(f.name)
            else:
                text_seen = True
                modalities[modality_name(f.name, set(modalities))] = ModalitySpec(
                    kind="text", column=f.name)
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            numeric.append(f.name)
        else:
            ignored.append(f.name)
    if numeric or categorical:
        modalities[modality_name("tabular", set(modalities))] = ModalitySpec(
            kind="tabular", columns=tuple(numeric), categorical=tuple(categorical))
    return replace(spec, modalities=modalities, split=split), ignored


def _label_kind(field: Any) -> str:
    """single or multi, from the label column's Arrow type."""
    import pyarrow as pa

    t = field.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        item = t.value_type
        if pa.types.is_dictionary(item):
            item = item.value_type
        if not (pa.types.is_integer(item) or pa.types.is_string(item)
                or pa.types.is_large_string(item)):
            raise DataValidationError(field.name, f"a multi-label column holds lists of "
                                      f"integers or strings, not of {item}")
        return "multi"
    if pa.types.is_dictionary(t):
        t = t.value_type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise DataValidationError(field.name, f"label column type {t} is not integer, "
                                  "string or a list of them (multi-label)")
    return "single"


def plan_parquet(pf: Any, spec: IngestSpec, limits: IngestLimits,
                 fit: Callable[[IngestSpec], IngestSpec] | None = None,
                 ) -> tuple[IngestSpec, list[str]]:
    """The spec this file is read with (inferred where not given), and ignored columns.

    ``fit`` (samples sent for prediction) adjusts the planned spec to a model, and
    the label column becomes optional."""
    names = pf.schema_arrow.names
    labelled = spec.label in names
    if not labelled and fit is None:
        raise DataValidationError(spec.label, "no label column (columns: "
                                  f"{', '.join(names[:30])})")
    if labelled and _label_kind(pf.schema_arrow.field(spec.label)) == "multi":
        spec = replace(spec, multilabel=True)
    ignored: list[str] = []
    if not spec.modalities:
        spec, ignored = _infer(pf, spec)
    elif spec.split is None and "split" in names:
        spec = replace(spec, split="split")
    if fit is not None:
        spec = fit(spec)
    check_columns(spec, names, labelled)
    check_spec(spec, limits)
    return spec, ignored


def probe_parquet(path: Path, spec: IngestSpec | None = None,
                  limits: IngestLimits | None = None) -> IngestSpec:
    """Refuse what the footer and a few cells show is wrong; the spec it would use."""
    limits = limits or IngestLimits()
    return plan_parquet(open_parquet(path, limits), spec or IngestSpec(), limits)[0]


def prepare_parquet(path: Path, spec: IngestSpec | None = None,
                    limits: IngestLimits | None = None, original_name: str = "",
                    progress: ProgressFn | None = None) -> PreparedDataset:

    limits = limits or IngestLimits()
    pf = open_parquet(path, limits)
    spec, ignored = plan_parquet(pf, spec or IngestSpec(), limits)
    builder = TableBuilder(spec, pf.metadata.num_rows, limits, progress=progress)
    needed = needed_columns(spec)
    _stream_rows(pf, needed, limits, builder)
    provenance: dict[str, Any] = {"upload": original_name or path.name, "format": "parquet",
                                  "modalities": {k: {"kind": m.kind,
                                                     "columns": list(m.source_columns())}
                                                 for k, m in spec.modalities.items()}}
    if ignored:
        provenance["ignored_columns"] = ignored
    return builder.finish(provenance)


def _stream_rows(pf: Any, needed: list[str], limits: IngestLimits, builder: TableBuilder) -> None:
    """Feed the file's rows to ``builder`` batch by batch (the needed columns only)."""
    import pyarrow as pa

    start = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows(pf, needed, limits),
                                     columns=needed, use_threads=False):
            builder.add(start, {c: batch.column(c).to_pylist() for c in needed})
            start += batch.num_rows
    except pa.ArrowException as exc:
        raise DataValidationError("file", f"unreadable Parquet data near row {start}: "
                                  f"{exc}") from exc


def read_parquet_samples(path: Path, spec: IngestSpec | None,
                         fit: Callable[[IngestSpec], IngestSpec],
                         limits: IngestLimits | None = None,
                         original_name: str = "") -> Samples:
    """A Parquet file sent for prediction, read as an upload is (same checks, caps
    and streaming), with ``fit`` making the spec the model's; the label column is
    optional and nothing is fitted to the file (see ``samples``)."""

    limits = limits or IngestLimits()
    pf = open_parquet(path, limits)
    spec, _ = plan_parquet(pf, spec or IngestSpec(), limits, fit)
    labelled = spec.label in pf.schema_arrow.names
    builder = TableBuilder(spec, pf.metadata.num_rows, limits, predicting=True,
                           labelled=labelled)
    needed = needed_columns(spec, labelled)
    _stream_rows(pf, needed, limits, builder)
    return builder.finish_samples({"upload": original_name or path.name, "format": "parquet"})
