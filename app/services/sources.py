"""Dataset (and weights) URIs: ``file://`` under the operator's import roots, ``s3://``
under the operator's bucket prefixes, through fsspec.

A ``file://`` URI is resolved (symlinks followed) and must land inside one of
``MIXLAB_IMPORT_ROOTS``; with none configured, file URIs are refused, so a user
cannot make the service read its own files. An ``s3://`` URI is read with the
server's own credentials, so it must lie under one of
``MIXLAB_S3_IMPORT_PREFIXES``, matched on whole path segments; a prefix may hold
``{project}`` (the project's name) or ``{project_id}``, which gives every project
a place of its own that no other project can import from. With none
configured, s3 URIs are refused; they also need the optional ``s3fs`` package.
The API checks a URI at submission; the worker checks it again before reading
(a link or the setting may have changed since) and copies an s3 object to a
local file, streaming, under the same size limit as uploads. ``resolve`` takes
the field (``loc``), the accepted file names and the size limit, so model
weights (``app.services.initial_weights``) follow the same rules at their field.
"""

import importlib.util
import posixpath
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy.orm import Session

from app.db.models import Project
from app.ml.data.errors import DataValidationError, reason
from app.ml.data.ingest_spec import PreparationStopped
from app.services.errors import FieldError, NotFoundError
from app.services.ingest import TABLE_FORMATS, upload_format
from app.settings import Settings
from app.storage import url_to_fs

URI_LOC = ("body", "source", "uri")
_CHUNK = 4 * 1024 * 1024
# a project name {project} may stand for: one path segment, nothing to escape
_SEGMENT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


@dataclass(frozen=True)
class ProjectRef:
    """The project a URI is read for: its s3 prefixes follow from the templates."""

    id: uuid.UUID
    name: str


def project_ref(session: Session, project_id: uuid.UUID) -> ProjectRef:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFoundError("project", project_id)
    return ProjectRef(project.id, project.name)


@dataclass(frozen=True)
class ResolvedUri:
    uri: str
    scheme: str  # "file" or "s3"
    name: str  # the file name, which gives the format
    path: Path | None = None  # file://: the resolved local path


def s3_available() -> bool:
    return importlib.util.find_spec("s3fs") is not None


def s3_prefixes(settings: Settings, project: ProjectRef | None) -> list[str]:
    """The prefixes s3 URIs of ``project`` may lie under, templates expanded; a
    template applies only where its placeholder can be filled: {project} with a
    name that is one plain path segment, either with a project at all."""
    prefixes = []
    for template in settings.s3_import_prefix_list:
        prefix = template
        if "{project_id}" in prefix:
            if project is None:
                continue
            prefix = prefix.replace("{project_id}", str(project.id))
        if "{project}" in prefix:
            if project is None or not _SEGMENT_NAME.match(project.name) \
                    or project.name in (".", ".."):
                continue
            prefix = prefix.replace("{project}", project.name)
        prefixes.append(prefix)
    return list(dict.fromkeys(prefixes))


def s3_segments(uri: str) -> list[str] | None:
    """[bucket, *key segments] of an s3 URI, or None when it is not a plain one
    (no query or fragment, no empty, '.' or '..' segment): nothing that a reader
    could take for another key than the one matched against the prefixes."""
    if not uri.startswith("s3://") or any(c in uri for c in "?#\\"):
        return None
    segments = uri[len("s3://"):].split("/")
    if any(s in ("", ".", "..") for s in segments):
        return None
    return segments


def under_prefix(uri: str, prefix: str) -> bool:
    """Whether ``uri`` names an object under ``prefix`` (``s3://bucket/path/``),
    comparing whole segments: s3://b/data-evil/x is not under s3://b/data/."""
    segments, allowed = s3_segments(uri), prefix[len("s3://"):].rstrip("/").split("/")
    return segments is not None and len(segments) > len(allowed) \
        and segments[:len(allowed)] == allowed


def _check_s3(settings: Settings, uri: str, project: ProjectRef | None,
              loc: tuple[str | int, ...]) -> None:
    if s3_segments(uri) is None:
        raise FieldError(loc, "expected s3://bucket/key, without '?', '#', '\\' or empty, "
                              "'.' or '..' path segments")
    if not settings.s3_import_prefix_list:
        raise FieldError(loc, "s3:// URIs are turned off on this server (the operator "
                              "allows bucket prefixes with MIXLAB_S3_IMPORT_PREFIXES)")
    store = settings.resolved_artifact_url.rstrip("/") + "/"
    if store.startswith("s3://") and under_prefix(uri, store):
        # every project's checkpoints are there, whatever a prefix lets through
        raise FieldError(loc, f"{uri} is in the artifact store, which URIs may not read "
                              "(a file of one of the project's runs: model.weights "
                              "store:KEY)")
    allowed = s3_prefixes(settings, project)
    if not any(under_prefix(uri, prefix) for prefix in allowed):
        where = ", ".join(allowed) if allowed else "none for this project"
        raise FieldError(loc, f"{uri} is outside the prefixes s3:// URIs may read ({where})")


