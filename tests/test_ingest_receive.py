"""Durable reception: spool + RECEIVED row, the versioning policy, and
nothing half-written when the disk or the database fails."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from dicom_wm.db import Event, Instance, InstanceState, get_sessionmaker, migrate
from dicom_wm.ingest import receive as receive_mod
from dicom_wm.ingest.errors import CannotUnderstand, DatabaseUnavailable, DatasetMismatch, InvalidUID, StorageFull
from dicom_wm.ingest.receive import ReceiveOutcome, StoreRequest, receive_instance
from dicom_wm.ingest.uids import check_uid, is_valid_uid
from ingest_support import small_ct


@pytest.fixture
def env(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    migrate.upgrade(url)
    return get_sessionmaker(url), tmp_path


def _encode(ds: pydicom.Dataset) -> tuple[bytes, pydicom.Dataset]:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    return data, pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def _request(ds: pydicom.Dataset, **kw: str) -> StoreRequest:
    values = dict(calling_ae="CT1", called_ae="DICOMWM", sop_class_uid=str(ds.SOPClassUID),
                  sop_instance_uid=str(ds.SOPInstanceUID), transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                  peer="127.0.0.1:1234")
    values.update(kw)
    return StoreRequest(**values)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "spool").rglob("*") if p.is_file()) if (root / "spool").exists() else []


@pytest.mark.parametrize(
    ("uid", "ok"),
    [("1.2.840.10008.1.2", True), ("0", True), ("1.0.3", True), ("1.02.3", False), ("1..2", False), (".1", False),
     ("1.2.", False), ("1.2/../../etc", False), ("1.2\\3", False), ("1.2.3 ", False), ("1" * 65, False), ("", False)],
)
def test_uid_grammar(uid: str, ok: bool) -> None:
    assert is_valid_uid(uid) is ok
    if not ok:
        with pytest.raises(InvalidUID, match="not a valid UID"):
            check_uid(uid, "SOP Instance UID")


def test_new_instance_is_spooled_and_recorded(env) -> None:
    sessions, root = env
    ds = small_ct()
    data, header = _encode(ds)
    got = receive_instance(sessions, root, data, header, _request(ds))
    assert (got.outcome, got.version) == (ReceiveOutcome.NEW, 1)
    with sessions() as s:
        row = s.get(Instance, got.instance_id)
        assert row.state is InstanceState.RECEIVED and row.is_current
        assert (root / row.spool_path).read_bytes() == data
        assert (row.modality, row.rows, row.columns, row.calling_ae) == ("CT", 512, 512, "CT1")
        assert row.patient_id == str(ds.PatientID) and row.study_instance_uid == ds.StudyInstanceUID
        events = s.scalars(select(Event).where(Event.instance_id == row.id)).all()
        assert [e.kind for e in events] == ["received"] and events[0].actor == "CT1"


def test_same_bytes_again_is_a_duplicate(env) -> None:
    sessions, root = env
    ds = small_ct()
    data, header = _encode(ds)
    first = receive_instance(sessions, root, data, header, _request(ds))
    again = receive_instance(sessions, root, data, header, _request(ds))
    assert again.outcome is ReceiveOutcome.DUPLICATE and again.instance_id == first.instance_id
    assert not again.needs_processing
    assert len(_files(root)) == 1
    with sessions() as s:
        assert s.query(Instance).count() == 1
        kinds = [e.details.get("duplicate_of") for e in s.query(Event).order_by(Event.id)]
        assert kinds == [None, first.instance_id]


def test_different_bytes_become_a_new_current_version(env) -> None:
    sessions, root = env
    ds = small_ct()
    data1, header1 = _encode(ds)
    ds.StudyDescription = "corrected"
    data2, header2 = _encode(ds)
    v1 = receive_instance(sessions, root, data1, header1, _request(ds))
    v2 = receive_instance(sessions, root, data2, header2, _request(ds))
    assert (v2.outcome, v2.version) == (ReceiveOutcome.NEW_VERSION, 2)
    # and the first bytes once more: a duplicate of version 1, nothing new
    v1_again = receive_instance(sessions, root, data1, header1, _request(ds))
    assert (v1_again.outcome, v1_again.instance_id) == (ReceiveOutcome.DUPLICATE, v1.instance_id)
    with sessions() as s:
        rows = s.query(Instance).order_by(Instance.version).all()
        assert [(r.version, r.is_current) for r in rows] == [(1, False), (2, True)]
        assert rows[1].study_description == "corrected"
    assert len(_files(root)) == 2


def test_a_burst_of_versions_of_one_instance_is_recorded_in_full(env) -> None:
    """16 receptions of different versions of one SOP Instance UID at once
    (three retries refused one or two of them with 0xA701)."""
    import threading

    sessions, root = env
    ds = small_ct()
    encoded = []
    for i in range(16):
        ds.InstanceNumber = i + 1
        encoded.append(_encode(ds))
    barrier, results, errors = threading.Barrier(16), [], []

    def send(data: bytes, header: pydicom.Dataset) -> None:
        barrier.wait()
        try:
            results.append(receive_instance(sessions, root, data, header, _request(ds)))
        except Exception as exc:  # noqa: BLE001 - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=send, args=pair) for pair in encoded]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(r.version for r in results) == list(range(1, 17))
    with sessions() as s:
        assert s.query(Instance).filter(Instance.is_current.is_(True)).count() == 1
    assert len(_files(root)) == 16


@pytest.mark.parametrize("bad_uid", ["1.2.3/../../../tmp/x", "1.2.03", "1.2.3." + "4" * 70])
def test_bad_sop_instance_uid_writes_nothing(env, bad_uid: str) -> None:
    sessions, root = env
    ds = small_ct()
    data, header = _encode(ds)
    header.SOPInstanceUID = bad_uid
    with pytest.raises(InvalidUID):
        receive_instance(sessions, root, data, header, _request(ds, sop_instance_uid=bad_uid))
    assert _files(root) == []
    with sessions() as s:
        assert s.query(Instance).count() == 0


def test_missing_study_uid_cannot_be_understood(env) -> None:
    sessions, root = env
    ds = small_ct()
    del ds.StudyInstanceUID
    data, header = _encode(ds)
    with pytest.raises(CannotUnderstand, match="StudyInstanceUID"):
        receive_instance(sessions, root, data, header, _request(ds))
    assert _files(root) == []


def test_request_and_dataset_must_agree(env) -> None:
    sessions, root = env
    ds = small_ct()
    data, header = _encode(ds)
    with pytest.raises(DatasetMismatch):
        receive_instance(sessions, root, data, header, _request(ds, sop_instance_uid="1.2.3.4"))
    assert _files(root) == []


def test_disk_full_leaves_nothing(env, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions, root = env

    def full(data: bytes, path: Path, **_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(receive_mod, "atomic_write_bytes", full)
    ds = small_ct()
    data, header = _encode(ds)
    with pytest.raises(StorageFull, match="No space left"):
        receive_instance(sessions, root, data, header, _request(ds))
    assert _files(root) == []
    with sessions() as s:
        assert s.query(Instance).count() == 0


def test_database_failure_removes_the_spool_file(env, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions, root = env
    from sqlalchemy.orm import Session

    real_execute = Session.execute

    def failing_insert(self: Session, statement, *a, **k):  # type: ignore[no-untyped-def]
        if getattr(statement, "is_insert", False):
            raise OperationalError("INSERT", {}, Exception("disk I/O error"))
        return real_execute(self, statement, *a, **k)

    monkeypatch.setattr(Session, "execute", failing_insert)
    ds = small_ct()
    data, header = _encode(ds)
    with pytest.raises(DatabaseUnavailable, match="disk I/O error"):
        receive_instance(sessions, root, data, header, _request(ds))
    assert _files(root) == []


def test_failed_commit_keeps_the_complete_file_until_the_next_start(env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A COMMIT whose reply was lost may have committed: the complete spool
    file stays; with no row referring to it, serve's start-up removes it."""
    sessions, root = env
    from sqlalchemy.orm import Session

    from dicom_wm.ingest.runtime import clean_spool
    from dicom_wm.settings import load_settings

    def broken_commit(self: Session) -> None:
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(Session, "commit", broken_commit)
    ds = small_ct()
    data, header = _encode(ds)
    with pytest.raises(DatabaseUnavailable, match="closed the connection"):
        receive_instance(sessions, root, data, header, _request(ds))
    monkeypatch.undo()
    (kept,) = _files(root)
    assert kept.read_bytes() == data
    with sessions() as s:
        assert s.query(Instance).count() == 0
    assert clean_spool(load_settings(data_dir=root), sessions) == 1
    assert _files(root) == []
