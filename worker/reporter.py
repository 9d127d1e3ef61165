"""Training hooks that report to Postgres without slowing the training loop.

The loop calls ``on_progress`` every step; that only stores the latest value.
A helper thread writes progress, buffered metrics, the latest checkpoint and a
heartbeat at a fixed period and reads the cancel flag back, which the loop sees
as an in-memory ``Event``: no database round trip, no file write and no GPU sync
on the training thread.
"""

import threading
import time
import uuid

import torch
from safetensors.torch import save as st_save

from app.db.session import session_scope
from app.ml.resume import ResumePoint
from app.ml.resume import to_bytes as resume_bytes
from app.ml.training import Progress, TrainHooks
from app.services import runs as run_service
from app.storage import ArtifactStore, checkpoint_key, resume_key
from worker.periodic import PeriodicFlush

# (epoch, tensors, metadata, resume point)
Checkpoint = tuple[int, dict[str, torch.Tensor], dict[str, str], ResumePoint | None]


class RunReporter(TrainHooks):
    wants_resume_points = True

    def __init__(self, run_id: uuid.UUID, store: ArtifactStore, epochs: int,
                 period_s: float = 0.5, attempt: int | None = None,
                 time_limit_s: float | None = None) -> None:
        self.run_id = run_id
        # the fencing token: every write names the attempt, so once a reaper has
        # given the run to another worker, this one writes nothing and stops
        self.attempt = attempt
        self.store = store
        self.epochs = epochs
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._pending_metrics: list[tuple[int, int, dict[str, float]]] = []
        self._checkpoint: Checkpoint | None = None  # the latest epoch's, not yet written
        self._cancel = threading.Event()
        self._final_queued = False
        self._deadline = time.monotonic() + time_limit_s if time_limit_s else None
        self.timed_out = False
        self._flusher = PeriodicFlush(self._flush, period_s, f"reporter-{run_id}")

    # --- hooks, on the training thread ---------------------------------------
    def start(self) -> None:
        """Start heartbeating now (called right after the claim, so that loading a
        large dataset does not look like a dead worker); idempotent."""
        self._flusher.start()

    def on_start(self, device: str, total_steps: int) -> None:
        with session_scope() as session:
            run_service.record_start(session, self.run_id, device, total_steps,
                                     attempt=self.attempt)
        self.start()

    def on_progress(self, progress: Progress) -> None:
        self._progress = progress

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        with self._lock:
            self._pending_metrics.append((epoch, step, metrics))

    def on_step_metrics(self, epoch: int, points: list[tuple[int, dict[str, float]]]) -> None:
        with self._lock:
            self._pending_metrics.extend((epoch, step, values) for step, values in points)

    def on_checkpoint(self, epoch: int, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str],
                      resume: ResumePoint | None = None) -> None:
        # the tensors are a copy (train() snapshots them), so the thread may write
        # them later; a newer epoch's checkpoint replaces one not yet written
        with self._lock:
            self._checkpoint = (epoch, tensors, {**metadata, "run_id": str(self.run_id)},
                                resume)

    def should_stop(self) -> bool:
        if self._deadline is not None and time.monotonic() > self._deadline:
            self.timed_out = True
            return True
        return self._cancel.is_set()

    # --- the reporting thread --------------------------------------------------
    def _flush(self) -> None:
        with self._lock:
            metrics, self._pending_metrics = self._pending_metrics, []
            checkpoint, self._checkpoint = self._checkpoint, None
        try:
            key = epoch = None
            if checkpoint is not None:
                epoch, tensors, metadata, point = checkpoint
                # the resume point first: the key recorded below says both are there
                if point is not None:
                    self.store.put(resume_key(self.run_id, self.attempt), resume_bytes(point))
                key = checkpoint_key(self.run_id, self.attempt)
                self.store.put(key, st_save(tensors, metadata=metadata))
            with session_scope() as session:
                # metrics, progress and the checkpoint's key in one transaction
                if metrics:
                    run_service.record_metrics(session, self.run_id, metrics,
                                               attempt=self.attempt, commit=False)
                if run_service.record_progress(session, self.run_id, self._progress, key,
                                               attempt=self.attempt, checkpoint_epoch=epoch):
                    self._cancel.set()
        except BaseException:
            # keep what was not recorded for the next flush (metric writes are
            # idempotent); a newer checkpoint, if one came meanwhile, wins
            with self._lock:
                self._pending_metrics[:0] = metrics
                if self._checkpoint is None:
                    self._checkpoint = checkpoint
            raise

    def close(self, final_metrics: dict[str, float] | None = None, step: int = 0) -> None:
        """Stop the thread and write everything still buffered."""
        self._flusher.stop()
        if final_metrics and not self._final_queued:
            # once: close() is retried as a whole when the last flush fails
            with self._lock:
                self._pending_metrics.append((self.epochs, step, final_metrics))
            self._final_queued = True
        self._flush()

