"""The key-derived periodic pattern.

One tile is ``PERIOD`` x ``PERIOD`` samples at the canonical scale (the stored
grid of the plane), cut into ``CHIP`` x ``CHIP`` chips. A key-derived
permutation gives ``SYNC_CHIPS`` chips to a fixed sync pattern (used to find
the tile's cyclic shift) and the rest, in turn, to the 306 coded bits; every
chip is XOR-ed with a key-derived sign. The tile is repeated over the whole
plane. Each chip is shaped by the integer window ``SHAPE`` so the pattern is
mid-frequency (it survives JPEG, resizing and median filtering); the
magnitude is rounded with a key-derived dither and, being integer
arithmetic only, is bit-identical on every machine.

All key material comes from SHAKE-256, not from a NumPy generator, so the
pattern (and so :func:`undo_robust`) does not depend on the NumPy version.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from dicom_wm.robust.code import CODED_BITS

__all__ = ["PERIOD", "CHIP", "SHAPE", "SHAPE_SCALE", "SYNC_CHIPS", "Layout", "layout", "dither", "chip_values", "tile_from_chips"]

PERIOD = 128
CHIP = 4
CHIPS = (PERIOD // CHIP) ** 2  # 1024 per tile
SYNC_CHIPS = CHIPS - 3 * CODED_BITS  # 106: every coded bit gets three chips per tile
_W1 = np.array([1, 2, 2, 1], dtype=np.int64)
SHAPE = np.outer(_W1, _W1)  # values 1, 2, 4; rms 2.5
SHAPE_SCALE = 16  # the amplitude is in 1/16 stored units


def _stream(secret: bytes, label: bytes, n: int) -> bytes:
    return hashlib.shake_256(b"dicom-wm robust\0" + label + b"\0" + secret).digest(n)


class Layout:
    """Chip roles of one key: ``sync`` (indices, signs), ``bit_of`` and ``sign``."""

    def __init__(self, secret: bytes) -> None:
        keys = np.frombuffer(_stream(secret, b"perm", 4 * CHIPS), dtype=">u4").astype(np.int64)
        perm = np.argsort(keys * CHIPS + np.arange(CHIPS), kind="stable")
        signs = np.unpackbits(np.frombuffer(_stream(secret, b"sign", CHIPS // 8), dtype=np.uint8)).astype(np.int64)
        self.sign = 1 - 2 * signs  # +-1 per chip
        self.sync = perm[:SYNC_CHIPS]
        self.data = perm[SYNC_CHIPS:]  # data chip j carries coded bit j % CODED_BITS
        self.bit_of = np.arange(self.data.size) % CODED_BITS


@lru_cache(maxsize=16)
def dither(secret: bytes) -> np.ndarray:
    """Key-derived rounding offsets 0..SHAPE_SCALE-1, one per tile sample: with
    them the pattern's energy grows smoothly with the amplitude even when
    every change is 1 or 2 stored units (8-bit planes)."""
    raw = np.frombuffer(_stream(secret, b"dither", PERIOD * PERIOD), dtype=np.uint8).astype(np.int64)
    return (raw % SHAPE_SCALE).reshape(PERIOD, PERIOD)


@lru_cache(maxsize=16)
def layout(secret: bytes) -> Layout:
    return Layout(secret)


def chip_values(coded: np.ndarray | None, secret: bytes) -> np.ndarray:
    """+-1 per chip of the tile (row-major chip grid); data chips are 0 when ``coded`` is None."""
    lay = layout(secret)
    v = np.zeros(CHIPS, np.int64)
    v[lay.sync] = lay.sign[lay.sync]
    if coded is not None:
        v[lay.data] = lay.sign[lay.data] * (1 - 2 * coded[lay.bit_of])
    return v


def tile_from_chips(values: np.ndarray, shape: np.ndarray = SHAPE) -> np.ndarray:
    """The PERIOD x PERIOD tile: each chip value times the chip shape."""
    n = PERIOD // CHIP
    grid = values.reshape(n, n)
    return np.kron(grid, shape)
