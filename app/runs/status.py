"""A run's status: the values the API shows and the database CHECK allows."""

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[RunStatus] = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
# a live run still counts against its project's limits and may still change
LIVE: tuple[RunStatus, ...] = (RunStatus.QUEUED, RunStatus.RUNNING)
