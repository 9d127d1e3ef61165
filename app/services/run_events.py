"""A run's live events: status and progress changes and new metric points,
read from Postgres at a fixed period and handed to a server-sent-event stream.

Each poll opens its own short session in a worker thread, so a stream holds no
connection between polls and never blocks the event loop. The stream ends
after the run reaches a terminal status (or disappears).
"""

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from app.db.models import Run
from app.db.session import session_scope
from app.runs.status import TERMINAL
from app.services import runs as run_service
from app.services.errors import NotFoundError


@dataclass
class Poll:
    run: dict[str, Any] | None  # the rendered run, None once it is gone
    status: str | None
    points: dict[str, list[dict[str, Any]]]  # key → new points, by step


def poll(project_id: uuid.UUID, run_id: uuid.UUID, after_step: int,
         render: Callable[[Run], dict[str, Any]]) -> Poll:
    """The run as ``render`` shows it and its metric points after ``after_step``
    (``step > after_step``)."""
    with session_scope() as session:
        try:
            run = run_service.get(session, project_id, run_id)
        except NotFoundError:
            return Poll(None, None, {})
        history = run_service.columns_of(session, run_id, after_step=after_step)
        # the stream keeps one object per point (few per poll; its wire shape)
        points = {k: [{"step": s, "epoch": e, "value": v}
                      for s, e, v in zip(c["step"], c["epoch"], c["value"], strict=True)]
                  for k, c in history.items()}
        return Poll(render(run), run.status, points)


async def stream(project_id: uuid.UUID, run_id: uuid.UUID, render: Callable[[Run], dict],
                 period_s: float, after_step: int = -1) -> AsyncIterator[dict[str, Any]]:
    """Events as sse-starlette takes them: ``run`` (the run, when its status,
    step or epoch changed), ``metrics`` (new points; the event id is the last
    step sent, so a client reconnecting with ``Last-Event-ID`` misses nothing —
    it gets that step's points again) and ``end``.

    Points are read from the last step sent on (inclusive): a run's final test
    figures land on the step of its last epoch, possibly in a later write than
    that epoch's points, so the keys already sent at that step are remembered
    and skipped rather than the step itself."""
    seen: tuple[Any, ...] | None = None
    sent_at_last: set[str] = set()  # keys already sent at step ``after_step``
    while True:
        now = await anyio.to_thread.run_sync(poll, project_id, run_id, after_step - 1, render)
        fresh = {k: [p for p in pts if p["step"] > after_step or k not in sent_at_last]
                 for k, pts in now.points.items()}
        now.points = {k: pts for k, pts in fresh.items() if pts}
        if now.run is None:
            yield {"event": "end", "data": '{"reason": "the run was deleted"}'}
            return
        progress = now.run["progress"]
        state = (now.status, progress["step"], progress["epoch"], now.run["cancel_requested"])
        if state != seen:
            seen = state
            yield {"event": "run", "data": _json(now.run)}
        if now.points:
            top = max(p["step"] for pts in now.points.values() for p in pts)
            at_top = {k for k, pts in now.points.items() if pts[-1]["step"] == top}
            sent_at_last = at_top | (sent_at_last if top == after_step else set())
            after_step = top
            yield {"event": "metrics", "id": str(after_step),
                   "data": _json({"points": now.points})}
        if now.status in TERMINAL:
            yield {"event": "end", "data": _json({"status": now.status})}
            return
        await anyio.sleep(period_s)


def _json(value: Any) -> str:
    return json.dumps(value, default=str)
