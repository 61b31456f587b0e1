"""Predictors for the reversible engine.

The engine embeds only on the "A" lattice (positions with (row + col) even)
and never modifies the "B" lattice, so a predictor may use every B sample and
must not look at A samples: extraction sees the B lattice exactly as embedding
did, and the prediction is reproduced bit for bit.

A predictor is a small object with the same tiny contract as pydicom's pixel
backends: ``name``, ``version``, ``model_sha256`` and
``predict_and_complexity`` (the prediction, and the local activity that
orders the walk: lower = smoother = embedded first), in one call so a
predictor computes what the two share once.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Predictor", "ClassicRhombus", "a_lattice_mask", "neighbours"]


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


def _narrow(planes: np.ndarray) -> np.ndarray:
    """int32 copy when sums of four samples cannot overflow it (faster)."""
    if planes.size and max(abs(int(planes.min())), abs(int(planes.max()))) < 2**28:
        return planes.astype(np.int32)
    return planes


class ClassicRhombus:
    """Rhombus (4-neighbour mean) predictor, the CPU path."""

    name = "classic-rhombus"
    version = "1"
    model_sha256: str | None = None

    def predict_and_complexity(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, s, w, e = neighbours(_narrow(planes))
        pred = ((n + s + w + e + 2) >> 2).astype(np.int64)
        cost = (np.abs(n - w) + np.abs(w - s) + np.abs(s - e) + np.abs(e - n)).astype(np.int64)
        return pred, cost

    def predict(self, planes: np.ndarray) -> np.ndarray:
        return self.predict_and_complexity(planes)[0]

    def complexity(self, planes: np.ndarray) -> np.ndarray:
        return self.predict_and_complexity(planes)[1]
