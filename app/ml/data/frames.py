"""Video clips from an archive of frame folders: one folder per clip holding its frames.

Layouts (optionally under one top-level folder), recognised by depth:
``<class>/<clip>/<frame>`` or ``<split>/<class>/<clip>/<frame>`` with split
folders train/val/test, the label being the class folder, as image folders'
labels are their parent folder; or a manifest (``manifest.csv`` /
``manifest.jsonl``) with a ``video`` column naming each clip's folder, beside
``label`` and optionally ``split``. A clip's frames are ordered by file name,
numbers compared as numbers (``f2.png`` before ``f10.png``).

Frames are decoded at their own size, never resized: every frame of every clip
must have the first frame's size and channels, and every clip the first
clip's frame count. Problems are gathered per clip (the ``video`` field, the
clips listed, the first frame file named) and reported together, as image
folders report their files; the caps are ``IngestLimits``'s: ``max_frames``
per clip, ``max_side`` per frame side, ``max_image_pixels`` per source frame
(checked from its header), ``max_classes``, and the decoded clips at most
``max_total_bytes``.
"""

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from app.ml.data.errors import DataValidationError
from app.ml.data.ingest_spec import IngestLimits, ProgressFn
from app.ml.data.issues import Issues
from app.ml.data.media import IMAGE_EXTENSIONS, MediaError, decode_frame
from app.ml.data.prepared import PreparedDataset
from app.ml.data.splits import stratified_split
from app.ml.data.table import SPLIT_ALIASES

FIELD = "video"
# folder names that mean a split (train/val/test) in folder layouts
SPLIT_DIRS = {"train", "training", "val", "valid", "validation", "test", "testing"}
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class Clip:
    folder: str  # the clip's folder, as the archive names it
    label: str
    split: int | None  # 0/1/2 from a split folder; None: stratified later
    frames: tuple[str, ...]  # archive names, in frame order


def frame_order(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of a frame's file name: digit runs compare as numbers."""
    base = name.rsplit("/", 1)[-1].lower()
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _DIGITS.split(base) if p)


def clip_layout(files: list[str], root: str) -> list[Clip] | None:
    """The clips of a manifest-less archive whose files (all under ``root``) sit
    in clip folders, or None when they do not (an image or audio folder layout)."""
    rel = [f[len(root):] for f in files]
    depths = {f.count("/") for f in rel}
    tops = {f.split("/", 1)[0].lower() for f in rel}
    split_tops = tops <= SPLIT_DIRS
    with_split = depths == {3} and split_tops
    if not with_split and not (depths == {2} and not split_tops):
        return None
    bad = next((f for f in rel if not f.lower().endswith(IMAGE_EXTENSIONS)), None)
    if bad is not None:
        raise DataValidationError("file", f"{root + bad!r} is not an image file ("
                                  + ", ".join(IMAGE_EXTENSIONS) + "); a clip folder holds "
                                  "its frames as images")
    folders: dict[str, list[str]] = {}
    for f in sorted(rel):
        folders.setdefault(f.rsplit("/", 1)[0], []).append(root + f)
    clips = []
    for folder, frames in folders.items():
        parts = folder.split("/")
        clips.append(Clip(folder=root + folder, label=parts[-2],
                          split=SPLIT_ALIASES[parts[0].lower()] if with_split else None,
                          frames=tuple(sorted(frames, key=frame_order))))
    return clips


def manifest_clips(rows: list[dict[str, object]], base: str, files: list[str],
                   label: str, split: str | None) -> list[Clip]:
    """The clips a manifest names: its ``video`` column holds each clip's folder
    (relative to the manifest), ``label`` its class, ``split`` (if given) its
    split; rows are numbered from 1 in errors."""
    by_folder: dict[str, list[str]] = {}
    for f in files:
        if "/" in f:
            by_folder.setdefault(f.rsplit("/", 1)[0], []).append(f)
    clips = []
    for i, row in enumerate(rows, 1):
        rel = str(row.get(FIELD) or "").strip().rstrip("/")
        folder = posixpath.normpath(posixpath.join(base, rel)) if rel else ""
        if not rel or rel.startswith("/") or folder == ".." or folder.startswith("../"):
            raise DataValidationError(FIELD, f"manifest row {i}: {rel!r} is not a clip "
                                      "folder inside the archive")
        frames = by_folder.get(folder)
        if not frames:
            raise DataValidationError(FIELD, f"manifest row {i}: no frames in {rel!r}")
        bad = next((f for f in frames if not f.lower().endswith(IMAGE_EXTENSIONS)), None)
        if bad is not None:
            raise DataValidationError(FIELD, f"manifest row {i}: {bad!r} is not an image file")
        value = row.get(label)
        if value in (None, ""):
            raise DataValidationError(label, f"missing at manifest row {i}")
        code = None
        if split is not None:
            key = str(row.get(split, "")).strip().lower()
            if key not in SPLIT_ALIASES:
                raise DataValidationError(split, f"manifest row {i}: unknown split {key!r} "
                                          "(use train/val/test)")
            code = SPLIT_ALIASES[key]
        clips.append(Clip(folder=folder, label=str(value), split=code,
                          frames=tuple(sorted(frames, key=frame_order))))
    return clips


