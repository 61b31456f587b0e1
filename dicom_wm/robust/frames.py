"""Decoding the robust layer from the frames of a cine loop or a volume.

With the robust option every frame of a multi-frame instance carries the same
message under the same key pattern, anchored at the same sample (0, 0). So
the frames are summed, not voted: each frame is whitened, centre-cropped on
the tile grid and folded modulo the period (:func:`detect._fold`), and the
folded tiles are added before the sync search and the soft decode. The
pattern adds up coherently; image content, noise and compression artefacts
that change from frame to frame add up as noise, so N frames bring about
sqrt(N) more processing gain than one. Order does not matter (a sum), a
dropped frame only costs its share, and a foreign frame is weighed down:

1. **Per-frame tiles** (identity geometry, i.e. frames on their stored grid or
   exported at scale 1): for each whitening (classical; the learned filter
   when torch is installed) every frame gives a 128 x 128 folded tile.
2. **Sync** on the sum of the tiles gives the tile shift shared by all
   frames (the sync chips do not depend on the message, so frames marked with
   another message help here too). Each frame's own sync correlation at that
   shift, in standard deviations, is its weight in a second, sync-weighted sum
   (unmarked frames get about 0).
3. **Mixed messages**: a frame's soft coded bits correlate with those of
   frames carrying the same message and not with others. The leading
   eigenvectors of the frames' soft-bit Gram matrix split the frames into
   groups; the positive and the negative part of the 2nd and 3rd eigenvector
   each give one more weighted sum (frames of another message, inserted half
   and half, no longer cancel the message of the original frames). Each sum
   is list-decoded: the 16 best Viterbi paths are checked in turn.
4. The 8 frames with the strongest sync are also decoded alone: where the
   scene is static, its residue and its compression artefacts repeat from
   frame to frame and add up like the pattern, so the sum gains little, while
   each frame is one more draw that may decode.
5. **Shared geometry**: when none of that decodes, the frames of the most
   common shape are averaged; the autocorrelation peaks of the whitened
   average (:func:`detect._autocorr_candidates`) give (scale, rotation)
   hypotheses, scored by the sync peak of the resampled average and refined
   by a small coordinate search; under each of the best two, every frame is
   whitened, resampled to the canonical grid, folded, and the tiles summed
   and list-decoded. Last, the single-image decoder (:func:`decode_robust`)
   runs on the average. Measured in docs/cine-robust.md: rotations of 3-5
   degrees are found; resizing only on frames large enough for the
   autocorrelation to see the scaled lattice.

False positives: every decode attempt is one keyed 32-bit check, which
random soft bits pass with probability 2**-32. At most
:data:`MAX_FRAME_DECODES` checks are made per key, whatever the number of
frames (the number of frames changes only how much is summed, not how often a
check is tried): per whitening, 6 sums (equal, sync-weighted, 4 groups) each
list-decoded to its 16 best Viterbi paths, and 8 single frames, so 2 x 104 =
208; 2 geometry hypotheses, one list decode each: 32; plus the single-image
decoder's own :data:`~dicom_wm.robust.detect.MAX_DECODES` (944 since its
inverse-variance stage tries 8 sync peaks) on the average. So an unmarked
cine, or one marked under another key, decodes with probability at most
``MAX_FRAME_DECODES * 2**-32`` per key tried (1184 checks: 2.8e-7;
tests/test_robust_frames.py asserts it stays <= 1e-6).

Work is bounded: each frame is centre-cropped to at most ``_SIDE`` x
``_SIDE`` samples on the tile grid, and when the frames together exceed
``_BUDGET`` samples the crop shrinks (down to one period) and, past that,
frames are taken at an even stride.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dicom_wm.robust.code import bits_of, check_bytes, checked_message, encode_bits, viterbi_list_decode
from dicom_wm.robust.detect import (
    MAX_DECODES,
    _autocorr_candidates,
    _decode,
    _fold,
    _Key,
    _luminance,
    _resample,
    _soft_bits,
    _sync,
    _whiten,
    decode_robust,
    learned_whiten,
    load_kernel,
)
from dicom_wm.robust.pattern import PERIOD

__all__ = ["MAX_FRAME_DECODES", "FrameStack", "FramesDecode", "decode_robust_frames", "decode_frames_detail"]

_SIDE = 512  # per-frame centre crop (canonical samples per side)
_BUDGET = 1 << 25  # samples whitened per variant over all frames (128 frames of 512^2)
_EIGEN = 2  # eigenvectors after the leading one whose two signed parts are tried
_SINGLE = 8  # frames decoded alone, per variant (the strongest sync peaks): when
# content and compression artefacts repeat from frame to frame (a static scene)
# the sum gains little, and one of several frames may still decode
_LIST = 16  # Viterbi paths checked per sum over frames (a list decode)
_GEOMETRIES = 2  # geometry hypotheses (from the frames' average) under which every frame is resampled and summed
# per variant: equal sum, sync-weighted sum, 2 * _EIGEN eigen-weighted sums
# (each a list decode), _SINGLE frames (each one plain decode)
_PER_VARIANT = (2 + 2 * _EIGEN) * _LIST + _SINGLE
# two variants (classical, learned), the geometry hypotheses (classical, one
# list decode each), plus the single-image decoder on the average
MAX_FRAME_DECODES = 2 * _PER_VARIANT + _GEOMETRIES * _LIST + MAX_DECODES
_SUPPORT_Z = 3.0  # a frame "carries" a message when its soft bits agree with it by > 3 sd


@dataclass(frozen=True)
class FramesDecode:
    """What :func:`decode_frames_detail` found.

    ``message`` is the 8-byte robust message. ``frames`` lists the indices
    (input order) of the frames whose own soft bits agree with it by more
    than 3 standard deviations (empty when it was found on the averaged
    frames under a geometry hypothesis); ``how`` names the attempt that
    decoded (``"sum"``, ``"sync-weighted"``, ``"group"``, ``"frame"`` --
    each prefixed by the whitening -- or ``"average"``) and ``attempts``
    counts the keyed checks made.
    """

    message: bytes
    frames: tuple[int, ...]
    how: str
    attempts: int


def _as_frames(frames: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    out = []
    for i, f in enumerate(frames):
        a = np.asarray(f)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        try:
            out.append(_luminance(a))
        except ValueError as exc:
            raise ValueError(f"frame {i}: {exc}") from None
    return out


def _crop_side(n_frames: int) -> int:
    side = _SIDE
    while side > PERIOD and n_frames * side * side > _BUDGET:
        side -= PERIOD
    return side


def _grid_crop(x: np.ndarray, side: int) -> np.ndarray:
    """Centre crop of at most ``side`` x ``side`` whose origin is a multiple of
    PERIOD, so the fold of the crop lines up with the fold of the frame."""
    r0 = max((x.shape[0] - side) // 2, 0) // PERIOD * PERIOD
    c0 = max((x.shape[1] - side) // 2, 0) // PERIOD * PERIOD
    return x[r0 : r0 + side, c0 : c0 + side]


def _soft(tiles: np.ndarray, shift: tuple[int, int], key: _Key) -> np.ndarray:
    """Soft coded bits (frames x CODED_BITS) of folded tiles at ``shift``, as
    :func:`detect._decode` computes them before Viterbi (not normalised)."""
    return _soft_bits(tiles, shift, key)


def _sync_z(tiles: np.ndarray, shift: tuple[int, int], key: _Key) -> np.ndarray:
    """Each tile's cyclic sync correlation at ``shift``, in standard deviations of its correlation surface."""
    corr = np.fft.irfft2(np.fft.rfft2(tiles, axes=(1, 2)) * key.sync_fft, s=(PERIOD, PERIOD), axes=(1, 2))
    flat = corr.reshape(len(tiles), -1)
    sd = flat.std(axis=1)
    sd[sd == 0] = 1.0
    return (corr[:, shift[0], shift[1]] - flat.mean(axis=1)) / sd


