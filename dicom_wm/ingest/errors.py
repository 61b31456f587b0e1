"""Ingest-side domain exceptions. The SCP maps each to one DIMSE status in
one table (scp/status.py); the worker maps them to retry or FAILED."""

from __future__ import annotations

from dicom_wm.errors import DicomWmError

__all__ = [
    "IngestError",
    "CallingAENotAllowed",
    "InvalidUID",
    "CannotUnderstand",
    "DatasetMismatch",
    "StorageFull",
    "DatabaseUnavailable",
]


class IngestError(DicomWmError):
    """Base of the errors raised while receiving an instance."""


class CallingAENotAllowed(IngestError):
    """The calling AE title is not on the allow-list."""


class InvalidUID(IngestError, ValueError):
    """A UID that breaks the PS3.5 9.1 grammar (digits and dots, no leading
    zeros, at most 64 characters); it is never used as a path."""


class CannotUnderstand(IngestError, ValueError):
    """The dataset cannot be decoded, or lacks an attribute storage needs."""


class DatasetMismatch(IngestError, ValueError):
    """The dataset's SOP Class / Instance UID disagrees with the C-STORE request."""


class StorageFull(IngestError, OSError):
    """The spool could not be written (disk full, I/O error); nothing was kept."""


class DatabaseUnavailable(IngestError):
    """The instance row could not be committed; the spooled file was removed."""
