"""The reconciler's sweeps on the real Postgres database and the real Redis queue."""

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import partial

import pytest
import redis
from sqlalchemy import update

from app.db.base import utcnow
from app.db.models import Dataset, Experiment, Run
from app.db.session import session_scope
from app.runs import recovery
from app.runs import service as run_service
from app.runs.broker_contents import pending_args
from app.runs.queue import TRAIN_RUN_TASK, celery_app
from app.services import auth
from app.settings import get_settings

QUEUE = f"recovery-test-{uuid.uuid4().hex[:8]}"
_made: list[uuid.UUID] = []


@pytest.fixture(autouse=True)
def _retire_made_runs() -> Iterator[None]:
    """Leave no fake queued/running run behind for a live reconciler to pick up."""
    yield
    if _made:
        with session_scope() as session:
            session.execute(update(Run).where(Run.id.in_(_made),
                                              Run.status.in_(("queued", "running")))
                            .values(status="cancelled", finished_at=utcnow()))
            session.commit()
        _made.clear()


@pytest.fixture
def redis_queue() -> Iterator[str]:
    yield QUEUE
    client = redis.Redis.from_url(get_settings().resolved_broker_url)
    client.delete(QUEUE)
    client.close()


def publish(run_id: str) -> None:
    celery_app.send_task(TRAIN_RUN_TASK, args=[run_id], queue=QUEUE)


def held() -> set[str] | None:
    return pending_args(get_settings(), QUEUE, TRAIN_RUN_TASK)


@pytest.fixture
def make_run(access) -> Callable[..., uuid.UUID]:  # type: ignore[no-untyped-def]
    """Makes a run of the given state in the tests project."""
    return partial(_make_run, access.project_id)


def _make_run(project_id: uuid.UUID, status: str, *, age_s: float = 0.0,
              heartbeat_age_s: float | None = None, attempt: int = 0,
              cancel_requested: bool = False) -> uuid.UUID:
    with session_scope() as session:
        dataset = Dataset(name="recovery", status="ready", source={}, summary={},
                          artifact_key="none", size_bytes=0, project_id=project_id)
        # a spec as the API stores it (the run listing reads its epochs)
        experiment = Experiment(name="recovery", dataset=dataset, task="classification",
                                spec={"training": {"epochs": 1}}, project_id=project_id)
        run = Run(status=status, attempt=attempt, cancel_requested=cancel_requested)
        experiment.runs.append(run)
        session.add(experiment)
        session.commit()
        now = utcnow()
        values: dict[str, object] = {"created_at": now - timedelta(seconds=age_s)}
        if heartbeat_age_s is not None:
            values["heartbeat_at"] = now - timedelta(seconds=heartbeat_age_s)
        session.execute(update(Run).where(Run.id == run.id).values(**values))
        session.commit()
        _made.append(run.id)
        return run.id


def status_of(run_id: uuid.UUID) -> tuple[str, int, str | None]:
    with session_scope() as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run.status, run.attempt, run.error


def test_a_queued_run_the_broker_lost_is_published_once(database, make_run, redis_queue):
    lost = make_run("queued", age_s=120)
    assert str(lost) not in held()  # type: ignore[operator]
    with session_scope() as session:
        sent = recovery.republish_lost(session, held(), grace_s=30, publish=publish)
    assert lost in sent
    assert str(lost) in held()  # type: ignore[operator]
    # the broker holds it now: the next sweep leaves it alone
    with session_scope() as session:
        again = recovery.republish_lost(session, held(), grace_s=30, publish=publish)
    assert lost not in again


def test_a_run_within_its_grace_period_or_already_taken_is_not_republished(database, make_run,
                                                                           redis_queue):
    young = make_run("queued", age_s=1)
    running = make_run("running", age_s=300, heartbeat_age_s=1, attempt=1)
    with session_scope() as session:
        sent = recovery.republish_lost(session, held(), grace_s=30, publish=publish)
    assert young not in sent and running not in sent


def test_an_uninspectable_broker_calls_nothing_lost(database, make_run):
    make_run("queued", age_s=600)
    with session_scope() as session:
        assert recovery.republish_lost(session, None, grace_s=30, publish=publish) == []


