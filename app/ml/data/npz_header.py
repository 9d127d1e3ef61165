"""Check an ``.npz`` upload from its members' ``.npy`` headers alone.

What a service can refuse before queueing the preparation, in milliseconds
whatever the file's size: not a zip, too big unpacked, unexpected or missing
arrays, object dtypes, and shapes that ``prepare_npz`` would refuse (rank,
channels, sides, sample counts that disagree). Values (NaN, negative token
ids, class counts, split codes) need the data: ``prepare_npz`` checks them in
the preparation job. Messages are ``prepare_npz``'s own.
"""

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.ml.data.errors import DataValidationError
from app.ml.data.npz import (
    MODALITY_ARRAYS,
    NpzLimits,
    task_length_error,
    unexpected_array,
)


@dataclass(frozen=True)
class ArrayHeader:
    shape: tuple[int, ...]
    dtype: np.dtype


def read_headers(path: Path, limits: NpzLimits) -> dict[str, ArrayHeader]:
    if not zipfile.is_zipfile(path):
        raise DataValidationError("file", "not an .npz archive (expected a zip of .npy arrays)")
    headers: dict[str, ArrayHeader] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            total = sum(info.file_size for info in infos)
            if total > limits.max_uncompressed_bytes:
                raise DataValidationError("file", f"arrays unpack to {total} bytes, over the "
                                          f"limit of {limits.max_uncompressed_bytes}")
            for info in infos:
                name = info.filename.removesuffix(".npy")
                problem = unexpected_array(name)
                if problem is not None:
                    raise problem
                headers[name] = _header(zf, info, name)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataValidationError("file", f"not a readable .npz: {exc}") from exc
    return headers


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> ArrayHeader:
    with zf.open(info) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        except ValueError as exc:
            raise DataValidationError(name, f"not a .npy array ({exc})") from exc
    if dtype.hasobject:
        raise DataValidationError(name, "object dtype is not allowed (arrays are loaded "
                                  "without pickle)")
    return ArrayHeader(tuple(int(s) for s in shape), dtype)


def _check_picture(name: str, c: int, h: int, w: int, limits: NpzLimits, channel_axis: str,
                   unit: str) -> None:
    """An image's or a video frame's channels and sides against the limits."""
    if not 1 <= c <= limits.max_channels:
        raise DataValidationError(name, f"{c} channels; expected 1 to {limits.max_channels} "
                                  f"in {channel_axis}")
    if not (1 <= h <= limits.max_side and 1 <= w <= limits.max_side):
        raise DataValidationError(name, f"{h}x{w} {unit}; each side must be 1 to "
                                  f"{limits.max_side}")


def _check_modality(name: str, h: ArrayHeader, limits: NpzLimits) -> None:
    shape, kind = h.shape, h.dtype.kind
    if not shape:
        raise DataValidationError(name, "expected an array with a sample axis, got a scalar")
    if name == "image":
        if kind not in "uifb":
            raise DataValidationError("image", f"dtype {h.dtype} is not numeric")
        if len(shape) not in (3, 4):
            raise DataValidationError("image", f"expected shape (N, H, W) or (N, C, H, W), "
                                      f"got {shape}")
        c, hh, w = (1, *shape[1:]) if len(shape) == 3 else shape[1:]
        _check_picture("image", c, hh, w, limits, "axis 1 (N, C, H, W)", "pixels")
    elif name == "text":
        if kind not in "iu":
            raise DataValidationError("text", f"dtype {h.dtype} is not integer (token ids, "
                                      "0 = padding)")
        if len(shape) != 2:
            raise DataValidationError("text", f"expected shape (N, T) of token ids, got "
                                      f"{shape}")
        if not 1 <= shape[1] <= limits.max_text_length:
            raise DataValidationError("text", f"{shape[1]} tokens per sample; expected 1 to "
                                      f"{limits.max_text_length}")
    elif name == "audio":
        if len(shape) not in (2, 3, 4):
            raise DataValidationError("audio", f"expected a waveform (N, L) or a spectrogram "
                                      f"(N, F, T) or (N, C, F, T), got {shape}")
        if len(shape) == 2 and not 2 <= shape[1] <= limits.max_audio_length:
            raise DataValidationError("audio", f"{shape[1]} samples per waveform; expected 2 "
                                      f"to {limits.max_audio_length}")
        if len(shape) == 4 and not 1 <= shape[1] <= limits.max_channels:
            raise DataValidationError("audio", f"{shape[1]} channels; expected 1 to "
                                      f"{limits.max_channels} in axis 1 (N, C, F, T)")
        if len(shape) >= 3 and not all(1 <= s <= limits.max_audio_side for s in shape[-2:]):
            raise DataValidationError("audio", f"{shape[-2]}x{shape[-1]} spectrogram; each "
                                      f"side must be 1 to {limits.max_audio_side}")
        if kind not in "uifb":
            raise DataValidationError("audio", f"dtype {h.dtype} is not numeric")
    elif name == "video":
        if kind not in "uifb":
            raise DataValidationError("video", f"dtype {h.dtype} is not numeric")
        if len(shape) not in (4, 5):
            raise DataValidationError("video", f"expected shape (N, T, H, W) or "
                                      f"(N, T, C, H, W), got {shape}")
        t, c, hh, w = (shape[1], 1, *shape[2:]) if len(shape) == 4 else shape[1:]
        if not 1 <= t <= limits.max_frames:
            raise DataValidationError("video", f"{t} frames per clip; expected 1 to "
                                      f"{limits.max_frames} in axis 1 (N, T, C, H, W)")
        _check_picture("video", c, hh, w, limits, "axis 2 (N, T, C, H, W)",
                       "pixels per frame")
    elif name == "tabular":
        if len(shape) != 2:
            raise DataValidationError("tabular", f"expected shape (N, D), got {shape}")
        if kind not in "uifb":
            raise DataValidationError("tabular", f"dtype {h.dtype} is not numeric")
        if not 1 <= shape[1] <= limits.max_features:
            raise DataValidationError("tabular", f"{shape[1]} features; expected 1 to "
                                      f"{limits.max_features}")
    if shape[0] == 0:
        raise DataValidationError(name, "has no samples")
    if shape[0] > limits.max_samples:
        raise DataValidationError(name, f"{shape[0]} samples is over the limit of "
                                  f"{limits.max_samples}")


