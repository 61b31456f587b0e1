"""Appending audit events (the events table is insert-only)."""

from __future__ import annotations

import getpass
import socket
from typing import Any

from sqlalchemy.orm import Session

from dicom_wm.db.models import Event, EventKind, utcnow

__all__ = ["add_event", "user_actor", "worker_actor"]


def add_event(
    session: Session,
    kind: EventKind | str,
    *,
    actor: str | None,
    instance_id: int | None = None,
    sop_instance_uid: str | None = None,
    details: dict[str, Any] | None = None,
) -> Event:
    """Add one event to ``session`` (committed with the caller's transaction)."""
    value = EventKind(kind).value if not isinstance(kind, EventKind) else kind.value
    event = Event(
        time=utcnow(),
        kind=value,
        actor=actor,
        instance_id=instance_id,
        sop_instance_uid=sop_instance_uid,
        details=details or {},
    )
    session.add(event)
    return event


def worker_actor() -> str:
    """``worker@<host>:<pid>`` style actor for worker-side events."""
    import os

    return f"worker@{socket.gethostname()}:{os.getpid()}"


def user_actor() -> str:
    """``<user>@<host>`` for events caused by an administrator's command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
