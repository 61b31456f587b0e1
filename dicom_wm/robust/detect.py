"""Blind decoding: re-synchronise (scale, rotation, shift), soft-decode, check.

1. The image (any scale, any size; RGB is averaged to luminance) is whitened
   up to three ways, each tried in turn: classically (a Gaussian high-pass,
   divided by the local standard deviation and clipped, so edges, windowing
   and export scaling do not dominate), by the learned linear extraction
   filter (:mod:`dicom_wm.robust.learned`) and by the deep decoder
   (:mod:`dicom_wm.robust.deep`), the last two when torch is installed.
2. Geometry hypotheses: the identity first, then scale/rotation read from the
   autocorrelation of the whitened image, whose strongest off-centre peaks sit
   on the lattice of the pattern's period (each peak's angle is also tried at
   scale 1, for when image content outshines the lattice). Each hypothesis is refined on a
   small grid by the height of the sync correlation peak.
3. Under a hypothesis the image is resampled to the canonical grid, folded
   modulo the period (averaging every tile it holds), and cross-correlated
   (FFT, cyclic) with the key's sync chips: the peak gives the tile shift.
4. The chips are matched-filtered, de-signed with the key and summed per coded
   bit; a list Viterbi decoder gives the :data:`LIST_SIZE` most likely
   96-bit sequences, and the first whose 32-bit keyed check matches is the
   message (the check picks the right path when noise put it just behind
   the best one: about 1 dB of coding gain).

Before all this, impulses (samples at the image's extreme values far from
their 3x3 median: salt and pepper) are replaced by that median.

False positives: each check attempt passes at random with probability
2**-32; at most :data:`MAX_DECODES` attempts (13 list decodes of
:data:`LIST_SIZE` paths, 7 of 16) are made per key, so an unmarked image (or
a mark made with another key) decodes with probability at most
``MAX_DECODES * 2**-32`` (< 2.2e-7) per key tried.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from dicom_wm.robust.code import CODED_BITS, checked_message, viterbi_decode, viterbi_list_decode
from dicom_wm.robust.deep import deep_whiten, load_models
from dicom_wm.robust.learned import learned_whiten, load_kernel
from dicom_wm.robust.pattern import CHIP, PERIOD, SHAPE, chip_values, layout, tile_from_chips

__all__ = ["decode_robust", "MAX_DECODES", "LIST_SIZE"]

# per whitening (classical, learned, deep): the identity, then the best
# _REFINE geometry hypotheses; plus the inverse-variance whitening at the
# identity, at its _IVAR_SHIFTS best sync peaks (strong noise drowns the
# 106 sync chips before the 918 data chips: the true shift is often a
# runner-up); each a list decode of LIST_SIZE keyed checks (_RUNNER_UP_LIST
# at the runner-up peaks: as many recoveries there, a quarter of the checks)
_REFINE = 3
_WHITENINGS = 3
_IVAR_SHIFTS = 8
_RUNNER_UP_LIST = 16  # paths checked at each runner-up peak
LIST_SIZE = 64
MAX_DECODES = (_WHITENINGS * (1 + _REFINE) + 1) * LIST_SIZE + (_IVAR_SHIFTS - 1) * _RUNNER_UP_LIST  # keyed checks per key
_MAX_SIDE = 1024  # canonical samples decoded per side (a centre crop of larger images)
_SEARCH_SIDE = 512  # ... and used to score geometry hypotheses
_PEAKS = 12  # autocorrelation peaks read as lattice vectors
_SIGMA = 1.5  # high-pass of the classical whitening, canonical samples
_N = PERIOD // CHIP


def _luminance(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float64).mean(axis=-1)
    if a.ndim != 2:
        raise ValueError(f"image must be 2-D (or rows x cols x 3/4), got shape {a.shape}")
    return a.astype(np.float64)


def _reject_impulses(x: np.ndarray) -> np.ndarray:
    """``x`` with impulse noise replaced by the 3x3 median: a sample at the
    image's minimum or maximum that differs from its 3x3 median by more than
    a tenth of the range (salt and pepper). Each impulse otherwise inflates
    the local contrast the whitening divides by, blanking the pattern around it."""
    lo, hi = float(x.min()), float(x.max())
    at_end = (x == lo) | (x == hi)
    if hi <= lo or not at_end.any():
        return x
    med = ndimage.median_filter(x, 3)
    return np.where(at_end & (np.abs(x - med) > 0.1 * (hi - lo)), med, x)


def _whiten(x: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    hp = x - ndimage.gaussian_filter(x, sigma)
    local = np.sqrt(ndimage.gaussian_filter(hp * hp, 2.4 * sigma))
    floor = max(float(np.median(local[local > 0])) if np.any(local > 0) else 1.0, 1e-9) * 0.25
    w = hp / np.maximum(local, floor)
    np.clip(w, -3.0, 3.0, out=w)
    return w


def _whiten_ivar(x: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Like :func:`_whiten` but divided by the local variance (scaled by the
    median local rms) and clipped at 6: the matched-filter weighting when
    the pattern's amplitude is uniform and the interference is not (strong
    noise over a textured image: busy regions count less)."""
    hp = x - ndimage.gaussian_filter(x, sigma)
    local = np.sqrt(ndimage.gaussian_filter(hp * hp, 2.4 * sigma))
    floor = max(float(np.median(local[local > 0])) if np.any(local > 0) else 1.0, 1e-9) * 0.25
    local = np.maximum(local, floor)
    w = hp * (float(np.median(local)) / (local * local))
    np.clip(w, -6.0, 6.0, out=w)
    return w


