"""Provenance database: migrations on SQLite and PostgreSQL, the models
match the migrations, the event log is append-only, one engine per process."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DatabaseError

from dicom_wm.db import Base, Event, EventKind, Instance, InstanceState, get_engine, get_sessionmaker, utcnow
from dicom_wm.db import migrate
from ingest_support import FreshPostgres, require_services

INDEX_COLUMNS = {
    "patient_id", "patient_name", "patient_birth_date", "patient_sex",
    "study_instance_uid", "study_date", "study_time", "accession_number", "study_id", "study_description",
    "referring_physician_name", "modality", "series_instance_uid", "series_number", "series_description",
    "sop_class_uid", "sop_instance_uid", "instance_number", "stored_transfer_syntax_uid",
}


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db.sqlite3'}"


@pytest.fixture
def postgres_url():
    require_services()
    with FreshPostgres() as url:
        yield url


def _row(**overrides: object) -> Instance:
    now = utcnow()
    values = dict(
        sop_instance_uid="1.2.3.4", version=1, is_current=True, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid="1.2.3", series_instance_uid="1.2.3.1", received_at=now, updated_at=now,
        received_transfer_syntax_uid="1.2.840.10008.1.2.1", received_size=10, received_sha256="0" * 64,
        state=InstanceState.RECEIVED, attempts=0,
    )
    values.update(overrides)
    return Instance(**values)


def _check_schema(url: str) -> None:
    migrate.upgrade(url)
    assert migrate.is_up_to_date(url)
    engine = get_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    columns = {c["name"] for c in inspect(engine).get_columns("instances")}
    assert INDEX_COLUMNS <= columns


def _round_trip(url: str) -> None:
    migrate.upgrade(url)
    migrate.downgrade(url, "base")
    assert migrate.current_revision(url) is None
    assert "instances" not in inspect(get_engine(url)).get_table_names()
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()


def _append_only(url: str) -> None:
    migrate.upgrade(url)
    sessions = get_sessionmaker(url)
    with sessions() as s:
        row = _row()
        s.add(row)
        s.flush()
        s.add(Event(time=utcnow(), kind=EventKind.RECEIVED.value, actor="X", instance_id=row.id, details={"a": 1}))
        s.commit()
    with sessions() as s, pytest.raises(DatabaseError, match="append-only"):
        s.execute(text("UPDATE events SET actor = 'Y'"))
        s.commit()
    with sessions() as s, pytest.raises(DatabaseError, match="append-only"):
        s.execute(text("DELETE FROM events"))
        s.commit()
    with sessions() as s:
        events = s.query(Event).all()
        assert [(e.actor, e.details) for e in events] == [("X", {"a": 1})]
        assert events[0].time.tzinfo is not None


def test_sqlite_upgrade_from_empty_matches_models(sqlite_url: str) -> None:
    assert migrate.current_revision(sqlite_url) is None
    _check_schema(sqlite_url)


def test_sqlite_downgrade_upgrade_round_trip(sqlite_url: str) -> None:
    _round_trip(sqlite_url)


def test_sqlite_events_are_append_only(sqlite_url: str) -> None:
    _append_only(sqlite_url)


def test_sqlite_runs_in_wal_mode_with_busy_timeout(sqlite_url: str) -> None:
    with get_engine(sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_one_engine_per_process_and_url(sqlite_url: str, tmp_path: Path) -> None:
    assert get_engine(sqlite_url) is get_engine(sqlite_url)
    assert get_sessionmaker(sqlite_url) is get_sessionmaker(sqlite_url)
    assert get_engine(f"sqlite:///{tmp_path / 'other.sqlite3'}") is not get_engine(sqlite_url)


def test_sop_instance_uid_and_version_are_unique(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    sessions = get_sessionmaker(sqlite_url)
    with sessions() as s:
        s.add(_row())
        s.add(_row(version=2, is_current=True))
        s.commit()
    with sessions() as s, pytest.raises(DatabaseError):
        s.add(_row(version=2))
        s.commit()


def test_datetimes_come_back_timezone_aware(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    sessions = get_sessionmaker(sqlite_url)
    with sessions() as s:
        s.add(_row())
        s.commit()
    with sessions() as s:
        row = s.query(Instance).one()
        assert row.received_at.tzinfo is not None and row.updated_at.utcoffset().total_seconds() == 0


@pytest.mark.services
def test_postgres_upgrade_from_empty_matches_models(postgres_url: str) -> None:
    _check_schema(postgres_url)


@pytest.mark.services
def test_postgres_downgrade_upgrade_round_trip(postgres_url: str) -> None:
    _round_trip(postgres_url)


@pytest.mark.services
def test_postgres_events_are_append_only(postgres_url: str) -> None:
    _append_only(postgres_url)
