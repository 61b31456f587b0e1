"""Query/Retrieve domain exceptions; scp/status.py maps each to one status."""

from __future__ import annotations

from dicom_wm.errors import DicomWmError

__all__ = ["QueryRetrieveError", "InvalidIdentifier", "UnsupportedSOPClass"]


class QueryRetrieveError(DicomWmError):
    """Base of the errors a C-FIND / C-MOVE / C-GET request can cause."""


class InvalidIdentifier(QueryRetrieveError, ValueError):
    """The request identifier does not fit the information model: missing or
    unknown level, a missing unique key of a higher level, a malformed date,
    time, number or UID, a wildcard where none is allowed (0xA900).

    ``offending`` lists the DICOM tags at fault, as ints."""

    def __init__(self, message: str, offending: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.offending = offending


class UnsupportedSOPClass(QueryRetrieveError, KeyError):
    """A C-FIND / C-MOVE / C-GET on a SOP class that is not one of our Q/R
    information models (e.g. Modality Worklist), 0x0122."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