def _expected_signs(message: bytes, key: _Key) -> np.ndarray:
    info = np.concatenate([bits_of(message), bits_of(check_bytes(message, key.secret))])
    return 1.0 - 2.0 * encode_bits(info)


def _support(soft: np.ndarray, message: bytes, key: _Key) -> np.ndarray:
    """Per frame: agreement of its soft bits with ``message``'s coded bits, in standard deviations."""
    signs = _expected_signs(message, key)
    centred = soft - soft.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1)
    norm[norm == 0] = 1.0
    return (soft @ signs) / norm


def _decode_list(folded: np.ndarray, shift: tuple[int, int], key: _Key) -> tuple[bytes | None, int]:
    """The first of the ``_LIST`` best Viterbi paths whose keyed check matches, and the checks made."""
    soft = _soft(folded[None], shift, key)[0]
    checks = 0
    for bits in viterbi_list_decode(soft / (float(soft.std()) or 1.0), _LIST):
        checks += 1
        message = checked_message(bits, key.secret)
        if message is not None:
            return message, checks
    return None, checks


def _weight_sets(soft: np.ndarray, z: np.ndarray) -> list[tuple[str, np.ndarray]]:
    n = len(soft)
    sets: list[tuple[str, np.ndarray]] = [("sum", np.ones(n)), ("sync-weighted", np.maximum(z, 0.0))]
    if n >= 3:
        v = soft / np.maximum(soft.std(axis=1, keepdims=True), 1e-12)
        _, vecs = np.linalg.eigh(v @ v.T)  # ascending
        for k in range(2, 2 + _EIGEN):
            if k > n:
                break
            u = vecs[:, -k]
            for sign in (1.0, -1.0):
                w = np.maximum(sign * u, 0.0)
                sets.append(("group", w))
    return sets


