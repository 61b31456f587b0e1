"""The embedded mode's worker pool: the task function in local processes.

``dicom-wm serve`` without a broker runs :func:`dicom_wm.ingest.task.process_instance`
in a :class:`~concurrent.futures.ProcessPoolExecutor` (spawned processes, each
with its own database engine and key store, at a lower CPU priority so the
association threads stay responsive), or in threads with ``pool = "thread"``.
Transient failures are retried with exponential backoff; a pool whose process
died (OOM, kill -9) is replaced and every non-final row is queued again.

With ``batch_size > 1`` (the gpu queue's mode) submitted ids are collected
until ``batch_size`` are waiting or the oldest has waited ``batch_wait_ms``,
and each batch runs as one :func:`~dicom_wm.ingest.task.process_batch` task:
one shared prediction pass on the configured device, then every instance
finished on its own (retries, failures and results stay per instance).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any

from dicom_wm.allocator import tune_allocator
from dicom_wm.ingest.task import Outcome, TaskResult, WorkerContext, process_batch, process_instance
from dicom_wm.process_setup import configure_logging, exit_when_orphaned
from dicom_wm.settings import PoolKind, Settings

__all__ = ["EmbeddedPool", "retry_delay"]

log = logging.getLogger(__name__)

_child_ctx: WorkerContext | None = None


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds before retry number ``attempt + 1`` (exponential, capped)."""
    return float(min(settings.retry_backoff_max_s, settings.retry_backoff_s * (2**attempt)))


def _init_child(settings_values: dict[str, Any], log_level: str, parent: int) -> None:
    global _child_ctx
    tune_allocator()
    exit_when_orphaned(parent)
    configure_logging(log_level)
    settings = Settings(**settings_values)
    try:  # embedding yields the CPU to reception (and gets all of it when idle)
        os.nice(settings.pool_nice)
    except OSError:
        pass
    _child_ctx = WorkerContext(settings)
    import dicom_wm.watermark  # noqa: F401  (load the engine before the first task)

    try:  # load the model (and claim the device) before the first task
        _child_ctx.engine_predictor()
    except Exception as exc:  # noqa: BLE001 - tasks report it per instance
        logging.getLogger(__name__).error("cannot load the predictor: %s", exc)


def _ready() -> int:
    """A no-op run in each new pool process (see :meth:`EmbeddedPool.warm_up`)."""
    time.sleep(0.05)
    return os.getpid()


def _run_child(instance_id: int, final_attempt: bool) -> TaskResult:
    if _child_ctx is None:
        raise RuntimeError("pool process not initialised")
    return process_instance(_child_ctx, instance_id, final_attempt=final_attempt)


def _run_child_batch(instance_ids: list[int], final_attempts: list[bool]) -> dict[int, TaskResult]:
    if _child_ctx is None:
        raise RuntimeError("pool process not initialised")
    return process_batch(_child_ctx, instance_ids, final_attempts=final_attempts)


