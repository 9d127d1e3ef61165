"""What a worker reports when a run's results cannot be stored (worker.execution):
out of reach → raised, for the reaper to requeue the run; anything else → the
run fails now, saying why."""

import uuid

import pytest
from sqlalchemy.exc import DataError, OperationalError

from app.runs.service import Failed
from worker.execution import unstored

RUN = uuid.uuid4()


@pytest.mark.parametrize("exc", [
    OperationalError("INSERT …", {}, Exception("server closed the connection unexpectedly")),
    ConnectionResetError("the artifact store hung up"),
    TimeoutError("s3 put timed out"),
], ids=["database outage", "store connection", "store timeout"])
def test_an_unreachable_store_is_raised_for_the_reaper(exc: Exception) -> None:
    with pytest.raises(type(exc)):
        unstored(RUN, exc)


@pytest.mark.parametrize(("exc", "words"), [
    (DataError("INSERT …", {}, Exception('invalid input syntax for type json: "Infinity"')),
     "DataError"),
    (ValueError("Out of range float values are not JSON compliant"), "ValueError: Out of range"),
], ids=["refused value", "bug"])
def test_an_error_every_attempt_would_repeat_fails_the_run_saying_why(exc: Exception,
                                                                      words: str) -> None:
    outcome = unstored(RUN, exc)
    assert isinstance(outcome, Failed)
    assert outcome.error.startswith("storing the run's results failed: ")
    assert words in outcome.error
