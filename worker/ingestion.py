"""Prepare one dataset: claim it, read its source, write the prepared shards once,
record ``ready`` or ``failed``; nothing half-prepared stays in the artifact store.

A helper thread writes the latest progress and a heartbeat every
``MIXLAB_PROGRESS_FLUSH_S`` (the preparation itself never waits on the
database) and reads back whether the job is still this attempt's; when the
dataset was deleted meanwhile, the next progress call raises
``PreparationStopped`` and the job removes what it wrote.
"""

import logging
import tempfile
import threading
import traceback
import uuid
from pathlib import Path
from typing import Any

from app.db.session import session_scope
from app.ml.data import DataValidationError, PreparedDataset, load_builtin
from app.ml.data.ingest_spec import IngestSpec, PreparationStopped, ProgressFn
from app.ml.data.issues import issue_list
from app.ml.data.shards import write_sharded
from app.services import datasets as dataset_service
from app.services import ingest, prepared_data, sources
from app.settings import Settings, get_settings
from app.storage import ArtifactStore, dataset_prefix, get_store, upload_key
from worker.periodic import PeriodicFlush

log = logging.getLogger(__name__)

# Where each stage sits in the dataset's overall progress (0..1).
STAGES: dict[str, tuple[float, float]] = {
    "starting": (0.0, 0.0), "fetching": (0.0, 0.05), "loading": (0.05, 0.9),
    "unpacking": (0.05, 0.25), "reading": (0.25, 0.9), "finishing": (0.9, 0.95),
    "writing": (0.95, 1.0)}


class PreparationReporter:
    """The ``ProgressFn`` a preparation calls, and the thread that records it."""

    def __init__(self, dataset_id: uuid.UUID, attempt: int, period_s: float) -> None:
        self.dataset_id, self.attempt = dataset_id, attempt
        self.stage, self.progress = "starting", 0.0
        self._lost = threading.Event()  # the job is no longer ours: stop
        self._flusher = PeriodicFlush(self._flush, period_s, f"prepare-{dataset_id}")

    def __call__(self, stage: str, fraction: float) -> None:
        lo, hi = STAGES.get(stage, (self.progress, self.progress))
        self.stage = stage
        self.progress = max(self.progress, lo + (hi - lo) * min(max(fraction, 0.0), 1.0))
        if self._lost.is_set():
            raise PreparationStopped(f"dataset {self.dataset_id} was deleted or taken over")

    def start(self) -> None:
        self._flusher.start()

    def _flush(self) -> None:
        with session_scope() as session:
            if not dataset_service.record_progress(session, self.dataset_id, self.attempt,
                                                   self.stage, round(self.progress, 4)):
                self._lost.set()

    def close(self) -> None:
        self._flusher.stop()


def _read_source(settings: Settings, store: ArtifactStore, dataset_id: uuid.UUID,
                 source: dict[str, Any], project: sources.ProjectRef, folder: Path,
                 progress: ProgressFn) -> PreparedDataset:
    if source["kind"] == "builtin":
        progress("loading", 0.0)
        roots = {"fashion-mnist": Path(settings.fashion_mnist_dir)}
        return load_builtin(source["name"], dict(source.get("options") or {}), roots)
    fmt = source["format"]
    spec = IngestSpec.from_dict(source["spec"]) if source.get("spec") else None
    if source["kind"] == "upload":
        key = upload_key(dataset_id, ingest.FORMAT_SUFFIX[fmt])
        path = store.local_path(key)  # a local store is read in place
        if path is None:
            progress("fetching", 0.0)
            path = folder / key.rsplit("/", 1)[-1]
            store.get_file(key, path)
        name = source.get("filename") or path.name
    else:
        progress("fetching", 0.0)
        path = sources.fetch(settings, source["uri"], folder,
                             lambda done: progress("fetching", done), project)
        name = source["uri"]
    return ingest.prepare_file(settings, path, fmt, spec, name, progress)