def _check_label(headers: dict[str, ArrayHeader], first: str, n: int) -> None:
    label = headers["label"]
    if len(label.shape) not in (1, 2):
        raise DataValidationError("label", f"expected shape (N,) of classes or (N, K) of "
                                  f"0/1 for multi-label data, got {label.shape}")
    if label.shape[0] != n:
        raise DataValidationError("label", f"has {label.shape[0]} entries but {first} has "
                                  f"{n} samples")
    names = headers.get("class_names")
    if names is not None and (len(names.shape) != 1 or names.dtype.kind != "U"):
        raise DataValidationError("class_names", "expected a 1-D array of strings")
    if len(label.shape) == 2:  # multi-label: (N, K) rows of 0/1
        if label.dtype.kind not in "biuf":
            raise DataValidationError("label", f"dtype {label.dtype} is not 0/1 (multi-label "
                                      "rows are bool, integer or float 0/1)")
        if names is not None and names.shape[0] != label.shape[1]:
            raise DataValidationError("class_names", f"has {names.shape[0]} names but label "
                                      f"has {label.shape[1]} columns")
    elif names is not None:
        if label.dtype.kind not in "iu":
            raise DataValidationError("label", "must be integer indices into class_names")
    elif label.dtype.kind not in "iuUb":
        raise DataValidationError("label", f"dtype {label.dtype} is not integer or string")


def probe_npz(path: Path, limits: NpzLimits | None = None, labelled: bool = True) -> None:
    """Raise the first problem the headers show; silent when the headers look right.
    ``labelled=False`` (samples sent for prediction): ``label`` may be absent."""
    limits = limits or NpzLimits()
    headers = read_headers(path, limits)
    modalities = [m for m in MODALITY_ARRAYS if m in headers]
    if not modalities:
        raise DataValidationError("image", "missing array: an .npz needs at least one "
                                  "modality array (image, text, audio, tabular or video)")
    tasks = [name for name in headers if name.startswith("label.")]
    if labelled and "label" not in headers and not tasks:
        raise DataValidationError("label", "missing array (or label.<task> arrays, one per "
                                  "task)")
    first, n = modalities[0], headers[modalities[0]].shape[:1]
    for name in modalities:
        h = headers[name]
        if h.shape and h.shape[:1] != n:
            raise DataValidationError(name, f"has {h.shape[0]} samples but {first} has {n[0]}")
        _check_modality(name, h, limits)
    if "label" in headers:
        _check_label(headers, first, n[0])
    for name in tasks:
        shape = headers[name].shape
        if len(shape) != 1:
            raise DataValidationError(name, f"expected shape (N,) of classes, got {shape}")
        length = task_length_error(name, shape[0], first, n[0])
        if length is not None:
            raise length
    if "split" in headers:
        split = headers["split"]
        if split.shape != (n[0],):
            raise DataValidationError("split", f"expected shape ({n[0]},), got {split.shape}")
        if split.dtype.kind not in "iuU":
            raise DataValidationError("split", f"dtype {split.dtype} is not integer or string")
    if "vocab" in headers:
        vocab = headers["vocab"]
        if "text" not in headers:
            raise DataValidationError("vocab", "given without a text array")
        if len(vocab.shape) != 1 or vocab.dtype.kind != "U":
            raise DataValidationError("vocab", "expected a 1-D array of strings (index → "
                                      "token)")
