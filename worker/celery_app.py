"""The Celery app the worker process runs: ``celery -A worker.celery_app``.

It is ``app.runs.queue``'s client app with the task implementations registered.
"""

from celery.signals import worker_process_init

from app.runs.queue import celery_app

celery_app.conf.include = ["worker.tasks"]


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    # A prefork child must not reuse database connections inherited from its parent.
    from app.runs.attempt import forget_inherited_connections

    forget_inherited_connections()


__all__ = ["celery_app"]