def _resample(x: np.ndarray, scale: float, angle_deg: float, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical-grid view of ``x``, which is the canonical image scaled by
    ``scale`` and rotated by ``angle_deg``; plus the mask of valid samples."""
    if scale == 1.0 and angle_deg == 0.0:
        out = x
        valid = np.ones(x.shape, bool)
    else:
        rows = int(min(x.shape[0] / scale, side))
        cols = int(min(x.shape[1] / scale, side))
        t = math.radians(angle_deg)
        m = scale * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        centre_out = np.array([(rows - 1) / 2, (cols - 1) / 2])
        centre_in = np.array([(x.shape[0] - 1) / 2, (x.shape[1] - 1) / 2])
        offset = centre_in - m @ centre_out
        out = ndimage.affine_transform(x, m, offset=offset, output_shape=(rows, cols), order=1, cval=np.nan)
        valid = ~np.isnan(out)
        out = np.where(valid, out, 0.0)
    r0 = max((out.shape[0] - side) // 2, 0)
    c0 = max((out.shape[1] - side) // 2, 0)
    sl = (slice(r0, r0 + side), slice(c0, c0 + side))
    return out[sl], valid[sl]


def _fold(w: np.ndarray, valid: np.ndarray) -> np.ndarray:
    rows, cols = w.shape
    pr, pc = -(-rows // PERIOD) * PERIOD, -(-cols // PERIOD) * PERIOD
    acc = np.zeros((pr, pc))
    cnt = np.zeros((pr, pc))
    acc[:rows, :cols] = w
    cnt[:rows, :cols] = valid
    acc = acc.reshape(pr // PERIOD, PERIOD, pc // PERIOD, PERIOD).sum(axis=(0, 2))
    cnt = cnt.reshape(pr // PERIOD, PERIOD, pc // PERIOD, PERIOD).sum(axis=(0, 2))
    return acc / np.maximum(cnt, 1.0)


class _Key:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.layout = layout(secret)
        sync = tile_from_chips(chip_values(None, secret)).astype(np.float64)
        self.sync_fft = np.conj(np.fft.rfft2(sync))


def _sync_correlation(folded: np.ndarray, key: _Key) -> np.ndarray:
    """Cyclic correlation of a folded tile with the key's sync chips, per tile shift."""
    return np.fft.irfft2(np.fft.rfft2(folded) * key.sync_fft, s=folded.shape)


def _sync(folded: np.ndarray, key: _Key) -> tuple[float, tuple[int, int]]:
    corr = _sync_correlation(folded, key)
    i = int(np.argmax(corr))
    dy, dx = divmod(i, PERIOD)
    sd = float(corr.std()) or 1.0
    return float((corr.flat[i] - corr.mean()) / sd), (dy, dx)


def _sync_peaks(folded: np.ndarray, key: _Key, n: int) -> list[tuple[int, int]]:
    """The ``n`` tile shifts with the highest sync correlation, best first."""
    best = np.argsort(_sync_correlation(folded, key), axis=None)[::-1][:n]
    return [divmod(int(i), PERIOD) for i in best]


def _soft_bits(folded: np.ndarray, shift: tuple[int, int], key: _Key) -> np.ndarray:
    """Matched-filter soft value per coded bit (positive = bit 0) of a folded
    tile at ``shift``; of each tile, for a stack (n, PERIOD, PERIOD)."""
    aligned = np.roll(folded, (-shift[0], -shift[1]), axis=(-2, -1))
    lead = aligned.shape[:-2]
    chips = (aligned * np.tile(SHAPE, (_N, _N))).reshape(*lead, _N, CHIP, _N, CHIP).sum(axis=(-3, -1))
    chips = chips.reshape(*lead, -1)
    lay = key.layout
    soft = np.zeros((CODED_BITS, *lead))
    np.add.at(soft, lay.bit_of, np.moveaxis(chips[..., lay.data] * lay.sign[lay.data], -1, 0))
    return np.moveaxis(soft, 0, -1)


def _decode(folded: np.ndarray, shift: tuple[int, int], key: _Key) -> bytes | None:
    soft = _soft_bits(folded, shift, key)
    sd = float(soft.std()) or 1.0
    return checked_message(viterbi_decode(soft / sd), key.secret)


def _decode_list(folded: np.ndarray, shift: tuple[int, int], key: _Key, size: int = LIST_SIZE) -> bytes | None:
    """:func:`_decode` over the ``size`` best Viterbi paths: the first whose check matches."""
    for bits in viterbi_list_decode(_soft_bits(folded, shift, key), size):
        message = checked_message(bits, key.secret)
        if message is not None:
            return message
    return None


def _autocorr_candidates(w: np.ndarray) -> list[tuple[float, float]]:
    """(scale, angle) hypotheses from the periodic pattern's autocorrelation peaks."""
    rows, cols = w.shape
    f = np.fft.rfft2(w, s=(2 * rows, 2 * cols))
    ac = np.fft.irfft2(np.abs(f) ** 2, s=(2 * rows, 2 * cols))
    ac = np.fft.fftshift(ac)
    cy, cx = rows, cols
    yy, xx = np.mgrid[-cy:cy, -cx:cx]
    overlap = np.maximum((rows - np.abs(yy)) * (cols - np.abs(xx)), 1)
    ac = ac / overlap
    r = np.hypot(yy, xx)
    rmin, rmax = 0.4 * PERIOD, min(2.3 * PERIOD, 0.45 * min(rows, cols))
    band = (r >= rmin) & (r <= rmax) & (yy >= 0)
    if not band.any():
        return []
    local = ac == ndimage.maximum_filter(ac, size=5)
    score = np.where(band & local, ac, -np.inf)
    idx = np.argsort(score, axis=None)[::-1][:_PEAKS]
    out: list[tuple[float, float]] = []
    for i in idx:
        if not np.isfinite(score.flat[i]):
            break
        y, x = float(yy.flat[i]), float(xx.flat[i])
        # sub-sample peak by a parabola on each axis
        iy, ix = np.unravel_index(i, ac.shape)
        if 0 < iy < ac.shape[0] - 1 and 0 < ix < ac.shape[1] - 1:
            a, b, c = ac[iy - 1, ix], ac[iy, ix], ac[iy + 1, ix]
            y += 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) != 0 else 0.0
            a, b, c = ac[iy, ix - 1], ac[iy, ix], ac[iy, ix + 1]
            x += 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) != 0 else 0.0
        length = math.hypot(y, x)
        ang = -math.degrees(math.atan2(y, x))  # the resampling's sense of rotation
        for mult, turn in ((1.0, 0.0), (math.sqrt(2.0), 45.0), (2.0, 0.0)):
            a = (ang + turn + 45.0) % 90.0 - 45.0
            s = length / (PERIOD * mult)
            if 0.3 <= s <= 3.0:
                out.append((s, a))
        # image content can outshine the lattice's own peaks; its angle is
        # usually still right, and most exports keep the scale
        out.append((1.0, (ang + 45.0) % 90.0 - 45.0))
    return out


