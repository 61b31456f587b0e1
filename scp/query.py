"""C-FIND handler (Patient Root and Study Root), and the failure responses
the Q/R handlers share."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from dicom_wm.query import InvalidIdentifier, run_find
from scp.context import ScpContext
from scp.status import UNEXPECTED, status_for

__all__ = ["handle_find", "failure_status", "calling_ae", "peer_of", "identifier_of"]

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00


def calling_ae(event: Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def peer_of(event: Event) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.address}:{requestor.port}"


def identifier_of(event: Event) -> Dataset:
    """The request identifier; one that cannot be decoded is an invalid one."""
    try:
        return event.identifier
    except Exception as exc:  # pydicom raises many types for a malformed dataset
        raise InvalidIdentifier(f"the identifier cannot be decoded: {type(exc).__name__}: {exc}"[:200]) from None


def failure_status(exc: BaseException, what: str, calling: str) -> Dataset:
    """The status dataset for a refused request (logged once, here)."""
    status = status_for(exc, what)
    if status == UNEXPECTED:
        log.error("%s from %s: unexpected error", what, calling, exc_info=exc)
    else:
        log.warning("%s from %s refused (0x%04X): %s", what, calling, status, exc)
    reply = Dataset()
    reply.Status = status
    reply.ErrorComment = str(exc)[:64]
    offending = getattr(exc, "offending", ())
    if offending:
        reply.OffendingElement = list(offending)
    return reply


def handle_find(event: Event, ctx: ScpContext) -> Iterator[tuple[Any, Dataset | None]]:
    """C-FIND: match against the index, one pending response per match."""
    calling = calling_ae(event)
    try:
        responses = run_find(
            ctx.sessions, lambda: identifier_of(event), str(event.request.AffectedSOPClassUID), actor=calling,
            peer=peer_of(event), retrieve_ae_title=ctx.settings.ae_title, allowed=ctx.calling_ae_allowed(calling),
        )
    except Exception as exc:
        yield failure_status(exc, "C-FIND", calling), None
        return
    for response in responses:
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, response
