"""±1 prediction-error histogram shifting on the A lattice of one plane.

Walk order: A-lattice positions whose prediction lies in [lo + 3, hi - 2],
sorted by (complexity, raster index), smooth first. Walking a position with
prediction error e = x - pred:

    e == 0  carries bit b:  x += b          e >= 1:  x += 1  (shift)
    e == -1 carries bit b:  x -= b          e <= -2: x -= 1  (shift)

The walk stops after the last payload bit (``n_used`` positions); later
positions are untouched. Every sample changes by at most 1.

Boundary rule (why predictions must lie in [lo + 3, hi - 2], or equal lo):
with such a prediction, a sample at ``hi`` always has e >= 2 and one at
``lo`` either e <= -3 or (pred == lo) e == 0; a sample that would leave the
range stays as it is. A sample can also be shifted *onto* the boundary. After
embedding, a walked sample at hi, or at lo with pred > lo, is therefore
ambiguous only for restoration, never for reading bits: one flag per such
sample (in walk order) says whether it moved. The flags travel in the
payload, so bit parsing never depends on them. (pred == lo is allowed so
that black frames and padding at the range minimum still carry bits: there
nothing moves down, so a sample at lo is simply a carrier of bit 0.)

The B lattice is never modified, so predictions and complexities computed at
extraction equal those of embedding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "WalkOrder",
    "walk_order",
    "walk_order_a",
    "a_lattice_index",
    "carrier_mask",
    "positions_needed",
    "embed_walk",
    "read_bits",
    "restore_walk",
    "ambiguous_positions",
    "is_ambiguous",
]


@dataclass(frozen=True)
class WalkOrder:
    """Flat indices of the walkable positions of one plane, in walk order,
    and their predictions."""

    index: np.ndarray  # flat indices into the plane (int32 where they fit)
    pred: np.ndarray  # predictions at those positions (int32 where the sample range fits)


@functools.lru_cache(maxsize=16)
def a_lattice_index(rows: int, cols: int) -> np.ndarray:
    """Flat indices of the A lattice ((row + col) even), raster order."""
    # int32 halves the walks' memory (a cine's run to GBs)
    idx = np.arange(rows * cols, dtype=np.int32 if rows * cols < 2**31 else np.int64).reshape(rows, cols)
    out = idx[((np.arange(rows)[:, None] + np.arange(cols)[None, :]) & 1) == 0]
    out.setflags(write=False)
    return out


def walk_order(
    pred: np.ndarray, cost: np.ndarray, lo: int, hi: int, protect: np.ndarray | None = None
) -> WalkOrder:
    """Walk order of one plane from its prediction and complexity maps.

    ``protect`` (bool, plane shape) moves those positions after all others
    (ROI-lossless mode: they are only walked if the rest cannot carry the
    payload). It must be computed from B-lattice samples only."""
    a_idx = a_lattice_index(*pred.shape)
    return walk_order_a(pred.reshape(-1)[a_idx], cost.reshape(-1)[a_idx], pred.shape, lo, hi, protect)


def walk_order_a(
    pred: np.ndarray,
    cost: np.ndarray,
    shape: tuple[int, int],
    lo: int,
    hi: int,
    protect: np.ndarray | None = None,
) -> WalkOrder:
    """``walk_order`` from the prediction and complexity at the A-lattice
    positions of a ``shape`` plane only (1-D, raster order)."""
    a_idx = a_lattice_index(*shape)
    ok = ((pred >= lo + 3) & (pred <= hi - 2)) | (pred == lo)
    if not ok.all():
        a_idx, pred, cost = a_idx[ok], pred[ok], cost[ok]
    key = np.minimum(cost, 0xFFFF).astype(np.uint16)
    if protect is None:
        order = _stable_order(key)
    else:
        inside = protect.reshape(-1)[a_idx]
        out_idx, in_idx = np.flatnonzero(~inside), np.flatnonzero(inside)
        order = np.concatenate([out_idx[_stable_order(key[out_idx])], in_idx[_stable_order(key[in_idx])]])
    p = pred[order]
    return WalkOrder(index=a_idx[order], pred=p.astype(np.int32, copy=False) if hi < 2**31 else p)


def _stable_order(key: np.ndarray) -> np.ndarray:
    """``np.argsort(key, kind="stable")`` of uint16 keys: ties keep raster
    order, which is what makes the walk reproducible.

    When key and position fit in 32 bits together, sorting the packed
    values (unique, so any sort is stable) is about twice as fast as the
    radix argsort, which remains the general path."""
    if not key.size:
        return np.zeros(0, np.intp)
    pos_bits = max(1, (key.size - 1).bit_length())
    if int(key.max()).bit_length() + pos_bits > 32:
        return np.argsort(key, kind="stable")
    packed = key.astype(np.uint32) << np.uint32(pos_bits)
    packed |= np.arange(key.size, dtype=np.uint32)
    packed.sort()
    packed &= np.uint32((1 << pos_bits) - 1)
    return packed.astype(np.intp)  # numpy gathers far faster with intp indices


def carrier_mask(e: np.ndarray) -> np.ndarray:
    """Positions that carry a bit, from *original* prediction errors."""
    return (e == 0) | (e == -1)


def positions_needed(carrier_positions: np.ndarray, n_bits: int) -> int | None:
    """Smallest walk length that carries ``n_bits`` bits (None if impossible),
    from the walk positions of the carriers (``np.flatnonzero`` of
    ``carrier_mask``, ascending)."""
    if n_bits == 0:
        return 0
    if len(carrier_positions) < n_bits:
        return None
    return int(carrier_positions[n_bits - 1]) + 1


def embed_walk(
    flat: np.ndarray, walk: WalkOrder, bits: np.ndarray, n_used: int, lo: int, hi: int
) -> np.ndarray:
    """Return the watermarked copy of ``flat`` (1-D plane) carrying ``bits``
    on the first ``n_used`` walk positions. The caller checked capacity."""
    idx = walk.index[:n_used]
    x = flat[idx]
    e = x - walk.pred[:n_used]
    carriers = carrier_mask(e)
    delta = np.where(e >= 1, 1, np.where(e <= -2, -1, 0)).astype(flat.dtype)
    b = np.zeros(n_used, dtype=flat.dtype)
    b[carriers] = bits[: np.count_nonzero(carriers)]
    delta += np.where(e == 0, b, 0) - np.where(e == -1, b, 0)
    # A boundary sample never leaves the range (see module docstring).
    delta[((x == hi) & (delta > 0)) | ((x == lo) & (delta < 0))] = 0
    out = flat.copy()
    out[idx] = x + delta
    return out


def is_ambiguous(w: np.ndarray, pred: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Walked samples whose restoration needs a flag: at hi, or at lo where
    the prediction is above lo (at pred == lo nothing is shifted down)."""
    return (w == hi) | ((w == lo) & (pred != lo))


