"""Ingest a user's ``.npz`` dataset into the prepared form.

Modality arrays, at least one of them, all with the same N:

- ``image`` (N, H, W) or (N, C, H, W), numeric;
- ``text`` (N, T) integer token ids, 0 = padding, right-padded (no token after
  a pad); optional ``vocab`` (V,) strings, index → token, so previews show words;
- ``audio`` (N, L) waveform, or (N, F, T) / (N, C, F, T) spectrogram, numeric;
- ``tabular`` (N, D) numeric features;
- ``video`` (N, T, H, W) or (N, T, C, H, W) clips of T frames, numeric (uint8
  0..255 kept as is, floats as float32, like ``image``).

Then ``label`` (N,) integers or strings; optional ``split`` (N,) of 0/1/2 or
train/val/test; optional ``class_names`` (K,) strings, in which case ``label``
holds indices into it. Loaded with ``allow_pickle=False``; every problem is a
``DataValidationError`` naming the array. Problems of values (NaN, negative or
misplaced token ids, multi-label entries other than 0/1) list every bad sample,
as the other formats list bad rows: the first ``max_errors`` samples per problem
and how many there are (``DataIssues``).

A 2-D ``label`` (N, K) of 0/1 (bool, integer or float) makes the dataset
multi-label: row i marks the classes sample i has; ``class_names`` (K,) names
the columns (default "0" … "K-1"). A row of zeros is allowed — the sample has
none of the classes, which multi-label data (tags) legitimately contains.
Without a ``split`` array the split is stratified by each sample's rarest class.

Multi-task data has a ``label.<task>`` array per task instead of ``label``: each
(N,) integers or strings, one class per sample, its classes its distinct values
in sorted order (``class_names`` does not apply to them). The first such array
in the archive is the primary task (the split is stratified by it). Task names
are 1 to 40 letters, digits, ``_`` or ``-``.
"""

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app.ml.data.errors import DataValidationError
from app.ml.data.issues import Issues
from app.ml.data.prepared import SPLITS, PreparedDataset
from app.ml.data.samples import Label, Samples
from app.ml.data.splits import stratified_split

MODALITY_ARRAYS = ("image", "text", "audio", "tabular", "video")
ALLOWED_ARRAYS = (*MODALITY_ARRAYS, "label", "split", "class_names", "vocab")
TASK_LABEL = re.compile(r"^label\.([A-Za-z0-9_-]{1,40})$")  # label.<task>


def unexpected_array(name: str) -> DataValidationError | None:
    """The error for an array an .npz may not hold; None for one it may."""
    if name in ALLOWED_ARRAYS or TASK_LABEL.match(name):
        return None
    return DataValidationError(name, "unexpected array; allowed: " + ", ".join(ALLOWED_ARRAYS)
                               + ", label.<task> (task: 1 to 40 letters, digits, _ or -)")


def task_length_error(field: str, entries: int, reference: str, n: int
                      ) -> DataValidationError | None:
    """A ``label.<task>`` array's length against the samples' (one rule, two readers)."""
    if entries == n:
        return None
    return DataValidationError(field, f"has {entries} entries but {reference} has {n} samples")


@dataclass(frozen=True)
class NpzLimits:
    max_samples: int = 2_000_000
    max_side: int = 512
    max_channels: int = 4
    max_classes: int = 1000
    max_uncompressed_bytes: int = 4 * 1024**3
    max_text_length: int = 8192
    max_vocab: int = 1_000_000
    max_audio_length: int = 10_000_000  # waveform samples per clip
    max_audio_side: int = 4096  # spectrogram bins or frames
    max_features: int = 100_000
    max_frames: int = 256  # video frames per clip
    max_errors: int = 20  # samples listed per problem (all are counted)


