"""Training hooks that report to Postgres without slowing the training loop.

The loop calls ``on_progress`` every step; that only stores the latest value.
A helper thread writes progress, buffered metrics and a heartbeat at a fixed
period and reads the cancel flag back, which the loop sees as an in-memory
``Event``: no database round trip and no GPU sync per step.
"""

import logging
import threading
import uuid

import torch
from safetensors.torch import save as st_save

from app.db.session import session_scope
from app.ml.train import Progress, TrainHooks
from app.services import runs as run_service
from app.storage import ArtifactStore

log = logging.getLogger(__name__)


def checkpoint_key(run_id: uuid.UUID) -> str:
    return f"runs/{run_id}/checkpoint.safetensors"


class RunReporter(TrainHooks):
    def __init__(self, run_id: uuid.UUID, store: ArtifactStore, epochs: int,
                 period_s: float = 0.5) -> None:
        self.run_id = run_id
        self.store = store
        self.epochs = epochs
        self.period_s = period_s
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._pending_metrics: list[tuple[int, int, dict[str, float]]] = []
        self._checkpoint: str | None = None
        self._cancel = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"reporter-{run_id}",
                                        daemon=True)

    # --- hooks, on the training thread ---------------------------------------
    def on_start(self, device: str, total_steps: int) -> None:
        with session_scope() as session:
            run_service.record_start(session, self.run_id, device, total_steps)
        self._thread.start()

    def on_progress(self, progress: Progress) -> None:
        self._progress = progress

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        with self._lock:
            self._pending_metrics.append((epoch, step, metrics))

    def on_checkpoint(self, epoch: int, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None:
        key = checkpoint_key(self.run_id)
        self.store.put(key, st_save(tensors, metadata={**metadata,
                                                       "run_id": str(self.run_id)}))
        with self._lock:
            self._checkpoint = key

    def should_stop(self) -> bool:
        return self._cancel.is_set()

    # --- the reporting thread --------------------------------------------------
    def _flush(self) -> None:
        with self._lock:
            metrics, self._pending_metrics = self._pending_metrics, []
            checkpoint, self._checkpoint = self._checkpoint, None
        progress = self._progress
        update = None
        if progress is not None:
            update = run_service.ProgressUpdate(progress.epoch, progress.step,
                                                progress.total_steps, progress.samples_per_s,
                                                progress.eta_s)
        with session_scope() as session:
            if metrics:
                run_service.record_metrics(session, self.run_id, metrics)
            if run_service.record_progress(session, self.run_id, update, checkpoint):
                self._cancel.set()

    def _loop(self) -> None:
        while not self._closing.wait(self.period_s):
            try:
                self._flush()
            except Exception:  # a failed write is retried at the next period
                log.exception("progress write for run %s failed", self.run_id)

    def close(self, final_metrics: dict[str, float] | None = None, step: int = 0) -> None:
        """Stop the thread and write everything still buffered."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join()
        if final_metrics:
            with self._lock:
                self._pending_metrics.append((self.epochs, step, final_metrics))
        self._flush()

