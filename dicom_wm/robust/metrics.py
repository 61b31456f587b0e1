"""Distortion figures of the robust layer (docs/robust.md reports them)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["robust_distortion"]


def _ssim(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    """Mean SSIM (Gaussian window sigma 1.5, the usual constants)."""
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    f = lambda x: ndimage.gaussian_filter(x, 1.5)  # noqa: E731
    ma, mb = f(a), f(b)
    va, vb, cov = f(a * a) - ma * ma, f(b * b) - mb * mb, f(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(s.mean())


def _psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def robust_distortion(
    original: np.ndarray, marked: np.ndarray, lo: int, hi: int, window: tuple[float, float] | None = None
) -> dict[str, float]:
    """PSNR on the stored range (peak ``hi - lo``) and on an 8-bit rendering,
    SSIM on that rendering, and max |delta| in stored units.

    The 8-bit rendering maps ``window`` (low, high) -- a DICOM window given as
    its bounds -- or else the 1st..99th percentile of ``original`` to 0..255,
    rounded and clipped, as a viewer or an export would.
    """
    a = np.asarray(original, dtype=np.float64)
    b = np.asarray(marked, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if window is None:
        w0, w1 = (float(v) for v in np.percentile(a, [1, 99]))
    else:
        w0, w1 = float(window[0]), float(window[1])
    if w1 <= w0:
        w1 = w0 + 1.0

    def render(x: np.ndarray) -> np.ndarray:
        return np.clip(np.round((x - w0) / (w1 - w0) * 255.0), 0, 255)

    a8, b8 = render(a), render(b)
    return {
        "psnr_stored_db": _psnr(a, b, float(hi - lo)),
        "psnr_8bit_windowed_db": _psnr(a8, b8, 255.0),
        "ssim": _ssim(a8, b8, 255.0),
        "max_abs_delta": int(np.max(np.abs(a - b))) if a.size else 0,
    }
