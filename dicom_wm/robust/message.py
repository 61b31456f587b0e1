"""The 64-bit robust message: which record, and (on retrieval) which recipient.

Layout (8 bytes, big-endian)::

    bytes 0..5   record tag: the first 48 bits of the record UUID
                 (``uuid.bytes[:6]``, i.e. the first 12 hex digits of its
                 canonical string, ``xxxxxxxx-xxxx``)
    bytes 6..7   recipient tag: 16 bits of SHA-256 over the stripped AE title,
                 mapped to 1..65535; 0 means "no recipient"
"""

from __future__ import annotations

import hashlib
import uuid

__all__ = ["MESSAGE_BITS", "MESSAGE_BYTES", "message_for", "parse_message", "recipient_tag", "record_prefix"]

MESSAGE_BITS = 64
MESSAGE_BYTES = MESSAGE_BITS // 8


def recipient_tag(ae_title: str) -> int:
    """The 16-bit recipient tag of an AE title (1..65535; 0 is reserved for none).

    Two AE titles share a tag with probability 1/65535; trace names every
    destination whose tag matches.
    """
    if not isinstance(ae_title, str):
        raise TypeError(f"ae_title must be str, not {type(ae_title).__name__}")
    title = ae_title.strip()
    if not title:
        raise ValueError("ae_title is empty")
    value = int.from_bytes(hashlib.sha256(b"dicom-wm robust recipient\0" + title.encode("ascii", "replace")).digest()[:2], "big")
    return value % 65535 + 1


def message_for(record_uuid: uuid.UUID, recipient: str | None = None) -> bytes:
    """The 8-byte message naming ``record_uuid`` and, optionally, the recipient AE title."""
    if not isinstance(record_uuid, uuid.UUID):
        raise TypeError(f"record_uuid must be uuid.UUID, not {type(record_uuid).__name__}")
    tag = 0 if recipient is None else recipient_tag(recipient)
    return record_uuid.bytes[:6] + tag.to_bytes(2, "big")


def parse_message(msg: bytes) -> tuple[bytes, int]:
    """``(record tag (6 bytes), recipient tag)`` of a decoded message."""
    if not isinstance(msg, (bytes, bytearray)) or len(msg) != MESSAGE_BYTES:
        raise ValueError(f"a robust message is {MESSAGE_BYTES} bytes, got {msg!r}")
    return bytes(msg[:6]), int.from_bytes(msg[6:8], "big")


def record_prefix(record_tag: bytes) -> str:
    """The canonical UUID string prefix (``xxxxxxxx-xxxx``) a record tag stands for."""
    h = record_tag.hex()
    return f"{h[:8]}-{h[8:12]}"