def _pick(frames: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """All frames, or an even stride of them when even one-period crops of all would exceed the budget."""
    limit = max(_BUDGET // (PERIOD * PERIOD), 1)
    if len(frames) <= limit:
        return frames, list(range(len(frames)))
    idx = np.unique(np.linspace(0, len(frames) - 1, limit).round().astype(int)).tolist()
    return [frames[i] for i in idx], idx


class FrameStack:
    """Frames read once for decoding under several keys: the whitened, folded
    tiles and the average do not depend on the key, so they are computed on
    first use and kept.

    Parameters
    ----------
    frames : sequence of ndarray
        As for :func:`decode_robust_frames`.
    """

    def __init__(self, frames: Sequence[np.ndarray] | np.ndarray) -> None:
        kept = [(i, f) for i, f in enumerate(_as_frames(frames)) if min(f.shape) >= 32]  # as decode_robust
        self.n_frames = len(kept)
        used, picked = _pick([f for _, f in kept])
        self.used = used
        self.index = [kept[j][0] for j in picked]  # input positions of the frames used
        self._tiles: dict[str, np.ndarray] = {}
        self._mean: np.ndarray | None = None

    def tiles(self, variant: str, kernel: np.ndarray | None) -> np.ndarray:
        """One folded tile per frame (frames x PERIOD x PERIOD), each scaled by the tiles its crop holds."""
        if variant not in self._tiles:
            side = _crop_side(len(self.used))
            tiles = np.empty((len(self.used), PERIOD, PERIOD))
            for i, x in enumerate(self.used):
                crop = _grid_crop(x, side)
                w = learned_whiten(crop, kernel) if variant == "learned" and kernel is not None else _whiten(crop)
                # a folded tile is a mean: a bigger crop's mean is worth more
                tiles[i] = _fold(w, np.ones(w.shape, bool)) * (w.size / PERIOD**2)
            self._tiles[variant] = tiles
        return self._tiles[variant]

    def mean(self) -> np.ndarray | None:
        """The average of the frames of the commonest shape, each standardised; None when fewer than two."""
        if self._mean is None:
            shape, count = Counter(f.shape for f in self.used).most_common(1)[0]
            if count < 2:
                return None
            acc = np.zeros(shape)
            for f in self.used:
                if f.shape == shape:
                    acc += (f - f.mean()) / (float(f.std()) or 1.0)
            self._mean = acc / count
        return self._mean


def _white_at(x: np.ndarray, scale: float) -> np.ndarray:
    """Classical whitening with the high-pass sized for the chip at ``scale`` (as detect does)."""
    bucket = max(-2, int(round(2 * math.log2(scale))))
    return _whiten(x, sigma=1.5 * 2 ** (bucket / 2))


def _geometries(mean: np.ndarray, key: _Key) -> list[tuple[float, float]]:
    """The best :data:`_GEOMETRIES` (scale, angle) hypotheses other than the
    identity: autocorrelation peaks of the whitened average, scored by the
    sync peak of the resampled average and refined by a small coordinate search."""
    w = _whiten(mean)
    peaks = _autocorr_candidates(w) + _autocorr_candidates(_whiten(mean, sigma=0.75))
    scored: list[tuple[float, float, float]] = []

    def score(s: float, a: float) -> float:
        r, valid = _resample(_white_at(mean, s), s, a, _SIDE)
        return _sync(_fold(r, valid), key)[0]

    for s0, a0 in peaks:
        if abs(s0 - 1) < 0.003 and abs(a0) < 0.05:
            continue  # the identity was tried
        if any(abs(s0 / s - 1) < 0.01 and abs(a0 - a) < 0.5 for _, s, a in scored):
            continue
        scored.append((score(s0, a0), s0, a0))
    scored.sort(reverse=True)
    out = []
    for sc, s0, a0 in scored[:_GEOMETRIES]:
        best = (sc, s0, a0)
        for step_s, step_a in ((0.004, 0.3), (0.002, 0.15), (0.001, 0.075)):
            for ds in (-step_s, 0.0, step_s):
                for da in (-step_a, 0.0, step_a):
                    if ds == 0.0 and da == 0.0:
                        continue
                    s, a = best[1] * (1 + ds), best[2] + da
                    v = score(s, a)
                    if v > best[0] + 1e-9:
                        best = (v, s, a)
        out.append((best[1], best[2]))
    return out


def decode_frames_detail(frames: FrameStack | Sequence[np.ndarray] | np.ndarray, secret: bytes) -> FramesDecode | None:
    """Like :func:`decode_robust_frames`, with the frames that carry the message
    and how it was found. ``frames`` may be a :class:`FrameStack`, to decode
    the same frames under several keys without whitening them again."""
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError(f"secret must be bytes, not {type(secret).__name__}")
    secret = bytes(secret)
    stack = frames if isinstance(frames, FrameStack) else FrameStack(frames)
    if stack.n_frames == 0:
        return None
    if len(stack.used) == 1:
        msg = decode_robust(stack.used[0], secret)
        return None if msg is None else FramesDecode(msg, (stack.index[0],), "frame", MAX_DECODES)
    key = _Key(secret)
    kernel = load_kernel()
    index = stack.index
    attempts = 0

    def found(msg: bytes, tiles: np.ndarray, shift: tuple[int, int], how: str) -> FramesDecode:
        sup = _support(_soft(tiles, shift, key), msg, key)
        return FramesDecode(msg, tuple(index[i] for i in np.flatnonzero(sup > _SUPPORT_Z)), how, attempts)

    def weighted(w: np.ndarray, tiles: np.ndarray) -> tuple[bytes | None, tuple[int, int]]:
        """List-decode the frames' tiles summed with weights ``w``."""
        nonlocal attempts
        agg = np.tensordot(w, tiles, axes=1)
        _, s = _sync(agg, key)
        msg, checks = _decode_list(agg, s, key)
        attempts += checks
        return msg, s

    variants = ("classical",) if kernel is None else ("classical", "learned")
    for variant in variants:
        tiles = stack.tiles(variant, kernel)
        _, shift = _sync(tiles.sum(axis=0), key)
        z = _sync_z(tiles, shift, key)
        soft = _soft(tiles, shift, key)
        # the sums over all frames speak for the majority: the first to decode wins
        sets = _weight_sets(soft, z)
        for how, w in sets[:2]:
            if not w.any():
                continue
            msg, s = weighted(w, tiles)
            if msg is not None:
                return found(msg, tiles, s, f"{variant} {how}")
        # groups and single frames may find a minority's message (frames of
        # another message inserted): all are tried, the message carried by
        # the most frames is kept
        hits: list[FramesDecode] = []
        for how, w in sets[2:]:
            if not w.any():
                continue
            msg, s = weighted(w, tiles)
            if msg is not None and all(h.message != msg for h in hits):
                hits.append(found(msg, tiles, s, f"{variant} {how}"))
        for i in np.argsort(z)[::-1][:_SINGLE]:
            _, s = _sync(tiles[i], key)
            attempts += 1
            msg = _decode(tiles[i], s, key)
            if msg is not None and all(h.message != msg for h in hits):
                hits.append(found(msg, tiles, s, f"{variant} frame"))
        if hits:
            best = max(hits, key=lambda h: len(h.frames))  # first of the best on a tie
            return FramesDecode(best.message, best.frames, best.how, attempts)
    # a geometry shared by all frames (a resized / rotated export), read on
    # the average of the frames of the commonest shape: every such frame is
    # resampled to the canonical grid under it, folded, and the tiles summed
    mean = stack.mean()
    if mean is None:
        return None
    same = [i for i, f in enumerate(stack.used) if f.shape == mean.shape]
    for scale, angle in _geometries(mean, key):
        tiles = np.empty((len(same), PERIOD, PERIOD))
        side = _crop_side(len(same))
        for j, i in enumerate(same):
            r, valid = _resample(_white_at(stack.used[i], scale), scale, angle, side)
            tiles[j] = _fold(r, valid) * (float(valid.sum()) / PERIOD**2)
        agg = tiles.sum(axis=0)
        _, s = _sync(agg, key)
        msg, checks = _decode_list(agg, s, key)
        attempts += checks
        if msg is not None:
            sup = _support(_soft(tiles, s, key), msg, key)
            carrying = tuple(index[same[j]] for j in np.flatnonzero(sup > _SUPPORT_Z))
            return FramesDecode(msg, carrying, f"geometry x{scale:.3f} {angle:+.2f} deg", attempts)
    # last: the single-image decoder on the average
    attempts += MAX_DECODES
    msg = decode_robust(mean, secret)
    return None if msg is None else FramesDecode(msg, (), "average", attempts)


def decode_robust_frames(frames: FrameStack | Sequence[np.ndarray] | np.ndarray, secret: bytes) -> bytes | None:
    """The 8-byte robust message carried by the frames of a cine or volume, or None.

    Parameters
    ----------
    frames : sequence of ndarray
        2-D planes (or rows x cols x 3/4, averaged to luminance; rows x cols x
        1 is accepted) in any order and any intensity scale: stored DICOM
        frames or exported 8-bit renderings, possibly re-encoded, with frames
        dropped, or with foreign (unmarked, or marked with another message)
        frames inserted. A 3-D or 4-D array is read as a stack of frames.
    secret : bytes
        The key the robust layer was made with.

    Returns
    -------
    bytes or None
        The message, only when its keyed 32-bit check matches; at most
        :data:`MAX_FRAME_DECODES` checks are tried, so an unmarked cine
        decodes with probability <= ``MAX_FRAME_DECODES * 2**-32`` per key.
        When the frames carry two messages, the one the sum over all frames
        decodes to (the majority) is returned; failing that, of those the
        groups and single frames decode to, the one carried by the most frames.
    """
    found = decode_frames_detail(frames, secret)
    return None if found is None else found.message
