"""Ingest a ``.zip`` / ``.tar.gz`` of images or audio into the prepared form.

Two layouts, optionally under one top-level folder:

- a manifest, ``manifest.csv`` or ``manifest.jsonl``, one row per sample: file
  columns (``image``, ``audio``, or as the spec names them) hold paths relative
  to the manifest, other columns are ``text``, ``label``, ``split`` or
  numeric/categorical features. Manifest rows are numbered from 1.
- an image folder: ``<class>/<file>``, or ``<split>/<class>/<file>`` with split
  folders train/val/test;
- a video: folders of frames, ``<class>/<clip>/<frame>`` or
  ``<split>/<class>/<clip>/<frame>`` (``app.ml.data.frames``).

Multi-label manifests: a JSON list in ``manifest.jsonl`` (``"labels": ["cat",
"dog"]``) makes the dataset multi-label by itself; in ``manifest.csv`` set
``multilabel`` in the spec and separate labels with ``|`` (``cat|dog``).

Streaming: members are read one at a time, as the manifest rows (or folder
files) come, in chunks of ``batch_size`` rows, into a ``TableBuilder``; only the
manifest's text rows are held whole.

Every member is checked before anything is read: no absolute paths, no ``..``,
only regular files and folders (no symlinks, hard links or devices), at most
``max_files`` files, ``max_member_bytes`` per member and ``max_total_bytes``
unpacked; a zip member (or a whole tar.gz) expanding more than ``max_ratio``
times is refused as a zip bomb. A tar.gz is unpacked, streaming, into a
temporary folder that is removed afterwards; a zip is read member by member.
"""

import csv
import io
import json
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.ml.data.columns import is_list
from app.ml.data.errors import DataValidationError
from app.ml.data.frames import SPLIT_DIRS as _SPLIT_DIRS
from app.ml.data.frames import Clip, clip_layout, manifest_clips, prepare_clips
from app.ml.data.ingest_spec import IngestLimits, IngestSpec, ModalitySpec, ProgressFn
from app.ml.data.issues import Issues
from app.ml.data.media import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS
from app.ml.data.prepared import PreparedDataset
from app.ml.data.samples import Samples
from app.ml.data.table import (
    SKIP,
    TableBuilder,
    check_columns,
    check_spec,
    modality_name,
    needed_columns,
)

MANIFESTS = ("manifest.csv", "manifest.jsonl")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _fail(reason: str) -> DataValidationError:
    return DataValidationError("file", reason)