def ambiguous_positions(wflat: np.ndarray, walk: WalkOrder, n_used: int, lo: int, hi: int) -> np.ndarray:
    """Walk positions (< n_used) whose restoration needs a flag."""
    return np.flatnonzero(is_ambiguous(wflat[walk.index[:n_used]], walk.pred[:n_used], lo, hi))


def read_bits(wflat: np.ndarray, walk: WalkOrder, limit: int | None = None) -> np.ndarray:
    """Bits read along the walk (uint8), or its first ``limit`` positions.
    Positions past the embedder's stop yield noise bits after the payload,
    which the payload parser ignores."""
    e = wflat[walk.index[:limit]] - walk.pred[:limit]
    carriers = (e >= -2) & (e <= 1)
    return ((e[carriers] == 1) | (e[carriers] == -2)).astype(np.uint8)


def restore_walk(
    wflat: np.ndarray,
    walk: WalkOrder,
    n_used: int,
    moved_flags: np.ndarray,
    lo: int,
    hi: int,
    *,
    strict: bool = True,
) -> np.ndarray:
    """Undo the embedding on the first ``n_used`` walk positions.

    ``moved_flags`` holds one bool per ambiguous position (in walk order).
    With ``strict=False`` a count mismatch (an edited image) is tolerated:
    missing flags count as "moved", so restoration stays local and the
    tile MACs show where the image was edited."""
    idx = walk.index[:n_used]
    w = wflat[idx]
    e = w - walk.pred[:n_used]
    delta = np.where(e >= 1, -1, np.where(e <= -2, 1, 0)).astype(wflat.dtype)
    amb = np.flatnonzero(is_ambiguous(w, walk.pred[:n_used], lo, hi))
    flags = moved_flags.astype(bool)
    if amb.size != flags.size:
        if strict:
            raise ValueError(f"{amb.size} boundary samples but {flags.size} flags")
        flags = np.concatenate([flags, np.ones(max(0, amb.size - flags.size), bool)])[: amb.size]
    delta[amb[~flags]] = 0
    out = wflat.copy()
    out[idx] = w + delta
    return out
