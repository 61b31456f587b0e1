"""From committed rows to the queue, and back again after a crash.

The SCP calls :meth:`Dispatcher.enqueue` after each commit; that only puts
the id on an in-memory queue, so the association thread returns at once. The
dispatcher thread marks the rows QUEUED (one transaction per batch, with
``queued`` events) and hands the ids to the backend: the embedded pool
(:mod:`dicom_wm.ingest.pool`) or Celery (:mod:`workers.app`).

With ``group_size > 1`` (the distributed gpu queue's mode) the ids go to the
backend in groups of up to ``group_size`` (:meth:`GroupBackend.submit_group`,
one Celery message per group); the thread waits up to ``group_wait_s`` after
taking an id for enough more to fill the group.

The database is the source of truth. On start every row not in a final state
is queued again; every ``reconcile_interval_s`` rows left RECEIVED (the
backend refused them, e.g. the broker was down) and rows WATERMARKING for
longer than ``stale_after_s`` (their worker died) are queued again. So are
rows QUEUED for longer than ``stale_after_s`` while the backend reports
nothing waiting (``Backend.waiting() == 0``): their message was lost, e.g.
taken by a worker killed before it claimed the row; Redis would give it back
only after the broker's visibility timeout, and kombu may wait minutes more
(it scans for expired messages rarely, under a lock a killed worker can leave
held for 5 minutes). A duplicate delivery is harmless: the task is idempotent.
Each reconcile also runs ``housekeeping`` (serve: the orphaned-spool sweep).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_wm.db.models import PENDING_STATES, EventKind, Instance, InstanceState, utcnow
from dicom_wm.ingest.events import add_event

__all__ = ["Backend", "GroupBackend", "Dispatcher", "pending_instance_ids", "stuck_instance_ids"]

log = logging.getLogger(__name__)

_BATCH = 200
RECEIVED_GRACE_S = 30.0


class Backend(Protocol):
    """Where queued ids go. ``submit`` may raise; the row then stays RECEIVED
    and the reconciler tries again. A backend may also have ``waiting()``:
    how many submissions no worker has taken yet (see the module docstring)."""

    name: str

    def submit(self, instance_id: int) -> None: ...

    def close(self) -> None: ...


class GroupBackend(Backend, Protocol):
    """A backend that also takes several ids in one submission (all or
    none: when ``submit_group`` raises, every id of the group stays RECEIVED)."""

    def submit_group(self, instance_ids: Sequence[int]) -> None: ...


def pending_instance_ids(sessions: sessionmaker[Session]) -> list[int]:
    """Ids of every row not in a final state, oldest first."""
    with sessions() as session:
        return list(
            session.scalars(select(Instance.id).where(Instance.state.in_(PENDING_STATES)).order_by(Instance.id))
        )


def stuck_instance_ids(
    sessions: sessionmaker[Session], *, received_grace_s: float, stale_after_s: float, queue_empty: bool = False
) -> list[int]:
    """RECEIVED rows older than ``received_grace_s`` and WATERMARKING rows
    claimed longer than ``stale_after_s`` ago; with ``queue_empty`` (nothing
    waiting on the backend) also rows QUEUED longer than ``stale_after_s`` ago."""
    now = utcnow()
    stale = now - timedelta(seconds=stale_after_s)
    conditions = [
        (Instance.state == InstanceState.RECEIVED) & (Instance.updated_at < now - timedelta(seconds=received_grace_s)),
        (Instance.state == InstanceState.WATERMARKING) & (Instance.claimed_at < stale),
    ]
    if queue_empty:
        conditions.append((Instance.state == InstanceState.QUEUED) & (Instance.updated_at < stale))
    with sessions() as session:
        return list(session.scalars(select(Instance.id).where(or_(*conditions)).order_by(Instance.id)))


class Dispatcher:
    """Moves committed instance ids to a backend, from one thread."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        backend: Backend,
        *,
        queue_name: str = "embed",
        actor: str = "dispatcher",
        reconcile_interval_s: float = 60.0,
        stale_after_s: float = 900.0,
        quiet_s: float = 0.0,
        max_hold_s: float = 10.0,
        group_size: int = 1,
        group_wait_s: float = 0.0,
        housekeeping: Callable[[], object] | None = None,
    ) -> None:
        if group_size < 1:
            raise ValueError(f"group_size {group_size} must be at least 1")
        if group_wait_s < 0:
            raise ValueError(f"group_wait_s {group_wait_s} must not be negative")
        if group_size > 1 and not callable(getattr(backend, "submit_group", None)):
            raise TypeError(f"group_size {group_size}: backend {backend.name!r} has no submit_group")
        self._sessions = sessions
        self._backend = backend
        self._queue_name = queue_name
        self._actor = actor
        self._reconcile_interval_s = reconcile_interval_s
        self._stale_after_s = stale_after_s
        self._quiet_s = quiet_s
        self._max_hold_s = max_hold_s
        self._group_size = group_size
        self._group_wait_s = group_wait_s
        self._housekeeping = housekeeping
        # ids marked QUEUED per transaction: whole groups, so a chunk boundary
        # does not split one
        self._chunk = max(group_size, _BATCH // group_size * group_size)
        self._last_enqueue = 0.0
        self._ids: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    # -- public -------------------------------------------------------------------

    def start(self, *, requeue_pending: bool = True) -> int:
        """Start the thread; first queue every non-final row again. Returns
        how many rows were re-queued."""
        count = 0
        if requeue_pending:
            ids = pending_instance_ids(self._sessions)
            for instance_id in ids:
                self._ids.put((instance_id, "restart"))
            count = len(ids)
            if count:
                log.info("re-queueing %d instance(s) not in a final state", count)
        self._thread = threading.Thread(target=self._run, name="dicom-wm-dispatcher", daemon=True)
        self._thread.start()
        return count

    def enqueue(self, instance_id: int, reason: str | None = None) -> None:
        """Queue a committed row (cheap; called from association threads)."""
        self._last_enqueue = time.monotonic()
        self._idle.clear()
        self._ids.put((instance_id, reason))

    def enqueue_many(self, ids: Iterable[int], reason: str) -> None:
        for instance_id in ids:
            self.enqueue(instance_id, reason)

    def reconcile(self) -> int:
        """Queue rows that are stuck (see the module docstring) again."""
        try:
            ids = stuck_instance_ids(
                self._sessions, received_grace_s=RECEIVED_GRACE_S, stale_after_s=self._stale_after_s,
                queue_empty=self._backend_queue_empty(),
            )
        except SQLAlchemyError as exc:
            log.warning("reconcile: database unavailable: %s", exc)
            return 0
        if ids:
            log.warning("re-queueing %d stuck instance(s)", len(ids))
            self.enqueue_many(ids, "stuck")
        self._run_housekeeping()
        return len(ids)

    def _run_housekeeping(self) -> None:
        if self._housekeeping is None:
            return
        try:
            self._housekeeping()
        except Exception as exc:  # noqa: BLE001 - a full disk or a DB outage must not kill the thread
            log.warning("housekeeping failed: %s", exc)

    def _backend_queue_empty(self) -> bool:
        waiting = getattr(self._backend, "waiting", None)
        if waiting is None:
            return False
        try:
            return waiting() == 0
        except Exception as exc:  # noqa: BLE001 - the broker being down must not kill the thread
            log.warning("reconcile: could not read the %s queue depth: %s", self._backend.name, exc)
            return False

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Until everything enqueued so far was handed to the backend (tests)."""
        return self._idle.wait(timeout)

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        next_reconcile = time.monotonic() + self._reconcile_interval_s
        while not self._stop.is_set():
            batch = self._take_batch(timeout=0.2)
            if batch:
                self._hold_while_receiving(batch)
                self._fill_groups(batch)
                for start in range(0, len(batch), self._chunk):
                    self._dispatch(batch[start : start + self._chunk])
            elif self._ids.empty():
                self._idle.set()
            if time.monotonic() >= next_reconcile:
                next_reconcile = time.monotonic() + self._reconcile_interval_s
                self.reconcile()

    def _hold_while_receiving(self, batch: list[tuple[int, str | None]]) -> None:
        """Reception first: while instances keep arriving (one less than
        ``quiet_s`` ago), keep collecting instead of dispatching, for at most
        ``max_hold_s``. On a small machine this keeps watermarking from
        slowing the associations down; the cap keeps a continuous stream from
        starving the workers."""
        if self._quiet_s <= 0:
            return
        held_since = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - self._last_enqueue >= self._quiet_s or now - held_since >= self._max_hold_s:
                return
            time.sleep(min(0.05, self._quiet_s))
            while True:
                try:
                    batch.append(self._ids.get_nowait())
                except queue.Empty:
                    break

    def _fill_groups(self, batch: list[tuple[int, str | None]]) -> None:
        """With groups: keep collecting until the ids split into full groups,
        for at most ``group_wait_s`` from now (the first id was just taken)."""
        if self._group_size <= 1 or self._group_wait_s <= 0:
            return
        deadline = time.monotonic() + self._group_wait_s
        while len(batch) % self._group_size and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                batch.append(self._ids.get(timeout=min(remaining, 0.05)))
            except queue.Empty:
                continue

    def _take_batch(self, timeout: float) -> list[tuple[int, str | None]]:
        try:
            first = self._ids.get(timeout=timeout)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < _BATCH:
            try:
                batch.append(self._ids.get_nowait())
            except queue.Empty:
                break
        return batch

    def _dispatch(self, batch: list[tuple[int, str | None]]) -> None:
        reasons = dict(batch)  # one entry per id; a later reason wins
        ids = sorted(reasons)
        try:
            ids = self._mark_queued(ids, reasons)
        except SQLAlchemyError as exc:
            # The rows stay RECEIVED; the reconciler picks them up again.
            log.error("could not mark %d instance(s) QUEUED: %s", len(ids), exc)
            return
        failed: list[int] = []
        for group in self._groups(ids):
            try:
                if len(group) == 1:
                    self._backend.submit(group[0])
                else:
                    self._backend.submit_group(group)  # type: ignore[attr-defined]  # checked in __init__
            except Exception as exc:  # the broker being down must not kill the thread
                log.error("could not queue instance(s) %s on %s: %s", _ids_text(group), self._backend.name, exc)
                failed.extend(group)
        if failed:
            self._unmark(failed)

    def _groups(self, ids: list[int]) -> list[list[int]]:
        """``ids`` in submission units: one id each, or groups of up to
        ``group_size`` (a lone id is submitted alone)."""
        n = self._group_size
        return [ids[start : start + n] for start in range(0, len(ids), n)]

    def _mark_queued(self, ids: list[int], reasons: dict[int, str | None]) -> list[int]:
        """Mark RECEIVED rows QUEUED, add the events; returns the ids still pending."""
        with self._sessions() as session:
            rows = session.execute(
                select(Instance.id, Instance.sop_instance_uid, Instance.state).where(Instance.id.in_(ids))
            ).all()
            session.execute(
                update(Instance)
                .where(Instance.id.in_(ids), Instance.state == InstanceState.RECEIVED)
                .values(state=InstanceState.QUEUED, updated_at=utcnow())
            )
            pending: list[int] = []
            for row in rows:
                if row.state not in PENDING_STATES:
                    continue
                pending.append(row.id)
                details: dict[str, object] = {"queue": self._queue_name, "backend": self._backend.name}
                if reasons.get(row.id):
                    details["requeue"] = reasons[row.id]
                add_event(
                    session, EventKind.QUEUED, actor=self._actor, instance_id=row.id,
                    sop_instance_uid=row.sop_instance_uid, details=details,
                )
            session.commit()
        return sorted(pending)

    def _unmark(self, ids: list[int]) -> None:
        try:
            with self._sessions() as session:
                session.execute(
                    update(Instance)
                    .where(Instance.id.in_(ids), Instance.state == InstanceState.QUEUED)
                    .values(state=InstanceState.RECEIVED, updated_at=utcnow(),
                            last_error=f"could not queue on {self._backend.name}")
                )
                session.commit()
        except SQLAlchemyError as exc:
            log.error("could not put %d instance(s) back to RECEIVED: %s", len(ids), exc)


def _ids_text(ids: Sequence[int]) -> str:
    return str(ids[0]) if len(ids) == 1 else f"{ids[0]}..{ids[-1]} ({len(ids)})"
