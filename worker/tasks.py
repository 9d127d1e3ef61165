import uuid

from app.queue import TRAIN_RUN_TASK, celery_app
from worker.execution import execute_run


@celery_app.task(name=TRAIN_RUN_TASK, acks_late=True, ignore_result=True)
def train_run(run_id: str) -> str:
    return execute_run(uuid.UUID(run_id))
