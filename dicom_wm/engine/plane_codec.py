"""Carry one payload block per plane: fit it (copies, walk length, boundary
flags) on embedding, find an intact copy and undo the embedding on reading."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dicom_wm.engine.histogram_shift import (
    WalkOrder,
    carrier_mask,
    embed_walk,
    positions_needed,
    read_bits,
    restore_walk,
)
from dicom_wm.errors import InsufficientCapacity
from dicom_wm.payload.block import BlockError, PlaneBlock, bits_to_bytes, bytes_to_bits, decode_block, find_sync, peek_key_id

__all__ = ["PlaneEmbedding", "embed_plane", "PlaneReading", "read_plane", "plane_capacity"]

# A block builder: (n_used, moved_flags, copies) -> encoded block bytes.
BlockBuilder = Callable[[int, np.ndarray, int], bytes]
# Secret lookup: key id -> secret; raises KeyError-like for unknown ids.
SecretLookup = Callable[[str], bytes]

MAX_SYNC_TRIES = 256


@dataclass(frozen=True)
class PlaneEmbedding:
    watermarked: np.ndarray  # flat plane
    block: bytes
    copies: int
    n_used: int
    payload_bits: int  # bits written, all copies (padding excluded)
    capacity_bits: int  # carriers over the whole walk


def plane_capacity(flat: np.ndarray, walk: WalkOrder) -> int:
    return int(carrier_mask(flat[walk.index] - walk.pred).sum())


def _moved_flags(flat: np.ndarray, walk: WalkOrder, n_used: int, lo: int, hi: int) -> np.ndarray:
    """Flags for walked samples that end on the boundary: True if they moved.
    Only shifts reach the boundary, so the flags do not depend on the bits."""
    x = flat[walk.index[:n_used]]
    e = x - walk.pred[:n_used]
    at_bound = (x == lo) | (x == hi)
    shift = np.where(e >= 1, 1, np.where(e <= -2, -1, 0))
    shift[at_bound] = 0
    final = x + shift
    amb = (final == lo) | (final == hi)
    return shift[amb] != 0


def embed_plane(
    flat: np.ndarray, walk: WalkOrder, build: BlockBuilder, lo: int, hi: int, max_copies: int, where: str
) -> PlaneEmbedding:
    """Embed as many copies (<= max_copies, >= 1) of the block as fit."""
    carriers = carrier_mask(flat[walk.index] - walk.pred)
    capacity = int(carriers.sum())
    smallest = None
    for copies in range(max_copies, 0, -1):
        n_used = 0
        flags = np.zeros(0, dtype=bool)
        for _ in range(64):
            block = build(n_used, flags, copies)
            n_bits = 8 * len(block) * copies
            need = positions_needed(carriers, n_bits)
            if need is None:
                smallest = n_bits
                break
            if need <= n_used:
                stream = np.zeros(int(carriers[:n_used].sum()), dtype=np.uint8)
                stream[:n_bits] = np.tile(bytes_to_bits(block), copies)
                out = embed_walk(flat, walk, stream, n_used, lo, hi)
                return PlaneEmbedding(out, block, copies, n_used, n_bits, capacity)
            n_used = need
            flags = _moved_flags(flat, walk, n_used, lo, hi)
    raise InsufficientCapacity(
        f"insufficient capacity in {where}: the payload needs {smallest} bits, the plane carries {capacity}"
    )


@dataclass
class PlaneReading:
    block: PlaneBlock | None
    restored: np.ndarray | None  # flat plane, when a block was found
    problem: str | None  # why no block: "none", "unknown_key:<id>", "mac"
    copy_offset: int = 0


def _candidate_offsets(bits: np.ndarray):
    """Offset 0 (the first copy) first; the sync scan only when it fails."""
    yield 0
    for off in find_sync(bits)[:MAX_SYNC_TRIES]:
        if off:
            yield int(off)


def read_plane(wflat: np.ndarray, walk: WalkOrder, secret_for: SecretLookup, lo: int, hi: int) -> PlaneReading:
    """Find an authentic copy of the block, then restore the plane."""
    bits = read_bits(wflat, walk)
    problem = "none"
    for off in _candidate_offsets(bits):
        data = bits_to_bytes(bits[off:])
        try:
            key_id = peek_key_id(data)
        except BlockError:
            continue
        try:
            secret = secret_for(key_id)
        except KeyError:
            problem = f"unknown_key:{key_id}"
            continue
        try:
            block = decode_block(data, secret)
        except BlockError:
            if problem == "none":
                problem = "mac"
            continue
        if block.n_used > len(walk.index):
            continue
        restored = restore_walk(wflat, walk, block.n_used, block.moved_flags, lo, hi, strict=False)
        return PlaneReading(block, restored, None)
    return PlaneReading(None, None, problem)
