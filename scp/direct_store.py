"""C-STORE sub-operations written straight to the association's socket.

pynetdicom sends each P-DATA-TF PDU through its DUL thread's event queue and
state machine, one PDU per loop turn: with a peer that takes 16 KiB PDUs
(DCMTK's default) a 512 x 512 CT image is 33 turns, about 13 ms on a busy
2-core machine, ten times DCMTK's time for the same image. The association
negotiation, the DUL thread's reading and decoding of the peer's responses,
release and abort all stay pynetdicom's; only the *sending* of a C-STORE
request (its command and data set fragments) is done here, in the sending
thread, with one ``sendall``:

* the command set (Implicit VR Little Endian, group length first) and the
  data set are cut into PDVs of at most the peer's maximum PDU length less
  6 bytes, each in its own P-DATA-TF PDU (PS3.8 9.3.5, E.2);
* the data set is the instance's encoded bytes when the accepted context's
  transfer syntax is the one they are in (no decode / re-encode), otherwise
  it is encoded by pynetdicom for that context;
* the response comes back through pynetdicom's DIMSE queue;
* the socket has a second writer: pynetdicom's DUL thread sends what the
  association's own service queues (a C-GET's pending responses go out
  while the next sub-operation is sent). A large ``sendall`` is several
  ``send`` calls, and the two writers' bytes interleaved mid-PDU broke the
  stream (DCMTK getscu: "Unrecognized PDU type"). :meth:`DirectStore.install`
  puts one lock around both.

:func:`install` replaces ``send_c_store`` on one association object (C-MOVE's
sub-association, or a C-GET requester's association while its C-GET runs);
pynetdicom's own service classes call it and count the results as usual.
Associations over TLS keep pynetdicom's sender (an SSL socket must not be
read and written from two threads).
"""

from __future__ import annotations

import logging
import ssl
import struct
import threading
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import encode

__all__ = ["DirectStore", "dataset_offset"]

log = logging.getLogger(__name__)

_PDU_HEADER = struct.Struct(">BBIIBB")  # PDU type, reserved, PDU length, PDV length, context ID, control header
_COMMAND, _LAST = 0x01, 0x02
_UNLIMITED_FRAGMENT = 1 << 20  # peer declared no maximum (0): 1 MiB fragments
DUL_POLL_S = 0.0001


def dataset_offset(part10: bytes) -> int:
    """Where the data set starts in a Part 10 file (after preamble, ``DICM``
    and the File Meta Information group, whose group length is read)."""
    # (0002,0000) UL, always Explicit VR Little Endian: tag, "UL", length 4, value
    if part10[128:132] != b"DICM" or part10[132:138] != b"\x02\x00\x00\x00UL":
        raise ValueError("not a Part 10 file starting with a File Meta Information Group Length")
    (group_length,) = struct.unpack("<I", part10[140:144])
    return 144 + group_length


def _command_set(sop_class: str, sop_instance: str, msg_id: int, priority: int,
                 originator_aet: str | None, originator_id: int | None) -> bytes:
    cs = Dataset()
    cs.AffectedSOPClassUID = sop_class
    cs.CommandField = 0x0001  # C-STORE-RQ
    cs.MessageID = msg_id
    cs.Priority = priority
    cs.CommandDataSetType = 0x0000  # a data set follows
    cs.AffectedSOPInstanceUID = sop_instance
    if originator_aet:
        cs.MoveOriginatorApplicationEntityTitle = originator_aet
        cs.MoveOriginatorMessageID = originator_id or 0
    body = encode(cs, True, True)
    if body is None:  # pragma: no cover - only UIDs and numbers
        raise ValueError("the C-STORE command set could not be encoded")
    return b"\x00\x00\x00\x00\x04\x00\x00\x00" + struct.pack("<I", len(body)) + body


def _fragments(data: bytes | memoryview, context_id: int, command: bool, size: int) -> list[bytes | memoryview]:
    view = memoryview(data)
    out: list[bytes | memoryview] = []
    for start in range(0, max(len(view), 1), size):
        piece = view[start : start + size]
        control = (_COMMAND if command else 0) | (_LAST if start + size >= len(view) else 0)
        out.append(_PDU_HEADER.pack(0x04, 0, len(piece) + 6, len(piece) + 2, context_id, control))
        out.append(piece)
    return out


