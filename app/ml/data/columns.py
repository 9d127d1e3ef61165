"""Streaming column encoders: values become small integer codes as rows arrive.

A table is read chunk by chunk; these keep what the prepared form needs in
arrays allocated once from the row count (labels, token ids, category codes),
plus one dictionary of the distinct values, and never a Python object per row.
Class, vocabulary and category orders are decided at the end, when every row
(and the split) is known, by remapping the provisional codes in place.
"""

import math
import re
from array import array
from collections.abc import Hashable
from typing import Any

import numpy as np

from app.ml.data.errors import DataValidationError
from app.ml.data.ingest_spec import MULTILABEL_SEPARATOR
from app.ml.data.issues import Issues

_INT = re.compile(r"[+-]?\d+")
_CHUNK = 65_536  # rows per step when remapping or counting over a whole column


class ValueCodes:
    """Distinct values → codes 1, 2, … in order of first appearance (0 = none)."""

    def __init__(self, track_rows: bool = False) -> None:
        self.index: dict[Hashable, int] = {}
        self.values: list[Hashable] = []
        self.first_rows: list[int] | None = [] if track_rows else None

    def code(self, value: Hashable, row: int = 0) -> int:
        found = self.index.get(value)
        if found is not None:
            return found
        self.values.append(value)
        self.index[value] = len(self.values)
        if self.first_rows is not None:
            self.first_rows.append(row)
        return len(self.values)

    def __len__(self) -> int:
        return len(self.values)


def label_key(value: Any) -> Hashable | None:
    """A label cell as a dictionary key; None when it is missing."""
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, str):
        return value if value else None
    return str(value)


