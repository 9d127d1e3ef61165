"""Ingest a Parquet table (pandas or Hugging Face ``datasets`` export) into the prepared form.

Columns become modalities as an ``IngestSpec`` says, or, without one, by type:
binary columns and ``{bytes, path}`` structs are images (audio when the bytes
are WAV/FLAC/OGG), the first string column is text, further string and
dictionary columns are categorical features, numeric and boolean columns are
tabular features; ``label`` is the label and ``split`` (if present) the split.

The file is read in batches (``IngestLimits.batch_size`` rows) into arrays
allocated once from the row count in the footer, so images and audio are never
all held encoded in memory. Problems are collected per column and reported
together (rows are 0-based, as in a pandas index); reading stops once
``max_errors`` problems were seen.

``TableBuilder`` is shared with the archive reader (manifest rows).
"""

import math
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.ml.data.errors import DataValidationError
from app.ml.data.ingest_spec import RESERVED_NAMES, IngestLimits, IngestSpec, ModalitySpec
from app.ml.data.media import (
    MediaError,
    decode_audio,
    decode_image,
    fit_length,
    image_channels,
    looks_like_audio,
    resample,
)
from app.ml.data.prepared import SPLITS, PreparedDataset
from app.ml.data.splits import stratified_split

MULTILABEL_REASON = ("holds lists (multi-label); multilabel datasets arrive with the "
                     "multilabel task (issue 4, not yet): use one label per row")
SPLIT_ALIASES = {"train": 0, "training": 0, "val": 1, "valid": 1, "validation": 1, "dev": 1,
                 "test": 2, "testing": 2, "0": 0, "1": 1, "2": 2}