class DirectStore:
    """``send_c_store`` for one association (see the module docstring).

    ``encoded`` maps a SOP Instance UID to ``(transfer syntax, data set
    bytes)`` the caller already has; an entry is used once. ``sent`` says
    which transfer syntax each instance went in."""

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self.encoded: dict[str, tuple[str, bytes | memoryview]] = {}
        self.sent: dict[str, str] = {}  # SOP Instance UID -> transfer syntax it went in
        self._original: Any = None
        self._loop_delay: float | None = None
        self._send_lock = threading.Lock()  # one writer at a time on the socket

    def install(self) -> bool:
        """Take over ``assoc.send_c_store``; False (and nothing changed) over TLS."""
        sock = getattr(self.assoc.dul.socket, "socket", None)
        if sock is None or isinstance(sock, ssl.SSLSocket):
            return False
        self._original = self.assoc.__dict__.get("send_c_store")
        self.assoc.send_c_store = self
        transport = self.assoc.dul.socket
        dul_send = transport.send

        def send_locked(bytestream: bytes) -> None:  # the DUL thread's writes
            with self._send_lock:
                dul_send(bytestream)

        transport.send = send_locked
        # The DUL thread reads the responses; idle, it polls every 1 ms, which
        # is most of a sub-operation's time on a fast peer: poll faster while
        # we send.
        self._loop_delay = self.assoc.dul._run_loop_delay
        self.assoc.dul._run_loop_delay = DUL_POLL_S
        return True

    def uninstall(self) -> None:
        if self.assoc.__dict__.get("send_c_store") is self:
            if self._original is None:
                del self.assoc.send_c_store
            else:
                self.assoc.send_c_store = self._original
            if self._loop_delay is not None:
                self.assoc.dul._run_loop_delay = self._loop_delay
            self.assoc.dul.socket.__dict__.pop("send", None)  # the class's send again

    def _context(self, sop_class: str, syntax: str) -> Any:
        wanted = UID(syntax)
        ours = [cx for cx in self.assoc.accepted_contexts if cx.abstract_syntax == sop_class and cx.as_scu]
        for cx in ours:
            if cx.transfer_syntax[0] == wanted:
                return cx
        if not wanted.is_compressed:
            for cx in ours:
                ts = UID(cx.transfer_syntax[0])
                if not ts.is_compressed and ts.is_little_endian == wanted.is_little_endian:
                    return cx
        raise ValueError(f"No presentation context for '{UID(sop_class).name}' in '{wanted.name}' was accepted")

    def __call__(
        self,
        dataset: Dataset,
        msg_id: int = 1,
        priority: int = 0,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        assoc = self.assoc
        if not assoc.is_established:
            raise RuntimeError("The association with a peer SCP must be established before sending a C-STORE request")
        missing = [kw for kw in ("SOPClassUID", "SOPInstanceUID") if kw not in dataset]
        if missing:  # same refusal, same words as pynetdicom's sender
            raise AttributeError(
                f"Unable to send the dataset as one or more required element are missing: {', '.join(missing)}"
            )
        sop_class, sop_instance = str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)
        have = self.encoded.pop(sop_instance, None)
        syntax = have[0] if have else str(dataset.file_meta.TransferSyntaxUID)
        cx = self._context(sop_class, syntax)
        ts = UID(cx.transfer_syntax[0])
        if have is not None and ts == have[0]:
            data: bytes | memoryview = have[1]
        else:
            encoded = encode(dataset, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
            if encoded is None:
                raise ValueError("Failed to encode the supplied dataset")
            data = encoded
        peer_max = assoc.acceptor.maximum_length if assoc.is_requestor else assoc.requestor.maximum_length
        size = (peer_max - 6) if peer_max else _UNLIMITED_FRAGMENT
        self.sent[sop_instance] = str(ts)
        command = _command_set(sop_class, sop_instance, msg_id, priority, originator_aet, originator_id)
        parts = _fragments(command, cx.context_id, True, size) + _fragments(data, cx.context_id, False, size)
        try:
            with self._send_lock:
                assoc.dul.socket.socket.sendall(b"".join(parts))
        except OSError as exc:
            assoc.dul.event_queue.put("Evt17")  # transport closed: let pynetdicom end the association
            raise ConnectionError(f"sending the C-STORE request failed: {exc}") from None
        _cx, rsp = assoc.dimse.get_msg(block=True)
        if rsp is None:
            log.error("no C-STORE response for %s within the DIMSE timeout; aborting", sop_instance)
            assoc.abort()
            return Dataset()
        status = Dataset()
        status.Status = int(getattr(rsp, "Status", 0xC000) or 0)
        comment = getattr(rsp, "ErrorComment", None)
        if comment:
            status.ErrorComment = comment
        if getattr(rsp, "MessageIDBeingRespondedTo", msg_id) != msg_id:
            log.error("C-STORE response answers message %s, not %s", rsp.MessageIDBeingRespondedTo, msg_id)
            status.Status = 0xC000
        return status
