"""Log lines: JSON with the run's id, attempt and project inside a run (null
outside), plain text on request, and the capture that keeps one attempt's lines."""

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from app.observability.logs import RunLogCapture, configure, run_context


@pytest.fixture
def root_output() -> Iterator[io.StringIO]:
    """Root logging configured as a process would have it, writing to a buffer."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield io.StringIO()
    finally:  # pytest's own capture handlers back
        root.handlers[:] = handlers
        root.setLevel(level)


def _configured(fmt: str, buffer: io.StringIO) -> logging.Logger:
    configure(fmt, "INFO")  # type: ignore[arg-type]
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    return logging.getLogger("mixlab.test")


def test_json_lines_name_the_run_inside_one(root_output: io.StringIO) -> None:
    log = _configured("json", root_output)
    log.info("outside")
    with run_context("r-1", 2, "p-9"):
        log.warning("inside %d", 5)
    outside, inside = (json.loads(line) for line in root_output.getvalue().splitlines())
    assert outside["message"] == "outside" and outside["level"] == "INFO"
    assert outside["logger"] == "mixlab.test" and "time" in outside
    assert (outside["run_id"], outside["attempt"], outside["project_id"]) == (None, None, None)
    assert inside["message"] == "inside 5" and inside["level"] == "WARNING"
    assert (inside["run_id"], inside["attempt"], inside["project_id"]) == ("r-1", 2, "p-9")


def test_text_lines_label_the_run(root_output: io.StringIO) -> None:
    log = _configured("text", root_output)
    log.info("before")
    with run_context("r-1", 1, "p"):
        log.info("during")
    before, during = root_output.getvalue().splitlines()
    assert before.endswith("INFO mixlab.test before")
    assert during.endswith("INFO mixlab.test [run r-1 attempt 1] during")


def test_the_capture_keeps_only_its_attempts_lines() -> None:
    log = logging.getLogger("mixlab.capture")
    log.setLevel(logging.INFO)
    with RunLogCapture("r", 2) as capture:
        log.info("no run")
        with run_context("r", 1, "p"):
            log.info("an earlier attempt")
        with run_context("r", 2, "p"):
            log.info("mine %s", "one")
            log.debug("below INFO")
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("failed")
            # a thread started in the context carries it, as the reporter's does
            from contextvars import copy_context
            thread = threading.Thread(target=copy_context().run,
                                      args=(log.info, "from a thread"))
            thread.start()
            thread.join()
    log.info("after the capture")
    lines = capture.drain()
    assert [x.line for x in lines] == [1, 2, 3]
    assert lines[0].message == "mine one" and lines[0].level == "INFO"
    assert lines[1].level == "ERROR" and lines[1].message.startswith("failed\nTraceback")
    assert "ValueError: boom" in lines[1].message
    assert lines[2].message == "from a thread"
    assert capture.drain() == []


def test_the_capture_counts_what_it_does_not_keep() -> None:
    log = logging.getLogger("mixlab.capture")
    log.setLevel(logging.INFO)
    with RunLogCapture("r", 1, max_lines=3) as capture, run_context("r", 1, "p"):
        for i in range(5):
            log.info("line %d", i)
        first = capture.drain()
        last = capture.drain(final=True)
    assert [x.message for x in first] == ["line 0", "line 1", "line 2"]
    assert len(last) == 1 and last[0].line == 4
    assert last[0].message == "2 more lines were not kept (at most 3 per attempt)"
    assert capture.drain(final=True) == []
