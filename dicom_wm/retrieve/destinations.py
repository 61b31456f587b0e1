"""The destinations table: add, change, remove, list, and look up.

Every change appends a ``destination`` event (who changed which AE's trust).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_wm.db.destinations import Destination, EgressPolicy
from dicom_wm.db.models import EventKind, utcnow
from dicom_wm.ingest.events import add_event

__all__ = [
    "DestinationInfo",
    "check_ae_title",
    "parse_policy",
    "add_destination",
    "remove_destination",
    "list_destinations",
    "lookup_destination",
    "requester_policy",
]

log = logging.getLogger(__name__)

_HOST = re.compile(r"[A-Za-z0-9.:_\-\[\]%]{1,255}")


@dataclass(frozen=True)
class DestinationInfo:
    """A destinations row as plain data."""

    ae_title: str
    host: str
    port: int
    policy: EgressPolicy

    @classmethod
    def of(cls, row: Destination) -> DestinationInfo:
        return cls(row.ae_title, row.host, row.port, row.policy)

    def as_dict(self) -> dict[str, Any]:
        return {"ae_title": self.ae_title, "host": self.host, "port": self.port, "policy": self.policy.value}


def check_ae_title(value: str) -> str:
    """``value`` without leading/trailing spaces, if it is a valid AE title
    (1-16 characters of the default repertoire, no backslash or control
    characters); else ``ValueError`` naming it."""
    title = value.strip()
    if not 1 <= len(title) <= 16 or not title.isascii() or "\\" in title or any(ord(c) < 32 for c in title):
        raise ValueError(f"AE title {value!r} must be 1 to 16 ASCII characters without backslash or control characters")
    return title


def parse_policy(value: str | EgressPolicy) -> EgressPolicy:
    try:
        return EgressPolicy(value)
    except ValueError:
        choices = ", ".join(p.value for p in EgressPolicy)
        raise ValueError(f"policy {value!r} must be one of {choices}") from None


def _check_host(host: str) -> str:
    if not _HOST.fullmatch(host):
        raise ValueError(f"host {host!r} must be a host name or IP address")
    return host


def _check_port(port: int) -> int:
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} must be in 1..65535")
    return int(port)


def add_destination(
    sessions: sessionmaker[Session], ae_title: str, host: str, port: int, policy: str | EgressPolicy, *, actor: str
) -> tuple[DestinationInfo, bool]:
    """Add a destination, or change the one with this AE title.

    Returns the row and ``True`` when it is new. Raises ``ValueError`` for an
    invalid AE title, host, port or policy."""
    title, host, port, pol = check_ae_title(ae_title), _check_host(host), _check_port(port), parse_policy(policy)
    with sessions() as session, session.begin():
        row = session.scalars(select(Destination).where(Destination.ae_title == title)).one_or_none()
        created = row is None
        before = None if row is None else DestinationInfo.of(row).as_dict()
        if row is None:
            now = utcnow()
            row = Destination(ae_title=title, host=host, port=port, policy=pol, created_at=now, updated_at=now)
            session.add(row)
        else:
            row.host, row.port, row.policy = host, port, pol
        session.flush()
        info = DestinationInfo.of(row)
        details: dict[str, Any] = {"action": "added" if created else "changed", **info.as_dict()}
        if before is not None:
            details["before"] = before
        add_event(session, EventKind.DESTINATION, actor=actor, details=details)
    log.info("destination %s %s: %s:%d, policy %s", title, details["action"], host, port, pol.value)
    return info, created


def remove_destination(sessions: sessionmaker[Session], ae_title: str, *, actor: str) -> DestinationInfo | None:
    """Remove a destination; returns what was removed (``None``: there was none)."""
    title = check_ae_title(ae_title)
    with sessions() as session, session.begin():
        row = session.scalars(select(Destination).where(Destination.ae_title == title)).one_or_none()
        if row is None:
            return None
        info = DestinationInfo.of(row)
        session.delete(row)
        add_event(session, EventKind.DESTINATION, actor=actor, details={"action": "removed", **info.as_dict()})
    log.info("destination %s removed", title)
    return info


def list_destinations(sessions: sessionmaker[Session]) -> list[DestinationInfo]:
    with sessions() as session:
        rows = session.scalars(select(Destination).order_by(Destination.ae_title))
        return [DestinationInfo.of(r) for r in rows]


def lookup_destination(session: Session, ae_title: str) -> DestinationInfo | None:
    row = session.scalars(select(Destination).where(Destination.ae_title == ae_title.strip())).one_or_none()
    return None if row is None else DestinationInfo.of(row)


def _addresses(host: str) -> set[str]:
    try:
        return {str(ipaddress.ip_address(info[4][0].split("%")[0])) for info in socket.getaddrinfo(host, None)}
    except (OSError, ValueError):
        return set()


def requester_policy(session: Session, ae_title: str, peer_address: str) -> tuple[EgressPolicy, str | None]:
    """The policy for a C-GET requester, and a note when it was lowered.

    The requester's destinations row gives the policy (no row:
    ``watermarked``). Since anyone can claim an AE title, ``original`` is
    granted only when the request comes from an address the row's host
    resolves to; otherwise the requester gets ``watermarked`` and the note
    says why."""
    info = lookup_destination(session, ae_title)
    if info is None:
        return EgressPolicy.WATERMARKED, None
    if info.policy is EgressPolicy.WATERMARKED:
        return info.policy, None
    try:
        peer = str(ipaddress.ip_address(peer_address.split("%")[0]))
    except ValueError:
        peer = peer_address
    if peer in _addresses(info.host):
        return info.policy, None
    note = f"policy lowered to watermarked: request from {peer_address}, not from {info.host} registered for {info.ae_title}"
    return EgressPolicy.WATERMARKED, note
