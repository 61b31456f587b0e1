"""Carry a plane's payload blocks: fit them (lattice passes, copies, tile-MAC
length, walk length, boundary flags) on embedding; find intact copies and
undo the embedding on reading.

A plane is first tried with the A lattice alone (B untouched, its context
exact). Where that cannot hold the block, the tile MACs are split: the A pass
carries the first tiles, then a B pass (predicted from the watermarked A
lattice) carries the rest. Readers undo B first, then A. Each sample is still
changed at most once, so the ±1 bound holds.

The B pass reuses the A machinery on a view of the plane shifted right by one
mirrored column, which swaps the lattices' parity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from dicom_wm.engine.histogram_shift import (
    WalkOrder,
    carrier_mask,
    embed_walk,
    is_ambiguous,
    positions_needed,
    read_bits,
    restore_walk,
    walk_order,
    walk_order_a,
)
from dicom_wm.engine.predictors import Predictor
from dicom_wm.engine.roi import body_mask
from dicom_wm.errors import InsufficientCapacity
from dicom_wm.payload.block import (
    WALK_ROI,
    BlockError,
    PlaneBlock,
    bits_to_bytes,
    bytes_to_bits,
    decode_block,
    encode_block,
    find_sync,
    peek_key_id,
)

__all__ = [
    "PREFERENCES",
    "PlaneEmbedding",
    "PlaneReading",
    "embed_plane",
    "read_plane",
    "reembed_plane",
    "lattice_walk",
    "plane_walk",
    "WalkMode",
    "STANDARD",
]

# (copies, tile MAC bytes), best first: two copies keep tamper evidence
# localisable when an edit hits one copy, so they come before longer MACs.
PREFERENCES = ((3, 4), (2, 4), (2, 2), (1, 4), (1, 2))
MAX_SYNC_TRIES = 256

# Secret lookup: key id -> secret; raises KeyError for unknown ids.
SecretLookup = Callable[[str], bytes]


def lattice_view(plane: np.ndarray, lattice_pass: int) -> np.ndarray:
    """The plane as seen by a pass: pass 1 shifts it right by one mirrored
    column so that its B lattice becomes the view's A lattice."""
    return plane if lattice_pass == 0 else np.pad(plane, ((0, 0), (1, 0)), mode="reflect")


def from_view(view: np.ndarray, lattice_pass: int) -> np.ndarray:
    return view if lattice_pass == 0 else view[:, 1:]


@dataclass(frozen=True)
class WalkMode:
    """How positions are ordered: ROI-lossless puts the body last."""

    roi: bool = False
    inverted: bool = False  # MONOCHROME1: the body is darker than the background

    def protect(self, view: np.ndarray) -> np.ndarray | None:
        return body_mask(view, inverted=self.inverted) if self.roi else None


STANDARD = WalkMode()


def plane_walk(
    plane: np.ndarray, predictor: Predictor, lo: int, hi: int, protect: np.ndarray | None = None
) -> WalkOrder:
    """Walk order of one (rows, cols) plane; from A-lattice predictions alone
    when the predictor offers them (see dicom_wm.engine.predictors)."""
    fast = getattr(predictor, "predict_a_lattice", None)
    a_values = fast(plane) if fast is not None else None
    if a_values is not None:
        return walk_order_a(*a_values, plane.shape, lo, hi, protect)
    pred, cost = predictor.predict_and_complexity(plane[None])
    return walk_order(pred[0], cost[0], lo, hi, protect)


def lattice_walk(
    view: np.ndarray, predictor: Predictor, lattice_pass: int, lo: int, hi: int, mode: WalkMode = STANDARD
) -> WalkOrder:
    walk = plane_walk(view, predictor, lo, hi, mode.protect(view))
    if lattice_pass == 1:  # the mirrored column is not a real position
        keep = (walk.index % view.shape[1]) != 0
        walk = WalkOrder(walk.index[keep], walk.pred[keep])
    return walk


@dataclass(frozen=True)
class _Fit:
    out: np.ndarray  # flat view, watermarked
    n_bits: int


def _moved_flags(flat: np.ndarray, walk: WalkOrder, n_used: int, lo: int, hi: int) -> np.ndarray:
    """Flags for walked samples that end on the boundary: True if they moved.
    Only shifts reach the boundary, so the flags do not depend on the bits."""
    x = flat[walk.index[:n_used]]
    pred = walk.pred[:n_used]
    e = x - pred
    shift = np.where(e >= 1, 1, np.where(e <= -2, -1, 0))
    shift[((x == hi) & (shift > 0)) | ((x == lo) & (shift < 0))] = 0
    return shift[is_ambiguous(x + shift, pred, lo, hi)] != 0


