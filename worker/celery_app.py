"""The Celery app the worker process runs: ``celery -A worker.celery_app``.

It is ``app.runs.queue``'s client app with the task implementations registered.
"""

from celery.signals import setup_logging, worker_process_init

from app.runs.queue import celery_app

celery_app.conf.include = ["worker.tasks"]


@setup_logging.connect
def _logging(**_: object) -> None:
    # connected, Celery leaves the root logger to us: one line format for every
    # process (app.observability.logs), run ids included
    from app.observability.logs import configure
    from app.settings import get_settings

    settings = get_settings()
    configure(settings.log_format, settings.log_level)


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    # A prefork child must not reuse database connections inherited from its parent.
    from app.runs.attempt import forget_inherited_connections

    forget_inherited_connections()


__all__ = ["celery_app"]
