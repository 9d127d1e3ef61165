"""The event stream's bookkeeping: every metric point once, even when a run's
final figures land on its last epoch's step in a later write."""

import asyncio
import json
import uuid

import pytest

from app.services import run_events
from app.services.run_events import Poll


def _run(status: str, step: int) -> dict:
    return {"status": status, "cancel_requested": False,
            "progress": {"step": step, "epoch": step // 20}}


def test_points_written_later_at_the_same_step_are_sent_once(monkeypatch) -> None:
    pt = lambda step: {"step": step, "epoch": 3, "value": 0.5}  # noqa: E731
    # what the database holds at each poll (step > after_step), as poll() reads it
    writes = [
        ("running", {"val_acc": [pt(40), pt(60)], "lr": [pt(58), pt(60)]}),
        ("running", {"val_acc": [pt(60)], "lr": [pt(60)]}),  # nothing new
        ("succeeded", {"val_acc": [pt(60)], "lr": [pt(60)], "test_acc": [pt(60)]}),
    ]
    asked: list[int] = []

    def fake_poll(project_id, run_id, after_step, render):  # type: ignore[no-untyped-def]
        asked.append(after_step)
        status, points = writes[min(len(asked), len(writes)) - 1]
        kept = {k: [p for p in v if p["step"] > after_step] for k, v in points.items()}
        return Poll(_run(status, 60), status, {k: v for k, v in kept.items() if v})

    monkeypatch.setattr(run_events, "poll", fake_poll)

    async def collect() -> list[dict]:
        return [e async for e in run_events.stream(uuid.uuid4(), uuid.uuid4(), dict, 0.0)]

    events = asyncio.run(collect())
    sent: dict[str, list[int]] = {}
    for e in events:
        if e["event"] == "metrics":
            for key, points in json.loads(e["data"])["points"].items():
                sent.setdefault(key, []).extend(p["step"] for p in points)
    assert sent == {"val_acc": [40, 60], "lr": [58, 60], "test_acc": [60]}
    assert [e["event"] for e in events][-1] == "end"
    assert asked[1:] == [59, 59]  # read from the last step sent on, inclusive


@pytest.mark.parametrize("resume", [40, 60])
def test_resuming_resends_the_last_steps_points_only(monkeypatch, resume: int) -> None:
    points = {"val_acc": [{"step": s, "epoch": 1, "value": 0.1} for s in (20, 40, 60)]}

    def fake_poll(project_id, run_id, after_step, render):  # type: ignore[no-untyped-def]
        kept = {k: [p for p in v if p["step"] > after_step] for k, v in points.items()}
        return Poll(_run("succeeded", 60), "succeeded", {k: v for k, v in kept.items() if v})

    monkeypatch.setattr(run_events, "poll", fake_poll)

    async def collect() -> list[dict]:
        return [e async for e in run_events.stream(uuid.uuid4(), uuid.uuid4(), dict, 0.0,
                                                   after_step=resume)]

    steps = [p["step"] for e in asyncio.run(collect()) if e["event"] == "metrics"
             for p in json.loads(e["data"])["points"]["val_acc"]]
    assert steps == [s for s in (20, 40, 60) if s >= resume]
