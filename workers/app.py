"""The Celery app: explicit queues, late acks, one task at a time per process.

``embed`` is the CPU queue, ``gpu`` the GPU one (the same tasks; a GPU worker
is a ``dicom-wm worker --queues gpu --predictor learned --device cuda`` on a
machine where torch sees a device). Queues are never created implicitly.
Messages carry instance ids only; the database is the source of truth, so a
lost message only delays an instance until serve re-queues it.

Two tasks: ``dicom_wm.embed`` (one id) and ``dicom_wm.embed_batch`` (a list
of ids, predicted together; serve sends those when ``batch_size > 1``).
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery
from kombu import Queue

from dicom_wm.allocator import tune_allocator
from dicom_wm.settings import KNOWN_QUEUES, Settings

__all__ = ["app", "configure", "EMBED_TASK", "EMBED_BATCH_TASK", "CeleryBackend"]

EMBED_TASK = "dicom_wm.embed"
EMBED_BATCH_TASK = "dicom_wm.embed_batch"

app = Celery("dicom_wm")

_settings: Settings | None = None


def configure(settings: Settings) -> Celery:
    """Point the app at ``settings.broker`` and set the delivery guarantees."""
    global _settings
    _settings = settings
    tune_allocator()  # also for a plain `celery -A workers.app worker`; prefork children inherit it
    if settings.broker is None:
        raise ValueError("no broker configured (--broker / DICOM_WM_BROKER)")
    app.conf.update(
        broker_url=settings.broker,
        result_backend=None,
        task_ignore_result=True,
        task_queues=tuple(Queue(name, routing_key=name) for name in KNOWN_QUEUES),
        task_default_queue="embed",
        task_create_missing_queues=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_concurrency=settings.worker_count,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_serializer="json",
        accept_content=["json"],
        enable_utc=True,
    )
    return app


def settings() -> Settings:
    """The settings the app was configured with (loaded from the environment
    when a plain ``celery -A workers.app worker`` started it)."""
    global _settings
    if _settings is None:
        from dicom_wm.settings import load_settings

        configure(load_settings())
    if _settings is None:  # configure() always sets it
        raise RuntimeError("workers.app is not configured")
    return _settings


class CeleryBackend:
    """The dispatcher backend of the distributed mode: one ``embed`` message
    per id, or one ``embed_batch`` message per group of ids (the dispatcher
    forms the groups, ``Dispatcher(group_size=settings.batch_size)``)."""

    name = "celery"

    def __init__(self, settings: Settings) -> None:
        configure(settings)
        self._queue = settings.queue

    def submit(self, instance_id: int) -> None:
        app.send_task(EMBED_TASK, args=[int(instance_id)], queue=self._queue, routing_key=self._queue)

    def submit_group(self, instance_ids: Sequence[int]) -> None:
        ids = [int(i) for i in instance_ids]
        app.send_task(EMBED_BATCH_TASK, args=[ids], queue=self._queue, routing_key=self._queue)

    def waiting(self) -> int:
        """Messages on this backend's queue that no worker has taken yet."""
        return _depths((self._queue,))[self._queue]

    def close(self) -> None:
        app.pool.force_close_all()


def _depths(names: Sequence[str]) -> dict[str, int]:
    depths: dict[str, int] = {}
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in names:
            try:
                _name, count, _consumers = channel.queue_declare(queue=name, passive=True)
            except conn.channel_errors:  # queue never used yet
                count = 0
            depths[name] = int(count)
    return depths


def queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting per queue on the broker (Redis: list lengths)."""
    configure(settings)
    return _depths(KNOWN_QUEUES)


import workers.tasks  # noqa: E402,F401  (registers the task with the app)
