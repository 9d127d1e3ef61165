"""The ``mixlab`` command line.

Exit codes of the service commands (migrate, api, worker, up, demo): 0 ok; 1 a
demo run did not succeed; 2 the options do not fit, the port is taken, or the
database cannot be used.
"""

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from app.cli_admin import admin_app
from app.cli_client import App, make_console
from app.cli_client import register as register_client_commands

cli = App(help="mixlab: train models with mixup-style augmentation.",
          no_args_is_help=True, add_completion=False)
console = make_console(stderr=True)

DataDir = Annotated[Path | None, typer.Option(
    show_default=False,
    help="Embedded state folder (SQLite, broker, artifacts), when MIXLAB_DATABASE_URL is "
         "unset. Default: MIXLAB_DATA_DIR, else ./.mixlab.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error: {escape(message)}[/]", soft_wrap=True)
    return typer.Exit(code)


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


def _log_config(level: str | None = None) -> dict[str, object]:
    """The API's logging (uvicorn applies it in each of its processes), as the
    worker's: ``app.observability.logs``."""
    from app.observability.logs import logging_config
    from app.settings import get_settings

    settings = get_settings()
    return logging_config(settings.log_format, level or settings.log_level)


def port_problem(host: str, port: int) -> str | None:
    """Why the API could not listen on host:port (None: it can), found by binding a
    socket there as uvicorn will (SO_REUSEADDR) and closing it at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port}: the host does not resolve ({exc.strerror})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return (f"cannot listen on {host}:{port}: {exc.strerror or exc} (is another "
                    "mixlab or another server on it? choose a free port with --port)")
    return None


def _database_problem(exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"cannot use the database ({type(exc).__name__}: {first})"


def _revision(rev: str | None, head: str) -> str:
    if rev is None:
        return "base (empty)"
    return f"{rev} (head)" if rev == head else rev


@cli.command()
def migrate(revision: Annotated[str, typer.Option(
                help="Where to take the schema: head (the newest), base (empty), or a "
                     "revision such as 0003. One older than the database's downgrades.")]
            = "head",
            data_dir: DataDir = None) -> None:
    """Upgrade or downgrade the database schema to a revision (Alembic).

    A revision newer than the database's is reached by Alembic's upgrade, an older
    one by its downgrade (what the dropped tables and columns held is lost). The
    command says which way it went; an unknown revision is refused (exit 2).
    """
    _data_dir_option(data_dir)
    from sqlalchemy.exc import SQLAlchemyError

    from app.db.migrate import UnknownRevision, migrate_to

    try:
        done = migrate_to(revision)
    except UnknownRevision as exc:
        raise _fail(str(exc)) from None
    except SQLAlchemyError as exc:
        raise _fail(_database_problem(exc)) from None
    before, after = _revision(done.before, done.head), _revision(done.after, done.head)
    if done.direction == "unchanged":
        console.print(f"database already at {after}: nothing to do")
    elif done.direction == "upgraded":
        console.print(f"[green]database upgraded from {before} to {after}[/]")
    else:
        console.print(f"[yellow]database downgraded from {before} to {after}[/] (mixlab "
                      "migrate upgrades it to head again)")


@cli.command()
def api(host: str = "127.0.0.1", port: int = 8000,
        workers: Annotated[int, typer.Option(
            min=1, max=64, help="API processes on this port (uvicorn workers); on Postgres "
                                "only one of them, in the whole deployment, reconciles.")] = 1,
        access_log: Annotated[bool, typer.Option(
            help="Log a line per request (off: it costs a hot read about 10 % of its "
                 "time; GET /metrics has request counts and latencies).")] = False,
        ) -> None:
    """Serve the REST API (no worker)."""
    import uvicorn

    from app.settings import get_settings

    problem = port_problem(host, port)
    if problem:
        raise _fail(problem)
    if workers > 1 and get_settings().is_embedded:
        # one SQLite file and a folder broker are for one process on one machine
        raise _fail("--workers > 1 needs MIXLAB_DATABASE_URL and MIXLAB_BROKER_URL "
                    "(the embedded mode runs one API process)")
    from app.observability import multiprocess

    # several processes merge their /metrics through files in one folder, which
    # must be in the environment before uvicorn spawns them (docs/operations.md)
    with multiprocess.directory(workers):
        uvicorn.run("app.api.main:app", host=host, port=port, log_level="info",
                    workers=workers, access_log=access_log, log_config=_log_config())


@cli.command()
def worker(queue: Annotated[str | None, typer.Option(
               help="Queues to consume, comma-separated (default: MIXLAB_QUEUE and "
                    "MIXLAB_INGEST_QUEUE, i.e. training runs and dataset preparation).")
           ] = None,
           concurrency: int = 1) -> None:
    """Run a worker: training runs and dataset preparation jobs.

    One process per GPU, one run at a time. In production give preparation its own
    CPU workers: mixlab worker --queue ingest (and --queue gpu on the GPU ones).
    """
    os.execv(sys.executable, worker_command(queue, concurrency))


class _AlreadySaid(logging.Filter):
    """Drops one log message that the command has printed itself."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.message


@cli.command()
def up(host: str = "127.0.0.1", port: int = 8000,
       data_dir: DataDir = None,
       concurrency: Annotated[int, typer.Option(
           min=1, max=64, help="Runs the worker trains side by side.")] = 1,
       ) -> None:
    """Start the API and one worker.

    With no MIXLAB_DATABASE_URL / MIXLAB_BROKER_URL, everything is embedded: SQLite,
    a filesystem broker and local artifacts. A port in use is refused (exit 2)
    before anything starts.
    """
    _data_dir_option(data_dir)
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from app.db.migrate import upgrade
    from app.settings import get_settings

    problem = port_problem(host, port)
    if problem:
        raise _fail(problem)
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        upgrade()
    except SQLAlchemyError as exc:
        raise _fail(f"{_database_problem(exc)}; is it up?") from None
    mode = "embedded" if settings.is_embedded else "external services"
    console.print(f"[bold]mixlab[/] ({mode}) data in {settings.data_dir.resolve()}; "
                  f"API on http://{host}:{port}  (dashboard at /ui, docs at /docs)",
                  soft_wrap=True)
    if not settings.auth_enabled:
        from app.api.access import AUTH_OFF_WARNING

        console.print(f"[bold yellow]WARNING: {AUTH_OFF_WARNING}[/]", soft_wrap=True)
        # the API logs it too when it starts: once is enough
        logging.getLogger("mixlab.access").addFilter(_AlreadySaid(AUTH_OFF_WARNING))
    log = (settings.data_dir / "worker.log").open("ab")
    worker_proc = subprocess.Popen(worker_command(concurrency=concurrency), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; turn that
    # into SystemExit so the finally below still stops the worker.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run("app.api.main:app", host=host, port=port, log_level="warning",
                    log_config=_log_config("WARNING"))
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
def demo(epochs: Annotated[int, typer.Option(min=1, help="Epochs of each run.")] = 100,
         noise: Annotated[float, typer.Option(
             min=0.0, max=0.9, help="Share of training labels flipped.")] = 0.4,
         output: Annotated[Path, typer.Option(help="Where the preview PNGs go.")] = Path(
             "demo-output"),
         port: Annotated[int, typer.Option(help="Port of the demo's API.")] = 8765) -> None:
    """Train ERM and mixup on noisy digits, side by side, on the embedded stack.

    Starts the stack, prints test accuracy and calibration, saves previews and stops
    everything. Its state goes to MIXLAB_DATA_DIR/demo when MIXLAB_DATA_DIR is set,
    else to ./.mixlab-demo; the demo empties that folder only if it made it.
    """
    from app.demo import run_demo

    raise typer.Exit(run_demo(epochs=epochs, noise=noise, output=output, port=port))


register_client_commands(cli)
cli.add_typer(admin_app, name="admin")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