def _fit(
    flat: np.ndarray,
    walk: WalkOrder,
    carriers: np.ndarray,
    make: Callable[[int, np.ndarray], bytes],
    copies: int,
    lo: int,
    hi: int,
) -> _Fit | None:
    """Embed ``copies`` copies of ``make(n_used, flags)``; None if they do not
    fit. n_used and the flags depend on each other: iterate to a fixed point
    (n_used only grows, so this terminates)."""
    n_used = 0
    flags = np.zeros(0, dtype=bool)
    positions = np.flatnonzero(carriers)  # walk positions that carry a bit
    while True:
        block = make(n_used, flags)
        n_bits = 8 * len(block) * copies
        need = positions_needed(positions, n_bits)
        if need is None:
            return None
        if need <= n_used:
            stream = np.zeros(int(np.searchsorted(positions, n_used)), dtype=np.uint8)  # carriers before n_used
            stream[:n_bits] = np.tile(bytes_to_bits(block), copies)
            return _Fit(embed_walk(flat, walk, stream, n_used, lo, hi), n_bits)
        n_used = need
        flags = _moved_flags(flat, walk, n_used, lo, hi)


@dataclass(frozen=True)
class PlaneEmbedding:
    watermarked: np.ndarray  # (rows, cols)
    payload_bits: int  # bits written, all copies and passes (padding excluded)
    capacity_bits: int  # single-layer capacity: carriers of the A walk (+ B walk when used)
    passes: int
    copies: int


def _preferences(max_copies: int) -> Iterator[tuple[int, int]]:
    return ((c, m) for c, m in PREFERENCES if c <= max_copies)


