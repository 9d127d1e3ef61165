"""Ingest a user's ``.npz`` image dataset into the prepared form.

Arrays: ``image`` (N, H, W) or (N, C, H, W); ``label`` (N,) integers or strings;
optional ``split`` (N,) of 0/1/2 or train/val/test; optional ``class_names``
(K,) strings, in which case ``label`` holds indices into it. Loaded with
``allow_pickle=False``; every problem is a ``DataValidationError`` naming the array.
"""

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app.ml.data.errors import DataValidationError
from app.ml.data.prepared import SPLITS, PreparedDataset
from app.ml.data.splits import stratified_split

ALLOWED_ARRAYS = ("image", "label", "split", "class_names")


@dataclass(frozen=True)
class NpzLimits:
    max_samples: int = 2_000_000
    max_side: int = 512
    max_channels: int = 4
    max_classes: int = 1000
    max_uncompressed_bytes: int = 4 * 1024**3


def _open(path: Path, limits: NpzLimits) -> dict[str, np.ndarray]:
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
        unexpected = [n for n in npz.files if n not in ALLOWED_ARRAYS]
        if unexpected:
            raise DataValidationError(unexpected[0], "unexpected array; allowed: "
                                      + ", ".join(ALLOWED_ARRAYS))
        for name in npz.files:
            try:
                arrays[name] = npz[name]
            except ValueError as exc:
                reason = ("object dtype is not allowed (arrays are loaded without pickle)"
                          if "allow_pickle" in str(exc) else f"unreadable: {exc}")
                raise DataValidationError(name, reason) from exc
            if not isinstance(arrays[name], np.ndarray):  # a member without the .npy header
                raise DataValidationError(name, "not a .npy array")
    for name in ("image", "label"):
        if name not in arrays:
            raise DataValidationError(name, "missing array")
    return arrays


def _image(arr: np.ndarray, limits: NpzLimits) -> torch.Tensor:
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
    if arr.dtype == np.bool_:
        return torch.from_numpy(arr.astype(np.uint8) * 255)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(np.flatnonzero(~finite.reshape(n, -1).all(axis=1))[0])
            raise DataValidationError("image", f"contains NaN or infinity (first at sample {bad})")
        return torch.from_numpy(arr.astype(np.float32))
    if arr.dtype != np.uint8:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi > 255:
            return torch.from_numpy(arr.astype(np.float32))
    return torch.from_numpy(arr.astype(np.uint8))


def _labels(arrays: dict[str, np.ndarray], n: int,
            limits: NpzLimits) -> tuple[np.ndarray, list[str]]:
    label = arrays["label"]
    if label.ndim != 1:
        raise DataValidationError("label", f"expected shape (N,), got {label.shape}")
    if len(label) != n:
        raise DataValidationError("label", f"has {len(label)} entries but image has {n} samples")
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


def _split(arrays: dict[str, np.ndarray], labels: np.ndarray) -> np.ndarray:
    if "split" not in arrays:
        split = stratified_split(labels, seed=0)
        field, hint = "label", "too few samples per class to make train/val/test splits"
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


def prepare_npz(path: Path, limits: NpzLimits | None = None,
                original_name: str = "") -> PreparedDataset:
    limits = limits or NpzLimits()
    arrays = _open(path, limits)
    image = _image(arrays["image"], limits)
    labels, class_names = _labels(arrays, image.shape[0], limits)
    split = _split(arrays, labels)
    return PreparedDataset(
        inputs={"image": image},
        labels=torch.from_numpy(labels),
        clean_labels=torch.from_numpy(labels.copy()),
        split=torch.from_numpy(split),
        class_names=class_names,
        modality_kinds={"image": "image"},
        provenance={"upload": original_name or path.name, "format": "npz"},
    )
