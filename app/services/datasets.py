"""Register, describe and remove datasets; load their prepared form."""

import uuid
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from threading import Lock
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import Dataset, Experiment
from app.ml.data import PreparedDataset, from_bytes, load_builtin, to_bytes
from app.ml.data.ingest_spec import IngestSpec
from app.schemas.datasets import DatasetCreate
from app.services import ingest
from app.services.errors import ConflictError, NotFoundError
from app.settings import Settings, get_settings
from app.storage import ArtifactStore, dataset_prefix, prepared_key


def _store_new(session: Session, store: ArtifactStore, name: str, source: dict[str, Any],
               prepared: PreparedDataset) -> Dataset:
    """Write the prepared blob, then the row; on any failure remove the blob."""
    dataset_id = uuid.uuid4()
    blob = to_bytes(prepared)
    key = prepared_key(dataset_id)
    store.put(key, blob)
    try:
        dataset = Dataset(id=dataset_id, name=name, status="ready", source=source,
                          summary=prepared.summary(), artifact_key=key, size_bytes=len(blob))
        session.add(dataset)
        session.commit()
    except BaseException:
        session.rollback()
        store.delete_prefix(dataset_prefix(dataset_id))
        raise
    return dataset


def create_builtin(session: Session, store: ArtifactStore, request: DatasetCreate) -> Dataset:
    source = request.source.model_dump()
    roots = {"fashion-mnist": Path(get_settings().fashion_mnist_dir)}
    prepared = load_builtin(request.source.name, request.source.options.model_dump(), roots)
    return _store_new(session, store, request.name, source, prepared)


def create_from_upload(session: Session, store: ArtifactStore, settings: Settings, name: str,
                       path: Path, filename: str, spec: IngestSpec | None) -> Dataset:
    """Any upload format (.npz, .parquet, .zip, .tar.gz/.tgz), chosen by the file name."""
    fmt, prepared = ingest.prepare_upload(settings, path, filename, spec)
    source: dict[str, Any] = {"kind": "upload", "format": fmt, "filename": filename}
    if spec is not None:
        source["spec"] = asdict(spec)
    return _store_new(session, store, name, source, prepared)


def get(session: Session, dataset_id: uuid.UUID) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFoundError("dataset", dataset_id)
    return dataset


def list_page(session: Session, limit: int, offset: int) -> tuple[list[Dataset], int]:
    total = session.scalar(select(func.count()).select_from(Dataset)) or 0
    rows = session.scalars(select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id)
                           .limit(limit).offset(offset)).all()
    return list(rows), total


def delete(session: Session, store: ArtifactStore, dataset_id: uuid.UUID) -> None:
    dataset = get(session, dataset_id)
    used = session.scalar(select(func.count()).select_from(Experiment)
                          .where(Experiment.dataset_id == dataset_id)) or 0
    if used:
        raise ConflictError(f"dataset {dataset_id} is used by {used} experiment(s); "
                            "delete them first")
    session.delete(dataset)
    session.commit()
    store.delete_prefix(dataset_prefix(dataset_id))
    _cache.forget(dataset.artifact_key)


class _PreparedCache:
    """A few recently used prepared datasets, so previews don't re-read the blob."""

    def __init__(self, size: int = 4) -> None:
        self._items: OrderedDict[str, PreparedDataset] = OrderedDict()
        self._size = size
        self._lock = Lock()

    def get(self, key: str, load: Any) -> PreparedDataset:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = load()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


_cache = _PreparedCache()


def load_prepared(store: ArtifactStore, dataset: Dataset) -> PreparedDataset:
    return _cache.get(dataset.artifact_key, lambda: from_bytes(store.get(dataset.artifact_key)))
