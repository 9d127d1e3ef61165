"""The artifact store: prepared datasets and checkpoints, behind fsspec."""

import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, cast

import fsspec
from fsspec.implementations.local import LocalFileSystem

from app.settings import Settings, get_settings


def storage_options(url: str, settings: Settings | None = None) -> dict[str, Any]:
    """fsspec options for ``url``: for s3://, the configured endpoint (MinIO, moto)
    and no listings cache, since other processes (API, workers on other hosts)
    write the objects this one checks for."""
    if not url.lower().startswith("s3://"):
        return {}
    settings = settings or get_settings()
    options: dict[str, Any] = {"use_listings_cache": False}
    if settings.s3_endpoint_url:
        options["endpoint_url"] = settings.s3_endpoint_url
    return options


def url_to_fs(url: str, settings: Settings | None = None) -> tuple[Any, str]:
    """``fsspec.core.url_to_fs`` with ``storage_options``: every s3 access goes here."""
    return fsspec.core.url_to_fs(url, **storage_options(url, settings))


class ArtifactStore:
    """Blobs addressed by a relative key under one fsspec root URL."""

    def __init__(self, url: str, settings: Settings | None = None) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = url_to_fs(self.url, settings)
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid artifact key {key!r}")
        return f"{self.root}/{key}"

    def put(self, key: str, data: bytes) -> None:
        """Write atomically where the backend allows: readers never see half a blob."""
        path = self._path(key)
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "wb") as fh:
            fh.write(data)
        self.fs.mv(tmp, path)

    def put_file(self, key: str, source: Path) -> None:
        """Copy a local file in, streaming, with ``put``'s atomicity."""
        path = self._path(key)
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            self.fs.put_file(str(source), tmp)
            self.fs.mv(tmp, path)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise

    def get_file(self, key: str, target: Path) -> None:
        """Copy a blob to a local file, streaming."""
        self.fs.get_file(self._path(key), str(target))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path)

    def get(self, key: str) -> bytes:
        with self.fs.open(self._path(key), "rb") as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def open(self, key: str) -> BinaryIO:
        """A blob opened for reading, so a caller can read its start (a header)
        without fetching the rest from a remote store."""
        return cast(BinaryIO, self.fs.open(self._path(key), "rb"))

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def path(self, key: str) -> str:
        """The backend's path of ``key`` (for ``self.fs``)."""
        return self._path(key)

    def local_path(self, key: str) -> Path | None:
        """Filesystem path of a key when the store is local (for streaming replies)."""
        if isinstance(self.fs, LocalFileSystem):
            return Path(self._path(key))
        return None


# Where each artifact lives; nothing else spells these paths.
def dataset_prefix(dataset_id: object) -> str:
    return f"datasets/{dataset_id}"


def prepared_key(dataset_id: object) -> str:
    """The single-blob prepared form (datasets prepared before shards; still read)."""
    return f"{dataset_prefix(dataset_id)}/prepared.safetensors"


def shards_prefix(dataset_id: object) -> str:
    """The sharded prepared form: ``index.safetensors`` and the shards (app.ml.data.shards)."""
    return f"{dataset_prefix(dataset_id)}/prepared"


def upload_key(dataset_id: object, suffix: str) -> str:
    """A submitted file, kept until its dataset is prepared; ``suffix`` is its format's."""
    return f"{dataset_prefix(dataset_id)}/upload{suffix}"


def run_prefix(run_id: object) -> str:
    return f"runs/{run_id}"


def checkpoint_key(run_id: object, attempt: int | None = None) -> str:
    """The latest checkpoint of a run; one per attempt, so a worker that lost its
    run but still runs cannot overwrite the checkpoint the next attempt resumes from."""
    if attempt is None:
        return f"{run_prefix(run_id)}/checkpoint.safetensors"
    return f"{run_prefix(run_id)}/attempt-{attempt}/checkpoint.safetensors"


def resume_key_beside(checkpoint: str) -> str:
    """Optimizer and random states beside a checkpoint (``app.ml.resume``)."""
    return checkpoint.rsplit("/", 1)[0] + "/resume.safetensors"


def resume_key(run_id: object, attempt: int | None = None) -> str:
    return resume_key_beside(checkpoint_key(run_id, attempt))


def evaluation_key(run_id: object) -> str:
    """Where a finished run's test-split report (confusion matrix) is kept."""
    return f"{run_prefix(run_id)}/evaluation.json"


@lru_cache
def get_store() -> ArtifactStore:
    settings = get_settings()
    return ArtifactStore(settings.resolved_artifact_url, settings)
