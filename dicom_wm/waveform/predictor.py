"""The 1-D predictor for waveform planes.

A multiplex group is one plane, shaped (channels, samples). The engine's A
lattice ((row + col) even) is then, on each channel, every other sample (the
even samples on even channels, the odd ones on odd channels), and the B
lattice the rest; the engine changes A samples only. This predictor looks
along a channel only, at the other lattice:

    pred = (x[t-1] + x[t+1] + 1) >> 1
    cost = (|x[t-1] - x[t+1]| + |x[t-3] - x[t-1]| + |x[t+1] - x[t+3]|) >> 3

with mirror padding (index -1 -> 1, n -> n-2), which keeps parity, so it
also serves the engine's second (B-lattice) pass unchanged.

The cost is coarse on purpose. The walk is sorted by cost, ties in time
order, and a one-sample edit changes the cost of up to four positions; with
a fine cost they jump elsewhere in the walk, shifting bits in every payload
copy they land in, so one edited sample could leave no copy readable. In
steps of 8 they mostly stay in place (on the bundled ECG, 150 random
one-sample edits left every block readable, against 6 in 60 lost with the raw
cost), and quiet stretches, where the cost is below 8, are walked in time
order.

A sample equal to the group's padding value (``frozen``) gets a prediction
far below any walk window, so it is never walked: its value is never changed
and no changed sample can reach it (the walk range excludes it), so the
extractor finds the same positions excluded. This is the one place where a
prediction depends on the predicted sample itself, and only through that
invariant test.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Linear1D", "NOT_WALKED"]

# A prediction no walk window contains (walk windows lie within int16/uint16).
NOT_WALKED = -(1 << 40)


class Linear1D:
    """Mean of the two neighbours along the time axis."""

    name = "waveform-linear"
    version = "1"
    model_sha256: str | None = None

    def __init__(self, frozen: int | None = None) -> None:
        self.frozen = frozen

    @staticmethod
    def _padded(planes: np.ndarray, width: int) -> np.ndarray:
        if planes.ndim != 3 or planes.shape[2] < 2:
            raise ValueError(f"planes shaped {planes.shape}: need (n, channels, samples) with samples >= 2")
        return np.pad(planes.astype(np.int64, copy=False), ((0, 0), (0, 0), (width, width)), mode="reflect")

    def predict(self, planes: np.ndarray) -> np.ndarray:
        p = self._padded(planes, 1)
        pred = (p[..., :-2] + p[..., 2:] + 1) >> 1
        if self.frozen is not None:
            pred[planes == self.frozen] = NOT_WALKED
        return pred

    def complexity(self, planes: np.ndarray) -> np.ndarray:
        p = self._padded(planes, 3)
        ww, w, e, ee = p[..., :-6], p[..., 2:-4], p[..., 4:-2], p[..., 6:]
        return (np.abs(w - e) + np.abs(ww - w) + np.abs(e - ee)) >> 3

    def predict_and_complexity(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.predict(planes), self.complexity(planes)