def resolve(settings: Settings, uri: str, *, loc: tuple[str | int, ...] = URI_LOC,
            suffixes: tuple[str, ...] | None = None,
            max_bytes: int | None = None, project: ProjectRef | None = None) -> ResolvedUri:
    """Check a URI as far as can be done without reading it; ``FieldError`` at
    ``loc`` otherwise. ``suffixes``: the file names accepted (default: the dataset
    formats); ``max_bytes``: a file:// file's size limit (default: uploads');
    ``project``: whose s3 prefixes apply (None: only those without a placeholder)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    name = posixpath.basename(unquote(parts.path))
    if scheme not in ("file", "s3"):
        raise FieldError(loc, f"unsupported scheme {scheme + '://' if scheme else '(none)'}"
                              "; use file:///path or s3://bucket/key")
    lower = name.lower()
    if suffixes is None:
        known = lower.endswith(".npz") or any(lower.endswith(s) for s in TABLE_FORMATS)
        expected = ".npz, .parquet, .zip, .tar.gz or .tgz"
    else:
        known = any(lower.endswith(s) for s in suffixes)
        expected = " or ".join(suffixes)
    if not known:
        raise FieldError(loc, f"cannot tell the format of {name or uri!r} from its name; "
                              f"expected {expected}")
    if scheme == "s3":
        if not s3_available():
            raise FieldError(loc, "s3:// URIs need the s3fs package, which is not "
                                  "installed on this server (pip install s3fs)")
        if not parts.netloc or not parts.path.strip("/"):
            raise FieldError(loc, "expected s3://bucket/key")
        _check_s3(settings, uri, project, loc)
        return ResolvedUri(uri, "s3", name)
    limit = settings.max_upload_bytes if max_bytes is None else max_bytes
    return ResolvedUri(uri, "file", name,
                       _local_path(settings, parts.netloc, parts.path, loc, limit))


def _local_path(settings: Settings, host: str, raw_path: str, loc: tuple[str | int, ...],
                max_bytes: int) -> Path:
    if host not in ("", "localhost"):
        raise FieldError(loc, "a file:// URI names a path on this server: "
                              "file:///path/to/the/file")
    roots = settings.import_root_paths
    if not roots:
        raise FieldError(loc, "file:// URIs are turned off on this server (the operator "
                              "allows folders with MIXLAB_IMPORT_ROOTS)"
                              + ("; upload the file instead" if loc == URI_LOC else ""))
    path = Path(unquote(raw_path))
    real = path.resolve()
    if not any(real.is_relative_to(root) for root in roots):
        raise FieldError(loc, f"{path} is outside the folders file:// URIs may read ("
                              + ", ".join(str(r) for r in roots) + ")")
    if not real.is_file():
        raise FieldError(loc, f"{path}: no such file")
    size = real.stat().st_size
    if size > max_bytes:
        raise FieldError(loc, f"{path}: too large ({size} bytes; limit {max_bytes} bytes)")
    return real


def uri_format(resolved: ResolvedUri) -> str:
    return upload_format(resolved.name)


def fetch(settings: Settings, uri: str, folder: Path,
          progress: Callable[[float], None] | None = None,
          project: ProjectRef | None = None) -> Path:
    """A local file with the URI's content (the file itself for file://); a
    ``DataValidationError`` at ``source.uri`` when it cannot be read."""
    try:
        resolved = resolve(settings, uri, project=project)
    except FieldError as exc:
        raise DataValidationError("source.uri", exc.message) from None
    if resolved.path is not None:
        return resolved.path
    limit = settings.max_upload_bytes
    target = folder / (resolved.name or "download")
    try:
        fs, path = url_to_fs(uri, settings)
        size = int(fs.size(path) or 0)
        if size > limit:
            raise DataValidationError("source.uri", f"too large ({size} bytes; limit {limit} "
                                      "bytes)")
        done = 0
        with fs.open(path, "rb") as src, target.open("wb") as out:
            while chunk := src.read(_CHUNK):
                done += len(chunk)
                if done > limit:
                    raise DataValidationError("source.uri", f"too large (over the limit of "
                                              f"{limit} bytes)")
                out.write(chunk)
                if progress is not None and size:
                    progress(min(done / size, 1.0))
    except (DataValidationError, PreparationStopped):
        raise
    except Exception as exc:  # fsspec backends raise their own error types
        raise DataValidationError("source.uri", f"cannot read {uri}: {reason(exc)}") from exc
    return target
