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
from dicom_wm.query.errors import InvalidIdentifier, UnsupportedSOPClass

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
    (UnsupportedSOPClass, 0x0122, "Refused: SOP class not supported (not a Q/R model of ours, e.g. Modality Worklist)"),
)

# C-FIND has one out-of-resources status (PS3.4 C.4.1.1.4): A700
_FIND_STATUS = {0xA701: 0xA700}


def status_for(exc: BaseException, service: str | None = None) -> int:
    """The DIMSE status for ``exc`` in ``service`` ("C-FIND", ...;
    :data:`UNEXPECTED` if it is not in the table)."""
    for kind, status, _meaning in STATUS_TABLE:
        if isinstance(exc, kind):
            return _FIND_STATUS.get(status, status) if service == "C-FIND" else status
    return UNEXPECTED
