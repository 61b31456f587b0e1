"""Pure-integer numpy reference of :class:`~dicom_wm.models.LatticeNet`.

Same network, written with int64 arithmetic only (integer convolutions,
arithmetic right shifts for the floor rescaling, integer clips), so it has no
floating point at all. Tests compare it with the torch path; equality shows
that the float64 carrier of the torch path is exact, and therefore the same
on every device.
"""

from __future__ import annotations

import numpy as np

from dicom_wm.models.config import LatticeNetConfig
from dicom_wm.models.geometry import check_planes, padded_indices
from dicom_wm.models.lattice_net import validate_weights

__all__ = ["reference_forward"]

_INT64_GUARD = 1 << 62


def _conv_valid(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Valid cross-correlation (torch's conv2d) in int64.
    a: (n, ci, h, w), w: (co, ci, kh, kw)."""
    n, _, h, wd = a.shape
    co, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    out = np.zeros((n, co, oh, ow), dtype=np.int64)
    for dy in range(kh):
        for dx in range(kw):
            out += np.einsum("oi,nihw->nohw", w[:, :, dy, dx], a[:, :, dy : dy + oh, dx : dx + ow])
    if out.size and int(np.abs(out).max()) >= _INT64_GUARD:  # cannot happen under the bounds
        raise OverflowError("int64 accumulation left the guarded range")
    return out


def reference_forward(
    planes: np.ndarray, weights: dict[str, np.ndarray], config: LatticeNetConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, cost)`` for int64 ``planes`` (n, rows, cols), computed with
    integers only. Same contract as ``LatticeNet.forward``."""
    check_planes(planes)
    validate_weights(config, weights)
    w = {k: np.asarray(v, dtype=np.int64) for k, v in weights.items()}
    n, rows, cols = planes.shape
    p = config.pad
    xp = planes[:, padded_indices(rows, p)][:, :, padded_indices(cols, p)]
    b0 = xp[:, 0::2, 1::2]
    b1 = xp[:, 1::2, 0::2]
    g = np.stack(
        (
            b0[:, :-1, 1:-1] - b1[:, :-1, 1:-1],
            b0[:, :-1, 1:-1] - b1[:, :-1, 2:],
            b1[:, :-1, 1:-1] - b0[:, 1:, 1:-1],
            b1[:, :-1, 1:-1] - b0[:, 1:, :-2],
        ),
        axis=1,
    )
    clip = 1 << config.diff_clip_bits
    a0 = np.clip(g, -clip, clip) << config.frac_bits
    shifts = [int(s) for s in w["shifts"]]
    top = 1 << config.act_clip_bits
    a = a0
    for k in range(config.conv_layers):
        a = np.clip(_conv_valid(a, w[f"conv{k}.weight"]) >> shifts[k], 0, top)
    out = (_conv_valid(a, w["out.weight"]) >> shifts[config.conv_layers]) + w["out.bias"].reshape(1, 4, 1, 1)
    skip = _conv_valid(a0, w["skip.weight"]) >> shifts[config.conv_layers + 1]
    hb, wb = (rows + 1) // 2, (cols + 1) // 2
    r0 = p // 2 - config.conv_layers
    out = out[:, :, r0 : r0 + hb, r0 - 1 : r0 - 1 + wb]
    k = config.skip_kernel // 2
    rs = p // 2 - k
    skip = skip[:, :, rs : rs + hb, rs - 1 : rs - 1 + wb]
    corr = out[:, :2] + skip
    rank = out[:, 2:]

    def interleave(t: np.ndarray) -> np.ndarray:
        full = np.zeros((n, 2 * hb, 2 * wb), dtype=np.int64)
        full[:, 0::2, 0::2] = t[:, 0]
        full[:, 1::2, 1::2] = t[:, 1]
        return full[:, :rows, :cols]

    nb = np.stack(
        (
            xp[:, p - 1 : p - 1 + rows, p : p + cols],
            xp[:, p + 1 : p + 1 + rows, p : p + cols],
            xp[:, p : p + rows, p - 1 : p - 1 + cols],
            xp[:, p : p + rows, p + 1 : p + 1 + cols],
        )
    )
    s4 = nb.sum(axis=0)
    s = config.frac_bits
    a_mask = ((np.arange(rows)[:, None] + np.arange(cols)[None, :]) & 1) == 0
    lo4, hi4 = nb.min(axis=0), nb.max(axis=0)
    learned = np.clip(((s4 << (s - 2)) + interleave(corr)) >> s, lo4, hi4 + (hi4 > lo4))
    pred = np.where(a_mask, learned, (s4 + 2) >> 2)
    cost = np.maximum((interleave(rank) >> (s - config.cost_frac_bits)) + (1 << config.cost_offset_bits), 0)
    cost = np.where(a_mask, cost, 0)
    return pred, cost