def _prepare_and_store(settings: Settings, store: ArtifactStore, dataset_id: uuid.UUID,
                       source: dict[str, Any], project: sources.ProjectRef,
                       reporter: PreparationReporter) -> tuple[dict[str, Any], str, int]:
    """Summary, key and size of the prepared blob, written to the store."""
    with tempfile.TemporaryDirectory(prefix="mixlab-prepare-") as tmp:
        prepared = _read_source(settings, store, dataset_id, source, project, Path(tmp),
                                reporter)
        reporter("writing", 0.0)
        summary = prepared.summary()
        # written a shard at a time: no second copy of the dataset in memory
        local = Path(tmp) / "prepared"
        size = write_sharded(prepared, local, settings.shard_bytes)
        del prepared  # the shards hold it now
        reporter("writing", 0.5)
        key = prepared_data.upload(store, dataset_id, local)
    return summary, key, size


def execute_preparation(dataset_id: uuid.UUID) -> str:
    """Prepare ``dataset_id`` if this worker can claim it; returns what happened."""
    settings, store = get_settings(), get_store()
    with session_scope() as session:
        dataset = dataset_service.claim(session, dataset_id, settings.ingest_stale_s)
        if dataset is None:
            log.info("dataset %s not claimable (gone, finished or live elsewhere)", dataset_id)
            return "skipped"
        attempt, source = dataset.attempt, dict(dataset.source)
        # whose s3 prefixes apply, read again now: the setting may have changed
        project = sources.project_ref(session, dataset.project_id)
    if attempt > settings.ingest_max_attempts:
        return _record_failure(store, dataset_id, attempt, [(
            "worker", f"the preparation was interrupted {attempt - 1} times (its worker "
                      "stopped); register the dataset again")], 1)

    reporter = PreparationReporter(dataset_id, attempt, settings.progress_flush_s)
    reporter.start()
    try:
        summary, key, size = _prepare_and_store(settings, store, dataset_id, source, project,
                                                reporter)
    except PreparationStopped:
        return _cleanup_if_gone(store, dataset_id, "cancelled")
    except DataValidationError as exc:
        entries, total = issue_list(exc)
        return _record_failure(store, dataset_id, attempt, entries, total)
    except Exception as exc:
        log.error("preparing dataset %s failed:\n%s", dataset_id, traceback.format_exc())
        return _record_failure(store, dataset_id, attempt,
                               [("internal", f"{type(exc).__name__}: {exc}")], 1)
    finally:
        reporter.close()

    with session_scope() as session:
        ready = dataset_service.mark_ready(session, dataset_id, attempt, summary, key, size)
    if not ready:
        return _cleanup_if_gone(store, dataset_id, "cancelled")
    if source["kind"] == "upload":
        store.delete(upload_key(dataset_id, ingest.FORMAT_SUFFIX[source["format"]]))
    return "ready"


def _record_failure(store: ArtifactStore, dataset_id: uuid.UUID, attempt: int,
                    entries: list[tuple[str, str]], total: int) -> str:
    with session_scope() as session:
        failed = dataset_service.mark_failed(session, dataset_id, attempt, entries, total)
    if failed:  # a failed dataset keeps its row and errors, and nothing stored
        store.delete_prefix(dataset_prefix(dataset_id))
        return "failed"
    return _cleanup_if_gone(store, dataset_id, "cancelled")


def _cleanup_if_gone(store: ArtifactStore, dataset_id: uuid.UUID, outcome: str) -> str:
    """The job lost its claim: remove what it wrote if the dataset was deleted
    (a takeover by a newer attempt keeps the files that attempt reads)."""
    with session_scope() as session:
        gone = not dataset_service.exists(session, dataset_id)
    if gone:
        store.delete_prefix(dataset_prefix(dataset_id))
    log.info("dataset %s: %s", dataset_id, outcome)
    return outcome
