"""Domain exceptions. Each names the offending value; callers map them to
CLI lines or DIMSE statuses in one place."""


class DicomWmError(Exception):
    """Base class for every error this package raises on purpose."""


class UnsupportedInput(DicomWmError, ValueError):
    """The dataset cannot be watermarked (no/float/1-bit pixel data, unknown
    transfer syntax, inconsistent header, ...)."""


class InsufficientCapacity(DicomWmError):
    """The image cannot carry the payload; nothing was written."""


class SelfCheckFailed(DicomWmError):
    """Extract + restore did not reproduce the original; nothing was written."""


class KeyStoreError(DicomWmError):
    """Key store missing, unreadable, or without the requested key."""


class NotAuthentic(DicomWmError):
    """Restore refused: the instance does not verify (use force to override)."""
