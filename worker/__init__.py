"""Celery worker: consumes the run queue and trains with ``app.ml``."""
