"""Register, describe and remove datasets; load their prepared form.

Registering is a job, like a run: the API checks what it can at once (the
request, the spec, the file's size, name and headers), stores the submitted
file under the dataset's prefix, commits the row as ``preparing`` and only then
publishes "prepare dataset X" on the ingest queue. A worker claims the row with
a guarded UPDATE, prepares it, and moves it to ``ready`` (summary, prepared
blob) or ``failed`` (a capped list of errors, nothing stored). Built-ins take
the same path, so every dataset a user registers is followed the same way.
"""

import logging
import uuid
from collections import OrderedDict
from datetime import timedelta
from pathlib import Path
from threading import Lock
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Dataset, Experiment
from app.ml.data import DataValidationError, PreparedDataset
from app.ml.data.errors import plain, reason
from app.ml.data.fashion_mnist import FILES as FASHION_MNIST_FILES
from app.ml.data.fashion_mnist import missing_message
from app.ml.data.ingest_spec import IngestSpec
from app.runs.queue import enqueue_preparation
from app.schemas.datasets import DatasetCreate, UriSource
from app.services import ingest, limits, prepared_data, sources
from app.services.errors import ConflictError, FieldError, NotFoundError
from app.settings import Settings, get_settings
from app.storage import ArtifactStore, dataset_prefix, upload_key

log = logging.getLogger(__name__)
MAX_LISTED_ERRORS = 20


# --- submission (the API's side) --------------------------------------------------

def _queue(session: Session, dataset: Dataset, store: ArtifactStore | None = None) -> Dataset:
    """Commit the new row (removing its stored file if that fails), then publish."""
    session.add(dataset)
    try:
        session.commit()
    except BaseException:
        session.rollback()
        if store is not None:
            store.delete_prefix(dataset_prefix(dataset.id))
        raise
    try:
        enqueue_preparation(str(dataset.id))
    except Exception as exc:  # the row is committed: say why nothing will prepare it
        log.exception("publishing the preparation of dataset %s failed", dataset.id)
        _fail_unclaimed(session, dataset.id, f"could not queue the preparation "
                                             f"({reason(exc)}); delete the "
                                             "dataset and submit it again")
        if store is not None:
            store.delete_prefix(dataset_prefix(dataset.id))
        session.refresh(dataset)
    return dataset


def _fail_unclaimed(session: Session, dataset_id: uuid.UUID, message: str) -> None:
    session.execute(update(Dataset).where(Dataset.id == dataset_id,
                                          Dataset.status == "preparing",
                                          Dataset.attempt == 0)
                    .values(status="failed", errors=[{"field": "queue", "message": message}],
                            error_count=1, finished_at=utcnow()))
    session.commit()


def submit_builtin(session: Session, project_id: uuid.UUID, settings: Settings,
                   request: DatasetCreate) -> Dataset:
    source = request.source
    assert not isinstance(source, UriSource)
    if source.name == "fashion-mnist":
        root = Path(settings.fashion_mnist_dir)
        if not all((root / name).is_file() for name in FASHION_MNIST_FILES.values()):
            raise DataValidationError("source.name", missing_message(root))
    limits.check_dataset_bytes(session, settings, project_id, 0, ("body", "source"))
    return _queue(session, Dataset(project_id=project_id, name=request.name,
                                   status="preparing", source=source.model_dump(mode="json")))


def submit_upload(session: Session, project_id: uuid.UUID, store: ArtifactStore,
                  settings: Settings, name: str, path: Path, filename: str,
                  spec: IngestSpec | None) -> Dataset:
    """Any upload format (.npz, .parquet, .zip, .tar.gz/.tgz), chosen by the file name."""
    fmt = ingest.upload_format(filename)
    ingest.check_file(settings, path, fmt, spec)
    limits.check_dataset_bytes(session, settings, project_id, path.stat().st_size,
                               ("body", "file"))
    source: dict[str, Any] = {"kind": "upload", "format": fmt, "filename": filename}
    if spec is not None:
        source["spec"] = spec.to_dict()
    dataset = Dataset(id=uuid.uuid4(), project_id=project_id, name=name, status="preparing",
                      source=source)
    store.put_file(upload_key(dataset.id, ingest.FORMAT_SUFFIX[fmt]), path)
    return _queue(session, dataset, store)


def submit_uri(session: Session, project_id: uuid.UUID, settings: Settings,
               request: DatasetCreate) -> Dataset:
    """A file:// (under the import roots) or s3:// URI, read by the worker."""
    source = request.source
    assert isinstance(source, UriSource)
    resolved = sources.resolve(settings, source.uri,
                               project=sources.project_ref(session, project_id))
    fmt = sources.uri_format(resolved)
    spec = source.spec.to_spec() if source.spec is not None else None
    if resolved.path is not None:  # a local file: its headers can be checked now
        try:
            ingest.check_file(settings, resolved.path, fmt, spec, ("body", "source", "spec"))
        except DataValidationError as exc:
            loc = sources.URI_LOC + (() if exc.field == "file" else (exc.field,))
            raise FieldError(loc, str(exc)) from None
    elif fmt == "npz" and spec is not None:
        raise FieldError(("body", "source", "spec"), "spec applies to .parquet, .zip and "
                                                     ".tar.gz files, not .npz")
    size = resolved.path.stat().st_size if resolved.path is not None else 0
    limits.check_dataset_bytes(session, settings, project_id, size, sources.URI_LOC)
    stored: dict[str, Any] = {"kind": "uri", "uri": source.uri, "format": fmt}
    if spec is not None:
        stored["spec"] = spec.to_dict()
    return _queue(session, Dataset(project_id=project_id, name=request.name,
                                   status="preparing", source=stored))