def _open(path: Path, limits: NpzLimits, labelled: bool = True) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise DataValidationError("file", "not an .npz archive (expected a zip of .npy arrays)")
    with zipfile.ZipFile(path) as zf:
        total = sum(info.file_size for info in zf.infolist())
    if total > limits.max_uncompressed_bytes:
        raise DataValidationError("file", f"arrays unpack to {total} bytes, over the limit "
                                  f"of {limits.max_uncompressed_bytes}")
    arrays: dict[str, np.ndarray] = {}
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataValidationError("file", f"not a readable .npz: {exc}") from exc
    with npz:
        for name in npz.files:
            problem = unexpected_array(name)
            if problem is not None:
                raise problem
        for name in npz.files:
            try:
                arrays[name] = npz[name]
            except ValueError as exc:
                reason = ("object dtype is not allowed (arrays are loaded without pickle)"
                          if "allow_pickle" in str(exc) else f"unreadable: {exc}")
                raise DataValidationError(name, reason) from exc
            if not isinstance(arrays[name], np.ndarray):  # a member without the .npy header
                raise DataValidationError(name, "not a .npy array")
    if not any(name in arrays for name in MODALITY_ARRAYS):
        raise DataValidationError("image", "missing array: an .npz needs at least one "
                                  "modality array (image, text, audio, tabular or video)")
    tasks = task_arrays(arrays)
    if labelled and "label" not in arrays and not tasks:
        raise DataValidationError("label", "missing array (or label.<task> arrays, one per "
                                  "task)")
    if "label" in arrays and tasks:
        raise DataValidationError("label", "give either label or label.<task> arrays (one "
                                  "per task), not both")
    if tasks and "class_names" in arrays:
        raise DataValidationError("class_names", "does not apply to label.<task> arrays: "
                                  "their classes are their values")
    return arrays


def _samples(name: str, arr: np.ndarray, limits: NpzLimits) -> int:
    n = int(arr.shape[0])
    if n == 0:
        raise DataValidationError(name, "has no samples")
    if n > limits.max_samples:
        raise DataValidationError(name, f"{n} samples is over the limit of {limits.max_samples}")
    return n


def _bad_samples(bad: np.ndarray) -> np.ndarray:
    """The samples (axis 0) with any True in ``bad``."""
    return np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))


def _finite(name: str, arr: np.ndarray, issues: Issues) -> None:
    issues.add_rows(name, "contains NaN or infinity", _bad_samples(~np.isfinite(arr)))


def _numeric_float(name: str, arr: np.ndarray, issues: Issues) -> torch.Tensor:
    """A numeric array as float32; its samples with NaN or infinity go to ``issues``."""
    if arr.dtype.kind not in "uif" and arr.dtype != np.bool_:
        raise DataValidationError(name, f"dtype {arr.dtype} is not numeric")
    out = arr.astype(np.float32)
    _finite(name, out, issues)
    return torch.from_numpy(out)


def _text(arr: np.ndarray, limits: NpzLimits, issues: Issues) -> torch.Tensor:
    if arr.dtype.kind not in "iu":
        raise DataValidationError("text", f"dtype {arr.dtype} is not integer (token ids, "
                                  "0 = padding)")
    if arr.ndim != 2:
        raise DataValidationError("text", f"expected shape (N, T) of token ids, got {arr.shape}")
    length = arr.shape[1]
    _samples("text", arr, limits)
    if not 1 <= length <= limits.max_text_length:
        raise DataValidationError("text", f"{length} tokens per sample; expected 1 to "
                                  f"{limits.max_text_length}")
    if arr.dtype.kind == "i" and (arr < 0).any():
        issues.add_rows("text", "negative token ids (ids are >= 0 with 0 = padding)",
                        _bad_samples(arr < 0))
        return torch.zeros(arr.shape, dtype=torch.int64)  # reported; not used
    if arr.max() > np.iinfo(np.int64).max:
        raise DataValidationError("text", "token ids do not fit in int64")
    ids = arr.astype(np.int64)
    pad = ids == 0
    # right-padded: once a row has a pad, every later position is a pad too
    after_pad = ~pad[:, 1:] & np.logical_or.accumulate(pad, axis=1)[:, :-1]
    issues.add_rows("text", "a token follows padding (rows must be right-padded with 0)",
                    _bad_samples(after_pad))
    return torch.from_numpy(ids)


