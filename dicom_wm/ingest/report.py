"""What ``dicom-wm status`` and ``dicom-wm show`` print, as plain data."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_wm.db.models import Event, Instance, InstanceState

__all__ = ["status_summary", "instance_report", "instance_dict", "event_dict"]

LAST_ERRORS = 10


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def status_summary(sessions: sessionmaker[Session], broker_depths: dict[str, int] | None = None) -> dict[str, Any]:
    """Counts per state (current versions and all rows), what waits for a
    worker, broker queue depths (distributed mode) and the latest errors."""
    with sessions() as session:
        all_counts = dict(session.execute(select(Instance.state, func.count()).group_by(Instance.state)).all())
        current = dict(
            session.execute(
                select(Instance.state, func.count()).where(Instance.is_current.is_(True)).group_by(Instance.state)
            ).all()
        )
        errors = session.execute(
            select(Instance.sop_instance_uid, Instance.version, Instance.state, Instance.state_reason,
                   Instance.last_error, Instance.updated_at)
            .where(
                (Instance.state == InstanceState.FAILED) | Instance.last_error.is_not(None)
            )
            .order_by(Instance.updated_at.desc())
            .limit(LAST_ERRORS)
        ).all()
        oldest_claim = session.scalar(
            select(func.min(Instance.claimed_at)).where(Instance.state == InstanceState.WATERMARKING)
        )
    states = [s.value for s in InstanceState]
    waiting = sum(all_counts.get(s, 0) for s in (InstanceState.RECEIVED, InstanceState.QUEUED))
    return {
        "states": {s: int(all_counts.get(InstanceState(s), 0)) for s in states},
        "current_states": {s: int(current.get(InstanceState(s), 0)) for s in states},
        "total": int(sum(all_counts.values())),
        "queue_depth": {"waiting_rows": int(waiting), "in_progress_rows": int(all_counts.get(InstanceState.WATERMARKING, 0)),
                        # a worker that died holding one shows here until serve re-queues it (stale_after_s)
                        "oldest_in_progress_since": _iso(oldest_claim),
                        **({"broker": broker_depths} if broker_depths is not None else {})},
        "last_errors": [
            {
                "sop_instance_uid": e.sop_instance_uid,
                "version": e.version,
                "state": e.state.value,
                "error": e.state_reason if e.state is InstanceState.FAILED else e.last_error,
                "time": _iso(e.updated_at),
            }
            for e in errors
        ],
    }


def instance_dict(row: Instance) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in Instance.__table__.columns:
        value = getattr(row, column.key)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, InstanceState):
            value = value.value
        out[column.key] = value
    out.pop("claim_token", None)  # internal
    return out


def event_dict(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "time": _iso(event.time),
        "kind": event.kind,
        "actor": event.actor,
        "instance_id": event.instance_id,
        "details": event.details or {},
    }


def instance_report(sessions: sessionmaker[Session], sop_instance_uid: str) -> dict[str, Any] | None:
    """Every version of one SOP Instance with its provenance and events
    (``None`` if the UID was never received)."""
    with sessions() as session:
        rows = list(
            session.scalars(
                select(Instance).where(Instance.sop_instance_uid == sop_instance_uid).order_by(Instance.version)
            )
        )
        if not rows:
            return None
        events = list(
            session.scalars(select(Event).where(Event.sop_instance_uid == sop_instance_uid).order_by(Event.id))
        )
        return {
            "sop_instance_uid": sop_instance_uid,
            "versions": [instance_dict(r) for r in rows],
            "events": [event_dict(e) for e in events],
        }
