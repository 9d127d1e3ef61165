"""The artifact store: prepared datasets and checkpoints, behind fsspec."""

import uuid
from functools import lru_cache
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from app.settings import get_settings


class ArtifactStore:
    """Blobs addressed by a relative key under one fsspec root URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
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

    def get(self, key: str) -> bytes:
        with self.fs.open(self._path(key), "rb") as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def local_path(self, key: str) -> Path | None:
        """Filesystem path of a key when the store is local (for streaming replies)."""
        if isinstance(self.fs, LocalFileSystem):
            return Path(self._path(key))
        return None


# Where each artifact lives; nothing else spells these paths.
def dataset_prefix(dataset_id: object) -> str:
    return f"datasets/{dataset_id}"


def prepared_key(dataset_id: object) -> str:
    return f"{dataset_prefix(dataset_id)}/prepared.safetensors"


def run_prefix(run_id: object) -> str:
    return f"runs/{run_id}"


def checkpoint_key(run_id: object) -> str:
    return f"{run_prefix(run_id)}/checkpoint.safetensors"


def evaluation_key(run_id: object) -> str:
    """Where a finished run's test-split report (confusion matrix) is kept."""
    return f"{run_prefix(run_id)}/evaluation.json"


@lru_cache
def get_store() -> ArtifactStore:
    return ArtifactStore(get_settings().resolved_artifact_url)