def decode_robust(image: np.ndarray, secret: bytes, deep: bool = True) -> bytes | None:
    """The 8-byte message the robust layer put in ``image`` under ``secret``, or None.

    ``image`` is a 2-D array (or rows x cols x 3/4, averaged to luminance) in
    any intensity scale and size: a stored DICOM plane or an exported 8-bit
    rendering, possibly rotated, cropped, resized or compressed. A message is
    returned only when its keyed 32-bit check matches (see module docstring
    for the false-positive bound). ``deep=False`` leaves the deep decoder out
    (a paired baseline for the benchmark).
    """
    x = _luminance(image)
    if min(x.shape) < 32:
        return None
    x = _reject_impulses(x)
    key = _Key(secret)
    kernel = load_kernel()
    whitened: dict[tuple[str, int], np.ndarray] = {}

    def white_for(variant: str, scale: float) -> np.ndarray:
        if variant == "deep":
            # like the learned filter, at the input's own scale (trained on resized inputs)
            if (variant, 0) not in whitened:
                whitened[variant, 0] = deep_whiten(x)
            return whitened[variant, 0]
        if variant == "learned" and kernel is not None:
            # applied at the input's own scale: it held up under resize x0.5 in tests
            if (variant, 0) not in whitened:
                whitened[variant, 0] = learned_whiten(x, kernel)
            return whitened[variant, 0]
        # the high-pass is sized for the canonical chip at the input's scale:
        # wider for enlarged images, narrower for shrunk ones (at x0.5 a chip
        # is 2 samples; a sigma-1.5 high-pass there leaves mostly the host)
        bucket = max(-2, int(round(2 * math.log2(scale))))
        if (variant, bucket) not in whitened:
            whitened[variant, bucket] = _whiten(x, sigma=_SIGMA * 2 ** (bucket / 2))
        return whitened[variant, bucket]

    def try_at(variant: str, scale: float, angle: float, side: int) -> tuple[float, np.ndarray, tuple[int, int]]:
        w, valid = _resample(white_for(variant, scale), scale, angle, side)
        folded = _fold(w, valid)
        score, shift = _sync(folded, key)
        return score, folded, shift

    variants: tuple[str, ...] = ("classical",) if kernel is None else ("classical", "learned")
    if deep and load_models() is not None:
        variants += ("deep",)
    for variant in variants:
        _, folded, shift = try_at(variant, 1.0, 0.0, _MAX_SIDE)
        msg = _decode_list(folded, shift, key)
        if msg is not None:
            return msg
    w, valid = _resample(_whiten_ivar(x), 1.0, 0.0, _MAX_SIDE)
    folded = _fold(w, valid)
    for i, shift in enumerate(_sync_peaks(folded, key, _IVAR_SHIFTS)):
        msg = _decode_list(folded, shift, key, LIST_SIZE if i == 0 else _RUNNER_UP_LIST)
        if msg is not None:
            return msg
    # geometry from the autocorrelation of the whitened input (downsampled if large)
    small = x
    factor = 1.0
    while max(small.shape) > 1024:
        small = small[: small.shape[0] // 2 * 2, : small.shape[1] // 2 * 2]
        small = small.reshape(small.shape[0] // 2, 2, small.shape[1] // 2, 2).mean(axis=(1, 3))
        factor *= 2.0
    cands: list[tuple[float, float, float]] = []
    peaks = _autocorr_candidates(_whiten(small))
    peaks += _autocorr_candidates(_whiten(small, sigma=_SIGMA / 2))  # the lattice of a shrunk image
    for s0, a0 in peaks:
        s0 *= factor
        if any(abs(s0 / s - 1) < 0.01 and abs(a0 - a) < 0.5 for _, s, a in cands):
            continue
        cands.append((try_at("classical", s0, a0, _SEARCH_SIDE)[0], s0, a0))
    cands.sort(reverse=True)
    for _, s0, a0 in cands[:_REFINE]:
        refined = (s0, a0)
        for variant in variants:
            if variant == "deep":
                # the deep decoder reads the geometry the classical search
                # refined: a search of its own (27 resamplings per step)
                # made an unmarked image's decode ~50 % slower
                best = (0.0, *refined)
            else:
                best = (-np.inf, s0, a0)
                # coordinate search: scale, then angle, then scale again, on a shrinking step
                for step_s, step_a in ((0.004, 0.3), (0.002, 0.15), (0.001, 0.075)):
                    for ds in (-step_s, 0.0, step_s):
                        for da in (-step_a, 0.0, step_a):
                            s, a = best[1] * (1 + ds), best[2] + da
                            sc = try_at(variant, s, a, _SEARCH_SIDE)[0]
                            if sc > best[0] + 1e-9:
                                best = (sc, s, a)
                if variant == "classical":
                    refined = best[1:]
            _, folded, shift = try_at(variant, best[1], best[2], _MAX_SIDE)
            msg = _decode_list(folded, shift, key)
            if msg is not None:
                return msg
    return None