SKIP = object()  # a cell whose problem the caller has already reported
_TOKEN = re.compile(r"\w+|[^\w\s]")
_INT = re.compile(r"[+-]?\d+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class Issues:
    """Problems per (column, problem): the rows (first ``cap`` of them), a count, a detail."""

    def __init__(self, cap: int, row_name: str = "row", row_base: int = 0,
                 row_names: list[str] | None = None) -> None:
        self.cap, self.row_name, self.row_base = cap, row_name, row_base
        self.row_names = row_names
        self._items: dict[tuple[str, str], list[Any]] = {}
        self.total = 0

    def add(self, field: str, problem: str, row: int, detail: str = "") -> None:
        entry = self._items.setdefault((field, problem), [[], 0, detail])
        if len(entry[0]) < self.cap:
            entry[0].append(self.name(row))
        entry[1] += 1
        self.total += 1

    def name(self, row: int) -> str | int:
        return self.row_names[row] if self.row_names else row + self.row_base

    def full(self) -> bool:
        return self.total >= self.cap

    def raise_if_any(self) -> None:
        if not self._items:
            return
        parts = []
        for (field, problem), (rows, count, detail) in self._items.items():
            if count == 1:
                text = f"{problem} at {self.row_name} {rows[0]}"
            else:
                more = ", …" if count > len(rows) else ""
                plural = "rows" if self.row_name == "row" else f"{self.row_name}s"
                text = (f"{problem} in {count} {plural}: "
                        + ", ".join(map(str, rows)) + more)
            if detail:
                text += f" ({'first: ' if count > 1 else ''}{detail})"
            parts.append((field, text))
        first = parts[0][0]
        reason = "; ".join(t if f == first else f"{f}: {t}" for f, t in parts)
        raise DataValidationError(first, reason)


def _as_bytes(value: Any, field: str, kind: str, row: int, issues: Issues) -> bytes | None:
    if value is SKIP:
        return None
    if isinstance(value, dict):  # Hugging Face Image()/Audio() export: {bytes, path}
        data = value.get("bytes")
        if data is None:
            if value.get("path"):
                issues.add(field, f"{kind} has a path but no bytes", row,
                           f"{value['path']}; upload an archive with the files instead")
            else:
                issues.add(field, f"missing {kind}", row)
            return None
        value = data
    if value is None or (isinstance(value, bytes | bytearray) and not value):
        issues.add(field, f"missing {kind}", row)
        return None
    if isinstance(value, str):
        issues.add(field, f"{kind} column holds text, not encoded bytes", row,
                   f"{value[:60]!r}; file paths belong in an archive's manifest")
        return None
    if not isinstance(value, bytes | bytearray):
        issues.add(field, f"{kind} is not encoded bytes", row, type(value).__name__)
        return None
    return bytes(value)


class TableBuilder:
    """Fills preallocated per-modality arrays chunk by chunk, then builds the dataset."""

    def __init__(self, spec: IngestSpec, n: int, limits: IngestLimits,
                 row_name: str = "row", row_base: int = 0,
                 row_names: list[str] | None = None) -> None:
        if spec.multilabel:
            raise DataValidationError(spec.label, MULTILABEL_REASON)
        if n == 0:
            raise DataValidationError("file", "has no rows")
        texts = [m for m, s in spec.modalities.items() if s.kind == "text"]
        if len(texts) > 1:
            raise DataValidationError(texts[1], "one text modality per dataset (the prepared "
                                      "form carries one vocabulary)")
        if not spec.modalities:
            raise DataValidationError("file", "no column to use as a modality (image, text, "
                                      "audio or tabular)")
        self.spec, self.n, self.limits = spec, n, limits
        self.issues = Issues(limits.max_errors, row_name, row_base, row_names)
        self.labels: list[Any] = [None] * n
        self.splits: list[Any] | None = [None] * n if spec.split else None
        self.images: dict[str, np.ndarray] = {}
        self.audio: dict[str, np.ndarray] = {}
        self.audio_rate: dict[str, tuple[int, int]] = {}  # modality -> (rate, first row)
        self.tokens: dict[str, list[list[str]]] = {}
        self.numeric: dict[str, np.ndarray] = {}
        self.cats: dict[str, list[list[Any]]] = {}
        for name, m in spec.modalities.items():
            if m.kind == "image":
                h, w = m.size
                if not (1 <= h <= limits.max_side and 1 <= w <= limits.max_side):
                    raise DataValidationError(name, f"image size {h}x{w}; each side must be 1 "
                                              f"to {limits.max_side}")
            elif m.kind == "text":
                if not 1 <= m.max_length <= limits.max_text_length:
                    raise DataValidationError(name, f"max_length {m.max_length}; expected 1 "
                                              f"to {limits.max_text_length}")
                if not 3 <= m.vocab_size <= limits.max_vocab:
                    raise DataValidationError(name, f"vocab_size {m.vocab_size}; expected 3 "
                                              f"to {limits.max_vocab}")
                self.tokens[name] = [[] for _ in range(n)]
            elif m.kind == "audio" and m.sample_rate:
                self._alloc_audio(name, m, m.sample_rate)
            elif m.kind == "tabular":
                width = len(m.columns) + len(m.categorical)
                if not 1 <= width <= limits.max_features:
                    raise DataValidationError(name, f"{width} features; expected 1 to "
                                              f"{limits.max_features}")
                self.numeric[name] = np.zeros((n, len(m.columns)), np.float32)
                self.cats[name] = [[None] * n for _ in m.categorical]

    def _alloc_audio(self, name: str, m: ModalitySpec, rate: int) -> None:
        length = round(rate * m.clip_seconds)
        if not 2 <= length <= self.limits.max_audio_length:
            raise DataValidationError(name, f"{length} samples per clip ({rate} Hz x "
                                      f"{m.clip_seconds} s); expected 2 to "
                                      f"{self.limits.max_audio_length}")
        self.audio[name] = np.zeros((self.n, length), np.float32)

    # -- one chunk ---------------------------------------------------------------------
    def add(self, start: int, columns: dict[str, list[Any]]) -> None:
        """Rows ``start ..`` of every needed column (python values; SKIP = already reported)."""
        issues = self.issues
        for i, value in enumerate(columns[self.spec.label]):
            self._label(start + i, value)
        if self.splits is not None:
            self.splits[start:start + len(columns[self.spec.split])] = columns[self.spec.split]
        for name, m in self.spec.modalities.items():
            if m.kind == "image":
                for i, value in enumerate(columns[m.column]):
                    self._image(name, m, start + i, value)
            elif m.kind == "audio":
                for i, value in enumerate(columns[m.column]):
                    self._audio(name, m, start + i, value)
            elif m.kind == "text":
                for i, value in enumerate(columns[m.column]):
                    row = start + i
                    if value is SKIP:
                        continue
                    words = tokenize(value) if isinstance(value, str) else []
                    if value is not None and not isinstance(value, str):
                        issues.add(m.column, "text is not a string", row,
                                   type(value).__name__)
                    elif not words:
                        issues.add(m.column, "empty text", row)
                    self.tokens[name][row] = words[:m.max_length]
            else:
                self._tabular(name, m, start, columns)
            if issues.full():
                break
        if issues.full():
            issues.raise_if_any()

    def _label(self, row: int, value: Any) -> None:
        if isinstance(value, list | tuple | np.ndarray):
            raise DataValidationError(self.spec.label, MULTILABEL_REASON)
        if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
            self.issues.add(self.spec.label, "missing", row)
        elif value is not SKIP:
            self.labels[row] = value

    def _image(self, name: str, m: ModalitySpec, row: int, value: Any) -> None:
        data = _as_bytes(value, m.column or name, "image", row, self.issues)
        if data is None:
            return
        try:
            if name not in self.images:
                channels = m.channels or image_channels(data, self.limits.max_image_pixels)
                self.images[name] = np.zeros((self.n, channels, *m.size), np.uint8)
            self.images[name][row] = decode_image(data, m.size, self.images[name].shape[1],
                                                  self.limits.max_image_pixels)
        except MediaError as exc:
            problem = "image over the pixel limit" if "limit" in str(exc) or "bomb" in str(
                exc) else "unreadable image"
            self.issues.add(m.column or name, problem, row, str(exc))

    def _audio(self, name: str, m: ModalitySpec, row: int, value: Any) -> None:
        field = m.column or name
        data = _as_bytes(value, field, "audio", row, self.issues)
        if data is None:
            return
        try:
            x, rate = decode_audio(data)
        except MediaError as exc:
            self.issues.add(field, "unreadable audio", row, str(exc))
            return
        if m.sample_rate:
            x = resample(x, rate, m.sample_rate)
        else:
            if name not in self.audio_rate:
                self.audio_rate[name] = (rate, row)
                self._alloc_audio(name, m, rate)
            ref, ref_row = self.audio_rate[name]
            if rate != ref:
                self.issues.add(field, "inconsistent audio sample rates", row,
                                f"{rate} Hz, but {self.issues.row_name} "
                                f"{self.issues.name(ref_row)} has {ref} Hz; set "
                                "sample_rate to resample")
                return
        if not np.isfinite(x).all():
            self.issues.add(field, "audio contains NaN or infinity", row)
            return
        self.audio[name][row] = fit_length(x, self.audio[name].shape[1])

    def _tabular(self, name: str, m: ModalitySpec, start: int,
                 columns: dict[str, list[Any]]) -> None:
        out = self.numeric[name]
        for j, col in enumerate(m.columns):
            for i, value in enumerate(columns[col]):
                row = start + i
                if value is SKIP:
                    continue
                try:
                    v = float(value) if value not in (None, "") else math.nan
                except (TypeError, ValueError):
                    self.issues.add(col, "not a number", row, repr(value)[:60])
                    continue
                if not math.isfinite(v):
                    self.issues.add(col, "missing or non-finite value", row)
                out[row, j] = v
        for j, col in enumerate(m.categorical):
            vals = columns[col]
            self.cats[name][j][start:start + len(vals)] = [
                None if v is SKIP or v in (None, "") else str(v) for v in vals]

    # -- the end -------------------------------------------------------------------------
    def finish(self, provenance: dict[str, Any]) -> PreparedDataset:
        self.issues.raise_if_any()
        labels, class_names = self._finish_labels()
        split = self._finish_split(labels)
        train = split == 0
        inputs: dict[str, torch.Tensor] = {}
        kinds: dict[str, str] = {}
        tabular_meta: dict[str, Any] = {}
        for name, m in self.spec.modalities.items():
            kinds[name] = m.kind
            if m.kind == "image":
                inputs[name] = torch.from_numpy(self.images[name])
            elif m.kind == "audio":
                inputs[name] = torch.from_numpy(self.audio[name])
            elif m.kind == "text":
                ids, vocab = self._finish_text(name, m, train)
                inputs[name] = torch.from_numpy(ids)
                provenance["vocab"] = vocab
            else:
                inputs[name], tabular_meta[name] = self._finish_tabular(name, m, train)
        if tabular_meta:
            provenance["tabular"] = tabular_meta
        return PreparedDataset(inputs=inputs, labels=torch.from_numpy(labels),
                               clean_labels=torch.from_numpy(labels.copy()),
                               split=torch.from_numpy(split), class_names=class_names,
                               modality_kinds=kinds, provenance=provenance)

    def _finish_labels(self) -> tuple[np.ndarray, list[str]]:
        field, values = self.spec.label, self.labels
        if all(isinstance(v, str) for v in values) and all(_INT.fullmatch(v) for v in values):
            values = [int(v) for v in values]
        if all(isinstance(v, int | float | np.integer | np.floating) for v in values):
            bad = [i for i, v in enumerate(values) if float(v) != int(v)]
            if bad:
                raise DataValidationError(field, f"{values[bad[0]]} at {self.issues.row_name} "
                                          f"{self.issues.name(bad[0])} is not a class "
                                          "(labels are integers or strings)")
            ints = np.array([int(v) for v in values], dtype=np.int64)
            uniq, codes = np.unique(ints, return_inverse=True)
            names = [str(u) for u in uniq]
        else:
            uniq, codes = np.unique(np.array([str(v) for v in values]), return_inverse=True)
            names = [str(u) for u in uniq]
        if len(names) < 2:
            raise DataValidationError(field, "needs at least 2 classes")
        if len(names) > self.limits.max_classes:
            raise DataValidationError(field, f"too many classes: {len(names)} is over the "
                                      f"limit of {self.limits.max_classes}")
        return codes.astype(np.int64), names

    def _finish_split(self, labels: np.ndarray) -> np.ndarray:
        if self.splits is None:
            split = stratified_split(labels, seed=0)
            field, hint = self.spec.label, "too few samples per class to make train/val/test " \
                                           "splits; "
        else:
            field, hint = self.spec.split or "split", ""
            split = np.zeros(self.n, np.uint8)
            for row, value in enumerate(self.splits):
                key = str(value).strip().lower() if value is not None else ""
                if isinstance(value, bool) or key not in SPLIT_ALIASES:
                    problem = "missing" if key == "" else "unknown split (use train/val/test)"
                    self.issues.add(field, problem, row, "" if key == "" else repr(value))
                    continue
                split[row] = SPLIT_ALIASES[key]
            self.issues.raise_if_any()
        for code, name in enumerate(SPLITS):
            if not (split == code).any():
                raise DataValidationError(field, f"{hint}the {name} split has no samples")
        return split

    def _finish_text(self, name: str, m: ModalitySpec,
                     train: np.ndarray) -> tuple[np.ndarray, list[str]]:
        rows = self.tokens[name]
        counts: Counter[str] = Counter()
        for r in np.flatnonzero(train):
            counts.update(rows[r])
        words = sorted(counts, key=lambda w: (-counts[w], w))[:m.vocab_size - 2]
        vocab = ["<pad>", "<unk>", *words]
        index = {w: i for i, w in enumerate(vocab)}
        ids = np.zeros((self.n, m.max_length), np.int64)
        for r, toks in enumerate(rows):
            ids[r, :len(toks)] = [index.get(t, 1) for t in toks]
        return ids, vocab

    def _finish_tabular(self, name: str, m: ModalitySpec,
                        train: np.ndarray) -> tuple[torch.Tensor, dict[str, Any]]:
        num = self.numeric[name]
        meta: dict[str, Any] = {"columns": list(m.columns), "categorical": {}}
        if m.columns and m.normalise:
            mean = num[train].mean(axis=0)
            std = num[train].std(axis=0)
            std = np.where(std > 1e-12, std, 1.0).astype(np.float32)
            num = (num - mean) / std
            meta.update(mean=[float(x) for x in mean], std=[float(x) for x in std])
        parts = [num.astype(np.float32)]
        for col, values in zip(m.categorical, self.cats[name], strict=True):
            cats = sorted({values[r] for r in np.flatnonzero(train) if values[r] is not None})
            if len(cats) > self.limits.max_categories:
                raise DataValidationError(col, f"too many categories: {len(cats)} is over the "
                                          f"limit of {self.limits.max_categories}")
            lookup = {c: i + 1 for i, c in enumerate(cats)}  # 0 = missing or unseen in train
            parts.append(np.array([lookup.get(v, 0) for v in values],
                                  np.float32).reshape(-1, 1))
            meta["categorical"][col] = cats
        return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1))), meta


