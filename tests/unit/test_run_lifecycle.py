"""The run lifecycle (app.runs): the transition table, the one transition
function, the claim that parses the spec first, and the outcomes the worker
reports; on an in-memory SQLite database with the models' CHECK constraint."""

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from app.db import Base
from app.db.models import DEFAULT_PROJECT_ID, Dataset, Experiment, Project, Run
from app.runs import service
from app.runs.lifecycle import (
    TRANSITIONS,
    Action,
    IllegalTransition,
    RunStatus,
    new_run,
    target_of,
    transition,
)

GOOD_SPEC = {"model": {"width": 4, "depth": 1}, "augmentation": {"method": "mixup"},
             "training": {"epochs": 2, "batch_size": 8}}


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://", poolclass=StaticPool,
                           connect_args={"check_same_thread": False})
    event.listen(engine, "connect",
                 lambda conn, _: conn.execute("PRAGMA foreign_keys=ON"))
    Base.metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as s:
        s.add(Project(id=DEFAULT_PROJECT_ID, name="default"))
        s.commit()
        yield s
    engine.dispose()


def make_run(session: Session, status: RunStatus = RunStatus.QUEUED, attempt: int = 0,
             spec: dict | None = None, cancel_requested: bool = False) -> uuid.UUID:
    dataset = Dataset(name="d", status="ready", source={}, summary={}, artifact_key="k")
    experiment = Experiment(name="e", dataset=dataset, task="classification",
                            spec=GOOD_SPEC if spec is None else spec)
    run = new_run(total_steps=4)
    experiment.runs.append(run)
    session.add(experiment)
    session.commit()
    if status is not RunStatus.QUEUED or attempt or cancel_requested:
        session.execute(text("UPDATE runs SET status = :s, attempt = :a, "
                             "cancel_requested = :c WHERE id = :i"),
                        {"s": status.value, "a": attempt, "c": cancel_requested,
                         "i": run.id.hex})
        session.commit()
    return run.id


def status_of(session: Session, run_id: uuid.UUID) -> Run:
    session.expire_all()
    run = session.get(Run, run_id)
    assert run is not None
    return run


def test_the_table_has_no_edge_out_of_a_terminal_status() -> None:
    for sources, _ in TRANSITIONS.values():
        assert not sources & {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}
    assert target_of("queued", Action.CLAIM) is RunStatus.RUNNING
    assert target_of("running", Action.REQUEUE) is RunStatus.QUEUED
    with pytest.raises(IllegalTransition, match="cannot claim a running run"):
        target_of("running", Action.CLAIM)
    with pytest.raises(IllegalTransition):
        target_of("succeeded", Action.FAIL)


def test_an_illegal_transition_writes_nothing(session: Session) -> None:
    done = make_run(session, RunStatus.SUCCEEDED, attempt=1)
    assert not transition(session, done, Action.FAIL, error="late")
    assert not transition(session, done, Action.CANCEL)
    session.commit()
    run = status_of(session, done)
    assert (run.status, run.error) == ("succeeded", None)
    with pytest.raises(IllegalTransition):  # the status is the action's
        transition(session, done, Action.FAIL, status="queued")


def test_the_database_refuses_a_status_outside_the_enum(session: Session) -> None:
    run_id = make_run(session)
    with pytest.raises(IntegrityError, match="ck_runs_status"):
        session.execute(text("UPDATE runs SET status = 'paused' WHERE id = :i"),
                        {"i": run_id.hex})
    session.rollback()


def test_a_claim_parses_the_spec_and_counts_the_attempt(session: Session) -> None:
    run_id = make_run(session)
    claimed = service.claim(session, run_id)
    assert isinstance(claimed, service.Claimed)
    assert claimed.attempt == 1 and claimed.plan.training.epochs == 2
    assert claimed.plan.model.width == 4 and claimed.plan.task == "classification"
    run = status_of(session, run_id)
    assert (run.status, run.attempt) == ("running", 1) and run.started_at is not None
    assert service.claim(session, run_id) is None  # a duplicate delivery


def test_a_spec_that_does_not_parse_fails_the_run_at_the_claim(session: Session) -> None:
    run_id = make_run(session, spec={"training": {"epochs": "many"}, "model": {"width": 4}})
    rejected = service.claim(session, run_id)
    assert isinstance(rejected, service.Rejected)
    run = status_of(session, run_id)
    assert run.status == "failed" and run.finished_at is not None
    assert run.error is not None and "training.epochs" in run.error
    assert run.attempt == 0 and run.heartbeat_at is None  # never ran


def test_one_cancel_for_queued_and_running_runs(session: Session) -> None:
    queued, running = make_run(session), make_run(session, RunStatus.RUNNING, attempt=1)
    for run_id in (queued, running):
        service.request_cancel(session, run_id)
    session.commit()
    assert status_of(session, queued).status == "cancelled"
    flagged = status_of(session, running)
    assert (flagged.status, flagged.cancel_requested) == ("running", True)
    # the worker sees the flag and reports that it stopped
    assert service.report(session, running, 1, service.Cancelled(), 3) == "cancelled"
    assert status_of(session, running).status == "cancelled"


@pytest.mark.parametrize(("outcome", "attempt", "expected", "status"), [
    (service.Succeeded({"test_acc": 0.9}, 2, 4), 1, "succeeded", "succeeded"),
    (service.Failed("ValueError: bad"), 1, "failed", "failed"),
    (service.Interrupted("worker shutting down"), 1, "requeued", "queued"),
    (service.Interrupted("worker shutting down"), 3, "failed", "failed"),
])
def test_the_service_turns_an_outcome_into_a_transition(
        session: Session, outcome: service.Outcome, attempt: int, expected: str,
        status: str) -> None:
    run_id = make_run(session, RunStatus.RUNNING, attempt=attempt)
    assert service.report(session, run_id, attempt, outcome, max_attempts=3) == expected
    run = status_of(session, run_id)
    assert run.status == status
    if isinstance(outcome, service.Succeeded):
        assert run.metrics == {"test_acc": 0.9} and run.eta_s == 0.0
    if isinstance(outcome, service.Failed):
        assert run.error == "ValueError: bad"


def test_an_attempt_that_lost_its_run_reports_nothing(session: Session) -> None:
    run_id = make_run(session, RunStatus.RUNNING, attempt=2)
    assert service.report(session, run_id, 1, service.Succeeded({}, 2, 4), 3) == "not_owned"
    assert status_of(session, run_id).status == "running"
    assert service.record_progress(session, run_id, None, attempt=1) == "lost"
    assert service.record_progress(session, run_id, None, attempt=2) == "go"
