"""Build the prepared form from a table read in chunks (Parquet rows, manifest rows).

``TableBuilder`` receives the columns it needs chunk by chunk, as Python values
(``SKIP`` marks a cell whose problem the reader already reported), and writes
them straight into arrays allocated once from the row count: images, audio and
tabular features at their prepared size, text as word ids, labels, categories
and splits as small integer codes (see ``columns``). So what a preparation
holds is about the prepared dataset plus one chunk of decoded input, whatever
the size of the source. Problems are collected per column and reported together
(``issues``); reading stops once ``max_errors`` problems were seen.
"""

import re
from typing import Any

import numpy as np
import torch

from app.ml.data.columns import CategoryColumn, LabelColumn, TokenColumn, strata
from app.ml.data.errors import DataValidationError
from app.ml.data.ingest_spec import (
    RESERVED_NAMES,
    IngestLimits,
    IngestSpec,
    ModalitySpec,
    ProgressFn,
)
from app.ml.data.issues import Issues
from app.ml.data.media import (
    MediaError,
    decode_audio,
    decode_image,
    fit_length,
    image_channels,
    resample,
)
from app.ml.data.prepared import SPLITS, PreparedDataset
from app.ml.data.samples import Samples
from app.ml.data.splits import stratified_split

SPLIT_ALIASES = {"train": 0, "training": 0, "val": 1, "valid": 1, "validation": 1, "dev": 1,
                 "test": 2, "testing": 2, "0": 0, "1": 1, "2": 2}
SKIP = object()  # a cell whose problem the caller has already reported
_NO_SPLIT = 255
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def check_spec(spec: IngestSpec, limits: IngestLimits) -> None:
    """What a spec alone says is wrong (no data read): sizes and counts out of range."""
    texts = [m for m, s in spec.modalities.items() if s.kind == "text"]
    if len(texts) > 1:
        raise DataValidationError(texts[1], "one text modality per dataset (the prepared "
                                  "form carries one vocabulary)")
    if not spec.modalities:
        raise DataValidationError("file", "no column to use as a modality (image, text, "
                                  "audio or tabular)")
    if spec.tasks and spec.multilabel:
        raise DataValidationError(spec.label, "a task's label column holds one class per "
                                  "row; this one holds lists (multi-label), which tasks "
                                  "do not take")
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
        elif m.kind == "audio" and m.sample_rate:
            audio_length(name, m, m.sample_rate, limits)
        elif m.kind == "tabular":
            width = len(m.columns) + len(m.categorical)
            if not 1 <= width <= limits.max_features:
                raise DataValidationError(name, f"{width} features; expected 1 to "
                                          f"{limits.max_features}")


def audio_length(name: str, m: ModalitySpec, rate: int, limits: IngestLimits) -> int:
    length = round(rate * m.clip_seconds)
    if not 2 <= length <= limits.max_audio_length:
        raise DataValidationError(name, f"{length} samples per clip ({rate} Hz x "
                                  f"{m.clip_seconds} s); expected 2 to "
                                  f"{limits.max_audio_length}")
    return length


def modality_name(column: str, taken: set[str]) -> str:
    name = column if column not in RESERVED_NAMES else f"{column}_input"
    while name in taken:
        name += "_"
    return name


def check_columns(spec: IngestSpec, available: list[str], labelled: bool = True) -> None:
    wanted = [*(spec.label_columns() if labelled else []),
              *([spec.split] if spec.split else [])]
    for name, m in spec.modalities.items():
        if m.kind != "tabular" and not m.column:
            raise DataValidationError(name, f"a {m.kind} modality needs a column")
        wanted += m.source_columns()
    for col in wanted:
        if col not in available:
            listed = ", ".join(available[:30]) + (", …" if len(available) > 30 else "")
            raise DataValidationError(col, f"no such column (columns: {listed})")


