import uuid

from app.runs.queue import PREPARE_DATASET_TASK, TRAIN_RUN_TASK, celery_app
from worker.execution import execute_run
from worker.ingestion import execute_preparation


@celery_app.task(name=TRAIN_RUN_TASK, acks_late=True, ignore_result=True)
def train_run(run_id: str) -> str:
    return execute_run(uuid.UUID(run_id))


@celery_app.task(name=PREPARE_DATASET_TASK, acks_late=True, ignore_result=True)
def prepare_dataset(dataset_id: str) -> str:
    return execute_preparation(uuid.UUID(dataset_id))