def modality_name(column: str, taken: set[str]) -> str:
    name = column if column not in RESERVED_NAMES else f"{column}_input"
    while name in taken:
        name += "_"
    return name


def check_columns(spec: IngestSpec, available: list[str]) -> None:
    wanted = [spec.label, *([spec.split] if spec.split else [])]
    for name, m in spec.modalities.items():
        if m.kind != "tabular" and not m.column:
            raise DataValidationError(name, f"a {m.kind} modality needs a column")
        wanted += m.source_columns()
    for col in wanted:
        if col not in available:
            listed = ", ".join(available[:30]) + (", …" if len(available) > 30 else "")
            raise DataValidationError(col, f"no such column (columns: {listed})")


# -- Parquet -----------------------------------------------------------------------------
def _infer(pf: Any, spec: IngestSpec) -> tuple[IngestSpec, list[str]]:
    import pyarrow as pa

    schema = pf.schema_arrow
    split = spec.split or ("split" if "split" in schema.names else None)
    modalities: dict[str, ModalitySpec] = {}
    numeric: list[str] = []
    categorical: list[str] = []
    ignored: list[str] = []
    text_seen = False
    first = None
    for f in schema:
        if f.name in (spec.label, split):
            continue
        t = f.type
        binary = pa.types.is_binary(t) or pa.types.is_large_binary(t)
        struct = pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
        if binary or struct:
            if first is None:
                first = pf.read_row_group(0) if pf.num_row_groups else None
            kind = "image"
            if first is not None:
                for v in first.column(f.name).to_pylist():
                    data = v.get("bytes") if isinstance(v, dict) else v
                    if data:
                        kind = "audio" if looks_like_audio(data) else "image"
                        break
            modalities[modality_name(f.name, set(modalities))] = ModalitySpec(
                kind=kind, column=f.name)
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


