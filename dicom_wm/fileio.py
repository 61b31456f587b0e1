"""Crash-safe file output and careful DICOM input.

Every file this package writes goes through :func:`atomic_write_bytes` or
:func:`atomic_write_dataset`: the bytes go to a temporary file in the target's
directory, are flushed and fsynced, the temporary file is renamed over the
target, and the directory is fsynced. A reader therefore sees either the old
file or the complete new one, never a half-written file, and on any error the
temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_wm.errors import UnsupportedInput

__all__ = [
    "unlink_quietly",
    "atomic_write_bytes",
    "atomic_write_dataset",
    "read_dataset",
    "read_regular_bytes",
    "sha256_file",
    "NotARegularFile",
]


def _current_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # some platforms/filesystems cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], mode: int | None) -> None:
    target = Path(path)
    directory = target.parent
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_current_umask()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def atomic_write_bytes(data: bytes, path: str | os.PathLike[str], *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically and durably.

    Parameters
    ----------
    data : bytes
        The complete new content.
    path : str or PathLike
        The target; its directory must exist.
    mode : int, optional
        Permission bits of the new file. By default an existing target keeps
        its mode and a new one gets ``0o666`` less the umask.
    """
    _atomic_write(path, lambda fh: fh.write(data), mode)


def atomic_write_dataset(ds: Dataset, path: str | os.PathLike[str], *, mode: int | None = None) -> None:
    """Write ``ds`` as a DICOM file (preamble, file meta) atomically and durably.

    The transfer syntax is the one in ``ds.file_meta``; nothing is written if
    pydicom cannot encode the dataset.
    """
    _atomic_write(path, lambda fh: pydicom.dcmwrite(fh, ds, enforce_file_format=True), mode)


def unlink_quietly(path: str | os.PathLike[str]) -> None:
    """Remove a file that may already be gone; log (never raise) other errors:
    callers use it to tidy up after the durable state is already settled."""
    try:
        Path(path).unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        logging.getLogger(__name__).error("could not remove %s: %s", path, exc)


class NotARegularFile(OSError):
    """A FIFO, device, socket or directory where a regular file was expected."""


def _open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for reading, refused unless it is a regular file,
    without blocking on a FIFO (opened non-blocking, checked with fstat)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile(f"{os.fspath(path)} is not a regular file (a FIFO, device, socket or directory)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | os.PathLike[str]) -> bytes:
    """A regular file's bytes (:class:`NotARegularFile` for anything else:
    something put in an archived file's place must not hang the reader)."""
    with _open_regular(path) as fh:
        return fh.read()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a regular file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with _open_regular(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read a DICOM file completely, turning every parse problem into
    :class:`~dicom_wm.errors.UnsupportedInput` with a one-line reason.

    Only Part 10 files (128-byte preamble, then ``DICM``) are accepted;
    anything else is "not a DICOM file". Messages do not repeat the path
    (callers name the file). A file that cannot be opened raises the
    ``OSError``.
    """
    p = Path(path)
    mode = os.stat(p).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):  # opening a FIFO blocks
        raise UnsupportedInput("not a regular file (a FIFO, device or socket)")
    with open(p, "rb") as fh:
        head = fh.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise UnsupportedInput("not a DICOM file (no 'DICM' prefix after the 128-byte preamble)")
    try:
        ds = pydicom.dcmread(p)
        if len(ds) == 0:
            raise UnsupportedInput("truncated or empty: no data elements after the file meta information")
        # pydicom accepts a value cut short by the end of the file; its
        # declared length gives it away.
        for tag, raw in ds.items():
            if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF:
                got = len(raw.value) if raw.value is not None else 0
                if got < raw.length:
                    raise UnsupportedInput(f"truncated: element {tag} declares {raw.length} bytes, the file holds {got}")
        # Raw elements are converted lazily; touch each top-level one so a
        # broken value is reported here rather than halfway through a job.
        for elem in ds:
            _ = elem.value
    except UnsupportedInput:
        raise
    except InvalidDicomError as exc:
        raise UnsupportedInput(f"not a valid DICOM file: {exc}") from None
    except (EOFError, struct.error) as exc:
        raise UnsupportedInput(f"truncated ({exc or 'unexpected end of file'})") from None
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise UnsupportedInput(f"cannot be parsed: {type(exc).__name__}: {exc}") from None
    return ds
