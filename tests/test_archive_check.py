"""``dicom-wm archive check``: recorded files present and unchanged, orphans
listed and (on request) moved aside, never deleted."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from dicom_wm.cli.app import app
from dicom_wm.db import Event, Instance, migrate
from dicom_wm.ingest.archive_check import check_archive
from dicom_wm.ingest.receive import StoreRequest, receive_instance
from dicom_wm.ingest.runtime import ensure_keys, prepare_data_dir
from dicom_wm.ingest.task import Outcome, WorkerContext, process_instance
from dicom_wm.keys import KeyStore
from dicom_wm.settings import load_settings
from ingest_support import small_ct, source_file

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("no_dicom_wm_env")


@pytest.fixture
def archived(tmp_path: Path) -> tuple[WorkerContext, dict[str, Instance]]:
    """Two watermarked CT slices and one SR (archived as received)."""
    settings = load_settings(data_dir=tmp_path)
    prepare_data_dir(settings)
    ensure_keys(settings, create=True)
    migrate.upgrade(settings.db_url)
    ctx = WorkerContext(settings)
    rows = {}
    for name, ds in (("ct1", small_ct()), ("ct2", small_ct()), ("sr", pydicom.dcmread(source_file("reportsi.dcm")))):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        header = pydicom.dcmread(io.BytesIO(buf.getvalue()), stop_before_pixels=True)
        req = StoreRequest("CT1", "DICOMWM", str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID))
        iid = receive_instance(ctx.sessions, tmp_path, buf.getvalue(), header, req).instance_id
        assert process_instance(ctx, iid).outcome in (Outcome.WATERMARKED, Outcome.SKIPPED)
        with ctx.sessions() as s:
            rows[name] = s.get(Instance, iid)
    return ctx, rows


def _check(data_dir: Path, *args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["archive", "check", "--json", "--data-dir", str(data_dir), *args])
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout)


def _tamper_events(ctx: WorkerContext) -> list[Event]:
    with ctx.sessions() as s:
        return list(s.scalars(select(Event).where(Event.kind == "tamper_detected").order_by(Event.id)))


def test_intact_archive_passes(archived) -> None:
    ctx, rows = archived
    data_dir = ctx.settings.data_dir
    code, report = _check(data_dir)
    assert code == 0 and report["ok"] and report["files_checked"] == 3 and report["verified"] == 0
    assert report["findings"] == [] and report["orphans"] == []
    assert report["bytes_checked"] == sum((data_dir / r.archive_path).stat().st_size for r in rows.values())
    code, report = _check(data_dir, "--verify")
    assert code == 0 and report["verified"] == 2  # the SR has no watermark: its hash is what is checked
    human = runner.invoke(app, ["archive", "check", "--data-dir", str(data_dir)])
    assert human.exit_code == 0 and "3 archived files" in human.output and "0 not as recorded" in human.output
    assert _tamper_events(ctx) == []


def test_changed_and_missing_files_fail_and_are_recorded(archived) -> None:
    ctx, rows = archived
    data_dir = ctx.settings.data_dir
    ct = data_dir / rows["ct1"].archive_path
    raw = bytearray(ct.read_bytes())
    raw[-5000] ^= 0x04  # one pixel sample in the last rows
    ct.write_bytes(bytes(raw))
    sr = data_dir / rows["sr"].archive_path
    sr.write_bytes(sr.read_bytes() + b"\0\0")
    (data_dir / rows["ct2"].archive_path).unlink()

    code, report = _check(data_dir)
    assert code == 1 and not report["ok"]
    problems = {f["sop_instance_uid"]: f["problem"] for f in report["findings"]}
    assert problems == {rows["ct1"].sop_instance_uid: "changed", rows["sr"].sop_instance_uid: "changed",
                        rows["ct2"].sop_instance_uid: "missing"}

    code, report = _check(data_dir, "--verify")
    assert code == 1
    ct_finding = next(f for f in report["findings"] if f["sop_instance_uid"] == rows["ct1"].sop_instance_uid)
    assert "tampered" in ct_finding["detail"] and ct_finding["tiles"]  # the watermark localises the change
    assert ct_finding["tiles"][0][1] >= 448  # a tile in the last rows of the 512-row slice

    events = _tamper_events(ctx)  # a changed file is a tamper detection (twice: two checks); missing is not
    assert sorted(e.sop_instance_uid for e in events) == sorted(
        [rows["ct1"].sop_instance_uid, rows["sr"].sop_instance_uid] * 2)
    assert all(e.details["check"] == "archive" for e in events)
    human = runner.invoke(app, ["archive", "check", "--data-dir", str(data_dir)])
    assert human.exit_code == 1 and "3 not as recorded" in human.output and "missing" in human.output


@pytest.mark.parametrize("verify", [[], ["--verify"]])
def test_a_fifo_in_a_file_place_is_reported_not_waited_on(archived, verify: list[str]) -> None:
    ctx, rows = archived
    data_dir = ctx.settings.data_dir
    path = data_dir / rows["ct2"].archive_path
    path.unlink()
    os.mkfifo(path)
    code, report = _check(data_dir, *verify)
    assert code == 1 and [(f["sop_instance_uid"], f["problem"]) for f in report["findings"]] == [
        (rows["ct2"].sop_instance_uid, "changed")]
    assert "no longer a regular file" in report["findings"][0]["detail"]


def test_verify_catches_a_key_store_that_lost_a_key(archived) -> None:
    ctx, rows = archived
    data_dir = ctx.settings.data_dir
    (data_dir / "keys.json").unlink()
    KeyStore.init(data_dir / "keys.json")  # a new key; the one the archive was signed with is gone
    code, report = _check(data_dir)
    assert code == 0  # the files are as written
    code, report = _check(data_dir, "--verify")
    assert code == 1 and report["verified"] == 0
    assert {f["problem"] for f in report["findings"]} == {"not_authentic"}
    assert len(report["findings"]) == 2 and all("as recorded" in f["detail"] for f in report["findings"])


def test_orphans_are_listed_and_moved_aside_only_when_old(archived) -> None:
    ctx, rows = archived
    data_dir = ctx.settings.data_dir
    series_dir = (data_dir / rows["ct1"].archive_path).parent
    orphan = series_dir / "1.2.3.v1.deadbeef0000.dcm"  # a dead attempt's file
    orphan.write_bytes(b"attempt")
    temp = series_dir / ".1.2.3.v1.x.dcm.abc.tmp"  # an interrupted atomic write
    temp.write_bytes(b"partial")
    rel = {p.relative_to(data_dir).as_posix() for p in (orphan, temp)}

    code, report = _check(data_dir, "--move-orphans")  # default: only orphans older than an hour move
    assert code == 0 and set(report["orphans"]) == rel and report["moved"] == []
    assert orphan.exists() and temp.exists()

    old = time.time() - 2 * 3600
    os.utime(orphan, (old, old))
    code, report = _check(data_dir, "--move-orphans")
    assert report["moved"] == [orphan.relative_to(data_dir).as_posix()]
    moved_to = data_dir / "orphans" / orphan.relative_to(data_dir / "archive")
    assert moved_to.read_bytes() == b"attempt" and not orphan.exists() and temp.exists()
    # every recorded file is still in place and intact
    code, report = _check(data_dir, "--verify")
    assert code == 0 and report["verified"] == 2 and report["orphans"] == [temp.relative_to(data_dir).as_posix()]


def test_moving_orphans_never_overwrites_and_says_what_it_could_not_move(archived) -> None:
    ctx, _rows = archived
    data_dir = ctx.settings.data_dir
    stray = data_dir / "archive" / "dup.dcm"
    for content in (b"first", b"second"):
        stray.write_bytes(content)
        code, report = _check(data_dir, "--move-orphans", "--min-age-hours", "0")
        assert code == 0 and report["moved"] == ["archive/dup.dcm"]
    assert (data_dir / "orphans" / "dup.dcm").read_bytes() == b"first"  # the second used to overwrite it
    assert (data_dir / "orphans" / "dup.dcm.1").read_bytes() == b"second"

    (data_dir / "archive" / "clash").mkdir()
    (data_dir / "archive" / "clash" / "y.dcm").write_bytes(b"y")
    (data_dir / "orphans" / "clash").write_bytes(b"a file where a folder is needed")
    code, report = _check(data_dir, "--move-orphans", "--min-age-hours", "0")
    assert code == 0 and report["moved"] == [] and list(report["not_moved"]) == ["archive/clash/y.dcm"]
    assert (data_dir / "archive" / "clash" / "y.dcm").read_bytes() == b"y"
    human = runner.invoke(app, ["archive", "check", "--data-dir", str(data_dir), "--move-orphans", "--min-age-hours", "0"])
    assert "orphan: archive/clash/y.dcm (not moved: " in human.output


def test_a_row_committed_during_the_check_is_not_an_orphan(archived) -> None:
    """The rows are read again after the files are checked: a file whose row
    is committed meanwhile (a worker finishing) is neither listed nor moved."""
    ctx, rows = archived
    data_dir = ctx.settings.data_dir
    target = data_dir / rows["ct1"].archive_path
    late = target.with_name(target.name.replace(".dcm", ".late.dcm"))
    late.write_bytes(target.read_bytes())
    old = time.time() - 2 * 3600
    os.utime(late, (old, old))

    calls = []

    def commit_on_first_progress(done: int, total: int) -> None:
        if not calls:
            with ctx.sessions() as s, s.begin():
                s.get(Instance, rows["ct1"].id).archive_path = late.relative_to(data_dir).as_posix()
        calls.append(done)

    report = check_archive(data_dir, ctx.sessions, move_orphans=True, min_age_s=3600,
                           progress=commit_on_first_progress)
    assert late.exists() and report.moved == []
    assert late.relative_to(data_dir).as_posix() not in report.orphans