def _vocab(arrays: dict[str, np.ndarray], text: torch.Tensor | None,
           limits: NpzLimits) -> list[str] | None:
    if "vocab" not in arrays:
        return None
    vocab = arrays["vocab"]
    if text is None:
        raise DataValidationError("vocab", "given without a text array")
    if vocab.ndim != 1 or vocab.dtype.kind != "U":
        raise DataValidationError("vocab", "expected a 1-D array of strings (index → token)")
    if not 2 <= len(vocab) <= limits.max_vocab:
        raise DataValidationError("vocab", f"{len(vocab)} entries; expected 2 to "
                                  f"{limits.max_vocab}")
    top = int(text.max())
    if top >= len(vocab):
        raise DataValidationError("text", f"token id {top} is outside the vocab of "
                                  f"{len(vocab)} entries")
    return [str(v) for v in vocab]


def _audio(arr: np.ndarray, limits: NpzLimits, issues: Issues) -> torch.Tensor:
    if arr.ndim not in (2, 3, 4):
        raise DataValidationError("audio", f"expected a waveform (N, L) or a spectrogram "
                                  f"(N, F, T) or (N, C, F, T), got {arr.shape}")
    _samples("audio", arr, limits)
    if arr.ndim == 2 and not 2 <= arr.shape[1] <= limits.max_audio_length:
        raise DataValidationError("audio", f"{arr.shape[1]} samples per waveform; expected 2 "
                                  f"to {limits.max_audio_length}")
    if arr.ndim == 4 and not 1 <= arr.shape[1] <= limits.max_channels:
        raise DataValidationError("audio", f"{arr.shape[1]} channels; expected 1 to "
                                  f"{limits.max_channels} in axis 1 (N, C, F, T)")
    if arr.ndim >= 3:
        freq, time = arr.shape[-2:]
        if not (1 <= freq <= limits.max_audio_side and 1 <= time <= limits.max_audio_side):
            raise DataValidationError("audio", f"{freq}x{time} spectrogram; each side must be "
                                      f"1 to {limits.max_audio_side}")
    return _numeric_float("audio", arr, issues)


def _tabular(arr: np.ndarray, limits: NpzLimits, issues: Issues) -> torch.Tensor:
    if arr.ndim != 2:
        raise DataValidationError("tabular", f"expected shape (N, D), got {arr.shape}")
    _samples("tabular", arr, limits)
    if not 1 <= arr.shape[1] <= limits.max_features:
        raise DataValidationError("tabular", f"{arr.shape[1]} features; expected 1 to "
                                  f"{limits.max_features}")
    return _numeric_float("tabular", arr, issues)


def _image(arr: np.ndarray, limits: NpzLimits, issues: Issues) -> torch.Tensor:
    if arr.dtype.kind not in "uif" and arr.dtype != np.bool_:
        raise DataValidationError("image", f"dtype {arr.dtype} is not numeric")
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise DataValidationError("image", f"expected shape (N, H, W) or (N, C, H, W), "
                                  f"got {arr.shape}")
    n, c, h, w = arr.shape
    if n == 0:
        raise DataValidationError("image", "has no samples")
    if n > limits.max_samples:
        raise DataValidationError("image", f"{n} samples is over the limit of "
                                  f"{limits.max_samples}")
    if not 1 <= c <= limits.max_channels:
        raise DataValidationError("image", f"{c} channels; expected 1 to {limits.max_channels} "
                                  "in axis 1 (N, C, H, W)")
    if h > limits.max_side or w > limits.max_side or h < 1 or w < 1:
        raise DataValidationError("image", f"{h}x{w} pixels; each side must be 1 to "
                                  f"{limits.max_side}")
    return _pixels("image", arr, issues)


def _pixels(name: str, arr: np.ndarray, issues: Issues) -> torch.Tensor:
    """Image or video pixels: bool as 0/255, floats as float32, integers in 0..255
    as uint8 (others as float32)."""
    if arr.dtype == np.bool_:
        return torch.from_numpy(arr.astype(np.uint8) * 255)
    if arr.dtype.kind == "f":
        _finite(name, arr, issues)
        return torch.from_numpy(arr.astype(np.float32))
    if arr.dtype != np.uint8:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi > 255:
            return torch.from_numpy(arr.astype(np.float32))
    return torch.from_numpy(arr.astype(np.uint8))


