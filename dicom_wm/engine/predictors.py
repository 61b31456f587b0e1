"""Predictors for the reversible engine.

The engine embeds only on the "A" lattice (positions with (row + col) even)
and never modifies the "B" lattice, so a predictor may use every B sample and
must not look at A samples: extraction sees the B lattice exactly as embedding
did, and the prediction is reproduced bit for bit.

A predictor is a small object with the same tiny contract as pydicom's pixel
backends: ``name``, ``version``, ``model_sha256`` and
``predict_and_complexity`` (the prediction, and the local activity that
orders the walk: lower = smoother = embedded first), in one call so a
predictor computes what the two share once. A predictor may also offer
``predict_a_lattice(plane)``: the same two values at the A-lattice positions
only, in raster order (half the work; the engine uses it when present).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Predictor",
    "ClassicRhombus",
    "PrecomputedPredictor",
    "a_lattice_mask",
    "neighbours",
    "predict_many",
]


@runtime_checkable
class Predictor(Protocol):
    name: str
    version: str
    model_sha256: str | None

    def predict_and_complexity(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prediction and local activity of every sample of ``planes`` (int64,
        shape (n, rows, cols)); both int64 of the same shape.

        Only A-lattice outputs are used, and they may depend on B-lattice
        inputs only. Activity is non-negative; smooth regions get low values.
        """


def a_lattice_mask(rows: int, cols: int) -> np.ndarray:
    """Boolean (rows, cols) mask of the A lattice ((row + col) even)."""
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    return ((r + c) & 1) == 0


