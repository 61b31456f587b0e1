"""The dispatcher: committed ids -> QUEUED + backend; re-queue on start and
when stuck; a refusing backend leaves rows RECEIVED; reception first."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from dicom_wm.db import Event, Instance, InstanceState, get_sessionmaker, migrate, utcnow
from dicom_wm.ingest.dispatch import Dispatcher
from ingest_support import wait_until


class FakeBackend:
    name = "fake"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.submitted: list[tuple[float, int]] = []
        self.lock = threading.Lock()

    def submit(self, instance_id: int) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        with self.lock:
            self.submitted.append((time.monotonic(), instance_id))

    def ids(self) -> list[int]:
        with self.lock:
            return [i for _t, i in self.submitted]

    def close(self) -> None:
        pass


@pytest.fixture
def sessions(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    migrate.upgrade(url)
    return get_sessionmaker(url)


def _rows(sessions, n: int, state: InstanceState = InstanceState.RECEIVED) -> list[int]:
    now = utcnow()
    with sessions() as s:
        rows = [
            Instance(sop_instance_uid=f"1.2.3.{i}", version=1, is_current=True, sop_class_uid="1.2", study_instance_uid="1.2.3",
                     series_instance_uid="1.2.3.1", received_at=now, updated_at=now, received_transfer_syntax_uid="1.2.840.10008.1.2.1",
                     received_size=1, received_sha256=f"{i:064d}", state=state, attempts=0, spool_path=f"spool/{i}")
            for i in range(1, n + 1)
        ]
        s.add_all(rows)
        s.commit()
        return [r.id for r in rows]


def _states(sessions) -> list[str]:
    with sessions() as s:
        return [st.value for st in s.scalars(select(Instance.state).order_by(Instance.id))]


def test_enqueued_rows_become_queued_with_events(sessions) -> None:
    ids = _rows(sessions, 3)
    backend = FakeBackend()
    d = Dispatcher(sessions, backend, actor="T@dispatcher")
    d.start(requeue_pending=False)
    try:
        for i in ids:
            d.enqueue(i)
        wait_until(lambda: sorted(backend.ids()) == ids, 10, what="submissions")
    finally:
        d.stop()
    assert _states(sessions) == ["QUEUED"] * 3
    with sessions() as s:
        events = s.scalars(select(Event).where(Event.kind == "queued")).all()
        assert len(events) == 3 and {e.actor for e in events} == {"T@dispatcher"}


def test_start_requeues_every_non_final_row(sessions) -> None:
    pending = _rows(sessions, 2) + _rows(sessions, 0)
    with sessions() as s:
        s.execute(update(Instance).where(Instance.id == pending[1]).values(state=InstanceState.WATERMARKING))
        s.commit()
    now = utcnow()
    with sessions() as s:
        s.add(Instance(sop_instance_uid="9.9", version=1, is_current=True, sop_class_uid="1.2", study_instance_uid="1.2.3",
                       series_instance_uid="1.2.3.1", received_at=now, updated_at=now, received_transfer_syntax_uid="1.2",
                       received_size=1, received_sha256="f" * 64, state=InstanceState.WATERMARKED, attempts=1))
        s.commit()
    backend = FakeBackend()
    d = Dispatcher(sessions, backend)
    assert d.start() == 2
    try:
        wait_until(lambda: sorted(backend.ids()) == pending, 10, what="re-queued rows")
    finally:
        d.stop()
    assert _states(sessions) == ["QUEUED", "WATERMARKING", "WATERMARKED"]


def test_refusing_backend_leaves_rows_received_for_the_reconciler(sessions) -> None:
    ids = _rows(sessions, 2)
    d = Dispatcher(sessions, FakeBackend(fail=True))
    d.start(requeue_pending=False)
    try:
        for i in ids:
            d.enqueue(i)
        wait_until(lambda: _states(sessions) == ["RECEIVED", "RECEIVED"] and d.wait_idle(0.1), 10, what="rows back")
    finally:
        d.stop()
    with sessions() as s:
        assert all("could not queue" in (e or "") for e in s.scalars(select(Instance.last_error)))
        s.execute(update(Instance).values(updated_at=utcnow() - timedelta(minutes=5)))
        s.commit()
    backend = FakeBackend()
    d2 = Dispatcher(sessions, backend)
    d2.start(requeue_pending=False)
    try:
        assert d2.reconcile() == 2
        wait_until(lambda: sorted(backend.ids()) == ids, 10, what="reconciled rows")
    finally:
        d2.stop()


def test_stale_watermarking_rows_are_requeued(sessions) -> None:
    (iid,) = _rows(sessions, 1, InstanceState.WATERMARKING)
    with sessions() as s:
        s.execute(update(Instance).values(claimed_at=utcnow() - timedelta(seconds=30)))
        s.commit()
    backend = FakeBackend()
    d = Dispatcher(sessions, backend, stale_after_s=10)
    d.start(requeue_pending=False)
    try:
        assert d.reconcile() == 1
        wait_until(lambda: backend.ids() == [iid], 10, what="stale row re-queued")
    finally:
        d.stop()


class FakeBrokerBackend(FakeBackend):
    """Reports how many submissions wait on the broker."""

    def __init__(self, depth: int | Exception) -> None:
        super().__init__()
        self.depth = depth

    def waiting(self) -> int:
        if isinstance(self.depth, Exception):
            raise self.depth
        return self.depth


@pytest.mark.parametrize(
    ("backend", "requeued"),
    [
        (FakeBrokerBackend(0), True),  # nothing waiting: the message was lost (a worker killed before its claim)
        (FakeBrokerBackend(3), False),  # a backlog: the row may be behind it
        (FakeBrokerBackend(ConnectionError("broker down")), False),
        (FakeBackend(), False),  # a backend that cannot tell
    ],
)
def test_stale_queued_rows_are_requeued_only_when_nothing_waits(sessions, backend, requeued) -> None:
    old, fresh = _rows(sessions, 2, InstanceState.QUEUED)
    with sessions() as s:
        s.execute(update(Instance).where(Instance.id == old).values(updated_at=utcnow() - timedelta(seconds=30)))
        s.commit()
    d = Dispatcher(sessions, backend, stale_after_s=10)
    d.start(requeue_pending=False)
    try:
        assert d.reconcile() == (1 if requeued else 0)
        if requeued:
            wait_until(lambda: backend.ids() == [old], 10, what="lost row re-queued")
            with sessions() as s:
                reasons = [e.details.get("requeue") for e in s.scalars(select(Event).where(Event.instance_id == old))]
            assert "stuck" in reasons
        else:
            time.sleep(0.5)
            assert backend.ids() == []
    finally:
        d.stop()


def test_reception_first_holds_work_while_instances_arrive(sessions) -> None:
    ids = _rows(sessions, 12)
    backend = FakeBackend()
    d = Dispatcher(sessions, backend, quiet_s=0.3, max_hold_s=10)
    d.start(requeue_pending=False)
    try:
        for i in ids:
            d.enqueue(i)
            last_arrival = time.monotonic()
            time.sleep(0.1)  # a steady stream: never 0.3 s without an arrival
        assert backend.ids() == []
        wait_until(lambda: sorted(backend.ids()) == ids, 10, what="held work")
        assert min(t for t, _i in backend.submitted) >= last_arrival + 0.25
    finally:
        d.stop()


def test_reception_first_never_holds_longer_than_the_cap(sessions) -> None:
    ids = _rows(sessions, 30)
    backend = FakeBackend()
    d = Dispatcher(sessions, backend, quiet_s=0.3, max_hold_s=1.0)
    d.start(requeue_pending=False)
    try:
        started = time.monotonic()
        for i in ids:
            d.enqueue(i)
            time.sleep(0.1)
        assert backend.submitted and backend.submitted[0][0] - started < 2.0
        wait_until(lambda: sorted(backend.ids()) == ids, 10, what="all work")
    finally:
        d.stop()


# -- groups (distributed batches) ---------------------------------------------------------


class FakeGroupBackend(FakeBackend):
    """Records single submissions and groups separately."""

    def __init__(self, fail_groups: bool = False) -> None:
        super().__init__()
        self.fail_groups = fail_groups
        self.groups: list[list[int]] = []

    def submit_group(self, instance_ids) -> None:
        if self.fail_groups:
            raise ConnectionError("broker down")
        with self.lock:
            self.groups.append(list(instance_ids))

    def all_ids(self) -> list[int]:
        with self.lock:
            return sorted([i for _t, i in self.submitted] + [i for g in self.groups for i in g])


def test_groups_of_group_size_and_a_lone_rest(sessions) -> None:
    """7 ids at once, groups of 3, nothing more arrives: two groups of 3 (in
    id order), the 7th alone through submit, after waiting for more."""
    ids = _rows(sessions, 7)
    backend = FakeGroupBackend()
    d = Dispatcher(sessions, backend, group_size=3, group_wait_s=0.4)
    for i in ids:
        d.enqueue(i)
    started = time.monotonic()
    d.start(requeue_pending=False)
    try:
        wait_until(lambda: backend.all_ids() == ids, 10, what="every id submitted")
    finally:
        d.stop()
    assert backend.groups == [ids[0:3], ids[3:6]]
    assert backend.ids() == [ids[6]]
    assert min(t for t, _i in backend.submitted) - started >= 0.35  # waited for a third member
    assert _states(sessions) == ["QUEUED"] * 7


def test_groups_fill_from_a_trickle(sessions) -> None:
    """ids arriving one by one (as from an association) are collected into
    full groups instead of going out one at a time."""
    ids = _rows(sessions, 8)
    backend = FakeGroupBackend()
    d = Dispatcher(sessions, backend, group_size=4, group_wait_s=2.0)
    d.start(requeue_pending=False)
    try:
        for i in ids:
            d.enqueue(i)
            time.sleep(0.05)
        wait_until(lambda: backend.all_ids() == ids, 10, what="every id submitted")
    finally:
        d.stop()
    assert backend.groups == [ids[0:4], ids[4:8]] and backend.ids() == []


def test_group_size_one_submits_one_by_one(sessions) -> None:
    ids = _rows(sessions, 3)
    backend = FakeGroupBackend()
    d = Dispatcher(sessions, backend, group_size=1, group_wait_s=1.0)
    d.start(requeue_pending=False)
    try:
        d.enqueue_many(ids, "test")
        wait_until(lambda: sorted(backend.ids()) == ids, 10, what="every id submitted")
    finally:
        d.stop()
    assert backend.groups == []


def test_refused_group_leaves_all_its_rows_received(sessions) -> None:
    ids = _rows(sessions, 4)
    d = Dispatcher(sessions, FakeGroupBackend(fail_groups=True), group_size=4, group_wait_s=0.1)
    for i in ids:
        d.enqueue(i)
    d.start(requeue_pending=False)
    try:
        wait_until(lambda: _states(sessions) == ["RECEIVED"] * 4 and d.wait_idle(0.1), 10, what="rows back")
    finally:
        d.stop()
    with sessions() as s:
        assert all("could not queue on fake" in (e or "") for e in s.scalars(select(Instance.last_error)))


def test_group_size_needs_a_backend_that_takes_groups(sessions) -> None:
    with pytest.raises(TypeError, match="submit_group"):
        Dispatcher(sessions, FakeBackend(), group_size=2)
    with pytest.raises(ValueError, match="group_size 0"):
        Dispatcher(sessions, FakeGroupBackend(), group_size=0)


def test_reconcile_runs_housekeeping_and_survives_its_failure(sessions, caplog) -> None:
    """serve's orphaned-spool sweep rides on the reconcile tick; a sweep that
    raises (disk or DB trouble) is logged and the dispatcher keeps working."""
    calls: list[float] = []

    def sweep() -> None:
        calls.append(time.monotonic())
        raise OSError("Input/output error")

    backend = FakeBackend()
    d = Dispatcher(sessions, backend, reconcile_interval_s=0.1, housekeeping=sweep)
    d.start(requeue_pending=False)
    try:
        wait_until(lambda: len(calls) >= 3, 10, what="three sweeps")
        ids = _rows(sessions, 1)
        d.enqueue(ids[0])
        wait_until(lambda: backend.ids() == ids, 10, what="dispatch after failing sweeps")
    finally:
        d.stop()
    assert "housekeeping failed: Input/output error" in caplog.text


def test_spool_sweep_removes_only_old_orphans(sessions, tmp_path: Path) -> None:
    """The running service's sweep (min_age_s): an orphan older than the age
    goes; a young orphan (a reception between its spool write and its commit)
    and an old file a row still refers to stay."""
    import os

    from dicom_wm.ingest.runtime import clean_spool
    from dicom_wm.settings import load_settings

    (iid,) = _rows(sessions, 1)  # refers to spool/1
    spool = tmp_path / "spool"
    spool.mkdir()
    old = time.time() - 7200
    for name in ("1", "orphan.old.dcm", "orphan.young.dcm"):
        (spool / name).write_bytes(b"x")
    for name in ("1", "orphan.old.dcm"):
        os.utime(spool / name, (old, old))
    assert clean_spool(load_settings(data_dir=tmp_path), sessions, min_age_s=3600) == 1
    assert sorted(p.name for p in spool.iterdir()) == ["1", "orphan.young.dcm"]