def _video(arr: np.ndarray, limits: NpzLimits, issues: Issues) -> torch.Tensor:
    if arr.dtype.kind not in "uif" and arr.dtype != np.bool_:
        raise DataValidationError("video", f"dtype {arr.dtype} is not numeric")
    if arr.ndim == 4:
        arr = arr[:, :, None]
    if arr.ndim != 5:
        raise DataValidationError("video", f"expected shape (N, T, H, W) or (N, T, C, H, W), "
                                  f"got {arr.shape}")
    _samples("video", arr, limits)
    _, t, c, h, w = arr.shape
    if not 1 <= t <= limits.max_frames:
        raise DataValidationError("video", f"{t} frames per clip; expected 1 to "
                                  f"{limits.max_frames} in axis 1 (N, T, C, H, W)")
    if not 1 <= c <= limits.max_channels:
        raise DataValidationError("video", f"{c} channels; expected 1 to {limits.max_channels} "
                                  "in axis 2 (N, T, C, H, W)")
    if not (1 <= h <= limits.max_side and 1 <= w <= limits.max_side):
        raise DataValidationError("video", f"{h}x{w} pixels per frame; each side must be 1 to "
                                  f"{limits.max_side}")
    return _pixels("video", arr, issues)


def _multilabel(arrays: dict[str, np.ndarray],
                limits: NpzLimits) -> tuple[np.ndarray, list[str]]:
    """Multi-hot (N, K) uint8 from a 2-D 0/1 ``label`` array, and the class names."""
    label = arrays["label"]
    k = label.shape[1]
    if label.dtype.kind not in "biuf":
        raise DataValidationError("label", f"dtype {label.dtype} is not 0/1 (multi-label "
                                  "rows are bool, integer or float 0/1)")
    bad = (label != 0) & (label != 1)  # NaN is neither
    if bad.any():
        row, col = (int(x) for x in np.argwhere(bad)[0])
        issues = Issues(limits.max_errors, "sample")
        issues.add_rows("label", "multi-label rows must hold only 0 and 1", _bad_samples(bad),
                        f"class {col} is {label[row, col].item()!r}")
        issues.raise_if_any()
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind != "U":
            raise DataValidationError("class_names", "expected a 1-D array of strings")
        if len(names) != k:
            raise DataValidationError("class_names", f"has {len(names)} names but label has "
                                      f"{k} columns")
        if len(set(names.tolist())) != k:
            raise DataValidationError("class_names", "names must be distinct")
        class_names = [str(x) for x in names]
    else:
        class_names = [str(i) for i in range(k)]
    if k < 2:
        raise DataValidationError("label", "needs at least 2 classes (columns)")
    if k > limits.max_classes:
        raise DataValidationError("label", f"{k} classes is over the limit of "
                                  f"{limits.max_classes}")
    return label.astype(np.uint8), class_names


def _checked_label(arrays: dict[str, np.ndarray], n: int, reference: str) -> np.ndarray:
    """The ``label`` array, (N,) classes or (N, K) 0/1, one row per sample."""
    label = arrays["label"]
    if label.ndim not in (1, 2):
        raise DataValidationError("label", f"expected shape (N,) of classes or (N, K) of "
                                  f"0/1 for multi-label data, got {label.shape}")
    if len(label) != n:
        raise DataValidationError("label", f"has {len(label)} entries but {reference} has "
                                  f"{n} samples")
    return label


def _labels(arrays: dict[str, np.ndarray], n: int, limits: NpzLimits,
            reference: str = "image") -> tuple[np.ndarray, list[str]]:
    label = _checked_label(arrays, n, reference)
    if label.ndim == 2:
        return _multilabel(arrays, limits)
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind != "U":
            raise DataValidationError("class_names", "expected a 1-D array of strings")
        if label.dtype.kind not in "iu":
            raise DataValidationError("label", "must be integer indices into class_names")
        if len(label) and (label.min() < 0 or label.max() >= len(names)):
            raise DataValidationError("label", f"indices must be in [0, {len(names)})")
        codes, class_names = label.astype(np.int64), [str(x) for x in names]
    elif label.dtype.kind in "iuU" or label.dtype == np.bool_:
        values, codes = np.unique(label, return_inverse=True)
        class_names = [str(v) for v in values]
    else:
        raise DataValidationError("label", f"dtype {label.dtype} is not integer or string")
    if len(class_names) < 2:
        raise DataValidationError("label", "needs at least 2 classes")
    if len(class_names) > limits.max_classes:
        raise DataValidationError("label", f"{len(class_names)} classes is over the limit of "
                                  f"{limits.max_classes}")
    return codes.astype(np.int64), class_names


