"""C-MOVE and C-GET handlers: every instance is verified before it is sent.

Both follow pynetdicom's generator protocol (C-MOVE first yields the
destination's address, both then yield the number of sub-operations, then
one ``(status, dataset)`` per instance); the work is done by
:mod:`dicom_wm.retrieve` (verification, restore, audit) and
:mod:`scp.transfer` (presentation contexts).

* C-MOVE goes only to AE titles in the destinations table, at the row's
  host and port, with the row's policy; anything else is 0xA801.
* C-GET sends over the requester's association, on the storage contexts it
  proposed with SCP/SCU role selection; its policy is the requester's row
  (no row: ``watermarked``; ``original`` only from the row's host).
* An instance that fails verification (or cannot go: no accepted context,
  undecodable) is a *failed sub-operation*: counted in Number of Failed
  Sub-operations and listed in Failed SOP Instance UID List; the others
  still go, and the final status is 0xB000 (some failed), 0xA702 (all
  failed) or 0x0000.

pynetdicom counts a sub-operation as failed when sending it raises: the
handler yields a dataset carrying only the SOP Instance UID, which cannot be
sent (no SOP Class UID), so nothing goes on the wire and the UID lands in
the failed list. pynetdicom logs a "C-STORE sub-operation failed" line for
it after dicom-wm's own explanation.

A request refused before any sub-operation (calling AE not allowed, invalid
identifier, database unavailable) answers with its status from the one
status table; pynetdicom then reports one failed sub-operation, and a
C-MOVE opens and closes the (known) destination's association first: its
protocol has no earlier place for a failure status.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification
from sqlalchemy.exc import SQLAlchemyError

from dicom_wm.db.destinations import EgressPolicy
from dicom_wm.db.models import InstanceState
from dicom_wm.errors import UnsupportedInput
from dicom_wm.ingest.errors import CallingAENotAllowed, DatabaseUnavailable
from dicom_wm.query import RetrieveItem, Service, model_for_sop_class, select_for_retrieve
from dicom_wm.retrieve import EgressPool, Prepared, RetrieveAudit, default_workers, lookup_destination, requester_policy
from dicom_wm.retrieve.audit import record_refused
from scp.context import ScpContext
from scp.direct_store import DirectStore, dataset_offset
from scp.query import CANCEL, PENDING, calling_ae, failure_status, identifier_of, peer_of
from scp.transfer import Route, propose_contexts, route, to_native

__all__ = ["handle_move", "handle_get", "egress_pool", "outgoing_syntax"]

log = logging.getLogger(__name__)

# What pynetdicom logs when it fails a _not_sendable() dataset: the reason
# is already in dicom-wm's own line just before, so this one only misleads.
_MARKER_ERROR = "Unable to send the dataset as one or more required element are missing: SOPClassUID"


class _HideMarkerError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _MARKER_ERROR


logging.getLogger("pynetdicom.service_class").addFilter(_HideMarkerError())

_pool_lock = threading.Lock()
_STORE_RSP = 0x8001
_EXPLICIT_LE = "1.2.840.10008.1.2.1"


def egress_pool(ctx: ScpContext) -> EgressPool:
    """The context's verification pool (made on first use)."""
    with _pool_lock:
        if ctx.egress is None:
            workers = ctx.settings.egress_workers
            ctx.egress = EgressPool(ctx.settings.data_dir, ctx.settings.keys_path,
                                    default_workers() if workers is None else workers)
        return ctx.egress


def outgoing_syntax(item: RetrieveItem, policy: EgressPolicy) -> str:
    """The transfer syntax an instance leaves in (before any fallback)."""
    if item.state is InstanceState.WATERMARKED and policy in (EgressPolicy.ORIGINAL, EgressPolicy.FINGERPRINT):
        return _EXPLICIT_LE  # restored (and re-marked) samples are written natively
    return item.stored_transfer_syntax_uid or _EXPLICIT_LE


def _not_sendable(item: RetrieveItem) -> Dataset:
    """What pynetdicom counts as one failed sub-operation (module docstring)."""
    ds = Dataset()
    ds.SOPInstanceUID = item.sop_instance_uid
    return ds


def _store_ok(status: int | None) -> bool:
    return status is not None and (status == 0x0000 or (status & 0xF000) == 0xB000)


@dataclass
class _Peer:
    """The association instances go over and the C-STORE statuses it returned."""

    assoc: Any = None
    statuses: dict[str, int] = field(default_factory=dict)
    direct: DirectStore | None = None  # None: pynetdicom sends (TLS)

    def use_direct_store(self) -> None:
        store = DirectStore(self.assoc)
        self.direct = store if store.install() else None

    def on_accepted(self, event: Event) -> None:
        """C-MOVE's sub-association is accepted (before its reactor starts)."""
        self.assoc = event.assoc
        _responses_belong_to_the_sender(event.assoc)
        self.use_direct_store()

    def on_message(self, event: Event) -> None:
        cs = getattr(event.message, "command_set", None)
        if cs is not None and cs.get("CommandField") == _STORE_RSP:
            self.statuses[str(cs.get("AffectedSOPInstanceUID", ""))] = int(cs.Status)

    @property
    def accepted(self) -> Sequence[PresentationContext]:
        return self.assoc.accepted_contexts if self.assoc is not None else []


