"""The audit trail of one retrieve: ``sent`` and ``tamper_detected`` events,
and the security alert.

``sent`` events (one per instance offered, whatever the result) are
written in batches of :data:`BATCH` and at the end, so a 1000-instance move
does not wait for 1000 synchronous commits; a crash in the middle of a
retrieve can lose at most one batch of ``sent`` lines. ``tamper_detected``
events are committed at once, before the sub-operation is answered.

The security alert goes to the ``dicom_wm.security`` logger at ERROR: which
instance, which retrieve, what failed and where (tiles). It holds no key
material and no pixel data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_wm.db.destinations import EgressPolicy
from dicom_wm.db.models import EventKind
from dicom_wm.ingest.events import add_event
from dicom_wm.query.find import RetrieveItem
from dicom_wm.retrieve.egress import Prepared

__all__ = ["RetrieveAudit", "BATCH", "SECURITY_LOGGER", "record_refused"]

log = logging.getLogger(__name__)
SECURITY_LOGGER = "dicom_wm.security"
security = logging.getLogger(SECURITY_LOGGER)

BATCH = 64
_TILES_IN_ALERT = 8


@dataclass
class RetrieveAudit:
    """Events for one C-MOVE / C-GET."""

    sessions: sessionmaker[Session]
    actor: str  # the requesting AE title
    service: str  # "C-MOVE" | "C-GET"
    destination: str  # AE title the instances go to
    address: str | None  # "host:port" of the destination (C-MOVE) or the requester's peer (C-GET)
    policy: EgressPolicy
    note: str | None = None  # e.g. why a C-GET requester's policy was lowered
    sent_count: int = 0
    failed_count: int = 0
    _pending: list[dict[str, Any]] = field(default_factory=list)

    def _common(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "service": self.service,
            "destination": self.destination,
            "address": self.address,
            "policy": self.policy.value,
        }
        if self.note:
            out["note"] = self.note
        return out

    def tamper(self, prepared: Prepared) -> None:
        """Record a refused, changed instance now and raise the alert."""
        item = prepared.item
        tiles = prepared.tampered_tiles
        shown = ", ".join(str(t) for t in tiles[:_TILES_IN_ALERT]) + (" ..." if len(tiles) > _TILES_IN_ALERT else "")
        security.error(
            "SECURITY ALERT: instance %s (row %d) failed verification before %s to %s and was NOT sent: %s; %s%s",
            item.sop_instance_uid, item.instance_id, self.service, self.destination, prepared.verdict.value,
            prepared.reason or "", f"; tampered tiles [frame, row0, col0, row1, col1]: {shown}" if tiles else "",
        )
        details = {
            **self._common(),
            "verdict": prepared.verdict.value,
            "reason": prepared.reason,
            "tiles": tiles,
            "file_changed": prepared.file_changed,
        }
        try:
            with self.sessions() as session, session.begin():
                add_event(session, EventKind.TAMPER_DETECTED, actor=self.actor, instance_id=item.instance_id,
                          sop_instance_uid=item.sop_instance_uid, details=details)
        except SQLAlchemyError as exc:
            security.error("tamper_detected event for %s could not be written: %s", item.sop_instance_uid, exc)

    def sent(
        self,
        item: RetrieveItem,
        *,
        result: str,
        verdict: str | None,
        reason: str | None = None,
        store_status: int | None = None,
        transfer_syntax: str | None = None,
        restored: bool = False,
        converted: bool = False,
        cached: bool = False,
        note: str | None = None,
    ) -> None:
        """Queue one ``sent`` event (``result``: "sent" or "failed")."""
        if result == "sent":
            self.sent_count += 1
        else:
            self.failed_count += 1
        details: dict[str, Any] = {**self._common(), "result": result, "verification": verdict}
        if reason:
            details["reason"] = reason
        if store_status is not None:
            details["store_status"] = f"0x{store_status:04X}"
        if transfer_syntax:
            details["transfer_syntax"] = transfer_syntax
        if restored:
            details["restored"] = True
        if converted:
            details["converted_to"] = "Explicit VR Little Endian"
        if cached:
            details["verified"] = "earlier, same bytes (SHA-256)"
        if note:
            details["note"] = note
        self._pending.append({"instance_id": item.instance_id, "sop_instance_uid": item.sop_instance_uid,
                              "details": details})
        if len(self._pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the queued ``sent`` events."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            with self.sessions() as session, session.begin():
                for e in batch:
                    add_event(session, EventKind.SENT, actor=self.actor, instance_id=e["instance_id"],
                              sop_instance_uid=e["sop_instance_uid"], details=e["details"])
        except SQLAlchemyError as exc:
            log.error("%d sent event(s) of a %s to %s could not be written: %s",
                      len(batch), self.service, self.destination, exc)


def record_refused(
    sessions: sessionmaker[Session], *, actor: str, service: str, destination: str | None, peer: str,
    status: int, reason: str,
) -> None:
    """Append the ``retrieve_refused`` event of a C-MOVE / C-GET refused as a
    whole (unknown destination, bad identifier, calling AE not allowed ...);
    an audit write failure is logged, not raised (the refusal goes out anyway)."""
    details = {"service": service, "destination": destination, "peer": peer, "status": f"0x{status:04X}",
               "reason": reason}
    try:
        with sessions() as session, session.begin():
            add_event(session, EventKind.RETRIEVE_REFUSED, actor=actor, details=details)
    except SQLAlchemyError as exc:
        log.error("retrieve_refused event from %s could not be written: %s", actor, str(exc).splitlines()[0][:200])