def task_arrays(arrays: dict[str, np.ndarray]) -> list[str]:
    """The ``label.<task>`` arrays' names, in the archive's order."""
    return [name for name in arrays if TASK_LABEL.match(name)]


def _task_labels(arrays: dict[str, np.ndarray], n: int, limits: NpzLimits,
                 reference: str, min_classes: int = 2
                 ) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Each task's (N,) int64 class indices and class names (its sorted values).
    A dataset needs two classes per task; samples sent for prediction may hold one."""
    out = {}
    for field in task_arrays(arrays):
        label = arrays[field]
        if label.ndim != 1:
            raise DataValidationError(field, f"expected shape (N,) of classes, got "
                                      f"{label.shape}")
        length = task_length_error(field, len(label), reference, n)
        if length is not None:
            raise length
        if label.dtype.kind not in "iuU" and label.dtype != np.bool_:
            raise DataValidationError(field, f"dtype {label.dtype} is not integer or string")
        values, codes = np.unique(label, return_inverse=True)
        if len(values) < min_classes:
            raise DataValidationError(field, f"needs at least {min_classes} classes")
        if len(values) > limits.max_classes:
            raise DataValidationError(field, f"{len(values)} classes is over the limit of "
                                      f"{limits.max_classes}")
        task = TASK_LABEL.match(field).group(1)  # type: ignore[union-attr]
        out[task] = (codes.reshape(-1).astype(np.int64), [str(v) for v in values])
    return out


def rarest_class(multi_hot: np.ndarray) -> np.ndarray:
    """Per sample, its rarest class over the dataset (K for an empty row): the
    stratum that keeps rare classes in every split of multi-label data."""
    k = multi_hot.shape[1]
    frequency = multi_hot.sum(axis=0).astype(np.float64)
    # absent classes rank after every present one; ties go to the lower index
    cost = np.where(multi_hot > 0, frequency[None], np.inf)
    rarest = cost.argmin(axis=1)
    return np.where(multi_hot.any(axis=1), rarest, k)


def _split(arrays: dict[str, np.ndarray], labels: np.ndarray,
           label_field: str = "label") -> np.ndarray:
    if "split" not in arrays:
        strata = rarest_class(labels) if labels.ndim == 2 else labels
        split = stratified_split(strata, seed=0)
        field, hint = label_field, "too few samples per class to make train/val/test splits"
    else:
        raw = arrays["split"]
        field, hint = "split", "has no samples"
        if raw.ndim != 1 or len(raw) != len(labels):
            raise DataValidationError("split", f"expected shape ({len(labels)},), got {raw.shape}")
        if raw.dtype.kind == "U":
            lookup = {name: i for i, name in enumerate(SPLITS)}
            bad = [s for s in np.unique(raw) if s not in lookup]
            if bad:
                raise DataValidationError("split", f"unknown value {bad[0]!r}; use train/val/test")
            split = np.array([lookup[s] for s in raw], dtype=np.uint8)
        elif raw.dtype.kind in "iu":
            if raw.min() < 0 or raw.max() > 2:
                raise DataValidationError("split", "values must be 0 (train), 1 (val) or 2 (test)")
            split = raw.astype(np.uint8)
        else:
            raise DataValidationError("split", f"dtype {raw.dtype} is not integer or string")
    for code, name in enumerate(SPLITS):
        if not (split == code).any():
            raise DataValidationError(field, f"{hint} ({name} would be empty)")
    return split


def _inputs(arrays: dict[str, np.ndarray], limits: NpzLimits) -> dict[str, torch.Tensor]:
    """The modality arrays, checked and converted, all with the same N. A problem of
    shape or type stops at once; problems of values are gathered over every array."""
    inputs: dict[str, torch.Tensor] = {}
    issues = Issues(limits.max_errors, "sample")
    for name in MODALITY_ARRAYS:
        if name not in arrays:
            continue
        arr = arrays[name]
        if arr.ndim == 0:
            raise DataValidationError(name, "expected an array with a sample axis, got a scalar")
        if inputs:
            first, first_n = next(iter(inputs)), next(iter(inputs.values())).shape[0]
            if arr.shape[0] != first_n:
                raise DataValidationError(name, f"has {arr.shape[0]} samples but {first} has "
                                          f"{first_n}")
        if name == "image":
            inputs[name] = _image(arr, limits, issues)
        elif name == "text":
            inputs[name] = _text(arr, limits, issues)
        elif name == "audio":
            inputs[name] = _audio(arr, limits, issues)
        elif name == "video":
            inputs[name] = _video(arr, limits, issues)
        else:
            inputs[name] = _tabular(arr, limits, issues)
    issues.raise_if_any()
    return inputs


def prepare_npz(path: Path, limits: NpzLimits | None = None,
                original_name: str = "") -> PreparedDataset:
    limits = limits or NpzLimits()
    arrays = _open(path, limits)
    inputs = _inputs(arrays, limits)
    vocab = _vocab(arrays, inputs.get("text"), limits)
    reference = next(iter(inputs))
    tasks = _task_labels(arrays, inputs[reference].shape[0], limits, reference)
    if tasks:
        labels, class_names = next(iter(tasks.values()))
    else:
        labels, class_names = _labels(arrays, inputs[reference].shape[0], limits, reference)
    split = _split(arrays, labels, task_arrays(arrays)[0] if tasks else "label")
    provenance: dict[str, object] = {"upload": original_name or path.name, "format": "npz"}
    if vocab is not None:
        provenance["vocab"] = vocab
    data = PreparedDataset.from_arrays(inputs, labels, split, class_names, provenance)
    if tasks:
        data.with_tasks({t: names for t, (_, names) in tasks.items()},
                        {t: torch.from_numpy(y) for t, (y, _) in list(tasks.items())[1:]})
    return data


def read_npz_samples(path: Path, limits: NpzLimits | None = None,
                     original_name: str = "") -> Samples:
    """An ``.npz`` sent for prediction, checked as an upload is and read the same
    way (arrays in the prepared form: token ids, raw features; labels named as
    ingestion names them), but ``label`` (or ``label.<task>``) is optional and
    ``split`` ignored."""
    limits = limits or NpzLimits()
    arrays = _open(path, limits, labelled=False)
    inputs = _inputs(arrays, limits)
    _vocab(arrays, inputs.get("text"), limits)
    reference = next(iter(inputs))
    n = int(inputs[reference].shape[0])
    labels = _sample_labels(arrays, n, reference, limits) if "label" in arrays else None
    tasks: dict[str, list[Label]] | None = None
    if task_arrays(arrays):
        tasks = {task: [names[c] for c in codes.tolist()] for task, (codes, names)
                 in _task_labels(arrays, n, limits, reference, min_classes=1).items()}
        labels = next(iter(tasks.values()))
    return Samples(inputs, {m: m for m in inputs}, labels,
                   {"upload": original_name or path.name, "format": "npz"}, tasks)


def _sample_labels(arrays: dict[str, np.ndarray], n: int, reference: str,
                   limits: NpzLimits) -> list[Label]:
    """Each sample's class name(s), as ``prepare_npz`` would name its classes:
    indices into ``class_names``, else the label values themselves (a 2-D 0/1
    label: the columns' ``class_names``, default "0" … "K-1")."""
    label = _checked_label(arrays, n, reference)
    if label.ndim == 2:
        rows, names = _multilabel(arrays, limits)
        return [[names[k] for k in np.flatnonzero(row)] for row in rows]
    if "class_names" in arrays:
        names_array = arrays["class_names"]
        if names_array.ndim != 1 or names_array.dtype.kind != "U":
            raise DataValidationError("class_names", "expected a 1-D array of strings")
        if label.dtype.kind not in "iu":
            raise DataValidationError("label", "must be integer indices into class_names")
        names = [str(x) for x in names_array]
        if len(label) and (label.min() < 0 or label.max() >= len(names)):
            raise DataValidationError("label", f"indices must be in [0, {len(names)})")
        return [names[c] for c in label.astype(np.int64).tolist()]
    if label.dtype.kind not in "iuU" and label.dtype != np.bool_:
        raise DataValidationError("label", f"dtype {label.dtype} is not integer or string")
    return [str(v) for v in label]
