"""A run's own log: the lines its worker logged, per attempt, stored with the run.

The worker captures them (``app.observability.logs.RunLogCapture``) and stores
them with each reporting period and once more at the end; ``GET
/v1/runs/{id}/logs`` pages through one attempt's lines by line number.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import RunLogLine
from app.observability.logs import CapturedLine
from app.runs.service import insert_ignoring_duplicates


def store(session: Session, run_id: uuid.UUID, attempt: int,
          lines: Sequence[CapturedLine]) -> bool:
    """Store an attempt's lines (again, harmlessly, after a lost reply); False when
    the run is gone (deleted while it ran)."""
    if not lines:
        return True
    rows: list[dict[str, object]] = [
        {"run_id": run_id, "attempt": attempt, "line": line.line, "at": line.at,
         "level": line.level, "logger": line.logger[:200], "message": line.message}
        for line in lines]
    try:
        insert_ignoring_duplicates(session, RunLogLine, rows)
        session.commit()
    except IntegrityError:  # the run's row is gone: nothing to keep the lines with
        session.rollback()
        return False
    return True


@dataclass(frozen=True)
class LogPage:
    attempts: list[int]  # the attempts that logged something, in order
    attempt: int | None  # the one this page is from; None when none logged yet
    lines: list[RunLogLine]
    more: bool  # lines after this page are stored already


def attempts(session: Session, run_id: uuid.UUID) -> list[int]:
    return list(session.scalars(select(RunLogLine.attempt).where(RunLogLine.run_id == run_id)
                                .distinct().order_by(RunLogLine.attempt)))


def page(session: Session, run_id: uuid.UUID, attempt: int | None, after_line: int,
         limit: int) -> LogPage:
    """Up to ``limit`` lines of ``attempt`` (default: the latest that logged) after
    line ``after_line``."""
    logged = attempts(session, run_id)
    if attempt is None:
        attempt = logged[-1] if logged else None
    if attempt is None:
        return LogPage(logged, None, [], False)
    rows = list(session.scalars(
        select(RunLogLine)
        .where(RunLogLine.run_id == run_id, RunLogLine.attempt == attempt,
               RunLogLine.line > after_line)
        .order_by(RunLogLine.line).limit(limit + 1)))
    return LogPage(logged, attempt, rows[:limit], len(rows) > limit)
