"""Where a run's status changes: the transition table and ``transition()``.

Every status write in the code base is a call of ``transition`` (or
``new_run`` for the first, ``queued``); nothing else assigns ``Run.status``.
A transition is one guarded UPDATE whose WHERE names the statuses the action
may start from (and, for a worker, the attempt it owns), so two actors racing
on one run (a duplicate delivery, a cancel during start-up, a reaper and a
slow worker) cannot both win: the loser's UPDATE matches no row.

    action    from               to          who
    create    -                  queued      API (experiment, sweep)
    claim     queued             running     worker, spec parsed first
    reject    queued             failed      worker: the stored spec does not parse
    cancel    queued             cancelled   API (a running run is flagged instead,
                                             cancel_requested, and stops as below)
    succeed   running            succeeded   worker outcome
    fail      running            failed      worker outcome, time limit, reaper
                                             (last attempt lost)
    stop      running            cancelled   worker outcome (stopped on the flag),
                                             reaper (flagged run's worker lost)
    requeue   running            queued      reaper (worker lost), worker outcome
                                             "interrupted"; attempts left
"""

import uuid
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Run
from app.runs.status import LIVE, TERMINAL, RunStatus

__all__ = ["LIVE", "TERMINAL", "TRANSITIONS", "Action", "IllegalTransition", "RunStatus",
           "new_run", "target_of", "transition"]


class Action(StrEnum):
    CLAIM = "claim"
    REJECT = "reject"
    CANCEL = "cancel"
    SUCCEED = "succeed"
    FAIL = "fail"
    STOP = "stop"
    REQUEUE = "requeue"


Q, R = RunStatus.QUEUED, RunStatus.RUNNING
TRANSITIONS: dict[Action, tuple[frozenset[RunStatus], RunStatus]] = {
    Action.CLAIM: (frozenset({Q}), R),
    Action.REJECT: (frozenset({Q}), RunStatus.FAILED),
    Action.CANCEL: (frozenset({Q}), RunStatus.CANCELLED),
    Action.SUCCEED: (frozenset({R}), RunStatus.SUCCEEDED),
    Action.FAIL: (frozenset({R}), RunStatus.FAILED),
    Action.STOP: (frozenset({R}), RunStatus.CANCELLED),
    Action.REQUEUE: (frozenset({R}), Q),
}


class IllegalTransition(ValueError):
    """An action that the run's status does not allow."""


def target_of(current: RunStatus | str, action: Action) -> RunStatus:
    """The status ``action`` leads to from ``current``; IllegalTransition when the
    table has no such edge (a terminal run never changes again)."""
    sources, target = TRANSITIONS[action]
    if RunStatus(current) not in sources:
        raise IllegalTransition(f"cannot {action} a {RunStatus(current)} run (allowed from "
                                f"{', '.join(sorted(sources))})")
    return target


def new_run(**values: Any) -> Run:
    """A new run row (not added): the one way a run starts, ``queued``."""
    assert "status" not in values
    return Run(status=RunStatus.QUEUED, **values)


def transition(session: Session, run_id: uuid.UUID, action: Action, *,
               attempt: int | None = None, guard: Iterable[ColumnElement[bool]] = (),
               **values: Any) -> bool:
    """Apply ``action`` to the run if its status allows it; True when it did.

    One guarded UPDATE: status in the action's sources, with ``attempt`` only
    while that attempt owns the run, plus any ``guard`` conditions; ``values``
    are the other columns the change writes. A terminal target stamps
    ``finished_at``; a claim counts the attempt. The caller commits."""
    if "status" in values:
        raise IllegalTransition("the status is the action's; pass the action, not a status")
    sources, target = TRANSITIONS[action]
    query = update(Run).where(Run.id == run_id, Run.status.in_([s.value for s in sources]),
                              *guard)
    if attempt is not None:
        query = query.where(Run.attempt == attempt)
    if target in TERMINAL:
        values.setdefault("finished_at", utcnow())
    if action is Action.CLAIM:  # every claim is an attempt; the reaper caps them
        values["attempt"] = Run.attempt + 1
    result = session.execute(query.values(status=target.value, **values))
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]
