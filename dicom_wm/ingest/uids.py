"""UID grammar (PS3.5 section 9.1) - checked before a UID becomes a path."""

from __future__ import annotations

import re

from dicom_wm.ingest.errors import InvalidUID

__all__ = ["check_uid", "is_valid_uid", "MAX_UID_LENGTH"]

MAX_UID_LENGTH = 64
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> bool:
    """True for a str of digit components separated by dots, each without a
    leading zero (a lone ``0`` is allowed), at most 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_UID_LENGTH and _UID.fullmatch(value) is not None


def check_uid(value: object, name: str) -> str:
    """Return ``value`` if it is a valid UID, else raise :class:`InvalidUID`
    naming the attribute and the (shortened, escaped) value."""
    if not is_valid_uid(value):
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise InvalidUID(f"{name} {shown} is not a valid UID (digits and dots, no leading zeros, at most 64 characters)")
    return str(value)