def check_member_name(name: str) -> str:
    """The member's normalised relative path, or a ``DataValidationError``."""
    if "\x00" in name:
        raise _fail(f"archive member {name!r}: NUL in the name")
    unix = name.replace("\\", "/")
    if unix.startswith("/") or re.match(r"^[A-Za-z]:", unix):
        raise _fail(f"archive member {name!r}: absolute path")
    parts = [p for p in unix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _fail(f"archive member {name!r}: path traversal ('..')")
    return "/".join(parts)


def _hidden(path: str) -> bool:
    return path.startswith("__MACOSX/") or any(p.startswith(".") for p in path.split("/"))


class _Caps:
    def __init__(self, limits: IngestLimits) -> None:
        self.limits, self.files, self.total = limits, 0, 0

    def member(self, name: str, size: int, compressed: int | None) -> None:
        lim = self.limits
        self.files += 1
        if self.files > lim.max_files:
            raise _fail(f"archive has more than {lim.max_files} files")
        if size > lim.max_member_bytes:
            raise _fail(f"archive member {name!r}: {size} bytes is over the limit of "
                        f"{lim.max_member_bytes}")
        self.total += size
        if self.total > lim.max_total_bytes:
            raise _fail(f"archive unpacks to more than {lim.max_total_bytes} bytes")
        if compressed is not None and size >= lim.ratio_min_bytes \
                and size > lim.max_ratio * max(compressed, 1):
            raise _fail(f"archive member {name!r} expands {size / max(compressed, 1):.0f}x "
                        f"(limit {lim.max_ratio:.0f}x): zip bomb?")


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (tarfile.TarError, EOFError, OSError):  # e.g. a truncated gzip stream
        return False


@contextmanager
def _open_archive(path: Path, limits: IngestLimits, progress: ProgressFn | None = None,
                  ) -> Iterator[tuple[list[str], Callable[[str], bytes]]]:
    """Validated file names and a reader for them. A tar.gz is unpacked first (it
    cannot be read out of order), to a temporary folder on disk."""
    caps = _Caps(limits)
    if zipfile.is_zipfile(path):
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise _fail(f"not a readable zip: {exc}") from exc
        with zf:
            files: dict[str, zipfile.ZipInfo] = {}
            for info in zf.infolist():
                rel = check_member_name(info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise _fail(f"archive member {info.filename!r}: symlinks are not allowed")
                if info.is_dir() or not rel:
                    continue
                caps.member(info.filename, info.file_size, info.compress_size)
                files[rel] = info

            def read_zip(rel: str) -> bytes:
                try:
                    return zf.read(files[rel])
                except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                    raise _fail(f"archive member {rel!r}: unreadable ({exc})") from exc

            yield list(files), read_zip
        return
    if not _is_tar(path):
        raise _fail("not a .zip or .tar.gz archive")
    folder = Path(tempfile.mkdtemp(prefix="mixlab-archive-"))
    try:
        names: list[str] = []
        packed = path.stat().st_size
        try:
            with path.open("rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tf:
                for member in tf:
                    if progress is not None:
                        progress("unpacking", raw.tell() / max(packed, 1))
                    rel = check_member_name(member.name)
                    if member.issym() or member.islnk():
                        raise _fail(f"archive member {member.name!r}: links are not allowed")
                    if member.isdir() or not rel:
                        continue
                    if not member.isfile():
                        raise _fail(f"archive member {member.name!r}: not a regular file")
                    caps.member(member.name, member.size, None)
                    src = tf.extractfile(member)
                    if src is None:
                        raise _fail(f"archive member {member.name!r}: unreadable")
                    target = folder / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with target.open("wb") as out:
                        shutil.copyfileobj(src, out)
                    names.append(rel)
                    if caps.total >= limits.ratio_min_bytes \
                            and caps.total > limits.max_ratio * packed:
                        raise _fail(f"archive expands more than {limits.max_ratio:.0f}x "
                                    f"({packed} bytes packed): zip bomb?")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise _fail(f"not a readable tar archive: {exc}") from exc
        yield names, lambda rel: (folder / rel).read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _root(files: list[str]) -> str:
    """The single top-level folder every file sits in, or ''."""
    tops = {f.split("/", 1)[0] for f in files}
    if len(tops) == 1 and all("/" in f for f in files):
        return tops.pop() + "/"
    return ""


def _read_manifest(name: str, data: bytes, limits: IngestLimits) -> tuple[
        list[str], list[dict[str, Any]]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataValidationError(name, f"not UTF-8 text: {exc}") from exc
    rows: list[dict[str, Any]] = []
    if name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        columns = [c.strip() for c in reader.fieldnames or []]
        try:
            for raw in reader:
                if None in raw:
                    raise DataValidationError(name, f"row {reader.line_num - 1}: more cells "
                                              "than header columns")
                rows.append({k.strip(): v for k, v in raw.items()})
                if len(rows) > limits.max_rows:
                    break
        except csv.Error as exc:
            raise DataValidationError(name, f"not valid CSV: {exc}") from exc
    else:
        columns = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataValidationError(name, f"line {lineno}: not valid JSON ({exc.msg})"
                                          ) from exc
            if not isinstance(obj, dict):
                raise DataValidationError(name, f"line {lineno}: expected a JSON object")
            columns += [k for k in obj if k not in columns]
            rows.append(obj)
            if len(rows) > limits.max_rows:
                break
    if len(rows) > limits.max_rows:
        raise DataValidationError(name, f"more than {limits.max_rows} rows")
    if not rows:
        raise DataValidationError(name, "has no rows")
    return columns, rows


def _infer_manifest(spec: IngestSpec, columns: list[str],
                    rows: list[dict[str, Any]]) -> IngestSpec:
    split = spec.split or ("split" if "split" in columns else None)
    modalities: dict[str, ModalitySpec] = {}
    numeric, categorical = [], []
    text_seen = False
    for col in columns:
        if col in (*spec.label_columns(), split):
            continue
        values = [r.get(col) for r in rows if r.get(col) not in (None, "")]
        strs = [v for v in values if isinstance(v, str)]
        lower = [v.lower() for v in strs]
        if col in ("image", "audio") or (strs and all(v.endswith(IMAGE_EXTENSIONS)
                                                      for v in lower)):
            kind = "audio" if col == "audio" or (strs and all(
                v.endswith(AUDIO_EXTENSIONS) for v in lower)) else "image"
            modalities[modality_name(col, set(modalities))] = ModalitySpec(kind=kind, column=col)
        elif strs and all(v.endswith(AUDIO_EXTENSIONS) for v in lower):
            modalities[modality_name(col, set(modalities))] = ModalitySpec(kind="audio",
                                                                          column=col)
        elif values and all((isinstance(v, int | float) and not isinstance(v, bool))
                            or (isinstance(v, str) and _NUMBER.fullmatch(v.strip()))
                            for v in values):
            numeric.append(col)
        elif col == "text" or (not text_seen and col not in ("category",)
                               and any(" " in v for v in strs)):
            if text_seen:
                categorical.append(col)
            else:
                text_seen = True
                modalities[modality_name(col, set(modalities))] = ModalitySpec(kind="text",
                                                                              column=col)
        else:
            categorical.append(col)
    if numeric or categorical:
        modalities[modality_name("tabular", set(modalities))] = ModalitySpec(
            kind="tabular", columns=tuple(numeric), categorical=tuple(categorical))
    return replace(spec, modalities=modalities, split=split)


def _resolve(column: str, values: list[Any], start: int, base: str, files: set[str],
             issues: Issues) -> list[Any]:
    """Manifest paths → archive names (None: empty cell; SKIP: reported here)."""
    out: list[Any] = []
    for i, rel in enumerate(values):
        if rel in (None, ""):
            out.append(None)  # the builder reports "missing image"
            continue
        target = posixpath.normpath(posixpath.join(base, str(rel)))
        if target.startswith("../") or target == ".." or str(rel).startswith("/"):
            issues.add(column, "path leaves the archive", start + i, str(rel))
            out.append(SKIP)
        elif target not in files:
            issues.add(column, f"missing file {rel}", start + i)
            out.append(SKIP)
        else:
            out.append(target)
    return out


class _Plan:
    """How an archive is read: the spec, the rows, and how rows are named in errors."""

    def __init__(self, spec: IngestSpec, rows: list[dict[str, Any]], base: str,
                 row_name: str, row_base: int, layout: str,
                 row_names: list[str] | None = None) -> None:
        self.spec, self.rows, self.base, self.layout = spec, rows, base, layout
        self.row_name, self.row_base, self.row_names = row_name, row_base, row_names
        self.labelled = True  # rows carry a label (always, unless read for prediction)

    def file_columns(self) -> list[str]:
        return list(dict.fromkeys(m.column for m in self.spec.modalities.values()
                                  if m.kind in ("image", "audio") and m.column))

    def check_files(self, files: set[str], limits: IngestLimits) -> None:
        """Every referenced member exists and stays inside the archive (names only)."""
        issues = Issues(limits.max_errors, self.row_name, self.row_base, self.row_names)
        for col in self.file_columns():
            _resolve(col, [r.get(col) for r in self.rows], 0, self.base, files, issues)
        issues.raise_if_any()


def _plan(files: list[str], read: Callable[[str], bytes], spec: IngestSpec,
          limits: IngestLimits, fit: Callable[[IngestSpec], IngestSpec] | None = None,
          ) -> _Plan:
    """How to read the archive. ``fit`` (samples sent for prediction) adjusts the
    spec to a model; labels become optional (a manifest without a label column,
    or files that are not in class folders)."""
    manifests = [f for f in files if posixpath.basename(f) in MANIFESTS and f.count("/") <= 1]
    if len(manifests) > 1:
        raise _fail("archive has more than one manifest: " + ", ".join(manifests))
    if not manifests:
        spec, rows = _folder_layout(files, spec, unlabelled_ok=fit is not None)
        if fit is not None:
            spec = fit(spec)
        check_spec(spec, limits)
        plan = _Plan(spec, rows, "", "file", 1, "folders", [r["file"] for r in rows])
        plan.labelled = any("label" in r for r in rows)
        return plan
    manifest = manifests[0]
    mname = posixpath.basename(manifest)
    columns, rows = _read_manifest(mname, read(manifest), limits)
    labelled = spec.label in columns
    if not labelled and fit is None:
        raise DataValidationError(spec.label, f"{mname} has no label column "
                                  f"(columns: {', '.join(columns)})")
    if labelled and any(is_list(r.get(spec.label)) for r in rows):
        spec = replace(spec, multilabel=True)
    if not spec.modalities:
        spec = _infer_manifest(spec, columns, rows)
    elif spec.split is None and "split" in columns:
        spec = replace(spec, split="split")
    if fit is not None:
        spec = fit(spec)
    check_columns(spec, columns, labelled)
    check_spec(spec, limits)
    plan = _Plan(spec, rows, posixpath.dirname(manifest), "manifest row", 1, mname)
    plan.labelled = labelled
    return plan


def _build(plan: _Plan, files: set[str], read: Callable[[str], bytes], limits: IngestLimits,
           progress: ProgressFn | None, predicting: bool = False) -> TableBuilder:
    rows = plan.rows
    builder = TableBuilder(plan.spec, len(rows), limits, row_name=plan.row_name,
                           row_base=plan.row_base, row_names=plan.row_names,
                           progress=progress, predicting=predicting, labelled=plan.labelled)
    file_cols = set(plan.file_columns())
    needed = needed_columns(plan.spec, plan.labelled)
    for start in range(0, len(rows), limits.batch_size):
        chunk = rows[start:start + limits.batch_size]
        columns: dict[str, list[Any]] = {}
        for col in needed:
            values = [r.get(col) for r in chunk]
            if col in file_cols:
                values = [read(v) if isinstance(v, str) else v for v in
                          _resolve(col, values, start, plan.base, files, builder.issues)]
            columns[col] = values
        builder.add(start, columns)
    return builder


def _names_video(name: str, data: bytes) -> bool:
    """Whether a manifest has a ``video`` column, from its first line only."""
    first = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
    if name.endswith(".csv"):
        return "video" in (c.strip() for c in first.split(","))
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False  # _plan reports it
    return isinstance(row, dict) and "video" in row


def _clips(files: list[str], read: Callable[[str], bytes], spec: IngestSpec,
           limits: IngestLimits) -> list[Clip] | None:
    """The clips of a video archive: clip folders (no manifest, frames in
    ``<class>/<clip>/``), or a manifest with a ``video`` column; else None."""
    manifests = [f for f in files if posixpath.basename(f) in MANIFESTS and f.count("/") <= 1]
    if not manifests:
        return clip_layout(files, _root(files))
    if len(manifests) > 1:
        return None  # _plan refuses it
    name, data = posixpath.basename(manifests[0]), read(manifests[0])
    if not _names_video(name, data):
        return None
    columns, rows = _read_manifest(name, data, limits)
    split = spec.split or ("split" if "split" in columns else None)
    return manifest_clips(rows, posixpath.dirname(manifests[0]), files, spec.label, split)


def probe_archive(path: Path, spec: IngestSpec | None = None,
                  limits: IngestLimits | None = None) -> IngestSpec | None:
    """Refuse what a zip's directory and manifest show is wrong (unsafe members,
    caps, layout, columns, missing files) without reading a member's data; the spec
    it would use. A tar.gz has no directory: only its header is checked (None)."""
    limits = limits or IngestLimits()
    spec = spec or IngestSpec()
    if not zipfile.is_zipfile(path):
        if not _is_tar(path):
            raise _fail("not a .zip or .tar.gz archive")
        return None
    with _open_archive(path, limits) as (all_files, read):
        files = [f for f in all_files if not _hidden(f)]
        if not files:
            raise _fail("archive has no files")
        if _clips(files, read, spec, limits) is not None:
            return None  # clip folders: no spec applies; frames are checked when read
        plan = _plan(files, read, spec, limits)
        plan.check_files(set(files), limits)
        return plan.spec


def prepare_archive(path: Path, spec: IngestSpec | None = None,
                    limits: IngestLimits | None = None, original_name: str = "",
                    progress: ProgressFn | None = None) -> PreparedDataset:
    limits = limits or IngestLimits()
    spec = spec or IngestSpec()
    fmt = "zip" if zipfile.is_zipfile(path) else "tar"
    with _open_archive(path, limits, progress) as (all_files, read):
        files = [f for f in all_files if not _hidden(f)]
        if not files:
            raise _fail("archive has no files")
        clips = _clips(files, read, spec, limits)
        if clips is not None:
            layout = "manifest" if any(posixpath.basename(f) in MANIFESTS
                                       and f.count("/") <= 1 for f in files) else "clip folders"
            return prepare_clips(clips, read, limits, {"upload": original_name or path.name,
                                                      "format": fmt, "layout": layout},
                                 progress)
        plan = _plan(files, read, spec, limits)
        builder = _build(plan, set(files), read, limits, progress)
        provenance: dict[str, Any] = {
            "upload": original_name or path.name, "format": fmt, "layout": plan.layout,
            "modalities": {k: {"kind": m.kind, "columns": list(m.source_columns())}
                           for k, m in plan.spec.modalities.items()}}
        return builder.finish(provenance)


def _folder_layout(files: list[str], spec: IngestSpec, unlabelled_ok: bool = False,
                   ) -> tuple[IngestSpec, list[dict[str, Any]]]:
    """Rows of a manifest-less archive. ``unlabelled_ok`` (samples sent for
    prediction) also takes files with no class folder (at the top, or all in one
    folder): rows without a label."""
    root = _root(files)
    rel = sorted(f[len(root):] for f in files)
    depths = {f.count("/") for f in rel}
    with_split = depths == {2} and {f.split("/", 1)[0].lower() for f in rel} <= _SPLIT_DIRS
    flat = unlabelled_ok and depths == {0}
    if depths != {1} and not with_split and not flat:
        odd = next(f for f in rel if f.count("/") != 1)
        raise _fail(f"no manifest.csv / manifest.jsonl, and {root + odd!r} is not in a "
                    "<class>/<file> (or <split>/<class>/<file>) layout")
    lower = [f.lower() for f in rel]
    if all(f.endswith(AUDIO_EXTENSIONS) for f in lower):
        kind = "audio"
    else:
        kind = "image"
        bad = [f for f in rel if not f.lower().endswith(IMAGE_EXTENSIONS)]
        if bad:
            raise _fail(f"{root + bad[0]!r} is not an image file ("
                        + ", ".join(IMAGE_EXTENSIONS) + ")")
    given = [m for m in spec.modalities.values() if m.kind == kind]
    options = replace(given[0], column="file") if given else ModalitySpec(kind=kind,
                                                                         column="file")
    rows = []
    for f in rel:
        parts = f.split("/")
        row = {"file": root + f} if flat else {"file": root + f, "label": parts[-2]}
        if with_split:
            row["split"] = parts[0]
        rows.append(row)
    out = IngestSpec(modalities={kind: options}, label="label",
                     split="split" if with_split else None)
    return out, rows


def read_archive_samples(path: Path, spec: IngestSpec | None,
                         fit: Callable[[IngestSpec], IngestSpec],
                         limits: IngestLimits | None = None,
                         original_name: str = "") -> Samples:
    """A .zip / .tar.gz sent for prediction, checked and read as an upload is
    (member checks, caps, manifest or class folders, or just files), with ``fit``
    making the spec the model's; labels are optional (see ``samples``). Rows
    are the manifest's, or the files sorted by path."""
    limits = limits or IngestLimits()
    fmt = "zip" if zipfile.is_zipfile(path) else "tar"
    with _open_archive(path, limits) as (all_files, read):
        files = [f for f in all_files if not _hidden(f)]
        if not files:
            raise _fail("archive has no files")
        plan = _plan(files, read, spec or IngestSpec(), limits, fit)
        if len(plan.rows) > limits.max_rows:
            raise _fail(f"{len(plan.rows)} samples is over the limit of {limits.max_rows}")
        builder = _build(plan, set(files), read, limits, None, predicting=True)
        return builder.finish_samples({"upload": original_name or path.name, "format": fmt,
                                       "layout": plan.layout})
