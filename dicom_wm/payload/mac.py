"""Keyed MACs over original samples and identifying attributes."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import numpy as np
from pydicom.dataset import Dataset

__all__ = [
    "IDENTITY_KEYWORDS",
    "identity_bytes",
    "canonical_dtype",
    "canonical_samples",
    "samples_sha256",
    "instance_mac",
    "tile_digests",
    "tile_grid",
]

# Attributes bound into the instance MAC: moving the pixels to another
# instance, series or study, or reinterpreting them, breaks the MAC.
IDENTITY_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "NumberOfFrames",
)


def identity_bytes(ds: Dataset) -> bytes:
    parts = []
    for kw in IDENTITY_KEYWORDS:
        value = ds.get(kw, "")
        parts.append(f"{kw}={'' if value is None else str(value).strip()}")
    return "\n".join(parts).encode("utf-8")


def canonical_dtype(bits_stored: int, signed: bool) -> str:
    """Little-endian int32, or int64 for unsigned 32-bit samples."""
    return "<i8" if bits_stored == 32 and not signed else "<i4"


def canonical_samples(samples: np.ndarray, dtype: str) -> bytes:
    """Samples (frames, rows, cols, channels) as canonical little-endian bytes."""
    return np.ascontiguousarray(samples, dtype=dtype).tobytes()


def samples_sha256(samples: np.ndarray, dtype: str) -> str:
    """Hex SHA-256 of :func:`canonical_samples`, hashed from the array's
    buffer (no bytes copy of a long cine)."""
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=dtype)).hexdigest()


def tile_grid(rows: int, cols: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Tiles (row0, col0, row1, col1), end-exclusive, in raster order."""
    return [
        (r0, c0, min(r0 + tile, rows), min(c0 + tile, cols))
        for r0 in range(0, rows, tile)
        for c0 in range(0, cols, tile)
    ]


def tile_digests(
    secret: bytes, record_uuid: uuid.UUID, frame: int, channel: int, plane: np.ndarray, tile: int, dtype: str
) -> list[bytes]:
    """Full HMAC-SHA256 per tile of one plane (rows, cols) of original
    samples; a tile's MAC is a prefix of its digest."""
    head = b"dicom-wm tile\0" + record_uuid.bytes + frame.to_bytes(4, "big") + channel.to_bytes(1, "big")
    base = hmac.new(secret, head, hashlib.sha256)
    plane = np.ascontiguousarray(plane, dtype=dtype)
    out = []
    for i, (r0, c0, r1, c1) in enumerate(tile_grid(*plane.shape, tile)):
        mac = base.copy()
        mac.update(i.to_bytes(4, "big"))
        mac.update(np.ascontiguousarray(plane[r0:r1, c0:c1]).tobytes())
        out.append(mac.digest())
    return out


def instance_mac(secret: bytes, identity: bytes, record_uuid: uuid.UUID, digests: list[bytes]) -> bytes:
    """128-bit MAC over the identity, the record and every tile digest of
    every plane (in plane order), which covers every original sample."""
    mac = hmac.new(secret, b"dicom-wm instance\0", hashlib.sha256)
    mac.update(len(identity).to_bytes(4, "big") + identity)
    mac.update(record_uuid.bytes)
    for d in digests:
        mac.update(d)
    return mac.digest()[:16]