def _responses_belong_to_the_sender(assoc: Any) -> None:
    """Keep the sub-association's reactor thread off its DIMSE queue.

    pynetdicom 3.0's ``send_c_store`` pauses the association's reactor by
    clearing a checkpoint and waiting for a "paused" flag, but the reactor
    sets that flag just *before* it checks the checkpoint; when it loses the
    CPU right there (a busy machine), the sender goes ahead, and the
    reactor's non-blocking poll can take the C-STORE response off the queue
    ("Received unexpected C-STORE service message"). The sender then waits
    out the DIMSE timeout and every remaining sub-operation fails. A storage
    sub-association only ever receives responses to our own requests, so the
    reactor's poll (the only non-blocking reader) is made to see nothing."""
    original = assoc.dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        return original(block=True) if block else (None, None)

    assoc.dimse.get_msg = get_msg


def _dataset_for(
    prepared: Prepared, accepted: Sequence[PresentationContext], direct: DirectStore | None
) -> tuple[Dataset | None, bool, str | None]:
    """(dataset to yield, whether it was decoded to native, why it cannot go).

    When the peer accepted the payload's own transfer syntax and the direct
    sender is in use, the payload's data set bytes go as they are and
    pynetdicom only sees a dataset naming the instance."""
    item = prepared.item
    payload = prepared.payload or b""
    try:
        offset: int | None = dataset_offset(payload)
        meta = pydicom.dcmread(io.BytesIO(payload[:offset])).file_meta
    except ValueError:  # no File Meta Information Group Length: parse it all
        offset, meta = None, pydicom.dcmread(io.BytesIO(payload)).file_meta
    syntax = str(meta.TransferSyntaxUID)
    how = route(accepted, item.sop_class_uid, syntax)
    if how is Route.NONE:
        return None, False, f"the peer accepted no presentation context for {UID(item.sop_class_uid).name}"
    if how is Route.AS_IS and direct is not None and offset is not None:
        named = Dataset()
        named.SOPClassUID, named.SOPInstanceUID = item.sop_class_uid, item.sop_instance_uid
        named.file_meta = meta
        direct.encoded[item.sop_instance_uid] = (syntax, memoryview(payload)[offset:])
        return named, False, None
    ds = pydicom.dcmread(io.BytesIO(payload))
    if how is Route.NATIVE:
        try:
            to_native(ds)
        except UnsupportedInput as exc:
            return None, False, f"cannot decode to native for the peer: {exc}"
        return ds, True, None
    return ds, False, None


def _suboperations(
    event: Event,
    pool: EgressPool,
    items: list[RetrieveItem],
    policy: EgressPolicy,
    audit: RetrieveAudit,
    peer: _Peer,
) -> Iterator[tuple[int, Dataset | None]]:
    """One yield per instance: the verified dataset, or a failed sub-operation."""
    done: set[int] = set()  # instance ids whose sent event is written
    in_flight: int | None = None  # the instance handed to pynetdicom to send
    cancelled = False
    try:
        for prepared in pool.prepared(items, policy, recipient=audit.destination):
            if event.is_cancelled:
                log.info("%s to %s cancelled by the requester", audit.service, audit.destination)
                cancelled = True
                yield CANCEL, None
                return
            item = prepared.item
            if not prepared.ok:
                if prepared.tamper:
                    audit.tamper(prepared)
                else:
                    log.error("%s to %s: instance %s not sent: %s (%s)", audit.service, audit.destination,
                              item.sop_instance_uid, prepared.verdict.value, prepared.reason)
                audit.sent(item, result="failed", verdict=prepared.verdict.value, reason=prepared.reason)
                done.add(item.instance_id)
                yield PENDING, _not_sendable(item)
                continue
            ds, converted, problem = _dataset_for(prepared, peer.accepted, peer.direct)
            if ds is None:
                log.error("%s to %s: instance %s not sent: %s", audit.service, audit.destination,
                          item.sop_instance_uid, problem)
                audit.sent(item, result="failed", verdict=prepared.verdict.value, reason=problem)
                done.add(item.instance_id)
                yield PENDING, _not_sendable(item)
                continue
            in_flight = item.instance_id
            yield PENDING, ds
            done.add(item.instance_id)
            status = peer.statuses.pop(item.sop_instance_uid, None)
            sent_in = peer.direct.sent.pop(item.sop_instance_uid, None) if peer.direct is not None else None
            ok = _store_ok(status)
            audit.sent(
                item, result="sent" if ok else "failed", verdict=prepared.verdict.value,
                reason=None if ok else ("no C-STORE response" if status is None else "peer refused the instance"),
                store_status=status, transfer_syntax=sent_in or str(ds.file_meta.TransferSyntaxUID),
                restored=prepared.restored, converted=converted, cached=prepared.cached, note=prepared.note,
            )
    finally:
        if not cancelled:
            # pynetdicom stops asking for sub-operations when the association
            # ends (aborted, or the connection broke): the rest are recorded too
            for item in items:
                if item.instance_id not in done:
                    reason = ("the association ended while it was being sent" if item.instance_id == in_flight
                              else "not attempted: the association ended")
                    audit.sent(item, result="failed", verdict=None, reason=reason)
        audit.flush()
        log.info("%s to %s (%s, policy %s): %d sent, %d failed", audit.service, audit.destination,
                 audit.address, audit.policy.value, audit.sent_count, audit.failed_count)


