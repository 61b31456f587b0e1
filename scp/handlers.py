"""Thin DIMSE handlers: translate between DICOM and dicom_wm, nothing more.

Each is ``handle_<dimse>(event, ctx)`` and is listed in :data:`HANDLERS`;
query/retrieve adds ``handle_find`` / ``handle_move`` / ``handle_get`` the
same way (and their SOP classes in :mod:`scp.ae`).
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event

from dicom_wm.ingest.errors import CallingAENotAllowed, CannotUnderstand
from dicom_wm.ingest.receive import StoreRequest, receive_instance
from scp.context import ScpContext
from scp.query import handle_find
from scp.retrieve import handle_get, handle_move
from scp.status import SUCCESS, UNEXPECTED, status_for

__all__ = ["handle_echo", "handle_store", "HANDLERS"]

log = logging.getLogger(__name__)


def handle_echo(event: Event, ctx: ScpContext) -> int:
    """C-ECHO: always success (also the readiness probe)."""
    return SUCCESS


def _peer(event: Event) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.address}:{requestor.port}"


def handle_store(event: Event, ctx: ScpContext) -> int | tuple[int, Dataset]:
    """C-STORE: check, spool, commit, then report success and enqueue."""
    calling = event.assoc.requestor.ae_title.strip()
    sop_uid = str(event.request.AffectedSOPInstanceUID or "")
    try:
        if not ctx.calling_ae_allowed(calling):
            raise CallingAENotAllowed(f"calling AE {calling!r} is not on the allow-list")
        try:
            header = event.dataset  # header only: pixel data is not decoded
            data = event.encoded_dataset()
        except Exception as exc:  # pydicom raises many types for malformed data
            raise CannotUnderstand(f"undecodable dataset: {type(exc).__name__}: {exc}") from None
        request = StoreRequest(
            calling_ae=calling,
            called_ae=event.assoc.acceptor.ae_title.strip(),
            sop_class_uid=str(event.request.AffectedSOPClassUID or ""),
            sop_instance_uid=sop_uid,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            peer=_peer(event),
        )
        received = receive_instance(ctx.sessions, ctx.settings.data_dir, data, header, request)
    except Exception as exc:
        status = status_for(exc)
        if status == UNEXPECTED:
            log.exception("C-STORE %r from %s: unexpected error", sop_uid[:64], calling)
        else:
            log.warning("C-STORE %r from %s refused (0x%04X): %s", sop_uid[:64], calling, status, exc)
        reply = Dataset()
        reply.Status = status
        reply.ErrorComment = str(exc)[:64]
        return reply
    if received.needs_processing:
        ctx.enqueue(received.instance_id)
    log.debug("C-STORE %s from %s: %s (instance %d)", sop_uid, calling, received.outcome.value, received.instance_id)
    return SUCCESS


# (event, handler) pairs bound by scp.ae.start_server with the context.
HANDLERS = (
    (evt.EVT_C_ECHO, handle_echo),
    (evt.EVT_C_STORE, handle_store),
    (evt.EVT_C_FIND, handle_find),
    (evt.EVT_C_MOVE, handle_move),
    (evt.EVT_C_GET, handle_get),
)
