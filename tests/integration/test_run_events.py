"""Live run events (server-sent) on the real stack, and the CLI watching through them."""

import uuid

import pytest

from app.client import MixlabClient, MixlabError
from tests.integration.helpers import experiment, ready_digits

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits(stack) -> dict:  # type: ignore[no-untyped-def]
    return ready_digits(stack.base_url, "digits-events", seed=2)


def test_events_follow_a_run_to_its_end(client: MixlabClient, digits: dict) -> None:
    run_id = experiment(client, digits["id"], training={"epochs": 3, "log_every_steps": 5})
    events = list(client.run_events(run_id))  # returns when the run has ended
    names = [name for name, _ in events]
    assert names[-1] == "end" and events[-1][1] == {"status": "succeeded"}
    runs = [data for name, data in events if name == "run"]
    assert runs[-1]["status"] == "succeeded" and runs[-1]["id"] == run_id
    assert "test_acc" in runs[-1]["metrics"]
    steps = [r["progress"]["step"] for r in runs]
    assert steps == sorted(steps)
    # every metric point exactly once, as the history has it
    streamed: dict[str, list[int]] = {}
    for name, data in events:
        if name == "metrics":
            for key, points in data["points"].items():
                streamed.setdefault(key, []).extend(p["step"] for p in points)
    history = client.metrics(run_id)
    assert {k: [p["step"] for p in v] for k, v in history.items()} == streamed
    assert len(streamed["val_acc"]) == 3 and "train_loss_step" in streamed


def test_events_resume_after_a_step(client: MixlabClient, digits: dict) -> None:
    run_id = experiment(client, digits["id"], training={"epochs": 2})
    first = list(client.run_events(run_id))
    last_step = max(p["step"] for name, data in first if name == "metrics"
                    for points in data["points"].values() for p in points)
    again = list(client.run_events(run_id, after_step=last_step - 1))
    resent = {p["step"] for name, data in again if name == "metrics"
              for points in data["points"].values() for p in points}
    assert resent == {last_step}
    assert again[0][0] == "run" and again[-1][0] == "end"


def test_events_of_an_unknown_run_are_404(client: MixlabClient) -> None:
    with pytest.raises(MixlabError) as caught:
        list(client.run_events(str(uuid.uuid4())))
    assert caught.value.status_code == 404