# --- reading and removing ------------------------------------------------------------

def get(session: Session, project_id: uuid.UUID, dataset_id: uuid.UUID) -> Dataset:
    """The project's dataset; another project's is not found, exactly like a missing one."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.project_id != project_id:
        raise NotFoundError("dataset", dataset_id)
    return dataset


def require_ready(dataset: Dataset) -> Dataset:
    """The dataset if it is ready; a ConflictError (409) saying why not otherwise."""
    if dataset.status == "ready":
        return dataset
    if dataset.status == "preparing":
        where = f"{dataset.stage}, {dataset.progress:.0%}" if dataset.stage else "queued"
        raise ConflictError(f"dataset {dataset.id} is still preparing ({where}); poll GET "
                            f"/v1/datasets/{dataset.id} until its status is ready")
    raise ConflictError(f"dataset {dataset.id} is {dataset.status}: its preparation failed "
                        f"({dataset.error_count} problem(s), listed in its errors); fix the "
                        "data and register it again")


def list_page(session: Session, project_id: uuid.UUID, limit: int,
              offset: int) -> tuple[list[Dataset], int]:
    mine = Dataset.project_id == project_id
    total = session.scalar(select(func.count()).select_from(Dataset).where(mine)) or 0
    rows = session.scalars(select(Dataset).where(mine)
                           .order_by(Dataset.created_at.desc(), Dataset.id)
                           .limit(limit).offset(offset)).all()
    return list(rows), total


def delete(session: Session, project_id: uuid.UUID, store: ArtifactStore,
           dataset_id: uuid.UUID) -> None:
    """Remove a dataset and everything stored for it. One still preparing is
    cancelled: its worker sees the row gone at its next progress write, stops, and
    removes whatever it wrote after this."""
    dataset = get(session, project_id, dataset_id)
    used = session.scalar(select(func.count()).select_from(Experiment)
                          .where(Experiment.dataset_id == dataset_id)) or 0
    if used:
        raise ConflictError(f"dataset {dataset_id} is used by {used} experiment(s); "
                            "delete them first")
    key = dataset.artifact_key
    session.delete(dataset)
    session.commit()
    store.delete_prefix(dataset_prefix(dataset_id))
    if key:
        _cache.forget(key)


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
    """The dataset for previews and predictions: a sharded one opened without
    reading its rows (those asked for are read), an older blob read whole."""
    key = require_ready(dataset).artifact_key
    assert key is not None
    return _cache.get(key, lambda: prepared_data.open_prepared(store, key, get_settings()))


def open_for_training(store: ArtifactStore, dataset: Dataset, settings: Settings,
                      stream: bool = True) -> PreparedDataset:
    """What a run trains on, resident or streamed (``prepared_data.open_for_training``);
    not cached, so a worker holds one run's data at a time. The caller closes it."""
    key = require_ready(dataset).artifact_key
    assert key is not None
    return prepared_data.open_for_training(store, key, settings, stream)


# --- the preparation job (the worker's side) -------------------------------------------
# Every write names the attempt that claimed the row: a worker that lost its
# claim (the row was deleted, or a stale claim was taken over) writes nothing.

def claim(session: Session, dataset_id: uuid.UUID, stale_after_s: float) -> Dataset | None:
    """Take a preparing dataset for this worker: one nobody claimed, or one whose
    claimer stopped beating ``stale_after_s`` ago (a redelivered message after its
    worker died). None if it is gone, finished, or live in another worker."""
    now = utcnow()
    result = session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.status == "preparing",
               or_(Dataset.heartbeat_at.is_(None),
                   Dataset.heartbeat_at < now - timedelta(seconds=stale_after_s)))
        .values(attempt=Dataset.attempt + 1, started_at=now, heartbeat_at=now,
                stage="starting", progress=0.0))
    session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.get(Dataset, dataset_id)


def _mine(dataset_id: uuid.UUID, attempt: int) -> Any:
    return update(Dataset).where(Dataset.id == dataset_id, Dataset.status == "preparing",
                                 Dataset.attempt == attempt)


def record_progress(session: Session, dataset_id: uuid.UUID, attempt: int, stage: str,
                    progress: float) -> bool:
    """Write progress and a heartbeat; False when the job is no longer this attempt's
    (the dataset was deleted: stop)."""
    result = session.execute(_mine(dataset_id, attempt).values(
        stage=stage, progress=progress, heartbeat_at=utcnow()))
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]


def mark_ready(session: Session, dataset_id: uuid.UUID, attempt: int, summary: dict[str, Any],
               artifact_key: str, size_bytes: int) -> bool:
    result = session.execute(_mine(dataset_id, attempt).values(
        status="ready", summary=summary, artifact_key=artifact_key, size_bytes=size_bytes,
        progress=1.0, stage=None, errors=None, error_count=0, finished_at=utcnow(),
        heartbeat_at=utcnow()))
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]


def mark_failed(session: Session, dataset_id: uuid.UUID, attempt: int,
                errors: list[tuple[str, str]], total: int) -> bool:
    """``failed`` with the first ``MAX_LISTED_ERRORS`` problems and how many there were."""
    listed = [{"field": f, "message": plain(m)} for f, m in errors[:MAX_LISTED_ERRORS]]
    result = session.execute(_mine(dataset_id, attempt).values(
        status="failed", errors=listed, error_count=max(total, len(errors)),
        finished_at=utcnow(), heartbeat_at=utcnow()))
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]


def exists(session: Session, dataset_id: uuid.UUID) -> bool:
    return session.get(Dataset, dataset_id) is not None
