"""All configuration, read once from ``MIXLAB_*`` environment variables.

With nothing set, everything is embedded under ``data_dir``: a SQLite file,
kombu's filesystem broker and a local artifact folder. Setting
``MIXLAB_DATABASE_URL`` and ``MIXLAB_BROKER_URL`` moves the service onto
Postgres and Redis.
"""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # A preparation whose heartbeat is older than this may be claimed again by a
    # redelivered message (its worker died); a live one beats every progress_flush_s.
    ingest_stale_s: float = Field(default=300.0, gt=0)
    ingest_max_attempts: int = Field(default=3, ge=1)

    # The worker's loop reads an in-memory flag; a helper thread refreshes it
    # from Postgres at this period, so cancel latency is bounded by it.
    control_poll_s: float = Field(default=0.5, gt=0)
    progress_flush_s: float = Field(default=1.0, gt=0)

    fashion_mnist_dir: Path = Field(
        default=Path("/usr/share/datasets/fashion-mnist"),
        description="Folder of Fashion-MNIST's idx .gz files (Debian's dataset-fashion-mnist).")

    public_url: str = Field(default="", description="Prefix for URLs in replies; '' = relative.")

    @property
    def import_root_paths(self) -> list[Path]:
        return [Path(p.strip()).resolve() for p in self.import_roots.split(",") if p.strip()]

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


@lru_cache
def get_settings() -> Settings:
    return Settings()
