"""Domain exceptions -> DIMSE status, in one table.

pynetdicom's own catch-all (0xC211 for C-STORE) stays a safety net: every
exception the library raises on purpose is mapped here.
"""

from __future__ import annotations

from dicom_wm.ingest.errors import (
    CallingAENotAllowed,
    CannotUnderstand,
    DatabaseUnavailable,
    DatasetMismatch,
    InvalidUID,
    StorageFull,
)
from dicom_wm.query.errors import InvalidIdentifier

__all__ = ["SUCCESS", "STATUS_TABLE", "status_for", "UNEXPECTED"]

SUCCESS = 0x0000
UNEXPECTED = 0xC0FF  # a bug: failure, nothing stored, logged with a traceback

# (exception type, status, meaning); first match wins, so subclasses first.
STATUS_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (CallingAENotAllowed, 0x0124, "Refused: not authorised (calling AE not on the allow-list)"),
    (StorageFull, 0xA700, "Refused: out of resources (spool could not be written)"),
    (DatabaseUnavailable, 0xA701, "Refused: out of resources (database unavailable)"),
    (DatasetMismatch, 0xA900, "Error: data set does not match SOP class / instance of the request"),
    (InvalidUID, 0xC001, "Error: cannot understand (invalid UID)"),
    (CannotUnderstand, 0xC000, "Error: cannot understand (dataset could not be decoded)"),
    # query/retrieve
    (InvalidIdentifier, 0xA900, "Failed: identifier does not match SOP class (C-FIND / C-MOVE / C-GET)"),
)


def status_for(exc: BaseException) -> int:
    """The DIMSE status for ``exc`` (:data:`UNEXPECTED` if it is not in the table)."""
    for kind, status, _meaning in STATUS_TABLE:
        if isinstance(exc, kind):
            return status
    return UNEXPECTED
