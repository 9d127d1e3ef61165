"""A test hook: hold a run after epoch k until the test releases it.

Fault tests must kill a worker, restart Redis or cut Postgres while a run is
mid-training; waiting on timing made them flaky (a run could finish before
its kill). With ``MIXLAB_TEST_HOOKS`` on and ``MIXLAB_TEST_HOLD_EPOCH`` = k, the
reporter holds the training thread once epoch k and its checkpoint are
recorded, announces it with a file ``held-<run>-<attempt>`` in
``MIXLAB_TEST_HOLD_DIR``, and waits until a file ``release`` appears there. The
heartbeat keeps beating meanwhile. Without the settings this does nothing.
"""

import logging
import threading
import uuid
from pathlib import Path

from app.settings import Settings

log = logging.getLogger(__name__)

RELEASE = "release"


def held_marker(folder: Path, run_id: uuid.UUID | str, attempt: int | None) -> Path:
    return folder / f"held-{run_id}-{attempt}"


class EpochHold:
    def __init__(self, epoch: int | None, folder: Path | None) -> None:
        self.epoch, self.folder = epoch, folder
        self._done = False

    @classmethod
    def from_settings(cls, settings: Settings) -> "EpochHold":
        if not settings.test_hooks or settings.test_hold_dir is None:
            return cls(None, None)
        return cls(settings.test_hold_epoch, settings.test_hold_dir)

    def wants(self, epoch: int) -> bool:
        return not self._done and self.epoch is not None and epoch == self.epoch

    def hold(self, run_id: uuid.UUID, attempt: int | None) -> None:
        """Announce the hold, then block until released (once per run attempt)."""
        assert self.folder is not None
        self._done = True
        release = self.folder / RELEASE
        if release.exists():
            return
        held_marker(self.folder, run_id, attempt).touch()
        log.warning("test hook: run %s attempt %s held after epoch %s", run_id, attempt,
                    self.epoch)
        stop = threading.Event()
        while not release.exists():  # a file, so that another process can release it
            stop.wait(0.05)
        log.warning("test hook: run %s released", run_id)