def needed_columns(spec: IngestSpec, labelled: bool = True) -> list[str]:
    return list(dict.fromkeys([*(spec.label_columns() if labelled else []),
                               *([spec.split] if spec.split else []),
                               *(c for m in spec.modalities.values()
                                 for c in m.source_columns())]))


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
    """Fills preallocated per-modality arrays chunk by chunk, then builds the dataset
    (``finish``) or, for samples sent for prediction (``predicting``: labels
    optional, no split, nothing fitted to the file), ``finish_samples``."""

    def __init__(self, spec: IngestSpec, n: int, limits: IngestLimits,
                 row_name: str = "row", row_base: int = 0,
                 row_names: list[str] | None = None, progress: ProgressFn | None = None,
                 *, predicting: bool = False, labelled: bool = True) -> None:
        if n == 0:
            raise DataValidationError("file", "has no rows")
        check_spec(spec, limits)
        self.spec, self.n, self.limits, self.progress = spec, n, limits, progress
        self.predicting = predicting
        self.issues = Issues(limits.max_errors, row_name, row_base, row_names)
        self.labels = LabelColumn(spec.label, n, spec.multilabel, limits.max_classes,
                                  self.issues, optional=predicting) if labelled else None
        # multi-task: the label columns of the tasks after the first (``labels``)
        self.task_columns = {
            task: LabelColumn(column, n, False, limits.max_classes, self.issues,
                              optional=predicting)
            for task, column in list(spec.tasks.items())[1:]} if labelled else {}
        self.splits = (np.full(n, _NO_SPLIT, np.uint8) if spec.split and not predicting
                       else None)
        self.images: dict[str, np.ndarray] = {}  # allocated at the first decodable image
        self.audio: dict[str, np.ndarray] = {}
        self.audio_rate: dict[str, tuple[int, int]] = {}  # modality -> (rate, first row)
        self.tokens: dict[str, TokenColumn] = {}
        self.tabular: dict[str, np.ndarray] = {}  # numeric columns, then categorical codes
        self.cats: dict[str, list[CategoryColumn]] = {}
        self.rows_done = 0
        for name, m in spec.modalities.items():
            if m.kind == "text":
                self.tokens[name] = TokenColumn(n, m.max_length)
            elif m.kind == "audio" and m.sample_rate:
                self.audio[name] = np.zeros((n, audio_length(name, m, m.sample_rate, limits)),
                                            np.float32)
            elif m.kind == "tabular":
                self.tabular[name] = np.zeros((n, len(m.columns) + len(m.categorical)),
                                              np.float32)
                self.cats[name] = [CategoryColumn(n) for _ in m.categorical]

    # -- one chunk ---------------------------------------------------------------------
    def add(self, start: int, columns: dict[str, list[Any]]) -> None:
        """Rows ``start ..`` of every needed column (python values; SKIP = already reported)."""
        issues = self.issues
        rows = len(next(iter(columns.values()))) if columns else 0
        if self.labels is not None:
            for i, value in enumerate(columns[self.spec.label]):
                if value is not SKIP:
                    self.labels.add(start + i, value)
        for task, column in self.task_columns.items():
            for i, value in enumerate(columns[self.spec.tasks[task]]):
                if value is not SKIP:
                    column.add(start + i, value)
        if self.splits is not None:
            self._splits(start, columns[self.spec.split or "split"])
        for name, m in self.spec.modalities.items():
            if m.kind == "image":
                for i, value in enumerate(columns[m.column or name]):
                    self._image(name, m, start + i, value)
            elif m.kind == "audio":
                for i, value in enumerate(columns[m.column or name]):
                    self._audio(name, m, start + i, value)
            elif m.kind == "text":
                self._text(name, m, start, columns[m.column or name])
            else:
                self._tabular(name, m, start, columns)
            if issues.full():
                break
        if issues.full():
            issues.raise_if_any()
        self.rows_done = max(self.rows_done, start + rows)
        if self.progress is not None:
            self.progress("reading", self.rows_done / self.n)

    def _splits(self, start: int, values: list[Any]) -> None:
        assert self.splits is not None
        field = self.spec.split or "split"
        for i, value in enumerate(values):
            if value is SKIP:
                continue
            key = str(value).strip().lower() if value is not None else ""
            if isinstance(value, bool) or key not in SPLIT_ALIASES:
                problem = "missing" if key == "" else "unknown split (use train/val/test)"
                self.issues.add(field, problem, start + i, "" if key == "" else repr(value))
                continue
            self.splits[start + i] = SPLIT_ALIASES[key]

    def _text(self, name: str, m: ModalitySpec, start: int, values: list[Any]) -> None:
        field = m.column or name
        for i, value in enumerate(values):
            row = start + i
            if value is SKIP:
                continue
            words = tokenize(value) if isinstance(value, str) else []
            if value is not None and not isinstance(value, str):
                self.issues.add(field, "text is not a string", row, type(value).__name__)
            elif not words:
                self.issues.add(field, "empty text", row)
            self.tokens[name].add(row, words[:m.max_length])

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
                self.audio[name] = np.zeros((self.n, audio_length(name, m, rate, self.limits)),
                                            np.float32)
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
        out = self.tabular[name]
        for j, col in enumerate(m.columns):
            for i, value in enumerate(columns[col]):
                row = start + i
                if value is SKIP:
                    continue
                try:
                    v = float(value) if value not in (None, "") else float("nan")
                except (TypeError, ValueError):
                    self.issues.add(col, "not a number", row, repr(value)[:60])
                    continue
                if not np.isfinite(v):
                    self.issues.add(col, "missing or non-finite value", row)
                out[row, j] = v
        for cat, col in zip(self.cats[name], m.categorical, strict=True):
            for i, value in enumerate(columns[col]):
                if value is not SKIP:
                    cat.add(start + i, value)

    # -- the end -------------------------------------------------------------------------
    def finish(self, provenance: dict[str, Any]) -> PreparedDataset:
        self.issues.raise_if_any()
        if self.progress is not None:
            self.progress("finishing", 0.0)
        assert self.labels is not None and not self.predicting
        labels, class_names = self.labels.finish()
        split = self._finish_split(labels)
        inputs, kinds = self._finish_inputs(split == 0, provenance)
        data = PreparedDataset(inputs=inputs, labels=torch.from_numpy(labels),
                               clean_labels=torch.from_numpy(labels.copy()),
                               split=torch.from_numpy(split), class_names=class_names,
                               modality_kinds=kinds, provenance=provenance)
        if self.spec.tasks:
            others = {task: column.finish() for task, column in self.task_columns.items()}
            first = next(iter(self.spec.tasks))
            data.with_tasks({first: class_names, **{t: n for t, (_, n) in others.items()}},
                            {t: torch.from_numpy(y) for t, (y, _) in others.items()})
        return data

    def finish_samples(self, provenance: dict[str, Any]) -> Samples:
        """The rows as samples for prediction: every row counts as seen (the file's
        own words and categories, coded in order; ``samples.apply_encoding`` maps
        them to a model's), labels per row where the file gives them."""
        self.issues.raise_if_any()
        labels = self.labels.per_row() if self.labels is not None else None
        tasks = None
        if self.spec.tasks and labels is not None:
            first = next(iter(self.spec.tasks))
            tasks = {first: labels, **{task: column.per_row()
                                       for task, column in self.task_columns.items()}}
        inputs, kinds = self._finish_inputs(np.ones(self.n, np.bool_), provenance)
        return Samples(inputs, kinds, labels, provenance, tasks)

    def _finish_inputs(self, train: np.ndarray, provenance: dict[str, Any]
                       ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Per-modality tensors; vocabulary, categories and statistics from ``train``
        rows, recorded in ``provenance``."""
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
                ids, vocab = self.tokens[name].finish(train, m.vocab_size)
                inputs[name] = torch.from_numpy(ids)
                provenance["vocab"] = vocab
            else:
                inputs[name], tabular_meta[name] = self._finish_tabular(name, m, train)
        if tabular_meta:
            provenance["tabular"] = tabular_meta
        if self.spec.multilabel:
            provenance["multilabel"] = True
        return inputs, kinds

    def _finish_split(self, labels: np.ndarray) -> np.ndarray:
        if self.splits is None:
            split = stratified_split(strata(labels), seed=0)
            field, hint = self.spec.label, "too few samples per class to make train/val/test " \
                                           "splits; "
        else:
            field, hint, split = self.spec.split or "split", "", self.splits
        for code, name in enumerate(SPLITS):
            if not (split == code).any():
                raise DataValidationError(field, f"{hint}the {name} split has no samples")
        return split

    def _finish_tabular(self, name: str, m: ModalitySpec,
                        train: np.ndarray) -> tuple[torch.Tensor, dict[str, Any]]:
        out = self.tabular[name]
        meta: dict[str, Any] = {"columns": list(m.columns), "categorical": {}}
        if m.columns and m.normalise:
            means, stds = [], []
            for j in range(len(m.columns)):  # one column at a time: no copy of the table
                values = out[train, j].astype(np.float64)
                mean, std = float(values.mean()), float(values.std())
                std = std if std > 1e-12 else 1.0
                out[:, j] -= np.float32(mean)
                out[:, j] /= np.float32(std)
                means.append(mean)
                stds.append(std)
            meta.update(mean=means, std=stds)
        for j, (col, cat) in enumerate(zip(m.categorical, self.cats[name], strict=True)):
            meta["categorical"][col] = cat.finish(train, col, self.limits.max_categories,
                                                  out[:, len(m.columns) + j])
        return torch.from_numpy(out), meta