def prepare_parquet(path: Path, spec: IngestSpec | None = None,
                    limits: IngestLimits | None = None,
                    original_name: str = "") -> PreparedDataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    limits = limits or IngestLimits()
    spec = spec or IngestSpec()
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError("file", f"not a readable Parquet file: {exc}") from exc
    n = pf.metadata.num_rows
    if n > limits.max_rows:
        raise DataValidationError("file", f"parquet: {n} rows is over the limit of "
                                  f"{limits.max_rows}")
    names = pf.schema_arrow.names
    if spec.label not in names:
        raise DataValidationError(spec.label, "no label column (columns: "
                                  f"{', '.join(names[:30])})")
    if pa.types.is_list(pf.schema_arrow.field(spec.label).type) or pa.types.is_large_list(
            pf.schema_arrow.field(spec.label).type):
        raise DataValidationError(spec.label, MULTILABEL_REASON)
    ignored: list[str] = []
    if not spec.modalities:
        spec, ignored = _infer(pf, spec)
    elif spec.split is None and "split" in names:
        spec = replace(spec, split="split")
    check_columns(spec, names)
    builder = TableBuilder(spec, n, limits)
    needed = list(dict.fromkeys([spec.label, *([spec.split] if spec.split else []),
                                 *(c for m in spec.modalities.values()
                                   for c in m.source_columns())]))
    start = 0
    try:
        for batch in pf.iter_batches(batch_size=limits.batch_size, columns=needed):
            builder.add(start, {c: batch.column(c).to_pylist() for c in needed})
            start += batch.num_rows
    except pa.ArrowException as exc:
        raise DataValidationError("file", f"unreadable Parquet data near row {start}: "
                                  f"{exc}") from exc
    provenance: dict[str, Any] = {"upload": original_name or path.name, "format": "parquet",
                                  "modalities": {k: {"kind": m.kind,
                                                     "columns": list(m.source_columns())}
                                                 for k, m in spec.modalities.items()}}
    if ignored:
        provenance["ignored_columns"] = ignored
    return builder.finish(provenance)
