"""Reading the audit log (the append-only ``events`` table)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_wm.db.models import Event, EventKind

__all__ = ["parse_since", "list_events", "event_record"]


def parse_since(value: str) -> datetime:
    """An ISO 8601 date or date-time as an aware UTC datetime (a value
    without an offset is taken as UTC). ``ValueError`` names a bad value."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"--since {value!r} is not an ISO 8601 date or date-time (e.g. 2026-11-28T09:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def event_record(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "time": event.time.isoformat() if event.time else None,
        "kind": event.kind,
        "actor": event.actor,
        "instance_id": event.instance_id,
        "sop_instance_uid": event.sop_instance_uid,
        "details": event.details or {},
    }


def list_events(
    sessions: sessionmaker[Session], *, since: datetime | None = None, kind: str | None = None
) -> list[dict[str, Any]]:
    """Events in the order they were appended, optionally from ``since`` on
    and of one ``kind`` (an :class:`~dicom_wm.db.models.EventKind` value)."""
    stmt = select(Event).order_by(Event.id)
    if since is not None:
        stmt = stmt.where(Event.time >= since)
    if kind is not None:
        stmt = stmt.where(Event.kind == EventKind(kind).value)
    with sessions() as session:
        return [event_record(e) for e in session.scalars(stmt)]