def test_a_dead_worker_run_is_requeued_and_published(database, make_run, redis_queue):
    dead = make_run("running", age_s=600, heartbeat_age_s=120, attempt=1)
    alive = make_run("running", age_s=600, heartbeat_age_s=1, attempt=1)
    with session_scope() as session:
        report = recovery.reap_dead(session, heartbeat_timeout_s=60, max_attempts=3,
                                    publish=publish)
    assert report.requeued == [dead]
    status, attempt, error = status_of(dead)
    # the attempt is counted by the next claim, not here
    assert (status, attempt) == ("queued", 1)
    assert error is not None and "no heartbeat" in error
    assert str(dead) in held()  # type: ignore[operator]
    assert status_of(alive)[0] == "running"


def test_the_last_attempt_fails_with_the_reason(database, make_run, redis_queue):
    dead = make_run("running", age_s=600, heartbeat_age_s=120, attempt=3)
    with session_scope() as session:
        report = recovery.reap_dead(session, heartbeat_timeout_s=60, max_attempts=3,
                                    publish=publish)
    assert report.failed == [dead]
    status, _, error = status_of(dead)
    assert status == "failed"
    assert error == "worker lost: no heartbeat for 60 s on attempt 3 of 3"
    assert str(dead) not in held()  # type: ignore[operator]


def test_a_dead_run_with_a_cancel_request_is_cancelled(database, make_run, redis_queue):
    dead = make_run("running", age_s=600, heartbeat_age_s=120, attempt=1,
                    cancel_requested=True)
    with session_scope() as session:
        report = recovery.reap_dead(session, heartbeat_timeout_s=60, max_attempts=3,
                                    publish=publish)
    assert report.cancelled == [dead]
    assert status_of(dead)[0] == "cancelled"


def test_one_sweep_publishes_a_requeued_run_once(database, make_run, redis_queue):
    dead = make_run("running", age_s=600, heartbeat_age_s=120, attempt=1)
    sent: list[str] = []

    def counting_publish(run_id: str) -> None:
        sent.append(run_id)
        publish(run_id)

    with session_scope() as session:
        report = recovery.sweep(session, held(), grace_s=30, heartbeat_timeout_s=60,
                                max_attempts=3, publish=counting_publish)
    assert dead in report.requeued and dead not in report.republished
    assert sent.count(str(dead)) == 1


def test_a_claim_waits_while_the_project_runs_its_limit(database):
    with session_scope() as session:  # a project of its own: nothing else runs in it
        project_id = auth.create_project(session, f"capacity-{uuid.uuid4().hex[:8]}").id
    running = _make_run(project_id, "running", age_s=60, heartbeat_age_s=1, attempt=1)
    queued = _make_run(project_id, "queued", age_s=60)
    one_at_a_time = lambda _project: 1  # noqa: E731
    with session_scope() as session, pytest.raises(run_service.AtCapacity):
        run_service.claim(session, queued, one_at_a_time)
    assert status_of(queued)[0] == "queued"
    with session_scope() as session:
        session.execute(update(Run).where(Run.id == running).values(status="succeeded"))
        session.commit()
        claimed = run_service.claim(session, queued, one_at_a_time)
    assert claimed is not None and status_of(queued)[:2] == ("running", 1)


def test_a_preparation_the_broker_lost_is_published_again(database, access, redis_queue):
    now = utcnow()
    with session_scope() as session:
        fresh = Dataset(name="fresh", status="preparing", source={}, project_id=access.project_id)
        lost = Dataset(name="lost", status="preparing", source={}, project_id=access.project_id)
        dead = Dataset(name="dead", status="preparing", source={}, project_id=access.project_id)
        session.add_all([fresh, lost, dead])
        session.commit()
        session.execute(update(Dataset).where(Dataset.id.in_([lost.id, dead.id]))
                        .values(created_at=now - timedelta(seconds=600)))
        session.execute(update(Dataset).where(Dataset.id == dead.id)
                        .values(heartbeat_at=now - timedelta(seconds=600), attempt=1))
        session.commit()
        ids = fresh.id, lost.id, dead.id
    sent: list[str] = []
    try:
        with session_scope() as session:
            got = recovery.republish_stalled_preparations(session, set(), grace_s=30,
                                                          stale_s=300, publish=sent.append)
        # other tests' datasets share the database: look at these three only
        mine = set(ids)
        assert set(got) & mine == {ids[1], ids[2]}
        assert set(sent) & {str(i) for i in mine} == {str(ids[1]), str(ids[2])}
        with session_scope() as session:  # the broker holds them now
            again = recovery.republish_stalled_preparations(
                session, set(sent), grace_s=30, stale_s=300, publish=sent.append)
            assert not set(again) & mine
    finally:
        with session_scope() as session:
            session.execute(update(Dataset).where(Dataset.id.in_(ids))
                            .values(status="failed"))
            session.commit()