class _Clips:
    """The (N, T, C, H, W) uint8 array, shaped by the first clip's first frame."""

    def __init__(self, clips: list[Clip], limits: IngestLimits) -> None:
        self.clips, self.limits = clips, limits
        self.issues = Issues(limits.max_errors, "clip", 0, [c.folder for c in clips])
        self.array: np.ndarray | None = None

    def _allocate(self, first: Clip, frame: np.ndarray) -> np.ndarray:
        lim = self.limits
        frames = len(first.frames)
        if frames > lim.max_frames:
            raise DataValidationError(FIELD, f"clip {first.folder!r} has {frames} frames, over "
                                      f"the limit of {lim.max_frames}")
        c, h, w = frame.shape
        if h > lim.max_side or w > lim.max_side:
            raise DataValidationError(FIELD, f"{first.frames[0]!r} is {w}x{h} pixels; each "
                                      f"side of a frame must be at most {lim.max_side}")
        shape = (len(self.clips), frames, c, h, w)
        size = int(np.prod(shape))
        if size > lim.max_total_bytes:
            raise DataValidationError(FIELD, f"{len(self.clips)} clips of {frames} frames of "
                                      f"{c}x{h}x{w} decode to {size} bytes, over the limit of "
                                      f"{lim.max_total_bytes}")
        return np.zeros(shape, np.uint8)

    def read(self, row: int, read: Callable[[str], bytes]) -> None:
        clip = self.clips[row]
        if self.array is not None and len(clip.frames) != self.array.shape[1]:
            self.issues.add(FIELD, f"clips must all have {self.array.shape[1]} frames (as the "
                            "first clip)", row, f"{clip.folder} has {len(clip.frames)}")
            return
        for t, name in enumerate(clip.frames):
            channels = self.array.shape[2] if self.array is not None else None
            try:
                frame = decode_frame(read(name), channels, self.limits.max_image_pixels)
            except MediaError as exc:
                problem = ("frame over the pixel limit" if "limit" in str(exc)
                           or "bomb" in str(exc) else "unreadable frame")
                self.issues.add(FIELD, problem, row, f"{name}: {exc}")
                return
            if self.array is None:
                self.array = self._allocate(clip, frame)
            want = self.array.shape[3:]
            if frame.shape[1:] != want:
                self.issues.add(FIELD, f"frames must all be {want[1]}x{want[0]} pixels (as "
                                "the first frame)", row,
                                f"{name} is {frame.shape[2]}x{frame.shape[1]}")
                return
            self.array[row, t] = frame


def _labels(clips: list[Clip], limits: IngestLimits) -> tuple[np.ndarray, list[str]]:
    names, codes = np.unique(np.array([c.label for c in clips]), return_inverse=True)
    if len(names) < 2:
        raise DataValidationError("label", "needs at least 2 classes (class folders)")
    if len(names) > limits.max_classes:
        raise DataValidationError("label", f"{len(names)} classes is over the limit of "
                                  f"{limits.max_classes}")
    return codes.astype(np.int64), [str(n) for n in names]


def _split(clips: list[Clip], labels: np.ndarray) -> np.ndarray:
    if clips[0].split is None:
        split = stratified_split(labels, seed=0)
        field, hint = "label", "too few clips per class to make train/val/test splits; "
    else:
        split = np.array([c.split for c in clips], dtype=np.uint8)
        field, hint = "split", ""
    for code, name in enumerate(("train", "val", "test")):
        if not (split == code).any():
            raise DataValidationError(field, f"{hint}the {name} split has no clips")
    return split


def prepare_clips(clips: list[Clip], read: Callable[[str], bytes], limits: IngestLimits,
                  provenance: dict[str, object],
                  progress: ProgressFn | None = None) -> PreparedDataset:
    """The clips as a dataset with one ``video`` modality (N, T, C, H, W) uint8."""
    labels, class_names = _labels(clips, limits)
    reader = _Clips(clips, limits)
    for row in range(len(clips)):
        reader.read(row, read)
        if reader.issues.full():
            break
        if progress is not None and (row + 1) % limits.batch_size == 0:
            progress("reading", (row + 1) / len(clips))
    reader.issues.raise_if_any()
    assert reader.array is not None  # every clip read, so the first allocated it
    split = _split(clips, labels)
    return PreparedDataset.from_arrays({FIELD: torch.from_numpy(reader.array)}, labels, split,
                                       class_names, provenance)
