"""Tables. Postgres is the source of truth for every run's state."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, JSONType, UTCDateTime, utcnow
from app.runs.status import TERMINAL, RunStatus

DATASET_STATUSES = ("preparing", "ready", "failed")
KEY_SCOPES = ("read", "write")
# The project the migration gave every row that existed before projects did, and
# the one every request acts as when authentication is off (the embedded default).
DEFAULT_PROJECT_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")
DEFAULT_PROJECT_NAME = "default"
# the run lifecycle's (app.runs): the CHECK on runs.status allows exactly these
RUN_STATUSES = tuple(s.value for s in RunStatus)
TERMINAL_STATUSES = tuple(s.value for s in RunStatus if s in TERMINAL)


class Project(Base):
    """Owns datasets and experiments (and through them runs, metrics, checkpoints,
    evaluations and previews). ``limits`` overrides the settings' per-project
    defaults, e.g. ``{"queued_runs": 10}`` (``app.services.limits``)."""

    __tablename__ = "projects"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    limits: Mapped[dict[str, int]] = mapped_column(JSONType, default=dict)

    keys: Mapped[list["ApiKey"]] = relationship(back_populates="project",
                                                cascade="all, delete-orphan",
                                                passive_deletes=True)


class ApiKey(Base):
    """An API key of one project. Only its hash is stored; ``prefix`` (the key's
    first characters) finds the row and is what listings show."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    project: Mapped[Project] = relationship(back_populates="keys")


class Dataset(Base):
    """A dataset and its preparation job: ``preparing`` → ``ready`` | ``failed``.

    ``summary``, ``artifact_key`` and ``size_bytes`` exist once it is ready;
    ``errors`` (a capped list of {field, message}) once it failed. ``attempt``
    counts claims by workers, ``heartbeat_at`` shows the claiming worker lives.
    """

    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # every service passes the project; the default is for rows made behind the
    # API (scripts, tests of the worker's side)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="RESTRICT"), index=True, default=DEFAULT_PROJECT_ID)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="preparing")
    source: Mapped[dict[str, Any]] = mapped_column(JSONType)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    artifact_key: Mapped[str | None] = mapped_column(String(500))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(40))
    errors: Mapped[list[dict[str, str]] | None] = mapped_column(JSONType)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    experiments: Mapped[list["Experiment"]] = relationship(back_populates="dataset")


class Sweep(Base):
    """A base experiment spec and a grid or random space over its dotted fields: one
    experiment (with its run) per point (``app.services.sweeps``). ``spec`` holds the
    request as posted (base, grid, random)."""

    __tablename__ = "sweeps"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    experiments: Mapped[list["Experiment"]] = relationship(
        back_populates="sweep", cascade="all, delete-orphan", passive_deletes=True,
        order_by="Experiment.created_at")


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="RESTRICT"), index=True, default=DEFAULT_PROJECT_ID)
    name: Mapped[str] = mapped_column(String(200))
    dataset_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("datasets.id", ondelete="RESTRICT"), index=True)
    task: Mapped[str] = mapped_column(String(40))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow,
                                                 index=True)
    # the sweep that made it, and its point there ({dotted field: value}); null otherwise
    sweep_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="CASCADE"), index=True, nullable=True)
    sweep_point: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)

    dataset: Mapped[Dataset] = relationship(back_populates="experiments")
    sweep: Mapped[Sweep | None] = relationship(back_populates="experiments")
    runs: Mapped[list["Run"]] = relationship(back_populates="experiment",
                                             cascade="all, delete-orphan",
                                             order_by="Run.created_at")


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    experiment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    # written only by app.runs.lifecycle.transition (and new_run)
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.QUEUED.value)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    worker_host: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(255))

    epoch: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    samples_per_s: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)

    metrics: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    checkpoint_key: Mapped[str | None] = mapped_column(String(500))
    # the epoch whose weights that checkpoint holds (a succeeded run's: the kept one)
    checkpoint_epoch: Mapped[int | None] = mapped_column(Integer)
    # what a run started from model.weights / model.init_from_run loaded
    # (app.services.initial_weights); null for a run from random weights
    init: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)

    experiment: Mapped[Experiment] = relationship(back_populates="runs")

    __table_args__ = (Index("ix_runs_status_created_at", "status", "created_at"),
                      CheckConstraint(f"status IN ({', '.join(repr(s) for s in RUN_STATUSES)})",
                                      name="status"))


class MetricPoint(Base):
    """Append-only metric history, keyed like MLflow's by (run, key, step)."""

    __tablename__ = "metrics"

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"),
                                              primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RunLogLine(Base):
    """What the worker logged while it ran one attempt of a run, line by line
    (``app.runs.logs``). ``line`` counts from 1 within the attempt, so a write
    retried after a lost reply stores nothing twice."""

    __tablename__ = "run_log_lines"

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"),
                                              primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    level: Mapped[str] = mapped_column(String(10))
    logger: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