def _note_pending(service: str, destination: str, pending: int) -> None:
    if pending:
        log.warning("%s to %s: %d matching instance(s) are still being watermarked and were not offered",
                    service, destination, pending)


def handle_move(event: Event, ctx: ScpContext) -> Iterator[Any]:
    """C-MOVE to a destination from the destinations table."""
    calling = calling_ae(event)
    title = str(event.move_destination or "").strip()
    try:
        with ctx.sessions() as session:
            destination = lookup_destination(session, title)
    except SQLAlchemyError as exc:  # pynetdicom answers 0xC514 for an error at this point
        raise DatabaseUnavailable(f"destinations lookup failed: {str(exc).splitlines()[0][:200]}") from exc
    if destination is None:
        log.warning("C-MOVE from %s to %r refused (0xA801): not in the destinations table", calling, title)
        record_refused(ctx.sessions, actor=calling, service="C-MOVE", destination=title, peer=peer_of(event),
                       status=0xA801, reason="move destination not in the destinations table")
        yield None, None
        return
    address = f"{destination.host}:{destination.port}"
    try:
        if not ctx.calling_ae_allowed(calling):
            raise CallingAENotAllowed(f"calling AE {calling!r} is not on the allow-list")
        model, _ = model_for_sop_class(str(event.request.AffectedSOPClassUID))
        _query, selection = select_for_retrieve(ctx.sessions, identifier_of(event), model, Service.MOVE)
        contexts, left_out = propose_contexts(
            (i.sop_class_uid, outgoing_syntax(i, destination.policy)) for i in selection.items
        )
    except Exception as exc:
        status = failure_status(exc, f"C-MOVE to {title}", calling)
        record_refused(ctx.sessions, actor=calling, service="C-MOVE", destination=title, peer=peer_of(event),
                       status=int(status.Status), reason=str(exc)[:200])
        yield destination.host, destination.port, {"contexts": [build_context(Verification)]}
        yield 1
        yield status, None
        return
    if left_out:
        log.error("C-MOVE to %s: %d SOP class(es) beyond the %d-context limit; their instances will fail",
                  title, len(left_out), len(contexts))
    _note_pending("C-MOVE", title, selection.pending)
    peer = _Peer()
    handlers = [(evt.EVT_ACCEPTED, peer.on_accepted), (evt.EVT_DIMSE_RECV, peer.on_message)]
    yield destination.host, destination.port, {"contexts": contexts or [build_context(Verification)],
                                               "evt_handlers": handlers}
    yield len(selection.items)
    audit = RetrieveAudit(ctx.sessions, calling, "C-MOVE", title, address, destination.policy)
    yield from _suboperations(event, egress_pool(ctx), selection.items, destination.policy, audit, peer)


def handle_get(event: Event, ctx: ScpContext) -> Iterator[Any]:
    """C-GET over the requester's own association."""
    calling = calling_ae(event)
    requestor = event.assoc.requestor
    try:
        if not ctx.calling_ae_allowed(calling):
            raise CallingAENotAllowed(f"calling AE {calling!r} is not on the allow-list")
        model, _ = model_for_sop_class(str(event.request.AffectedSOPClassUID))
        try:
            with ctx.sessions() as session:
                policy, note = requester_policy(session, calling, str(requestor.address))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"destinations lookup failed: {str(exc).splitlines()[0][:200]}") from exc
        _query, selection = select_for_retrieve(ctx.sessions, identifier_of(event), model, Service.GET)
    except Exception as exc:
        status = failure_status(exc, "C-GET", calling)
        record_refused(ctx.sessions, actor=calling, service="C-GET", destination=calling, peer=peer_of(event),
                       status=int(status.Status), reason=str(exc)[:200])
        yield 1
        yield status, None
        return
    if note:
        log.warning("C-GET from %s (%s): %s", calling, peer_of(event), note)
    _note_pending("C-GET", calling, selection.pending)
    yield len(selection.items)
    peer = _Peer(assoc=event.assoc)
    audit = RetrieveAudit(ctx.sessions, calling, "C-GET", calling, peer_of(event), policy, note)
    event.assoc.bind(evt.EVT_DIMSE_RECV, peer.on_message)
    peer.use_direct_store()  # the handler runs in this association's reactor thread: no one else reads
    try:
        yield from _suboperations(event, egress_pool(ctx), selection.items, policy, audit, peer)
    finally:
        if peer.direct is not None:
            peer.direct.uninstall()
        event.assoc.unbind(evt.EVT_DIMSE_RECV, peer.on_message)

