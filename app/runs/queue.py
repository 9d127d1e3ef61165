"""The Celery application as a client: configuration and publishing.

The worker package registers the task implementations on this same app. The
queues carry only "run X now" (training, ``MIXLAB_QUEUE``) and "prepare
dataset X now" (ingestion, ``MIXLAB_INGEST_QUEUE``); Postgres holds every run's
and dataset's state, so results are ignored and a message is published only
after its row is committed.
"""

from celery import Celery

from app.settings import Settings, get_settings

TRAIN_RUN_TASK = "mixlab.train_run"
PREPARE_DATASET_TASK = "mixlab.prepare_dataset"


def make_celery(settings: Settings) -> Celery:
    app = Celery("mixlab", broker=settings.resolved_broker_url)
    transport_options: dict[str, object] = {}
    if settings.resolved_broker_url.startswith("filesystem"):
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {"data_folder_in": str(folder / "queue"),
                             "data_folder_out": str(folder / "queue"),
                             "processed_folder": str(folder / "processed"),
                             # kombu's default is ./control, in whatever folder we run from
                             "control_folder": str(folder / "control"),
                             "store_processed": False}
    else:
        # An unacked task is redelivered after this; runs are claimed atomically in
        # Postgres, so a redelivered copy of a live run is refused, never trained twice.
        transport_options = {"visibility_timeout": 24 * 3600}
    # Each setting is a decision (see README, "Durable runs"):
    app.conf.update(
        task_default_queue=settings.queue,
        # ack after the task returns, so a worker that dies mid-run leaves the
        # message unacked instead of silently consumed
        task_acks_late=True,
        # a pool child killed mid-run (OOM, SIGKILL): do not requeue at once. The
        # dead attempt's heartbeat is still fresh, so the copy would be refused by
        # the claim; the reconciler requeues the run (attempt + 1, resuming from
        # its checkpoint) once the heartbeat is older than MIXLAB_HEARTBEAT_TIMEOUT_S.
        task_reject_on_worker_lost=False,
        # one run per process at a time, none reserved behind it: a queued run
        # stays in the broker where any idle worker can take it
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # Postgres holds every outcome
        task_serializer="json",
        accept_content=["json"],  # never unpickle a message
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # keep running tasks through a broker outage: the run's state is in
        # Postgres and the reconciler republishes whatever Redis lost
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # a fresh pool process now and then returns memory (CPU and GPU) that a
        # long-lived one would keep fragmented or leaked
        worker_max_tasks_per_child=20,
        worker_hijack_root_logger=False,
    )
    return app


celery_app = make_celery(get_settings())


def enqueue_run(run_id: str) -> None:
    celery_app.send_task(TRAIN_RUN_TASK, args=[run_id], queue=get_settings().queue)


def enqueue_preparation(dataset_id: str) -> None:
    celery_app.send_task(PREPARE_DATASET_TASK, args=[dataset_id],
                         queue=get_settings().ingest_queue)
