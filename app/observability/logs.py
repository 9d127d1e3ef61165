"""How every mixlab process logs, and how a worker keeps a run's own lines.

One handler on the root logger writes one line per record to stderr: JSON by
default (``MIXLAB_LOG_FORMAT=json``, python-json-logger), or plain text. Every
line carries ``run_id``, ``attempt`` and ``project_id``: set while a worker
executes a run attempt (``run_context``), null elsewhere. The API (through
uvicorn's ``log_config``) and the worker (through Celery's ``setup_logging``
signal) take the same configuration from ``logging_config``.

``RunLogCapture`` keeps the lines logged in one attempt's context so that the
worker can store them with the run (``app.runs.logs``), where
``GET /v1/runs/{id}/logs`` reads them.
"""

import logging
import logging.config
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["json", "text"]

# a run's lines beyond this, per attempt, are counted but not kept
MAX_LINES_PER_ATTEMPT = 5000
MAX_LINE_CHARS = 8000


@dataclass(frozen=True)
class RunContext:
    run_id: str
    attempt: int
    project_id: str


_current: ContextVar[RunContext | None] = ContextVar("mixlab_run", default=None)


@contextmanager
def run_context(run_id: object, attempt: int, project_id: object) -> Iterator[RunContext]:
    """Every record logged inside (in this thread or context) names this attempt."""
    context = RunContext(str(run_id), attempt, str(project_id))
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


class RunContextFilter(logging.Filter):
    """Adds ``run_id``, ``attempt``, ``project_id`` (null outside a run) and, for
    the text format, ``run_label`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        record.run_id = context.run_id if context else None
        record.attempt = context.attempt if context else None
        record.project_id = context.project_id if context else None
        record.run_label = (f"[run {context.run_id} attempt {context.attempt}] "
                            if context else "")
        return True


JSON_FIELDS = ["asctime", "levelname", "name", "message", "run_id", "attempt", "project_id"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(run_label)s%(message)s"


def logging_config(fmt: LogFormat = "json", level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dictionary: one stderr handler on the root
    logger; uvicorn's and Celery's loggers pass their records up to it."""
    formatter: dict[str, Any] = (
        {"()": "pythonjsonlogger.json.JsonFormatter", "fmt": JSON_FIELDS,
         "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"}}
        if fmt == "json" else {"format": TEXT_FORMAT})
    handed_up = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"run": {"()": RunContextFilter}},
        "formatters": {"line": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "line", "filters": ["run"]}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {name: handed_up for name in
                    ("uvicorn", "uvicorn.error", "uvicorn.access", "celery")},
    }


def configure(fmt: LogFormat = "json", level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(fmt, level))


@dataclass(frozen=True)
class CapturedLine:
    line: int  # from 1 within the attempt
    at: datetime
    level: str
    logger: str
    message: str


class RunLogCapture(logging.Handler):
    """Keeps what is logged in one attempt's context, from any thread that carries
    it, until ``drain`` hands it over; used as ``with RunLogCapture(...) as c:``."""

    def __init__(self, run_id: object, attempt: int,
                 max_lines: int = MAX_LINES_PER_ATTEMPT) -> None:
        super().__init__(logging.INFO)
        self.run_id, self.attempt, self.max_lines = str(run_id), attempt, max_lines
        self._lines: list[CapturedLine] = []
        self._counted = 0
        self._guard = threading.Lock()
        self._plain = logging.Formatter()

    def __enter__(self) -> "RunLogCapture":
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *_: object) -> None:
        logging.getLogger().removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        context = _current.get()
        if context is None or (context.run_id, context.attempt) != (self.run_id, self.attempt):
            return
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self._plain.formatException(record.exc_info)
        if len(message) > MAX_LINE_CHARS:
            message = message[:MAX_LINE_CHARS] + f"… ({len(message) - MAX_LINE_CHARS} " \
                                                 "characters more)"
        with self._guard:
            self._counted += 1
            if self._counted <= self.max_lines:
                self._lines.append(CapturedLine(
                    self._counted, datetime.fromtimestamp(record.created, UTC),
                    record.levelname, record.name, message))

    def drain(self, final: bool = False) -> list[CapturedLine]:
        """The lines kept since the last drain; the last one (``final``) also says
        how many were over the limit."""
        with self._guard:
            lines, self._lines = self._lines, []
            over = self._counted - self.max_lines
            if final and over > 0:
                self._counted += 1  # the note takes the next number, once
                lines.append(CapturedLine(
                    self.max_lines + 1, datetime.now(UTC), "WARNING", __name__,
                    f"{over} more lines were not kept (at most {self.max_lines} per attempt)"))
                self.max_lines = self._counted  # drained twice, the note is not repeated
        return lines
