"""All configuration, read once from ``MIXLAB_*`` environment variables.

With nothing set, everything is embedded under ``data_dir``: a SQLite file,
kombu's filesystem broker and a local artifact folder. Setting
``MIXLAB_DATABASE_URL`` and ``MIXLAB_BROKER_URL`` moves the service onto
Postgres and Redis.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

S3_PLACEHOLDERS = ("{project}", "{project_id}")


def split_s3_prefixes(value: str) -> list[str]:
    """``MIXLAB_S3_IMPORT_PREFIXES`` as a list of ``s3://bucket/seg/.../`` (a trailing
    '/' added: prefixes are whole path segments); ``ValueError`` for an entry that
    is not one."""
    prefixes = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if not entry.startswith("s3://"):
            raise ValueError(f"{entry!r}: expected s3://bucket/ or s3://bucket/path/")
        bucket, *segments = entry[len("s3://"):].rstrip("/").split("/")
        if not bucket or any(s in ("", ".", "..") for s in segments):
            raise ValueError(f"{entry!r}: expected s3://bucket/ or s3://bucket/path/ "
                             "(no empty, '.' or '..' segments)")
        rest = entry
        for placeholder in S3_PLACEHOLDERS:
            rest = rest.replace(placeholder, "")
        if any(c in rest for c in "{}?#"):
            raise ValueError(f"{entry!r}: the only placeholders are {{project}} and "
                             "{project_id}; '?' and '#' are not allowed")
        prefixes.append("s3://" + "/".join([bucket, *segments]) + "/")
    return prefixes


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MIXLAB_", extra="ignore")

    data_dir: Path = Field(default=Path(".mixlab"), description="Root of embedded state.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite if unset.")
    broker_url: str | None = Field(default=None, description="Celery broker; filesystem if unset.")
    artifact_url: str | None = Field(default=None, description="fsspec URL of the artifact store.")
    queue: str = Field(default="gpu", description="Celery queue training runs are sent to.")
    ingest_queue: str = Field(default="ingest",
                              description="Celery queue dataset preparation jobs are sent to "
                                          "(CPU work: give it its own workers in production).")

    max_upload_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    max_dataset_samples: int = Field(default=2_000_000, gt=0)
    max_image_side: int = Field(default=512, gt=0)
    # file:// dataset URIs are read only under these folders (comma-separated);
    # empty refuses every file:// URI, so a user cannot make the service read its files.
    import_roots: str = Field(default="", description="Folders file:// dataset URIs may "
                                                      "point into, comma-separated.")
    # s3:// dataset and weights URIs are read with the server's own credentials, so
    # only these bucket prefixes may be imported from (comma-separated, matched on
    # whole path segments); {project} / {project_id} give each project its own.
    # Empty refuses every s3:// URI (app.services.sources).
    s3_import_prefixes: str = Field(
        default="", description="Bucket prefixes s3:// dataset and weights URIs may point "
                                "into, comma-separated, e.g. 's3://bucket-a/datasets/,"
                                "s3://bucket-b/{project}/'.")
    # An S3-compatible server (MinIO, Ceph, moto) for the artifact store and s3:// URIs;
    # unset: AWS (or botocore's own AWS_ENDPOINT_URL).
    s3_endpoint_url: str | None = Field(default=None,
                                        description="Endpoint of an S3-compatible server.")
    # A preparation whose heartbeat is older than this may be claimed again by a
    # redelivered message (its worker died); a live one beats every progress_flush_s.
    ingest_stale_s: float = Field(default=300.0, gt=0)
    ingest_max_attempts: int = Field(default=3, ge=1)

    # Durable runs (app.runs.reconciler, in the API process): a run queued for longer
    # than queued_grace_s that the broker does not hold is published again; a
    # running run whose heartbeat (every control_poll_s) is older than
    # heartbeat_timeout_s lost its worker and is requeued to resume from its
    # checkpoint, up to run_max_attempts. 0 turns the sweeps off.
    reconcile_interval_s: float = Field(default=10.0, ge=0)
    queued_grace_s: float = Field(default=30.0, gt=0)
    heartbeat_timeout_s: float = Field(default=60.0, gt=0)
    run_max_attempts: int = Field(default=3, ge=1, le=100)
    # the worker retries its claim and its final writes through a database
    # outage this long before giving the run up to the reaper
    db_retry_s: float = Field(default=120.0, ge=0)

    # The worker's loop reads an in-memory flag; a helper thread refreshes it
    # from Postgres at this period, so cancel latency is bounded by it.
    control_poll_s: float = Field(default=0.5, gt=0)
    # torch intra-op threads of each training run (None: torch's default, the
    # cores); 1 makes CPU results independent of the machine's core count
    torch_threads: int | None = Field(default=None, ge=1, le=1024)
    progress_flush_s: float = Field(default=1.0, gt=0)

    # Data-parallel runs (training.world_size; worker.ranks, docs/distributed.md): the
    # API refuses more than max_world_size processes; a worker offers a run up to
    # gpu_world_size GPUs (default: those it sees) or cpu_world_size CPU processes
    # (default: its cores), and fails at the claim a run that asks for more.
    max_world_size: int = Field(default=8, ge=1, le=1024,
                                description="The largest training.world_size accepted.")
    gpu_world_size: int | None = Field(default=None, ge=1, le=1024,
                                       description="GPUs this worker gives one run (one "
                                                   "process each, NCCL); default: all it sees.")
    cpu_world_size: int | None = Field(default=None, ge=1, le=1024,
                                       description="CPU processes this worker gives one run "
                                                   "(gloo); default: its CPU cores.")
    # how long a run's ranks wait for one another: to start, and in each collective
    # (rank 0 validates alone while the others wait)
    dist_timeout_s: float = Field(default=1800.0, gt=0)

    # Prepared data (app.services.prepared, docs/datasets.md "Data larger than
    # memory"): stored as shards of about shard_bytes; a run holds its dataset in
    # memory when the inputs fit resident_data_bytes and streams it from the
    # shards otherwise. Unset sizes follow the memory this process may use
    # (physical, cgroup, RLIMIT_DATA/AS): a quarter resident, an eighth (≤ 1 GiB)
    # a shuffle window. A remote store's shards are copied into a folder of
    # their own under shard_cache_dir, at most shard_cache_bytes.
    shard_bytes: int = Field(default=64 * 1024**2, ge=4096)
    resident_data_bytes: int | None = Field(default=None, ge=0)
    shuffle_window_bytes: int | None = Field(default=None, ge=1)
    prefetch_batches: int = Field(default=4, ge=1, le=256)
    shard_cache_dir: Path | None = None
    shard_cache_bytes: int = Field(default=4 * 1024**3, ge=1)

    # every process's stderr: one JSON object per line (with run_id, attempt and
    # project_id inside a run, app.observability.logs) or plain text
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Access (app.services.auth): unset, API keys are required whenever the service
    # runs on Postgres and Redis, and not in the embedded default, which says so
    # loudly at start-up; set it to force either way.
    auth: bool | None = Field(default=None, description="Require an API key (Authorization: "
                                                        "Bearer) on every /v1 route.")
    # Per-project limits (app.services.limits); a project's `limits` overrides them
    # by name without the prefix, e.g. {"queued_runs": 10}.
    limit_running_runs: int = Field(default=16, ge=1, description="Runs running at once; "
                                    "more wait queued (enforced by the claim).")
    limit_queued_runs: int = Field(default=1000, ge=1, description="Runs waiting in the "
                                   "queue; a submission beyond it is 429.")
    limit_dataset_bytes: int = Field(default=100 * 1024**3, ge=1,
                                     description="Prepared bytes of all the project's datasets.")
    limit_epoch_samples: int = Field(default=2_000_000_000, ge=1,
                                     description="training.epochs × training samples, per run.")
    limit_model_parameters: int = Field(default=200_000_000, ge=1,
                                        description="Trainable parameters of a run's model.")
    limit_retry_after_s: int = Field(default=30, ge=1,
                                     description="Retry-After of a 429 for a run limit.")

    fashion_mnist_dir: Path = Field(
        default=Path("/usr/share/datasets/fashion-mnist"),
        description="Folder of Fashion-MNIST's idx .gz files (Debian's dataset-fashion-mnist).")

    public_url: str = Field(default="", description="Prefix for URLs in replies; '' = relative.")

    # Test hooks (worker.hold): honoured only with test_hooks on, never in production.
    # A worker holds each run after its epoch test_hold_epoch is recorded (checkpoint
    # included), writes test_hold_dir/held-<run>-<attempt>, and carries on once
    # test_hold_dir/release exists: fault tests wait on events, not on timing.
    test_hooks: bool = False
    test_hold_epoch: int | None = Field(default=None, ge=1)
    test_hold_dir: Path | None = None

    @field_validator("s3_import_prefixes")
    @classmethod
    def _check_s3_prefixes(cls, value: str) -> str:
        split_s3_prefixes(value)  # a typo stops the start rather than refusing every URI
        return value

    @property
    def import_root_paths(self) -> list[Path]:
        return [Path(p.strip()).resolve() for p in self.import_roots.split(",") if p.strip()]

    @property
    def s3_import_prefix_list(self) -> list[str]:
        """The prefixes as written, each ending in '/' (templates not expanded)."""
        return split_s3_prefixes(self.s3_import_prefixes)

    @property
    def worker_queues(self) -> list[str]:
        """What a default worker consumes: training runs and dataset preparation."""
        return list(dict.fromkeys([self.queue, self.ingest_queue]))

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mixlab.db').resolve()}"

    @property
    def resolved_shard_cache_dir(self) -> Path:
        return (self.shard_cache_dir or self.data_dir / "shard-cache").resolve()

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def resolved_artifact_url(self) -> str:
        if self.artifact_url:
            return self.artifact_url
        return (self.data_dir / "artifacts").resolve().as_uri()

    @property
    def is_embedded(self) -> bool:
        return self.database_url is None or self.broker_url is None

    @property
    def auth_enabled(self) -> bool:
        return self.auth if self.auth is not None else not self.is_embedded


@lru_cache
def get_settings() -> Settings:
    return Settings()
