"""Dataset (and weights) URIs: ``file://`` under the operator's import roots, ``s3://``
through fsspec.

A ``file://`` URI is resolved (symlinks followed) and must land inside one of
``MIXLAB_IMPORT_ROOTS``; with none configured, file URIs are refused, so a user
cannot make the service read its own files. ``s3://`` needs the optional
``s3fs`` package. The API checks a URI at submission; the worker checks it
again before reading (a link may have changed since) and copies an s3 object to
a local file, streaming, under the same size limit as uploads. ``resolve`` takes
the field (``loc``), the accepted file names and the size limit, so model
weights (``app.services.initial_weights``) follow the same rules at their field.
"""

import importlib.util
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from app.ml.data.errors import DataValidationError, reason
from app.ml.data.ingest_spec import PreparationStopped
from app.services.errors import FieldError
from app.services.ingest import TABLE_FORMATS, upload_format
from app.settings import Settings

URI_LOC = ("body", "source", "uri")
_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class ResolvedUri:
    uri: str
    scheme: str  # "file" or "s3"
    name: str  # the file name, which gives the format
    path: Path | None = None  # file://: the resolved local path


def s3_available() -> bool:
    return importlib.util.find_spec("s3fs") is not None


def resolve(settings: Settings, uri: str, *, loc: tuple[str | int, ...] = URI_LOC,
            suffixes: tuple[str, ...] | None = None,
            max_bytes: int | None = None) -> ResolvedUri:
    """Check a URI as far as can be done without reading it; ``FieldError`` at
    ``loc`` otherwise. ``suffixes``: the file names accepted (default: the dataset
    formats); ``max_bytes``: a file:// file's size limit (default: uploads')."""
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
          progress: Callable[[float], None] | None = None) -> Path:
    """A local file with the URI's content (the file itself for file://); a
    ``DataValidationError`` at ``source.uri`` when it cannot be read."""
    try:
        resolved = resolve(settings, uri)
    except FieldError as exc:
        raise DataValidationError("source.uri", exc.message) from None
    if resolved.path is not None:
        return resolved.path
    import fsspec

    limit = settings.max_upload_bytes
    target = folder / (resolved.name or "download")
    try:
        fs, path = fsspec.core.url_to_fs(uri)
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
