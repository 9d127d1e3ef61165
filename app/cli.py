"""The ``mixlab`` command line."""

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from app.cli_admin import admin_app
from app.cli_client import register as register_client_commands

cli = typer.Typer(help="mixlab: train models with mixup-style augmentation.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


def _die_with_parent() -> None:
    """Run in the child before exec: Linux sends it SIGTERM when its parent dies,
    so a worker never outlives ``mixlab up``, even if ``up`` is SIGKILLed."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _data_dir_option(data_dir: Path | None) -> None:
    if data_dir is not None:
        os.environ["MIXLAB_DATA_DIR"] = str(data_dir)


def worker_command(queue: str | None = None, concurrency: int = 1,
                   loglevel: str = "INFO") -> list[str]:
    """Celery on ``queue`` (comma-separated names), by default on both the training
    queue (MIXLAB_QUEUE) and the dataset preparation queue (MIXLAB_INGEST_QUEUE)."""
    from app.settings import get_settings

    queues = queue or ",".join(get_settings().worker_queues)
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app:celery_app", "worker",
            "-Q", queues, "-c", str(concurrency), "--pool", "prefork",
            "--loglevel", loglevel, "--without-gossip", "--without-mingle"]


@cli.command()
def migrate(revision: str = "head") -> None:
    """Apply database migrations (Alembic) up to REVISION."""
    from app.db.migrate import upgrade

    upgrade(revision=revision)
    console.print(f"[green]database migrated to {revision}[/]")


@cli.command()
def api(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the REST API (no worker)."""
    import uvicorn

    uvicorn.run("app.api.main:app", host=host, port=port, log_level="info")


@cli.command()
def worker(queue: Annotated[str | None, typer.Option(
               help="Queues to consume, comma-separated (default: MIXLAB_QUEUE and "
                    "MIXLAB_INGEST_QUEUE, i.e. training runs and dataset preparation).")
           ] = None,
           concurrency: int = 1) -> None:
    """Run a worker: training runs (one process per GPU, one run at a time) and
    dataset preparation jobs. In production give preparation its own CPU workers:
    ``mixlab worker --queue ingest`` (and ``--queue gpu`` on the GPU ones)."""
    os.execv(sys.executable, worker_command(queue, concurrency))


@cli.command()
def up(host: str = "127.0.0.1", port: int = 8000,
       data_dir: Annotated[Path | None, typer.Option(help="Embedded state folder.")] = None,
       concurrency: Annotated[int, typer.Option(
           min=1, max=64, help="Runs the worker trains side by side.")] = 1,
       ) -> None:
    """Start the API and one worker. With no MIXLAB_DATABASE_URL / MIXLAB_BROKER_URL,
    everything is embedded: SQLite, a filesystem broker and local artifacts."""
    _data_dir_option(data_dir)
    import uvicorn

    from app.db.migrate import upgrade
    from app.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade()
    mode = "embedded" if settings.is_embedded else "external services"
    console.print(f"[bold]mixlab[/] ({mode}) data in {settings.data_dir.resolve()}; "
                  f"API on http://{host}:{port}  (docs at /docs)")
    if not settings.auth_enabled:
        from app.api.access import AUTH_OFF_WARNING

        console.print(f"[bold yellow]WARNING: {AUTH_OFF_WARNING}[/]")
    log = (settings.data_dir / "worker.log").open("ab")
    worker_proc = subprocess.Popen(worker_command(concurrency=concurrency), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; turn that
    # into SystemExit so the finally below still stops the worker.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run("app.api.main:app", host=host, port=port, log_level="warning")
    finally:
        stop_process_group(worker_proc, grace_s=15.0)
        log.close()


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the process's group, SIGKILL after ``grace_s``. For the worker,
    SIGTERM is Celery's warm shutdown (the current step finishes); a worker killed
    after the grace period leaves its run for recovery."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@cli.command()
def demo(epochs: int = 100, noise: float = 0.4,
         output: Annotated[Path, typer.Option(help="Where the preview PNGs go.")] = Path(
             "demo-output"),
         port: int = 8765) -> None:
    """Start the embedded stack, train ERM and mixup on noisy digits side by side,
    print test accuracy and calibration, save previews, stop everything."""
    from app.demo import run_demo

    raise typer.Exit(run_demo(epochs=epochs, noise=noise, output=output, port=port))


register_client_commands(cli)
cli.add_typer(admin_app, name="admin")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
