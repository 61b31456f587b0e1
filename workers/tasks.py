"""Celery tasks: thin wrappers around dicom_wm's task function."""

from __future__ import annotations

import logging
import os

from celery import Task

from dicom_wm.ingest.pool import retry_delay
from dicom_wm.ingest.task import Outcome, WorkerContext, process_instance
from workers.app import EMBED_TASK, app, settings

__all__ = ["embed"]

log = logging.getLogger(__name__)

_ctx: tuple[int, WorkerContext] | None = None


def _context() -> WorkerContext:
    """One context per process (prefork children build their own)."""
    global _ctx
    if _ctx is None or _ctx[0] != os.getpid():
        _ctx = (os.getpid(), WorkerContext(settings()))
    return _ctx[1]


@app.task(bind=True, name=EMBED_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def embed(self: Task, instance_id: int) -> str:
    """Watermark one instance; transient failures are retried with backoff."""
    ctx = _context()
    max_retries = ctx.settings.max_retries
    attempt = int(self.request.retries)
    result = process_instance(ctx, int(instance_id), final_attempt=attempt >= max_retries)
    if result.outcome is Outcome.RETRY and attempt < max_retries:
        raise self.retry(countdown=retry_delay(ctx.settings, attempt), max_retries=max_retries)
    return result.outcome.value
