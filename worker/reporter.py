"""Training hooks that report to Postgres without slowing the training loop.

The loop calls ``on_progress`` every step; that only stores the latest value.
A helper thread writes progress, buffered metrics, the latest checkpoint and a
heartbeat at a fixed period and reads the cancel flag back, which the loop sees
as an in-memory ``Event``: no database round trip, no file write and no GPU sync
on the training thread. Every write goes through ``app.runs.attempt``.
"""

import logging
import threading
import time
import uuid
from typing import Literal

import torch
from safetensors.torch import save as st_save

from app.ml.resume import ResumePoint
from app.ml.resume import to_bytes as resume_bytes
from app.ml.training import Progress, TrainHooks
from app.observability.logs import CapturedLine, RunLogCapture
from app.runs import attempt as run_attempt
from app.settings import get_settings
from app.storage import ArtifactStore, checkpoint_key, resume_key
from worker.hold import EpochHold
from worker.periodic import PeriodicFlush

log = logging.getLogger(__name__)

# (epoch, tensors, metadata, resume point)
Checkpoint = tuple[int, dict[str, torch.Tensor], dict[str, str], ResumePoint | None]
# why the loop was told to stop: the run's cancel, its time limit, or the run is
# no longer this attempt's (requeued elsewhere, or deleted)
StopReason = Literal["cancel", "time_limit", "lost"]


class RunReporter(TrainHooks):
    wants_resume_points = True

    def __init__(self, run_id: uuid.UUID, store: ArtifactStore, epochs: int,
                 period_s: float = 0.5, attempt: int | None = None,
                 time_limit_s: float | None = None,
                 log_capture: RunLogCapture | None = None) -> None:
        self.run_id = run_id
        # the fencing token: every write names the attempt, so once a reaper has
        # given the run to another worker, this one writes nothing and stops
        self.attempt = attempt
        self.store = store
        self.epochs = epochs
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._pending_metrics: list[tuple[int, int, dict[str, float]]] = []
        # the attempt's log lines, stored each period so `mixlab runs logs -f` follows
        self._log_capture = log_capture
        self._pending_lines: list[CapturedLine] = []
        self._checkpoint: Checkpoint | None = None  # the latest epoch's, not yet written
        self._cancel = threading.Event()
        self._deadline = time.monotonic() + time_limit_s if time_limit_s else None
        self.stop_reason: StopReason | None = None
        self._recorded = threading.Condition()  # the last epoch whose checkpoint is stored
        self._recorded_epoch = 0
        self._hold = EpochHold.from_settings(get_settings())
        self._flusher = PeriodicFlush(self._flush, period_s, f"reporter-{run_id}")

    # --- hooks, on the training thread ---------------------------------------
    def start(self) -> None:
        """Start heartbeating now (called right after the claim, so that loading a
        large dataset does not look like a dead worker); idempotent."""
        self._flusher.start()

    @property
    def timed_out(self) -> bool:
        return self.stop_reason == "time_limit"

    def on_start(self, device: str, total_steps: int) -> None:
        run_attempt.record_start(self.run_id, self.attempt, device, total_steps)
        self.start()

    def on_progress(self, progress: Progress) -> None:
        self._progress = progress

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        with self._lock:
            self._pending_metrics.append((epoch, step, metrics))
        log.info("epoch %d/%d (step %d): %s", epoch, self.epochs, step,
                 " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))

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
        if self._hold.wants(epoch):  # tests only: once this epoch is recorded
            with self._recorded:
                self._recorded.wait_for(lambda: self._recorded_epoch >= epoch)
            self._hold.hold(self.run_id, self.attempt)

    def should_stop(self) -> bool:
        if self._deadline is not None and time.monotonic() > self._deadline:
            self.stop_reason = "time_limit"
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
            control = run_attempt.record_flush(self.run_id, self.attempt, metrics,
                                               self._progress, key, epoch)
            if control != "go":
                self.stop_reason = self.stop_reason or control
                self._cancel.set()
            if epoch is not None:
                with self._recorded:
                    self._recorded_epoch = max(self._recorded_epoch, epoch)
                    self._recorded.notify_all()
        except BaseException:
            # keep what was not recorded for the next flush (metric writes are
            # idempotent); a newer checkpoint, if one came meanwhile, wins
            with self._lock:
                self._pending_metrics[:0] = metrics
                if self._checkpoint is None:
                    self._checkpoint = checkpoint
            raise
        self._flush_lines()

    def _flush_lines(self, final: bool = False) -> None:
        if self._log_capture is None or self.attempt is None:
            return
        with self._lock:
            self._pending_lines.extend(self._log_capture.drain(final))
            lines = list(self._pending_lines)
        if lines:
            run_attempt.record_logs(self.run_id, self.attempt, lines)
            with self._lock:  # stored; a failed write keeps them for the next period
                del self._pending_lines[:len(lines)]

    def close_log(self) -> None:
        """Store the attempt's last lines (after its outcome was reported)."""
        self._flush_lines(final=True)

    def close(self) -> None:
        """Stop the thread and write everything still buffered (the final metrics
        go with the outcome, ``app.runs.attempt.report``)."""
        self._flusher.stop()
        self._flush()
