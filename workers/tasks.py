"""Celery tasks: thin wrappers around dicom_wm's task functions.

``embed`` watermarks one instance and retries it with ``task.retry``.
``embed_batch`` watermarks a group of instances with one shared prediction
pass (:func:`~dicom_wm.ingest.task.process_batch`) and keeps every outcome
per instance: an instance that needs a retry is sent again *alone*, as an
``embed`` task with the same backoff and attempt count, so the batch task
itself never retries or fails because of one instance.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

from celery import Task
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from dicom_wm.db.models import Instance, InstanceState, utcnow
from dicom_wm.ingest.pool import retry_delay
from dicom_wm.ingest.task import Outcome, WorkerContext, process_batch, process_instance
from workers.app import EMBED_BATCH_TASK, EMBED_TASK, app, settings

__all__ = ["embed", "embed_batch"]

log = logging.getLogger(__name__)

_ctx: tuple[int, WorkerContext] | None = None

RESENT = "resent"  # embed_batch: the instance went back to the queue alone


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


@app.task(bind=True, name=EMBED_BATCH_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def embed_batch(self: Task, instance_ids: list[int]) -> dict[str, str]:
    """Watermark several instances, their planes predicted together.

    Returns each id's outcome (``"resent"``: sent again alone as an
    ``embed`` task, attempt + 1, after :func:`retry_delay`). Ids the batch
    left without a result (``process_batch`` itself raised: a bug, never one
    instance's error) are resent the same way."""
    ctx = _context()
    max_retries = ctx.settings.max_retries
    attempt = int(self.request.retries)
    ids = list(dict.fromkeys(int(i) for i in instance_ids))
    try:
        results = process_batch(ctx, ids, final_attempts=[attempt >= max_retries] * len(ids))
    except Exception:  # noqa: BLE001 - every id gets its own task instead
        log.exception("batch of %d instance(s) raised; sending each alone", len(ids))
        results = {}
    queue = str((self.request.delivery_info or {}).get("routing_key") or ctx.settings.queue)
    outcomes: dict[str, str] = {}
    for instance_id in ids:
        result = results.get(instance_id)
        if result is not None and not (result.outcome is Outcome.RETRY and attempt < max_retries):
            outcomes[str(instance_id)] = result.outcome.value
            continue
        _send_alone(ctx, instance_id, attempt, queue)
        outcomes[str(instance_id)] = RESENT
    log.info("batch of %d instance(s): %s", len(ids), dict(Counter(outcomes.values())))
    return outcomes


def _send_alone(ctx: WorkerContext, instance_id: int, attempt: int, queue: str) -> None:
    """Queue ``embed(instance_id)`` as retry ``attempt + 1``. If the broker
    refuses, put the row back to RECEIVED so serve's reconciler queues it
    again (as it does for ids it could not queue)."""
    try:
        app.send_task(
            EMBED_TASK, args=[instance_id], countdown=retry_delay(ctx.settings, attempt), retries=attempt + 1,
            queue=queue, routing_key=queue,
        )
        return
    except Exception as exc:  # noqa: BLE001 - the broker being down must not end the other instances
        log.error("instance %d: could not queue its retry on %s: %s", instance_id, queue, exc)
    try:
        with ctx.sessions() as session:
            session.execute(
                update(Instance)
                .where(Instance.id == instance_id, Instance.state == InstanceState.QUEUED)
                .values(state=InstanceState.RECEIVED, updated_at=utcnow(), last_error=f"could not queue on {queue}")
            )
            session.commit()
    except SQLAlchemyError as exc:
        log.error("instance %d: could not put it back to RECEIVED: %s", instance_id, exc)
