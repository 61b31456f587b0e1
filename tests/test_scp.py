"""The AE in-process with real pynetdicom SCUs: statuses from the one
table, nothing written on failure, and the server keeps serving."""

from __future__ import annotations

import errno
import io
import struct
from pathlib import Path

import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from dicom_wm.db import Event, Instance, InstanceState, get_sessionmaker, migrate
from dicom_wm.ingest import receive as receive_mod
from dicom_wm.settings import load_settings
from ingest_support import free_port, small_ct
from scp import ScpContext, start_server
from scp.status import STATUS_TABLE


class Recorder:
    """The enqueue callback: records ids and that their row was committed."""

    def __init__(self, sessions) -> None:
        self.sessions = sessions
        self.ids: list[int] = []
        self.committed: list[bool] = []

    def __call__(self, instance_id: int) -> None:
        with self.sessions() as s:  # a new session sees only committed rows
            self.committed.append(s.get(Instance, instance_id) is not None)
        self.ids.append(instance_id)


@pytest.fixture
def server(tmp_path: Path):
    def start(**overrides: object):
        settings = load_settings(data_dir=tmp_path / "data", host="127.0.0.1", port=free_port(), **overrides)
        migrate.upgrade(settings.db_url)
        sessions = get_sessionmaker(settings.db_url)
        recorder = Recorder(sessions)
        ctx = ScpContext(settings, sessions, recorder, frozenset(settings.allowed_calling_aes))
        srv = start_server(ctx)
        started.append(srv)
        return settings, sessions, recorder

    started: list = []
    yield start
    for srv in started:
        srv.shutdown()


def _assoc(port: int, calling: str = "PYNETSCU", contexts=((CTImageStorage, None),)):
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, ts) if ts else ae.add_requested_context(sop_class)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMWM")
    assert assoc.is_established
    return assoc


def _store(port: int, ds, calling: str = "PYNETSCU") -> int:
    assoc = _assoc(port, calling, ((str(ds.SOPClassUID), None),))
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.dcm") if p.is_file()] + [p for p in root.rglob("*.tmp")]


def test_echo_and_store_commit_before_enqueue(server) -> None:
    settings, sessions, recorder = server()
    assoc = _assoc(settings.port)
    assert assoc.send_c_echo().Status == 0x0000
    ds = small_ct()
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert recorder.committed == [True]
    with sessions() as s:
        row = s.get(Instance, recorder.ids[0])
        assert row.state is InstanceState.RECEIVED and row.sop_instance_uid == ds.SOPInstanceUID
        assert row.calling_ae == "PYNETSCU" and row.called_ae == "DICOMWM"
        assert (settings.data_dir / row.spool_path).is_file()


def test_duplicate_is_success_without_second_enqueue(server) -> None:
    settings, sessions, recorder = server()
    ds = small_ct()
    assert _store(settings.port, ds) == 0x0000
    assert _store(settings.port, ds) == 0x0000
    assert len(recorder.ids) == 1
    with sessions() as s:
        assert s.query(Instance).count() == 1


def test_private_sop_class_is_accepted(server) -> None:
    settings, sessions, recorder = server()
    ds = small_ct()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.3.6.1.4.1.99999.1.1"
    assert _store(settings.port, ds) == 0x0000
    assert len(recorder.ids) == 1


def test_allow_list_refuses_unknown_calling_ae_and_keeps_serving(server) -> None:
    settings, sessions, recorder = server(allowed_calling_aes=["CT1"])
    assert _store(settings.port, small_ct(), calling="INTRUDER") == 0x0124
    assert _files(settings.data_dir) == [] and recorder.ids == []
    assert _store(settings.port, small_ct(), calling="CT1") == 0x0000
    assert len(recorder.ids) == 1


@pytest.mark.parametrize("bad_uid", ["1.2.3/../../../../tmp/evil", "1.2.3.04", "..", "1.2." + "3" * 70])
def test_bad_sop_instance_uid_is_refused_and_nothing_written(server, bad_uid: str, monkeypatch) -> None:
    # let the SCU send what a broken modality would
    monkeypatch.setitem(_config.VALIDATORS, "UI", lambda value: (True, ""))
    settings, sessions, recorder = server()
    ds = small_ct()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = bad_uid
    status = _store(settings.port, ds)
    assert status in {0xC001, 0xA900}
    assert _files(settings.data_dir) == [] and recorder.ids == []
    assert not (settings.data_dir.parent / "evil").exists()
    assert _store(settings.port, small_ct()) == 0x0000  # still serving


def test_missing_attribute_cannot_be_understood(server) -> None:
    settings, _sessions, recorder = server()
    ds = small_ct()
    del ds.SeriesInstanceUID
    assert _store(settings.port, ds) == 0xC000
    assert _files(settings.data_dir) == [] and recorder.ids == []


def test_undecodable_dataset_is_refused(server, tmp_path: Path, monkeypatch) -> None:
    """Raw bytes straight from a file: valid file meta, then an element whose
    length runs past the end of the data set."""
    settings, _sessions, recorder = server()
    ds = small_ct()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    whole = buf.getvalue()
    meta_end = 132 + 12 + struct.unpack("<I", whole[140:144])[0]
    garbage = struct.pack("<HH2sHI", 0x0008, 0x0016, b"UN", 0, 0x7FFF0000) + b"\x01\x02"
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(whole[:meta_end] + garbage)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = _assoc(settings.port, contexts=((CTImageStorage, [str(ds.file_meta.TransferSyntaxUID)]),))
    try:
        status = int(assoc.send_c_store(bad).Status)
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
        assert 0xC000 <= status <= 0xC0FF or status == 0xA900
        assert _files(settings.data_dir) == [] and recorder.ids == []
        assert int(assoc.send_c_store(small_ct()).Status) == 0x0000  # same association goes on
    finally:
        assoc.release()


def test_disk_full_is_out_of_resources(server, monkeypatch) -> None:
    settings, sessions, recorder = server()

    def full(data: bytes, path: Path, **_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(receive_mod, "atomic_write_bytes", full)
    assert _store(settings.port, small_ct()) == 0xA700
    monkeypatch.undo()
    assert recorder.ids == [] and _files(settings.data_dir) == []
    assert _store(settings.port, small_ct()) == 0x0000


def test_database_down_is_out_of_resources_and_spool_is_cleaned(server, monkeypatch) -> None:
    settings, sessions, recorder = server()
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    real_execute = Session.execute

    def locked(self: Session, statement, *a, **k):  # type: ignore[no-untyped-def]
        if getattr(statement, "is_insert", False):
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real_execute(self, statement, *a, **k)

    monkeypatch.setattr(Session, "execute", locked)
    assert _store(settings.port, small_ct()) == 0xA701
    monkeypatch.setattr(Session, "execute", real_execute)
    assert recorder.ids == [] and _files(settings.data_dir) == []
    with sessions() as s:
        assert s.scalars(select(Event)).all() == []
    assert _store(settings.port, small_ct()) == 0x0000


def test_status_table_maps_each_exception_once_to_a_failure() -> None:
    kinds = [kind for kind, _status, _meaning in STATUS_TABLE]
    assert len(kinds) == len(set(kinds))
    assert all(status != 0x0000 for _kind, status, _meaning in STATUS_TABLE)
    assert all(0xA700 <= code <= 0xA7FF for _k, code, meaning in STATUS_TABLE if "resources" in meaning)