class EmbeddedPool:
    """A :class:`~dicom_wm.ingest.dispatch.Backend` running tasks locally."""

    name = "embedded"

    def __init__(self, settings: Settings, *, on_broken: Callable[[], None] | None = None) -> None:
        self._settings = settings
        self._on_broken = on_broken
        self._lock = threading.Lock()
        self._closed = False
        self._timers: set[threading.Timer] = set()
        self._quick_restarts = 0  # pool breaks with no task finished in between
        self._in_flight = 0
        self._done = threading.Condition(self._lock)
        self._ctx = WorkerContext(settings) if settings.pool is PoolKind.THREAD else None
        self._executor = self._new_executor()
        self._batch: list[tuple[int, int]] = []  # (id, attempt) waiting for a batch to fill
        self._batch_timer: threading.Timer | None = None

    def _new_executor(self) -> Executor:
        n = self._settings.worker_count
        if self._settings.pool is PoolKind.THREAD:
            return ThreadPoolExecutor(max_workers=n, thread_name_prefix="dicom-wm-worker")
        values = self._settings.model_dump()
        return ProcessPoolExecutor(
            max_workers=n,
            mp_context=get_context("spawn"),
            initializer=_init_child,
            initargs=(values, self._settings.log_level, os.getpid()),
        )

    def warm_up(self, timeout: float = 120.0) -> int:
        """Start every pool process now (imports, engine, key store) rather
        than during the first association. Returns how many answered."""
        with self._lock:
            executor = self._executor
        if self._ctx is not None:
            return self._settings.worker_count
        futures = [executor.submit(_ready) for _ in range(self._settings.worker_count * 2)]
        return len({f.result(timeout) for f in futures})

    def set_on_broken(self, callback: Callable[[], None]) -> None:
        self._on_broken = callback

    def submit(self, instance_id: int, attempt: int = 0) -> None:
        if self._settings.batch_size > 1:
            self._collect(instance_id, attempt)
            return
        final = attempt >= self._settings.max_retries
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            executor = self._executor
            self._in_flight += 1
        try:
            if self._ctx is not None:
                future = executor.submit(process_instance, self._ctx, instance_id, final_attempt=final)
            else:
                future = executor.submit(_run_child, instance_id, final)
        except BaseException:
            self._finished()
            raise
        future.add_done_callback(lambda f: self._done_callback(f, instance_id, attempt, executor))

    # -- batches ------------------------------------------------------------------

    def _collect(self, instance_id: int, attempt: int) -> None:
        """Add an id to the open batch; hand the batch over when it is full,
        or ``batch_wait_ms`` after its first id arrived."""
        full: list[tuple[int, int]] | None = None
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            self._in_flight += 1
            self._batch.append((instance_id, attempt))
            if len(self._batch) >= self._settings.batch_size:
                full = self._take_batch_locked()
            elif self._batch_timer is None:
                timer = threading.Timer(self._settings.batch_wait_ms / 1000.0, self._flush)
                timer.daemon = True
                self._batch_timer = timer
                timer.start()
        if full:
            self._submit_batch(full)

    def _take_batch_locked(self) -> list[tuple[int, int]]:
        batch, self._batch = self._batch, []
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        return batch

    def _flush(self) -> None:
        with self._lock:
            batch = [] if self._closed else self._take_batch_locked()
        if batch:
            self._submit_batch(batch)

    def _submit_batch(self, batch: list[tuple[int, int]]) -> None:
        ids = [i for i, _a in batch]
        finals = [a >= self._settings.max_retries for _i, a in batch]
        with self._lock:
            executor = self._executor
        try:
            if self._ctx is not None:
                future = executor.submit(process_batch, self._ctx, ids, final_attempts=finals)
            else:
                future = executor.submit(_run_child_batch, ids, finals)
        except Exception as exc:  # closed or broken executor: the rows stay QUEUED for the reconciler
            log.error("could not start a batch of %d instance(s): %s", len(batch), exc)
            for _ in batch:
                self._finished()
            return
        future.add_done_callback(lambda f: self._batch_done(f, batch, executor))

    def _batch_done(self, future: Future[dict[int, TaskResult]], batch: list[tuple[int, int]], executor: Executor) -> None:
        try:
            results = future.result()
        except BrokenProcessPool:
            self._replace(executor)
            results = None
        except Exception:
            log.exception("batch of %d instance(s): task raised", len(batch))
            results = None
        for instance_id, attempt in batch:
            try:
                if results is not None and instance_id in results:
                    self._quick_restarts = 0
                    self._maybe_retry(results[instance_id], instance_id, attempt)
            finally:
                self._finished()

    def _finished(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._done.notify_all()

    def _done_callback(self, future: Future[TaskResult], instance_id: int, attempt: int, executor: Executor) -> None:
        try:
            try:
                result = future.result()
            except BrokenProcessPool:
                self._replace(executor)
                return
            except Exception:
                log.exception("instance %d: task raised", instance_id)
                return
            self._quick_restarts = 0
            self._maybe_retry(result, instance_id, attempt)
        finally:
            self._finished()

    def _maybe_retry(self, result: TaskResult, instance_id: int, attempt: int) -> None:
        if result.outcome is Outcome.RETRY and attempt < self._settings.max_retries:
            delay = retry_delay(self._settings, attempt)
            timer = threading.Timer(delay, self._retry, (instance_id, attempt + 1))
            timer.daemon = True
            with self._lock:
                if self._closed:
                    return
                self._timers.add(timer)
            timer.start()

    def _retry(self, instance_id: int, attempt: int) -> None:
        with self._lock:
            self._timers = {t for t in self._timers if t.is_alive() and t is not threading.current_thread()}
        try:
            self.submit(instance_id, attempt)
        except RuntimeError:
            pass

    def _replace(self, broken: Executor) -> None:
        with self._lock:
            if self._closed or self._executor is not broken:
                return  # already replaced by another callback
            log.error("a worker process died; starting a new pool and re-queueing unfinished instances")
            self._executor = self._new_executor()
            delay = min(60.0, float(2**self._quick_restarts) - 1.0)
            self._quick_restarts += 1
        broken.shutdown(wait=False, cancel_futures=True)
        if self._on_broken is not None:
            # back off when pools keep breaking before any task finishes
            timer = threading.Timer(delay, self._on_broken)
            timer.daemon = True
            timer.start()

    def wait_idle(self, timeout: float) -> bool:
        """Until no task is running or waiting (tests, shutdown)."""
        with self._lock:
            return self._done.wait_for(lambda: self._in_flight == 0 and not self._timers, timeout)

    def close(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            timers = list(self._timers)
            executor = self._executor
            unsent = self._take_batch_locked()  # still QUEUED in the database: re-queued on the next start
        for _ in unsent:
            self._finished()
        for timer in timers:
            timer.cancel()
        executor.shutdown(wait=wait, cancel_futures=not wait)
