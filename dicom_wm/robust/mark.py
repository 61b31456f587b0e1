"""Embedding and exact undo of the robust pattern."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from dicom_wm.robust.code import CODED_BITS, check_bytes, bits_of, encode_bits
from dicom_wm.robust.message import MESSAGE_BYTES
from dicom_wm.robust.pattern import CHIP, PERIOD, SHAPE, SHAPE_SCALE, chip_values, dither, layout, tile_from_chips

__all__ = ["RobustMark", "embed_robust", "undo_robust", "TARGET_RMS_8BIT", "strength_for", "strength_map"]

# rms change on the 8-bit windowed rendering the strength aims for: 1.36
# levels is 45.5 dB PSNR; the search keeps the largest amplitude whose
# rendered rms is at most _RMS_TOLERANCE times that (1.40 levels, 45.2 dB)
TARGET_RMS_8BIT = 1.36
_RMS_TOLERANCE = 1.03
_VERSION = 3  # 1: no gains (every coded bit at unit gain); 2: no strength map; both still read
_HEADER = struct.Struct(">BB8sI")  # version, flags, message, amplitude (1/16 units)
_FLAG_GAINS = 0x01
_FLAG_MAP = 0x02
# strength map: one value q in 0..15 per MAP_BLOCK x MAP_BLOCK block of the
# plane (grid anchored at (0, 0)), the local strength is q/MAP_UNIT
MAP_BLOCK = 16
MAP_UNIT = 4
_MAP_LEN = struct.Struct(">I")
# per-coded-bit gain q/GAIN_UNIT, q in 1..15 (4 bits each): GAIN_UNIT is unit gain
GAIN_UNIT = 8
_GAIN_BYTES = (CODED_BITS + 1) // 2


@dataclass(frozen=True)
class RobustMark:
    """What :func:`embed_robust` changed, enough to undo it exactly.

    ``message``, ``amplitude`` (in 1/16 stored units), ``gains`` (one
    per coded bit, in 1/:data:`GAIN_UNIT`; empty = all unit, as version 1
    marks) and ``smap`` (the strength map, one byte 0..15 per
    :data:`MAP_BLOCK` x :data:`MAP_BLOCK` block in 1/:data:`MAP_UNIT`,
    row-major; empty = uniform, as version 1 and 2 marks) regenerate the
    pattern from the key; ``skipped`` is the
    zlib-compressed bit list, over the chips whose undo is ambiguous
    (row-major chip order), of those left unchanged because the pattern would
    have clipped them (empty when none).
    """

    message: bytes
    amplitude: int
    skipped: bytes = b""
    gains: bytes = b""
    smap: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.message, bytes) or len(self.message) != MESSAGE_BYTES:
            raise ValueError(f"message must be {MESSAGE_BYTES} bytes, got {self.message!r}")
        if not 0 <= self.amplitude < 2**32:
            raise ValueError(f"amplitude {self.amplitude} out of range")
        if self.gains:
            if len(self.gains) != CODED_BITS or not all(1 <= g <= 15 for g in self.gains):
                raise ValueError(f"gains must be {CODED_BITS} values in 1..15, got {len(self.gains)}")
        if self.smap and max(self.smap) > 15:
            raise ValueError("strength map values must be in 0..15")

    def to_bytes(self) -> bytes:
        flags, body = 0, b""
        if self.gains:
            q = np.frombuffer(self.gains + b"\0", dtype=np.uint8)[: 2 * _GAIN_BYTES].reshape(-1, 2)
            flags |= _FLAG_GAINS
            body += ((q[:, 0] << 4) | q[:, 1]).astype(np.uint8).tobytes()
        if self.smap:
            z = zlib.compress(self.smap, 9)
            flags |= _FLAG_MAP
            body += _MAP_LEN.pack(len(z)) + z
        # without a map the bytes are those of a version-2 mark
        version = _VERSION if self.smap else 2
        return _HEADER.pack(version, flags, self.message, self.amplitude) + body + self.skipped

    @classmethod
    def from_bytes(cls, b: bytes) -> RobustMark:
        if len(b) < _HEADER.size:
            raise ValueError(f"a RobustMark is at least {_HEADER.size} bytes, got {len(b)}")
        version, flags, message, amplitude = _HEADER.unpack_from(b)
        if version not in (1, 2, _VERSION):
            raise ValueError(f"unknown RobustMark version {version}")
        rest = bytes(b[_HEADER.size :])
        gains = b""
        if version >= 2 and flags & _FLAG_GAINS:
            if len(rest) < _GAIN_BYTES:
                raise ValueError(f"RobustMark gains need {_GAIN_BYTES} bytes, got {len(rest)}")
            p = np.frombuffer(rest[:_GAIN_BYTES], dtype=np.uint8)
            gains = np.stack([p >> 4, p & 15], axis=1).reshape(-1)[:CODED_BITS].astype(np.uint8).tobytes()
            rest = rest[_GAIN_BYTES:]
        smap = b""
        if version >= 3 and flags & _FLAG_MAP:
            if len(rest) < _MAP_LEN.size:
                raise ValueError("RobustMark strength map length missing")
            (n,) = _MAP_LEN.unpack_from(rest)
            if len(rest) < _MAP_LEN.size + n:
                raise ValueError(f"RobustMark strength map needs {n} bytes")
            smap = zlib.decompress(rest[_MAP_LEN.size : _MAP_LEN.size + n])
            rest = rest[_MAP_LEN.size + n :]
        return cls(message=message, amplitude=amplitude, skipped=rest, gains=gains, smap=smap)


def _check_plane(plane: np.ndarray, lo: int, hi: int) -> np.ndarray:
    plane = np.asarray(plane)
    if plane.ndim != 2:
        raise ValueError(f"plane must be 2-D (rows, cols), got shape {plane.shape}")
    if plane.dtype.kind not in "iu":
        raise TypeError(f"plane must hold integers, got {plane.dtype}")
    if lo >= hi:
        raise ValueError(f"lo {lo} must be below hi {hi}")
    plane = plane.astype(np.int64)
    if plane.size and (plane.min() < lo or plane.max() > hi):
        raise ValueError(f"plane samples outside [{lo}, {hi}]")
    return plane


def _window_width(plane: np.ndarray) -> float:
    p1, p99 = np.percentile(plane, [1, 99])
    return max(float(p99 - p1), 16.0)


def strength_for(plane: np.ndarray, lo: int, hi: int) -> int:
    """The amplitude (1/16 stored units) giving :data:`TARGET_RMS_8BIT` on a
    1st..99th percentile window of ``plane``, were every chip embedded."""
    rms_shape = float(np.sqrt(np.mean(SHAPE.astype(float) ** 2)))
    return max(int(round(SHAPE_SCALE * TARGET_RMS_8BIT * _window_width(plane) / 255.0 / rms_shape)), 1)


def _map_shape(shape: tuple[int, int]) -> tuple[int, int]:
    return -(-shape[0] // MAP_BLOCK), -(-shape[1] // MAP_BLOCK)


def _map_samples(smap: bytes, shape: tuple[int, int]) -> np.ndarray:
    """The strength map (q per block) at every sample of a ``shape`` plane."""
    ms = _map_shape(shape)
    if len(smap) != ms[0] * ms[1]:
        raise ValueError(f"strength map has {len(smap)} blocks, the plane needs {ms[0] * ms[1]}")
    q = np.frombuffer(smap, dtype=np.uint8).astype(np.int64).reshape(ms)
    return np.repeat(np.repeat(q, MAP_BLOCK, axis=0), MAP_BLOCK, axis=1)[: shape[0], : shape[1]]


@dataclass(frozen=True)
class _Pattern:
    """The pattern of one (shape, message, key, gains, map), less its
    amplitude: ``delta(a) = sign * ((a * base + offset) // scale)``, on the
    PERIOD x PERIOD tile (then tiled over the plane) or, with a strength
    map, on the whole plane. Integer arithmetic only: the same delta on
    every machine."""

    shape: tuple[int, int]
    sign: np.ndarray
    base: np.ndarray
    offset: np.ndarray
    scale: int
    tiled: bool

    def delta(self, amplitude: int) -> np.ndarray:
        out = self.sign * ((amplitude * self.base + self.offset) // self.scale)
        return _full(out, self.shape) if self.tiled else out


def _full(tile: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows, cols = shape
    return np.tile(tile, (-(-rows // PERIOD), -(-cols // PERIOD)))[:rows, :cols]


def _pattern(shape: tuple[int, int], message: bytes, secret: bytes, gains: bytes = b"", smap: bytes = b"") -> _Pattern:
    info = np.concatenate([bits_of(message), bits_of(check_bytes(message, secret))])
    chips = chip_values(encode_bits(info), secret)
    weights = tile_from_chips(np.ones_like(chips), SHAPE)
    sign = tile_from_chips(chips, np.ones_like(SHAPE))
    g = np.full(chips.size, GAIN_UNIT, np.int64)  # sync chips at unit gain
    if gains:
        lay = layout(secret)
        g[lay.data] = np.frombuffer(gains, dtype=np.uint8).astype(np.int64)[lay.bit_of]
    gained = tile_from_chips(g, np.ones_like(SHAPE)) * weights
    if smap:  # version 3: amplitude * gain * map, one floor division per sample
        base = _full(gained, shape) * _map_samples(smap, shape)
        offset = GAIN_UNIT * MAP_UNIT * _full(dither(secret), shape)
        return _Pattern(shape, _full(sign, shape), base, offset, GAIN_UNIT * MAP_UNIT * SHAPE_SCALE, tiled=False)
    if gains:  # amplitude * q / GAIN_UNIT in 1/16 units, one floor division
        return _Pattern(shape, sign, gained, GAIN_UNIT * dither(secret), GAIN_UNIT * SHAPE_SCALE, tiled=True)
    return _Pattern(shape, sign, weights, dither(secret), SHAPE_SCALE, tiled=True)


def _delta(
    shape: tuple[int, int], message: bytes, amplitude: int, secret: bytes, gains: bytes = b"", smap: bytes = b""
) -> np.ndarray:
    return _pattern(shape, message, secret, gains, smap).delta(amplitude)


# strength-map levels (in 1/MAP_UNIT) of blocks mostly at the plane's extreme
# value (black background, saturation) and of the rest: on ultrasound the
# flat background carries most of what survives JPEG (the speckle interferes),
# so it gets 1.5x the strength of the textured part; the calibration then
# sets the amplitude for the same rendered rms. 2x gained a little more
# (soft-bit SNR after JPEG Q50 1.40 vs 1.37) for more SSIM (0.926 vs 0.935;
# uniform: 0.952): the background's one-sided pattern (its negative chips
# would clip) shifts its mean, which SSIM weighs heavily on black
FLAT_LEVEL = 6
BUSY_LEVEL = MAP_UNIT
_FLAT_FRACTION = 0.5
# a map is made only where the textured part is interference-dominated: its
# median local high-pass rms on the 8-bit rendering at least this many levels
# (ultrasound speckle: 13.6; the CR, CT and MR test images: 0.4-6.1)
MAP_MIN_RMS = 10.0


def strength_map(plane: np.ndarray, deep: bool = True) -> bytes:
    """The content-adaptive strength map of ``plane`` (see :data:`MAP_BLOCK`),
    or empty (no map, a version-2 mark) when the plane has no black or
    saturated part or its textured part's median local rms is under
    :data:`MAP_MIN_RMS` (there a uniform strength decodes better: measured
    on CR, CT and MR, docs/robust-results.md).

    The map is the deep encoder's (:func:`dicom_wm.robust.deep.deep_map`)
    with ``deep`` when its weights load (torch installed); otherwise the
    rule: blocks where at least half the samples sit at the plane's minimum
    or maximum get :data:`FLAT_LEVEL`, the rest :data:`BUSY_LEVEL`. Either
    way a map with a single level is no map."""
    from scipy import ndimage

    plane = np.asarray(plane)
    ext = (plane == plane.min()) | (plane == plane.max())
    if ext.all() or not ext.any():
        return b""
    p1, p99 = (float(v) for v in np.percentile(plane, [1, 99]))
    x = plane.astype(np.float64) * (255.0 / max(p99 - p1, 1.0))
    hp = x - ndimage.gaussian_filter(x, 1.5)
    local = np.sqrt(ndimage.gaussian_filter(hp * hp, 3.6))
    if float(np.median(local[~ext])) < MAP_MIN_RMS:
        return b""
    q = None
    if deep:
        from dicom_wm.robust.deep import deep_map

        q = deep_map(plane, MAP_UNIT)
    if q is None:
        ms = _map_shape(plane.shape)

        def blocks(a: np.ndarray) -> np.ndarray:
            pad = np.zeros((ms[0] * MAP_BLOCK, ms[1] * MAP_BLOCK))
            cnt = np.zeros_like(pad)
            pad[: plane.shape[0], : plane.shape[1]] = a
            cnt[: plane.shape[0], : plane.shape[1]] = 1
            r = (ms[0], MAP_BLOCK, ms[1], MAP_BLOCK)
            return pad.reshape(r).sum(axis=(1, 3)) / np.maximum(cnt.reshape(r).sum(axis=(1, 3)), 1)

        q = np.where(blocks(ext) >= _FLAT_FRACTION, FLAT_LEVEL, BUSY_LEVEL).astype(np.uint8)
    if q.min() == q.max():
        return b""
    return q.tobytes()


def _chip_any(mask: np.ndarray) -> np.ndarray:
    """Per CHIP x CHIP block of ``mask`` (grid anchored at (0, 0)): any set."""
    rows, cols = mask.shape
    pr, pc = -(-rows // CHIP) * CHIP, -(-cols // CHIP) * CHIP
    pad = np.zeros((pr, pc), bool)
    pad[:rows, :cols] = mask
    return pad.reshape(pr // CHIP, CHIP, pc // CHIP, CHIP).any(axis=(1, 3))


def _per_sample(chips: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.repeat(np.repeat(chips, CHIP, axis=0), CHIP, axis=1)[: shape[0], : shape[1]]


def _ambiguous(marked: np.ndarray, delta: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Chips whose undo cannot tell "embedded" from "skipped" by itself."""
    back, fwd = marked - delta, marked + delta
    could_embed = ~_chip_any((back < lo) | (back > hi))
    could_skip = _chip_any((fwd < lo) | (fwd > hi))
    return could_embed & could_skip


def _render(x: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    p1, p99 = window
    return np.clip(np.round((x - p1) * (255.0 / max(p99 - p1, 1.0))), 0, 255)


def _soft(image: np.ndarray, secret: bytes) -> np.ndarray:
    """The decoder's soft value per coded bit at the identity geometry and
    zero shift (classical whitening, the first thing it tries)."""
    from dicom_wm.robust import detect  # the decoder imports nothing from here

    w, valid = detect._resample(detect._whiten(detect._reject_impulses(image.astype(np.float64))), 1.0, 0.0,
                                detect._MAX_SIDE)
    return detect._soft_bits(detect._fold(w, valid), (0, 0), detect._Key(secret))


class _Search:
    """The strength search of one plane: what every trial shares (the
    rendering window, the rendered plane, the host's soft values, the
    per-amplitude gain inputs) is computed once."""

    def __init__(self, plane: np.ndarray, lo: int, hi: int, message: bytes, secret: bytes, smap: bytes) -> None:
        self.plane, self.lo, self.hi = plane, lo, hi
        self.message, self.secret, self.smap = message, secret, smap
        self._window: tuple[float, float] | None = None
        self._rendered: np.ndarray | None = None
        self._host: np.ndarray | None = None
        self._gain_inputs: dict[int, np.ndarray] = {}
        self._patterns: dict[bytes, _Pattern] = {}

    def delta(self, amplitude: int, gains: bytes = b"") -> np.ndarray:
        pattern = self._patterns.get(gains)
        if pattern is None:
            pattern = self._patterns[gains] = _pattern(self.plane.shape, self.message, self.secret, gains, self.smap)
        return pattern.delta(amplitude)

    def apply(self, amplitude: int, gains: bytes = b"") -> tuple[np.ndarray, np.ndarray]:
        return _apply(self.plane, self.lo, self.hi, self.delta(amplitude, gains))

    def rendered_rms(self, marked: np.ndarray) -> float:
        """rms change on the 8-bit rendering of the 1st..99th percentile window."""
        if self._window is None:
            self._window = tuple(float(v) for v in np.percentile(self.plane, [1, 99]))
            self._rendered = _render(self.plane, self._window)
        return float(np.sqrt(np.mean((self._rendered - _render(marked, self._window)) ** 2)))

    def calibrate(self, gains: bytes = b"") -> int:
        """The amplitude whose change on the 8-bit rendering has rms close to, and
        not much above, :data:`TARGET_RMS_8BIT`: chips left out (clipping) give
        their energy budget back to the rest; the integer rounding of the pattern
        and of the rendering make the rms a step function, hence the search."""
        first = amplitude = strength_for(self.plane, self.lo, self.hi)
        tried: dict[int, float] = {}
        for _ in range(6):
            rms = tried[amplitude] = self.rendered_rms(self.apply(amplitude, gains)[0])
            if rms == 0:
                break
            new = max(min(int(round(amplitude * TARGET_RMS_8BIT / rms)), 2 * first), 1)
            if new in tried:
                # the rounding can land back on a step above the limit: go below it
                if any(r <= TARGET_RMS_8BIT * _RMS_TOLERANCE for r in tried.values()) or min(tried) <= 1:
                    break
                new = min(tried) - 1
            amplitude = new
        fitting = [a for a, r in tried.items() if r <= TARGET_RMS_8BIT * _RMS_TOLERANCE]
        return max(fitting) if fitting else min(tried)

    def informed_gains(self, amplitude: int, energy: float = 1.0) -> bytes:
        """Per-coded-bit gains that cancel the host image's own correlation
        with each coded bit (informed embedding, as in improved spread spectrum).

        The decoder's soft value of bit j is about ``h_j + g_j * p_j``: ``h_j``
        what the unmarked plane correlates with bit j's chips, ``p_j`` what the
        pattern at unit gain adds. Gains ``g_j = t - b_j h_j / p_j`` (``b_j`` the
        bit's sign), clipped to 2..15 eighths, give every bit the same margin
        ``t``, with ``t`` chosen so the mean squared gain is ``energy`` (1: the
        same energy, which :meth:`calibrate` then sets; a little more fills the
        step left by the amplitude's 1/16-unit granularity on 8-bit planes). On textured 8-bit images
        (ultrasound speckle) the host term is the main interference; where it is
        small the gains stay close to 1.
        """
        u = self._gain_inputs.get(amplitude)
        if u is None:
            info = np.concatenate([bits_of(self.message), bits_of(check_bytes(self.message, self.secret))])
            b = 1.0 - 2.0 * encode_bits(info)
            if self._host is None:
                self._host = _soft(self.plane, self.secret)
            marked, _ = self.apply(amplitude)
            p = b * (_soft(marked, self.secret) - self._host)
            p = np.maximum(p, 0.25 * max(float(np.median(p)), 1e-9))
            u = self._gain_inputs[amplitude] = b * self._host / p
        lo_g, hi_g = 2 / GAIN_UNIT, 15 / GAIN_UNIT
        t_lo, t_hi = 0.0, 4.0
        for _ in range(40):  # mean(g^2) grows with t: bisect for energy
            t = 0.5 * (t_lo + t_hi)
            if np.mean(np.clip(t - u, lo_g, hi_g) ** 2) > energy:
                t_hi = t
            else:
                t_lo = t
        q = np.clip(np.rint(GAIN_UNIT * np.clip(t_lo - u, lo_g, hi_g)), 2, 15).astype(np.uint8)
        return q.tobytes()

    def fill_energy(self, amplitude: int, gains: bytes) -> bytes:
        """Gains scaled up (up to 3 tries) towards the rendered-rms limit that the
        1/16-unit amplitude step could not reach (on an 8-bit plane one step is
        ~0.13 rms levels, ~0.8 dB); never above the limit."""
        limit = TARGET_RMS_8BIT * _RMS_TOLERANCE
        rms = self.rendered_rms(self.apply(amplitude, gains)[0])
        if rms <= 0 or rms >= 0.98 * limit:
            return gains
        energy = min((0.995 * limit / rms) ** 2, 1.5)
        for _ in range(3):
            trial = self.informed_gains(amplitude, energy)
            if self.rendered_rms(self.apply(amplitude, trial)[0]) <= limit:
                return trial
            energy = 1.0 + 0.5 * (energy - 1.0)
        return gains


def _apply(plane: np.ndarray, lo: int, hi: int, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``plane + delta``, except on the chips that would leave [lo, hi] anywhere
    (left unchanged); and which chips those are."""
    moved = plane + delta
    skip = _chip_any((moved < lo) | (moved > hi))
    return np.where(_per_sample(skip, plane.shape), plane, moved), skip


def embed_robust(
    plane: np.ndarray,
    lo: int,
    hi: int,
    message: bytes,
    secret: bytes,
    amplitude: int | None = None,
    informed: bool = True,
    adaptive: bool = True,
    deep: bool = True,
) -> tuple[np.ndarray, RobustMark]:
    """Add the robust pattern carrying ``message`` to ``plane``.

    Parameters
    ----------
    plane : ndarray
        Stored samples of one frame-channel, integers in ``[lo, hi]``.
    lo, hi : int
        The BitsStored range.
    message : bytes
        8 bytes (see :func:`message_for`).
    secret : bytes
        The key; the pattern, its sync part and the check are derived from it.
    amplitude : int, optional
        Strength in 1/16 stored units; default: :func:`strength_for`,
        searched (up to 6 tries, at most 2x) so the change measured on the 1st..99th percentile 8-bit
        window has rms :data:`TARGET_RMS_8BIT`.
    informed : bool
        Give each coded bit a gain that cancels the plane's own correlation
        with it (:meth:`_Search.informed_gains`; stored in the mark). False: all
        bits at unit gain, as version-1 marks.
    adaptive : bool
        Use the content-adaptive strength map (:func:`strength_map`, stored
        in the mark; a version-3 mark when there is one). False: uniform
        strength, as version-2 marks.
    deep : bool
        Let the deep encoder make the strength map (when its weights load);
        False: the rule-based map. Either way the map is stored in the mark.

    Returns
    -------
    (marked, mark)
        ``marked`` is int64 within ``[lo, hi]``. A chip (CHIP x CHIP samples)
        that the pattern would push outside the range anywhere is left
        unchanged; ``mark`` lists which of the chips the undo cannot tell
        apart by itself were left unchanged.
    """
    plane = _check_plane(plane, lo, hi)
    if not isinstance(message, bytes) or len(message) != MESSAGE_BYTES:
        raise ValueError(f"message must be {MESSAGE_BYTES} bytes, got {message!r}")
    fixed = amplitude is not None
    smap = strength_map(plane, deep) if adaptive else b""
    search = _Search(plane, lo, hi, message, secret, smap)
    if amplitude is None:
        amplitude = search.calibrate()
    gains = search.informed_gains(amplitude) if informed else b""
    if gains and not fixed:
        amplitude = search.calibrate(gains)
        gains = search.fill_energy(amplitude, gains)
    marked, skip = search.apply(amplitude, gains)
    delta = search.delta(amplitude, gains)
    flags = skip[_ambiguous(marked, delta, lo, hi)]
    packed = zlib.compress(np.packbits(flags.astype(np.uint8)).tobytes(), 9) if flags.any() else b""
    return marked, RobustMark(message=message, amplitude=int(amplitude), skipped=packed, gains=gains, smap=smap)


def undo_robust(marked: np.ndarray, lo: int, hi: int, mark: RobustMark, secret: bytes) -> np.ndarray:
    """The plane :func:`embed_robust` was given, bit for bit."""
    marked = _check_plane(marked, lo, hi)
    delta = _delta(marked.shape, mark.message, mark.amplitude, secret, mark.gains, mark.smap)
    ambiguous = _ambiguous(marked, delta, lo, hi)
    back = marked - delta
    # a chip whose undo would leave the range was certainly skipped
    skip = _chip_any((back < lo) | (back > hi))
    n = int(ambiguous.sum())
    if mark.skipped:
        flags = np.unpackbits(np.frombuffer(zlib.decompress(mark.skipped), dtype=np.uint8))[:n].astype(bool)
        if flags.size != n:
            raise ValueError("RobustMark does not match this plane (skip list too short)")
        skip[ambiguous] = flags
    return np.where(_per_sample(skip, marked.shape), marked, back)
