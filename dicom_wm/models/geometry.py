"""Index geometry shared by the torch network and its numpy reference.

Planes are mirror-padded (index -1 -> 1, the same rule as the classic
predictor's neighbours) by an even amount, so the padded image keeps the
A/B lattice parity of every sample: a padded B position always holds a B
sample. The padded image is then split into 2x2 blocks; block (i, j) holds

    A0 = (2i, 2j)      B0 = (2i, 2j + 1)
    B1 = (2i + 1, 2j)  A1 = (2i + 1, 2j + 1)

and only the B0 / B1 samples ever reach the network.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mirror_index", "padded_indices", "check_planes"]

#: Largest sample magnitude accepted (the final fixed-point sum
#: ``4 * x * 2**(frac_bits - 2)`` must fit int64 with room to spare).
MAX_SAMPLE_MAGNITUDE = 1 << 40


def mirror_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Mirror (reflect without repeating the edge) ``idx`` into ``0..n-1``.

    Works for any overhang, by repeated reflection; parity is preserved
    (``mirror_index(i, n) % 2 == i % 2``) whenever ``n >= 2``.
    """
    if n < 2:
        raise ValueError(f"cannot mirror-pad an axis of length {n} (needs >= 2)")
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m < n, m, period - m)


def padded_indices(n: int, pad: int) -> np.ndarray:
    """Source indices of an axis of length ``n`` padded by ``pad`` (even)
    before and ``pad + n % 2`` after, so the padded length is even."""
    if pad % 2:
        raise ValueError(f"pad={pad} must be even to keep the lattice parity")
    return mirror_index(np.arange(-pad, n + pad + n % 2), n)


def check_planes(planes: np.ndarray) -> None:
    """Validate a predictor input: int32 or int64, (n, rows, cols),
    rows/cols >= 2, |sample| < 2**40."""
    if not isinstance(planes, np.ndarray):
        raise TypeError(f"planes must be a numpy array, not {type(planes).__name__}")
    if planes.dtype not in (np.int32, np.int64):
        raise TypeError(f"planes must be int32 or int64, not {planes.dtype}")
    if planes.ndim != 3:
        raise ValueError(f"planes must have shape (n, rows, cols), not {planes.shape}")
    if planes.shape[1] < 2 or planes.shape[2] < 2:
        raise ValueError(f"plane {planes.shape[1]}x{planes.shape[2]} is too small (needs 2x2)")
    if planes.size and int(np.abs(planes).max()) >= MAX_SAMPLE_MAGNITUDE:
        raise ValueError(f"sample magnitude {int(np.abs(planes).max())} is too large (limit 2**40)")