def is_list(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


class LabelColumn:
    """The label of every row: one class (int64 (N,)) or several (uint8 (N, K) multi-hot).

    Classes are integers (ordered numerically; "7" counts as 7 when every label
    is an integer string) or else strings (ordered as text). ``optional``
    (samples sent for prediction): a missing label is no problem, the row just
    has none (``given``), and one class is enough.
    """

    def __init__(self, field: str, n: int, multilabel: bool, max_classes: int,
                 issues: Issues, optional: bool = False) -> None:
        self.field, self.n, self.multilabel = field, n, multilabel
        self.max_classes, self.issues, self.optional = max_classes, issues, optional
        self.codes = ValueCodes(track_rows=True)
        self.single = np.zeros(0 if multilabel else n, np.int32)
        self.rows = array("q")  # multi-label: one (row, code) pair per label given
        self.items = array("i")
        self.given = np.zeros(n, np.bool_)  # rows with a label

    def _missing(self, row: int) -> None:
        if not self.optional:
            self.issues.add(self.field, "missing", row)

    def add(self, row: int, value: Any) -> None:
        if self.multilabel:
            self._add_many(row, value)
            return
        if is_list(value):
            self.issues.add(self.field, "holds a list (multi-label); set multilabel in the "
                                        "spec", row)
            return
        key = label_key(value)
        if key is None:
            self._missing(row)
            return
        self.single[row] = self._code(key, row)
        self.given[row] = True

    def _add_many(self, row: int, value: Any) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
            self._missing(row)
            return
        self.given[row] = True
        if is_list(value):
            items = list(value)
        elif isinstance(value, str):
            items = [v.strip() for v in value.split(MULTILABEL_SEPARATOR)]
        else:
            items = [value]
        for item in items:
            key = label_key(item)
            if key is None:
                self.issues.add(self.field, "empty label in a list", row)
                continue
            self.rows.append(row)
            self.items.append(self._code(key, row))

    def _code(self, key: Hashable, row: int) -> int:
        code = self.codes.code(key, row)
        # stop early on a column that is no label at all (an id, a float measurement)
        if len(self.codes) > 2 * self.max_classes:
            raise DataValidationError(self.field, f"too many classes: more than "
                                      f"{2 * self.max_classes} distinct values (limit "
                                      f"{self.max_classes})")
        return code

    def _classes(self) -> tuple[np.ndarray, list[str]]:
        """Provisional code → class index (entry 0 unused), and the class names."""
        values = self.codes.values
        rows = self.codes.first_rows or []
        ints: list[int] | None = None
        if values and all(isinstance(v, str) and _INT.fullmatch(v) for v in values):
            ints = [int(str(v)) for v in values]
        elif all(isinstance(v, int | float) for v in values):
            for v, row in zip(values, rows, strict=True):
                if not math.isfinite(float(v)) or float(v) != int(v):  # type: ignore[arg-type]
                    raise DataValidationError(self.field, f"{v} at {self.issues.row_name} "
                                              f"{self.issues.name(row)} is not a class "
                                              "(labels are integers or strings)")
            ints = [int(v) for v in values]  # type: ignore[arg-type]
        keys: list[Any] = ints if ints is not None else [str(v) for v in values]
        names_sorted = sorted(set(keys))
        position = {k: i for i, k in enumerate(names_sorted)}
        remap = np.array([0, *(position[k] for k in keys)], np.int64)
        names = [str(k) for k in names_sorted]
        if len(names) < 2 and not self.optional:
            raise DataValidationError(self.field, "needs at least 2 classes")
        if len(names) > self.max_classes:
            raise DataValidationError(self.field, f"too many classes: {len(names)} is over "
                                      f"the limit of {self.max_classes}")
        return remap, names

    def finish(self) -> tuple[np.ndarray, list[str]]:
        """int64 (N,) class indices, or uint8 (N, K) multi-hot rows; and the class names."""
        remap, names = self._classes()
        if not self.multilabel:
            return remap[self.single], names
        labels = np.zeros((self.n, len(names)), np.uint8)
        rows = np.frombuffer(self.rows, np.int64) if len(self.rows) else np.zeros(0, np.int64)
        items = np.frombuffer(self.items, np.int32) if len(self.items) else np.zeros(0, np.int32)
        labels[rows, remap[items]] = 1
        return labels, names

    def per_row(self) -> list[str | list[str] | None]:
        """Each row's class name (a list of them, multi-label), None where it has none."""
        labels, names = self.finish()
        if not self.multilabel:
            return [names[c] if g else None
                    for c, g in zip(labels.tolist(), self.given.tolist(), strict=True)]
        return [[names[k] for k in np.flatnonzero(row)] if g else None
                for row, g in zip(labels, self.given.tolist(), strict=True)]


def strata(labels: np.ndarray) -> np.ndarray:
    """What a stratified split balances: the class, or for multi-hot rows the row's
    rarest label (K for a row with none), so rare labels reach every split."""
    if labels.ndim == 1:
        return labels
    n, k = labels.shape
    counts = labels.sum(axis=0, dtype=np.int64)
    out = np.empty(n, np.int64)
    never = np.iinfo(np.int64).max
    for s in range(0, n, _CHUNK):
        block = labels[s:s + _CHUNK] > 0
        rarest = np.where(block, counts[None, :], never).argmin(axis=1)
        out[s:s + _CHUNK] = np.where(block.any(axis=1), rarest, k)
    return out


class TokenColumn:
    """Word ids per row, (N, max_length) int64, 0 = padding; the vocabulary is the
    train split's most frequent words, chosen at the end."""

    def __init__(self, n: int, max_length: int) -> None:
        self.ids = np.zeros((n, max_length), np.int64)
        self.words = ValueCodes()

    def add(self, row: int, words: list[str]) -> None:
        self.ids[row, :len(words)] = [self.words.code(w) for w in words]

    def finish(self, train: np.ndarray, vocab_size: int) -> tuple[np.ndarray, list[str]]:
        """Ids into ``["<pad>", "<unk>", *words by train frequency]`` (remapped in place)."""
        counts = np.zeros(len(self.words) + 1, np.int64)
        for s in range(0, len(self.ids), _CHUNK):
            rows = self.ids[s:s + _CHUNK][train[s:s + _CHUNK]]
            counts += np.bincount(rows.ravel(), minlength=len(counts))
        counts[0] = 0
        words = self.words.values
        seen = np.flatnonzero(counts)
        chosen = sorted(seen, key=lambda c: (-counts[c], words[c - 1]))[:vocab_size - 2]
        remap = np.ones(len(counts), np.int64)  # words not chosen become <unk>
        remap[0] = 0
        remap[np.array(chosen, np.int64)] = np.arange(2, 2 + len(chosen))
        for s in range(0, len(self.ids), _CHUNK):
            self.ids[s:s + _CHUNK] = remap[self.ids[s:s + _CHUNK]]
        return self.ids, ["<pad>", "<unk>", *(str(words[c - 1]) for c in chosen)]


class CategoryColumn:
    """A categorical feature: codes 1.. for the train split's categories (sorted),
    0 for a missing value or one never seen in training."""

    def __init__(self, n: int) -> None:
        self.codes = np.zeros(n, np.int32)
        self.values = ValueCodes()

    def add(self, row: int, value: Any) -> None:
        if value is not None and value != "":
            self.codes[row] = self.values.code(str(value))

    def finish(self, train: np.ndarray, field: str, max_categories: int,
               out: np.ndarray) -> list[str]:
        """Write the final codes into ``out`` (N,) and return the categories."""
        seen = np.unique(self.codes[train])
        seen = seen[seen > 0]
        names = sorted(str(self.values.values[c - 1]) for c in seen)
        if len(names) > max_categories:
            raise DataValidationError(field, f"too many categories: {len(names)} is over the "
                                      f"limit of {max_categories}")
        position = {name: i + 1 for i, name in enumerate(names)}
        remap = np.zeros(len(self.values) + 1, np.float32)
        for c in seen:
            remap[c] = position[str(self.values.values[c - 1])]
        for s in range(0, len(self.codes), _CHUNK):
            out[s:s + _CHUNK] = remap[self.codes[s:s + _CHUNK]]
        return names
