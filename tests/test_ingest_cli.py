"""Service CLI without a server: db upgrade, status, show, refusals."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from dicom_wm.cli.app import app
from dicom_wm.db import get_sessionmaker, migrate
from dicom_wm.ingest.receive import StoreRequest, receive_instance
from ingest_support import small_ct

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("no_dicom_wm_env")


def test_db_upgrade_then_status_and_show(tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    head = migrate.head_revision()
    assert f"empty -> {head}" in result.output
    again = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert again.exit_code == 0 and f"{head} -> {head}" in again.output

    url = f"sqlite:///{(tmp_path / 'dicom-wm.sqlite3').resolve()}"
    assert migrate.is_up_to_date(url)
    ds = small_ct()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    header = pydicom.dcmread(io.BytesIO(buf.getvalue()), stop_before_pixels=True)
    receive_instance(get_sessionmaker(url), tmp_path, buf.getvalue(), header,
                     StoreRequest("CT1", "DICOMWM", str(ds.SOPClassUID), str(ds.SOPInstanceUID), "1.2.840.10008.1.2.1"))

    status = runner.invoke(app, ["status", "--json", "--data-dir", str(tmp_path)])
    assert status.exit_code == 0, status.output
    summary = json.loads(status.output)
    assert summary["states"]["RECEIVED"] == 1 and summary["queue_depth"]["waiting_rows"] == 1
    table = runner.invoke(app, ["status", "--data-dir", str(tmp_path)])
    assert table.exit_code == 0 and "RECEIVED" in table.output
    assert summary["queue_depth"]["oldest_in_progress_since"] is None

    show = runner.invoke(app, ["show", str(ds.SOPInstanceUID), "--json", "--data-dir", str(tmp_path)])
    report = json.loads(show.output)
    assert report["versions"][0]["state"] == "RECEIVED" and report["events"][0]["kind"] == "received"
    assert "claim_token" not in report["versions"][0]
    human = runner.invoke(app, ["show", str(ds.SOPInstanceUID), "--data-dir", str(tmp_path)])
    assert human.exit_code == 0 and "received" in human.output

    # a claim a dead worker still holds shows its age until serve re-queues it
    from datetime import UTC, datetime

    from sqlalchemy import update

    from dicom_wm.db import Instance, InstanceState

    claimed = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    with get_sessionmaker(url)() as s, s.begin():
        s.execute(update(Instance).values(state=InstanceState.WATERMARKING, claimed_at=claimed))
    summary = json.loads(runner.invoke(app, ["status", "--json", "--data-dir", str(tmp_path)]).output)
    assert summary["queue_depth"]["in_progress_rows"] == 1
    assert summary["queue_depth"]["oldest_in_progress_since"] == claimed.isoformat()
    table = runner.invoke(app, ["status", "--data-dir", str(tmp_path)])
    assert f"in progress: 1 (the oldest since {claimed.isoformat()})" in table.output


@pytest.mark.parametrize("command", [["status", "--json"], ["show", "1.2.3.4"], ["audit"], ["studies"],
                                     ["destinations", "list"], ["archive", "check"]])
def test_read_only_commands_on_a_data_dir_without_a_database(tmp_path: Path, command: list[str]) -> None:
    """A mistyped --data-dir: one clear line, exit 1, and nothing created
    (status said "0 rows" and left a SQLite file in whatever folder it was
    given; before that it failed with "no such table" and show with a traceback)."""
    target = tmp_path / "typo"
    result = runner.invoke(app, [*command, "--data-dir", str(target)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [f"error: no dicom-wm database at {target.resolve() / 'dicom-wm.sqlite3'} "
                                                  "(wrong --data-dir? `dicom-wm serve` creates it)"]
    assert not target.exists()
    target.mkdir()
    (target / "dicom-wm.sqlite3").touch()  # an empty file: a valid, empty SQLite database, not ours
    result = runner.invoke(app, [*command, "--data-dir", str(target)])
    assert result.exit_code == 1 and "no dicom-wm database" in result.output
    assert (target / "dicom-wm.sqlite3").stat().st_size == 0  # not migrated into a dicom-wm schema


def test_status_after_db_upgrade_before_any_reception(tmp_path: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)]).exit_code == 0
    status = runner.invoke(app, ["status", "--json", "--data-dir", str(tmp_path)])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["total"] == 0


@pytest.mark.parametrize("command", [["status"], ["show", "1.2.3.4"], ["audit"]])
def test_unreachable_database_is_one_line(tmp_path: Path, command: list[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a database")
    url = f"sqlite:///{blocker}"  # exists, cannot be opened as a database
    result = runner.invoke(app, [*command, "--data-dir", str(tmp_path), "--db", url])
    assert result.exit_code == 1, result.output
    assert "unavailable" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_show_unknown_uid_fails(tmp_path: Path) -> None:
    runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    result = runner.invoke(app, ["show", "1.2.3.4", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no instance" in result.output


def test_worker_needs_a_broker(tmp_path: Path) -> None:
    result = runner.invoke(app, ["worker", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "broker" in result.output


def test_invalid_configuration_is_one_clear_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path), "--port", "0"])
    assert result.exit_code == 2 and "invalid configuration" in result.output and "port" in result.output


def test_serve_on_an_empty_postgres_database_is_refused_before_making_a_key(tmp_path: Path) -> None:
    from ingest_support import FreshPostgres, require_services

    require_services()
    with FreshPostgres() as url:
        result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path), "--db", url,
                                     "--broker", "redis://127.0.0.1:6379/15"])
    assert result.exit_code == 2 and "dicom-wm db upgrade" in result.output
    assert not (tmp_path / "keys.json").exists()  # a refused start used to leave a new key behind


def test_serve_refuses_an_old_postgres_style_schema(tmp_path: Path) -> None:
    """A non-SQLite database must be upgraded explicitly; simulated with a
    second SQLite URL handed to ensure_schema without auto-upgrade."""
    from dicom_wm.ingest.runtime import SchemaOutOfDate, ensure_schema
    from dicom_wm.settings import load_settings

    settings = load_settings(data_dir=tmp_path)
    with pytest.raises(SchemaOutOfDate, match="dicom-wm db upgrade"):
        ensure_schema(settings, upgrade_sqlite=False)
    assert ensure_schema(settings, upgrade_sqlite=True) == migrate.head_revision()