def neighbours(planes: np.ndarray) -> tuple[np.ndarray, ...]:
    """North, south, west, east neighbours of every sample, with mirror
    padding (index -1 -> 1), which keeps lattice parity at the borders."""
    if planes.shape[1] < 2 or planes.shape[2] < 2:
        raise ValueError(f"plane {planes.shape[1]}x{planes.shape[2]} is too small (needs 2x2)")
    p = np.pad(planes, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    n = p[:, :-2, 1:-1]
    s = p[:, 2:, 1:-1]
    w = p[:, 1:-1, :-2]
    e = p[:, 1:-1, 2:]
    return n, s, w, e


def _fits_int32(planes: np.ndarray) -> bool:
    """Sums of four samples (and of four differences) cannot overflow int32."""
    return not planes.size or max(abs(int(planes.min())), abs(int(planes.max()))) < 2**28


def _narrow(planes: np.ndarray) -> np.ndarray:
    """int32 when sums of four samples cannot overflow it (faster), else int64."""
    return planes.astype(np.int32 if _fits_int32(planes) else np.int64, copy=False)


def _reflect_pad(plane: np.ndarray) -> np.ndarray:
    """``np.pad(plane, 1, mode="reflect")`` without its corners (never read)."""
    rows, cols = plane.shape
    out = np.empty((rows + 2, cols + 2), plane.dtype)
    out[1:-1, 1:-1] = plane
    out[0, 1:-1] = plane[1]
    out[-1, 1:-1] = plane[-2]
    out[:, 0] = out[:, 2]
    out[:, -1] = out[:, -3]
    return out


def _rhombus(n: np.ndarray, s: np.ndarray, w: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The classic prediction and cost from the four neighbours (docs/format.md §2)."""
    pred = n + s
    pred += w
    pred += e
    pred += 2
    pred >>= 2
    cost = np.abs(n - w)
    cost += np.abs(w - s)
    cost += np.abs(s - e)
    cost += np.abs(e - n)
    return pred, cost


class ClassicRhombus:
    """Rhombus (4-neighbour mean) predictor, the CPU path."""

    name = "classic-rhombus"
    version = "1"
    model_sha256: str | None = None

    def predict_and_complexity(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pred, cost = _rhombus(*neighbours(_narrow(planes)))
        return pred.astype(np.int64, copy=False), cost.astype(np.int64, copy=False)

    def predict_a_lattice(self, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``predict_and_complexity`` of one (rows, cols) plane at its
        A-lattice positions, raster order (int32, 1-D); None when the
        samples are too wide for int32 sums (then use the full maps).

        Row r's A positions are its columns of parity r % 2, and their four
        neighbours lie in the other column parity (north / south) or the
        same one (west / east): splitting the padded plane by column parity
        makes every operand a plain strided view."""
        rows, cols = plane.shape
        if rows < 2 or cols < 2:
            raise ValueError(f"plane {rows}x{cols} is too small (needs 2x2)")
        if not _fits_int32(plane):
            return None
        padded = _reflect_pad(plane.astype(np.int32, copy=False))
        by_parity = (np.ascontiguousarray(padded[:, 0::2]), np.ascontiguousarray(padded[:, 1::2]))
        width = (cols + 1) // 2  # A positions in an even row; odd rows have cols // 2
        pred = np.empty((rows, width), np.int32)
        cost = np.empty((rows, width), np.int32)
        for parity in (0, 1):
            n_rows, n_cols = len(range(parity, rows, 2)), (cols + 1 - parity) // 2
            vertical, horizontal = by_parity[1 - parity], by_parity[parity]
            # padded row i + 1 is plane row i: north of row r is padded row r
            n = vertical[parity : parity + 2 * n_rows : 2, parity : parity + n_cols]
            s = vertical[parity + 2 : parity + 2 + 2 * n_rows : 2, parity : parity + n_cols]
            w = horizontal[parity + 1 : parity + 1 + 2 * n_rows : 2, 0:n_cols]
            e = horizontal[parity + 1 : parity + 1 + 2 * n_rows : 2, 1 : n_cols + 1]
            pred[parity::2, :n_cols], cost[parity::2, :n_cols] = _rhombus(n, s, w, e)
        if cols % 2:  # odd rows are one position short
            keep = np.ones((rows, width), bool)
            keep[1::2, -1] = False
            return pred[keep], cost[keep]
        return pred.reshape(-1), cost.reshape(-1)

    def predict(self, planes: np.ndarray) -> np.ndarray:
        return self.predict_and_complexity(planes)[0]

    def complexity(self, planes: np.ndarray) -> np.ndarray:
        return self.predict_and_complexity(planes)[1]


def predict_many(
    predictor: Predictor, plane_sets: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Prediction and complexity of several stacks of planes (e.g. the planes
    of several instances) with as few predictor calls as possible.

    Stacks are grouped by plane shape (rows, cols); the planes of one group
    are concatenated and go through ``predict_and_complexity`` in one call
    (the learned predictor splits a call into device-sized forward passes),
    whatever their bit depths. Every predictor here computes each plane
    independently of the others in its call, so the result for each stack is
    identical to ``predictor.predict_and_complexity(stack)``. Returns one
    ``(pred, cost)`` pair per stack, in order (int64, the stack's shape).
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, stack in enumerate(plane_sets):
        if stack.ndim != 3:
            raise ValueError(f"stack {i} has shape {stack.shape}; expected (n, rows, cols)")
        groups.setdefault((stack.shape[1], stack.shape[2]), []).append(i)
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(plane_sets)
    for members in groups.values():
        stacks = [np.asarray(plane_sets[i], dtype=np.int64) for i in members]
        joined = stacks[0] if len(stacks) == 1 else np.concatenate(stacks)
        pred, cost = predictor.predict_and_complexity(joined)
        start = 0
        for i, stack in zip(members, stacks):
            end = start + len(stack)
            out[i] = (pred[start:end], cost[start:end])
            start = end
    return [pair for pair in out if pair is not None]


class PrecomputedPredictor:
    """A predictor that answers from maps computed earlier (in a batch) for
    exactly the planes they were computed from, and asks ``base`` for
    anything else.

    A call is served from the stored maps only when its planes are equal,
    sample for sample, to a run of the stored planes, so a stale or
    mismatched entry can cost speed but never correctness. Name, version and
    model hash are ``base``'s, so provenance is unchanged. ``hits`` and
    ``misses`` count the planes served each way.
    """

    def __init__(self, base: Predictor, planes: np.ndarray, pred: np.ndarray, cost: np.ndarray) -> None:
        if not planes.shape == pred.shape == cost.shape or planes.ndim != 3:
            raise ValueError(
                f"planes {planes.shape}, predictions {pred.shape} and complexities {cost.shape} must be one (n, rows, cols) shape"
            )
        self.base = base
        self.name = base.name
        self.version = base.version
        self.model_sha256 = base.model_sha256
        self._planes, self._pred, self._cost = planes, pred, cost
        self._next = 0
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"PrecomputedPredictor({self.base!r}, {len(self._planes)} plane(s))"

    def predict_and_complexity(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start = self._find(planes)
        if start is None:
            self.misses += len(planes)
            return self.base.predict_and_complexity(planes)
        n = len(planes)
        self._next = start + n
        self.hits += n
        return self._pred[start : start + n].copy(), self._cost[start : start + n].copy()

    def _find(self, planes: np.ndarray) -> int | None:
        """Index of a run of stored planes equal to ``planes``: where the last
        call ended first (embed predicts its planes in order), else any
        start whose first row matches (cheap) and whose planes are equal."""
        n = len(planes)
        total = len(self._planes)
        if not n or n > total or planes.shape[1:] != self._planes.shape[1:]:
            return None
        first_rows = self._planes[: total - n + 1, 0, :]
        starts = [self._next] + np.flatnonzero((first_rows == planes[0, 0, :]).all(axis=1)).tolist()
        for start in dict.fromkeys(starts):
            if start + n <= total and np.array_equal(self._planes[start : start + n], planes):
                return int(start)
        return None
