"""Body mask for the ROI-lossless mode: samples inside the patient's body are
walked last, so they stay unchanged whenever the rest of the plane can carry
the payload.

The mask must be reproducible at extraction, so it is computed from the B
lattice only (A samples are replaced by their rhombus prediction from B)."""

from __future__ import annotations

import numpy as np

from dicom_wm.engine.predictors import ClassicRhombus, a_lattice_mask

__all__ = ["body_mask"]

_MARGIN = 4  # samples of safety margin around the detected body
_MIN_AREA = 0.005  # components smaller than this fraction are noise, not body


def _otsu(values: np.ndarray) -> float:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(values, bins=256, range=(lo, hi))
    p = hist.astype(np.float64) / hist.sum()
    w0 = np.cumsum(p)
    mu = np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    w1 = 1.0 - w0
    between = (mu[-1] * w0 - mu) ** 2 / np.maximum(w0 * w1, 1e-12)
    return float(edges[1:][int(np.argmax(between))])


def body_mask(plane: np.ndarray, *, inverted: bool = False) -> np.ndarray:
    """Bool (rows, cols): the body (foreground) of one plane, from its B
    lattice. ``inverted`` for MONOCHROME1 (body darker than background)."""
    from scipy import ndimage  # ~0.2 s to import: only the ROI-lossless mode needs it

    rows, cols = plane.shape
    estimate = np.where(a_lattice_mask(rows, cols), ClassicRhombus().predict(plane[None])[0], plane)
    if inverted:
        estimate = -estimate
    # Background is air or padding, far darker than any tissue: threshold on
    # a log scale (so bright fat or bone does not pull the threshold into
    # soft tissue), ignoring samples at the minimum (padding outside a CT
    # field of view).
    floor = estimate.min()
    level = np.log1p((estimate - floor).astype(np.float64))
    rest = level[estimate > floor]
    fg = level > (_otsu(rest) if rest.size else 0.0)
    fg = ndimage.binary_opening(fg, iterations=1)
    labels, n = ndimage.label(fg)
    if n:
        areas = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(areas >= _MIN_AREA * rows * cols) + 1
        fg = np.isin(labels, keep)
    fg = ndimage.binary_fill_holes(fg)
    return ndimage.binary_dilation(fg, iterations=_MARGIN)