def embed_plane(
    plane: np.ndarray,
    walk_a: WalkOrder,
    predictor: Predictor,
    template: PlaneBlock,
    tile_macs: list[bytes],
    secret: bytes,
    lo: int,
    hi: int,
    max_copies: int,
    where: str,
    mode: WalkMode = STANDARD,
) -> PlaneEmbedding:
    """Embed the plane's block(s); ``template`` has every field but the
    lattice/tile/copy/walk ones, which this function fills in."""
    n_tiles = len(tile_macs)

    def maker(lattice_pass: int, passes: int, first: int, count: int, mac_len: int, copies: int):
        macs = b"".join(m[:mac_len] for m in tile_macs[first : first + count])

        def make(n_used: int, flags: np.ndarray) -> bytes:
            block = replace(
                template, lattice_pass=lattice_pass, passes=passes,
                walk_flags=template.walk_flags | (WALK_ROI if mode.roi else 0),
                copies=copies, n_used=n_used,
                moved_flags=flags, tile_mac_len=mac_len, first_tile=first, tile_macs=macs,
            )
            return encode_block(block, secret)

        return make

    flat_a = plane.reshape(-1)
    carriers_a = carrier_mask(flat_a[walk_a.index] - walk_a.pred)
    cap_a = int(np.count_nonzero(carriers_a))
    for copies, mac_len in _preferences(max_copies):
        fit = _fit(flat_a, walk_a, carriers_a, maker(0, 1, 0, n_tiles, mac_len, copies), copies, lo, hi)
        if fit is not None:
            return PlaneEmbedding(fit.out.reshape(plane.shape), fit.n_bits, cap_a, 1, copies)

    cap_b = 0
    for copies, mac_len in _preferences(max_copies):
        fixed = len(maker(0, 2, 0, 0, mac_len, copies)(0, np.zeros(0, bool)))
        k = min(n_tiles, max(0, (cap_a // (8 * copies) - fixed) // mac_len))
        fit_a = None
        while k >= 0:
            fit_a = _fit(flat_a, walk_a, carriers_a, maker(0, 2, 0, k, mac_len, copies), copies, lo, hi)
            if fit_a is not None:
                break
            k -= max(1, k // 10) if k > 0 else 1
        if fit_a is None:
            continue
        view = lattice_view(fit_a.out.reshape(plane.shape), 1)
        walk_b = lattice_walk(view, predictor, 1, lo, hi, mode)
        flat_b = view.reshape(-1)
        carriers_b = carrier_mask(flat_b[walk_b.index] - walk_b.pred)
        cap_b = int(np.count_nonzero(carriers_b))
        fit_b = _fit(flat_b, walk_b, carriers_b, maker(1, 2, k, n_tiles - k, mac_len, copies), copies, lo, hi)
        if fit_b is not None:
            out = from_view(fit_b.out.reshape(view.shape), 1)
            return PlaneEmbedding(np.ascontiguousarray(out), fit_a.n_bits + fit_b.n_bits, cap_a + cap_b, 2, copies)
    smallest = 8 * len(maker(0, 1, 0, n_tiles, 2, 1)(0, np.zeros(0, bool)))
    raise InsufficientCapacity(
        f"insufficient capacity in {where}: the payload needs at least {smallest} bits, "
        f"the plane carries {cap_a + cap_b}"
    )


@dataclass
class _Read:
    block: PlaneBlock | None
    restored: np.ndarray | None  # flat view
    problem: str | None  # "none", "unknown_key:<id>", "mac"


def _candidate_offsets(bits: np.ndarray) -> Iterator[int]:
    """Offset 0 (the first copy) first; the sync scan only when it fails."""
    yield 0
    for off in find_sync(bits)[:MAX_SYNC_TRIES]:
        if off:
            yield int(off)


# Walk positions read first: an intact first copy almost always lies within
# them, so the full read (and the sync scan) is only for damaged or large ones.
_PREFIX = 32768


def _read(flat: np.ndarray, walk: WalkOrder, secret_for: SecretLookup, lo: int, hi: int, mode: WalkMode) -> _Read:
    """Find an authentic copy of a block in one lattice pass and undo it."""
    if len(walk.index) > 2 * _PREFIX:
        quick = _read_at(flat, walk, read_bits(flat, walk, _PREFIX), [0], secret_for, lo, hi, mode)
        if quick.block is not None:
            return quick
    bits = read_bits(flat, walk)
    return _read_at(flat, walk, bits, _candidate_offsets(bits), secret_for, lo, hi, mode)


def _read_at(
    flat: np.ndarray,
    walk: WalkOrder,
    bits: np.ndarray,
    offsets: Iterable[int],
    secret_for: SecretLookup,
    lo: int,
    hi: int,
    mode: WalkMode,
) -> _Read:
    problem = "none"
    for off in offsets:
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
        # The standard and the ROI walk can share a long prefix (a flat
        # background comes first in both), so a copy written along one can
        # read back along the other; its undo then walks the wrong positions.
        if bool(block.walk_flags & WALK_ROI) != mode.roi:
            continue
        return _Read(block, restore_walk(flat, walk, block.n_used, block.moved_flags, lo, hi, strict=False), None)
    return _Read(None, None, problem)


@dataclass
class PlaneReading:
    blocks: list[PlaneBlock]  # A-pass block first
    restored: np.ndarray | None  # (rows, cols) when every pass was read
    problem: str | None


def read_plane(
    plane: np.ndarray,
    walk_a: WalkOrder,
    predictor: Predictor,
    secret_for: SecretLookup,
    lo: int,
    hi: int,
    mode: WalkMode = STANDARD,
) -> PlaneReading:
    first = _read(plane.reshape(-1), walk_a, secret_for, lo, hi, mode)
    if first.block is not None and first.block.passes == 1:
        return PlaneReading([first.block], first.restored.reshape(plane.shape), None)
    # Two passes (or an unreadable A pass): undo B first, then read A.
    view = lattice_view(plane, 1)
    second = _read(view.reshape(-1), lattice_walk(view, predictor, 1, lo, hi, mode), secret_for, lo, hi, mode)
    if second.block is None or second.block.lattice_pass != 1:
        blocks = [first.block] if first.block is not None else []
        return PlaneReading(blocks, None, first.problem if first.problem != "none" else second.problem)
    restored_b = np.ascontiguousarray(from_view(second.restored.reshape(view.shape), 1))
    third = _read(restored_b.reshape(-1), lattice_walk(restored_b, predictor, 0, lo, hi, mode), secret_for, lo, hi, mode)
    if third.block is None:
        return PlaneReading([second.block], None, third.problem)
    return PlaneReading([third.block, second.block], third.restored.reshape(plane.shape), None)


def reembed_plane(
    restored: np.ndarray,
    blocks: list[PlaneBlock],
    predictor: Predictor,
    secret: bytes,
    lo: int,
    hi: int,
    mode: WalkMode = STANDARD,
    walk_a: WalkOrder | None = None,
) -> np.ndarray:
    """Embed the decoded blocks into the restored plane again. Where the
    result differs from the received plane, the received plane was edited
    (this catches edits that restore to the same original).

    ``walk_a``: the reader's A walk, reused for a single-pass plane (its B
    lattice was never changed, so the walk is the same)."""
    out = restored
    for block in sorted(blocks, key=lambda b: b.lattice_pass):
        view = lattice_view(out, block.lattice_pass)
        if walk_a is not None and block.passes == 1:
            walk = walk_a
        else:
            walk = lattice_walk(view, predictor, block.lattice_pass, lo, hi, mode)
        flat = view.reshape(-1)
        raw = encode_block(block, secret)
        carriers = carrier_mask(flat[walk.index[: block.n_used]] - walk.pred[: block.n_used])
        stream = np.zeros(np.count_nonzero(carriers), dtype=np.uint8)
        bits = np.tile(bytes_to_bits(raw), block.copies)[: len(stream)]
        stream[: len(bits)] = bits
        out = np.ascontiguousarray(from_view(embed_walk(flat, walk, stream, block.n_used, lo, hi).reshape(view.shape), block.lattice_pass))
    return out

