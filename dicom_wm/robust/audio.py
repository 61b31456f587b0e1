"""The robust leak-tracing layer for audio (Basic Voice / General Audio).

The image layer's contract (docs/robust.md) on 1-D signals: a keyed,
periodic spread-spectrum pattern carrying the 64-bit robust message
(:func:`dicom_wm.robust.message_for`), protected by the same keyed 32-bit
check and K=7 rate-1/3 convolutional code, added to the stored samples of
every channel so that the reversible payload can undo it exactly, and a
blind decoder that survives time shift, cropping, resampling, additive noise
and µ-law / A-law re-encoding. Design and measured figures:
docs/audio-robust.md.

Pattern (defined on a canonical 8 kHz time axis, whatever the stored rate)
    A period is ``CHIPS`` (1024) chips of ``CHIP`` (4) canonical samples:
    ``PERIOD`` = 4096 samples, 0.512 s, so 5 s of audio hold about ten
    periods. The image layer's key-derived chip layout is reused (106 sync
    chips, three chips per coded bit, a key-derived sign per chip) under a
    key derived for audio. Stored sample ``t`` of a signal at rate ``fs``
    sits at canonical position ``pos = floor((t + 1/2) * 8000 * 16 / fs)``
    (sixteenths of a canonical sample); its chip is ``pos // 64`` modulo
    ``CHIPS`` and its weight the parabolic window ``w = x * (64 - x)``,
    ``x = pos % 64``, negated on the chip's second half (at 8 kHz: 448, 960,
    -960, -448: DC-free, energy around 2 kHz). Integer arithmetic only, so
    the pattern is bit-identical on every machine.

Strength
    The change of sample ``t`` is ``sign * ((A_b * w + d_t) // 2**14)`` in
    watermark-domain units, ``d_t`` a key-derived dither in ``0 .. 2**14-1``
    and ``A_b`` the amplitude (in 1/16 units) of the block (``BLOCK``
    canonical samples, 128 ms) holding ``t``. Blocks carry a one-byte
    amplitude code each (``A`` about ``2**(q/8)``, 0 = none) in the
    :class:`AudioMark`:

    * 16-bit (and 8-bit) linear samples: ``A_b`` follows the block's rms, so
      the mark sits :data:`TARGET_SNR_DB` below the local signal level
      (it hides under speech and vanishes in pauses);
    * µ-law / A-law: the watermark domain is the code rank, a logarithmic
      scale, so one amplitude for every block already follows the envelope;
      it is searched so the linear SNR is about :data:`COMPANDED_SNR_DB`.

Clipping
    A chip whose change would leave ``[lo, hi]`` (or reach a frozen padding
    value) is left unchanged; as in the image layer, the chips whose undo
    cannot tell "marked" from "skipped" by themselves get one flag each in
    the mark.

Decoding (blind)
    Channels are averaged, the signal is resampled to 8 kHz
    (``scipy.signal.resample_poly``), whitened (a short-time LPC residual,
    order 12 over 32 ms frames, divided by its 20 ms local rms and clipped
    to +-3), taken as it is and, second, weighted by the signal envelope
    (the mark is absent in pauses), upsampled 2x (half-sample resolution, for inputs cropped at another
    rate), folded modulo ``PERIOD`` and cyclically correlated (FFT) with the
    key's sync chips, and the energy of the coded bits' coherent chip sums
    is taken at every shift (the bits are unknown, their chips' relative
    signs are not): the peaks of the two z-scores' sum give the time shift,
    for any crop and any start. At the four best-separated peaks of each, in order (at most
    :data:`MAX_AUDIO_DECODES` = 8 in all),
    the chips are matched-filtered, de-signed and summed per coded bit,
    Viterbi-decoded, and the message is returned only if its keyed 32-bit
    check matches. So an unmarked signal (or one marked under another key)
    decodes with probability at most ``MAX_AUDIO_DECODES * 2**-32``
    (< 2e-9) per key tried.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

from dicom_wm.robust.code import CODED_BITS, bits_of, check_bytes, checked_message, encode_bits, viterbi_decode
from dicom_wm.robust.message import MESSAGE_BYTES
from dicom_wm.robust.pattern import CHIPS, Layout

__all__ = [
    "AUDIO_RATE",
    "CHIP",
    "PERIOD",
    "BLOCK",
    "TARGET_SNR_DB",
    "COMPANDED_SNR_DB",
    "MAX_AUDIO_DECODES",
    "AudioMark",
    "embed_audio_robust",
    "undo_audio_robust",
    "decode_audio_robust",
    "load_audio",
    "trace_audio",
    "robust_snr_db",
    "pack_marks",
    "unpack_marks",
]

AUDIO_RATE = 8000  # canonical rate of the pattern and of decoding
CHIP = 4  # canonical samples per chip
PERIOD = CHIPS * CHIP  # 4096 canonical samples: 0.512 s
BLOCK = 1024  # canonical samples per amplitude block (128 ms)
TARGET_SNR_DB = 30.0  # mark power below the signal's, on the linear scale (linear samples)
# µ-law / A-law: a mark in code ranks follows each sample's magnitude rather
# than the local envelope, which the decoder recovers less well (at 30 dB,
# 20 dB of added noise defeated it in 6 of 20 trials, bench_audio_robust.py),
# so it is made stronger
COMPANDED_SNR_DB = 26.0
_PEAKS = 4  # sync peaks decoded per analysis
_VARIANTS = 2  # analyses: plain whitened, and weighted by the envelope
MAX_AUDIO_DECODES = _PEAKS * _VARIANTS  # checks per key: at most 8 * 2**-32 < 2e-9 false positives
_SUB = 16  # canonical position resolution (sixteenths of a sample)
_WIN = CHIP * _SUB  # 64
_WSCALE = 1 << 14  # amplitude (1/16 units) * w (<= 1024) is divided by this
_VERSION = 1
_HEADER = struct.Struct(">BB8sIHH")  # version, flags, message, rate, block samples, length of the zlib'd codes


def _audio_secret(secret: bytes) -> bytes:
    # the audio pattern's key material is independent of the image pattern's
    return hashlib.sha256(b"dicom-wm robust audio\0" + secret).digest()


@lru_cache(maxsize=16)
def _layout(secret: bytes) -> Layout:
    return Layout(_audio_secret(secret))


@lru_cache(maxsize=16)
def _dither(secret: bytes) -> np.ndarray:
    """Key-derived rounding offsets 0 .. 2**14 - 1, one per canonical sample of a period."""
    raw = hashlib.shake_256(b"dicom-wm robust audio dither\0" + secret).digest(2 * PERIOD)
    return np.frombuffer(raw, dtype=">u2").astype(np.int64) % _WSCALE


def _chip_signs(message: bytes | None, secret: bytes) -> np.ndarray:
    """+-1 per chip of a period (data chips 0 when ``message`` is None)."""
    lay = _layout(secret)
    v = np.zeros(CHIPS, np.int64)
    v[lay.sync] = lay.sign[lay.sync]
    if message is not None:
        info = np.concatenate([bits_of(message), bits_of(check_bytes(message, secret))])
        coded = encode_bits(info)
        v[lay.data] = lay.sign[lay.data] * (1 - 2 * coded[lay.bit_of])
    return v


def _positions(n: int, rate: int) -> np.ndarray:
    """Canonical position of each stored sample, in sixteenths."""
    t = np.arange(n, dtype=np.int64)
    return ((2 * t + 1) * (AUDIO_RATE * _SUB // 2)) // rate


def _rate_of(sample_rate: float | None) -> int:
    if not sample_rate or sample_rate <= 0:
        return AUDIO_RATE
    rate = int(round(float(sample_rate)))
    if rate < 1000 or rate > 384000:
        raise ValueError(f"sampling frequency {sample_rate} is outside 1 kHz .. 384 kHz")
    return rate


def _block_len(rate: int) -> int:
    return max(1, (BLOCK * rate) // AUDIO_RATE)


def _amplitude(code: np.ndarray) -> np.ndarray:
    code = np.asarray(code, dtype=np.int64)
    # about 2**(q/8), in integers: (round(2**((q%8)/8) * 2**16) << (q//8)) >> 16
    frac = np.array([65536, 71468, 77936, 84990, 92682, 101070, 110218, 120194], dtype=np.int64)
    amp = (frac[code % 8] << (code // 8)) >> 16
    return np.where(code > 0, amp, 0)


def _code_for(amplitude: np.ndarray) -> np.ndarray:
    """Largest code whose amplitude is <= ``amplitude`` (0 below 1)."""
    a = np.maximum(np.asarray(amplitude, dtype=np.float64), 0.0)
    q = np.where(a >= 1.0, np.floor(8 * np.log2(np.maximum(a, 1.0))), 0).astype(np.int64)
    q = np.clip(q, 0, 255)
    # floor(log) can be off by one at exact powers: step to the right code
    q = np.where((q < 255) & (_amplitude(q + 1) <= a), q + 1, q)
    q = np.where((q > 0) & (_amplitude(q) > a), q - 1, q)
    return np.where(a >= 1.0, np.maximum(q, 1), 0)


def _delta(n: int, rate: int, codes: np.ndarray, message: bytes, secret: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The change (watermark-domain units) of each of ``n`` samples and the
    index of the chip (counted from the start) each sample belongs to."""
    pos = _positions(n, rate)
    chip = pos // _WIN
    w = _window(pos % _WIN)
    amp = _amplitude(codes)[np.minimum(np.arange(n) // _block_len(rate), len(codes) - 1)]
    d = _dither(secret)[(pos // _SUB) % PERIOD]
    sign = _chip_signs(message, secret)[chip % CHIPS]
    return sign * ((amp * w + d) // _WSCALE), chip


def _window(x: np.ndarray) -> np.ndarray:
    """Chip weight at position ``x`` (sixteenths, 0..63) within a chip: a
    parabola whose second half is negated, so a chip is DC-free and its
    energy sits around 2 kHz (at 8 kHz: 448, 960, -960, -448), where the
    speech residual is weaker than under the formants and the 8 kHz <->
    11.025 kHz resamplers leave it alone."""
    w = x * (_WIN - x)
    return np.where(x < _WIN // 2, w, -w)


def _chip_any(mask: np.ndarray, chip: np.ndarray) -> np.ndarray:
    """Per chip (samples grouped by ``chip``): any of ``mask`` set."""
    return np.bincount(chip, weights=mask.astype(np.float64), minlength=int(chip[-1]) + 1 if chip.size else 0) > 0


@dataclass(frozen=True)
class AudioMark:
    """What :func:`embed_audio_robust` changed on one channel, enough to undo it.

    ``codes`` holds one amplitude code per block; ``skipped`` the
    zlib-compressed flags of the ambiguous chips left unchanged (empty when
    none). ``rate`` is the stored sampling rate the pattern was laid on."""

    message: bytes
    rate: int
    block: int
    codes: bytes
    skipped: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.message, bytes) or len(self.message) != MESSAGE_BYTES:
            raise ValueError(f"message must be {MESSAGE_BYTES} bytes, got {self.message!r}")
        if not 0 < self.rate < 2**32 or not 0 < self.block < 2**16:
            raise ValueError(f"rate {self.rate} / block {self.block} out of range")

    def to_bytes(self) -> bytes:
        codes = zlib.compress(self.codes, 9)
        if len(codes) > 0xFFFF:
            raise ValueError("amplitude codes too long")
        return _HEADER.pack(_VERSION, 0, self.message, self.rate, self.block, len(codes)) + codes + self.skipped

    @classmethod
    def from_bytes(cls, b: bytes) -> AudioMark:
        if len(b) < _HEADER.size:
            raise ValueError(f"an AudioMark is at least {_HEADER.size} bytes, got {len(b)}")
        version, _flags, message, rate, block, n = _HEADER.unpack_from(b)
        if version != _VERSION:
            raise ValueError(f"unknown AudioMark version {version}")
        off = _HEADER.size
        try:
            codes = zlib.decompress(bytes(b[off : off + n]))
        except zlib.error as exc:
            raise ValueError(f"AudioMark amplitude codes unreadable: {exc}") from None
        return cls(message=message, rate=rate, block=block, codes=codes, skipped=bytes(b[off + n :]))


def pack_marks(marks: list[AudioMark]) -> bytes:
    """The robust-mark bytes of a multiplex group: each channel's
    :class:`AudioMark`, in channel order, as uint16 length + bytes."""
    out = b""
    for m in marks:
        b = m.to_bytes()
        if len(b) > 0xFFFF:
            raise ValueError(f"an AudioMark of {len(b)} bytes does not fit its length field")
        out += struct.pack(">H", len(b)) + b
    return out


def unpack_marks(data: bytes) -> list[AudioMark]:
    """Inverse of :func:`pack_marks` (ValueError on malformed bytes)."""
    marks: list[AudioMark] = []
    off = 0
    while off < len(data):
        if off + 2 > len(data):
            raise ValueError("truncated audio robust marks")
        (n,) = struct.unpack_from(">H", data, off)
        off += 2
        if off + n > len(data):
            raise ValueError("truncated audio robust marks")
        marks.append(AudioMark.from_bytes(data[off : off + n]))
        off += n
    return marks


def _check_samples(x: np.ndarray, lo: int, hi: int, frozen: int | None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"samples must be 1-D (one channel), got shape {x.shape}")
    if x.dtype.kind not in "iu":
        raise TypeError(f"samples must be integers, got {x.dtype}")
    if lo >= hi:
        raise ValueError(f"lo {lo} must be below hi {hi}")
    x = x.astype(np.int64)
    inside = (x >= lo) & (x <= hi)
    if frozen is not None:
        inside |= x == frozen
    if x.size and not inside.all():
        raise ValueError(f"samples outside [{lo}, {hi}]")
    return x


def _out(y: np.ndarray, lo: int, hi: int, frozen: int | None) -> np.ndarray:
    bad = (y < lo) | (y > hi)
    if frozen is not None:
        bad |= y == frozen
    return bad


def _apply(x: np.ndarray, delta: np.ndarray, chip: np.ndarray, lo: int, hi: int, frozen: int | None):
    moved = x + delta
    bad = _out(moved, lo, hi, frozen)
    if frozen is not None:
        bad |= x == frozen  # padding samples never change
    skip = _chip_any(bad, chip)
    return np.where(skip[chip], x, moved), skip


def _ambiguous(y: np.ndarray, delta: np.ndarray, chip: np.ndarray, lo: int, hi: int, frozen: int | None) -> np.ndarray:
    back, fwd = y - delta, y + delta
    pad = (y == frozen) if frozen is not None else np.zeros(y.shape, bool)
    could_embed = ~_chip_any(_out(back, lo, hi, frozen) | pad, chip)
    could_skip = _chip_any(_out(fwd, lo, hi, frozen) | pad, chip)
    return could_embed & could_skip


def _linear_codes(levels: np.ndarray, rate: int) -> np.ndarray:
    """Amplitude code per block following the block's rms (linear samples)."""
    b = _block_len(rate)
    n = levels.size
    nb = -(-n // b)
    pad = np.zeros(nb * b)
    pad[:n] = levels - float(np.mean(levels)) if n else 0.0
    rms = np.sqrt(np.mean(pad.reshape(nb, b) ** 2, axis=1))
    # mark rms = rms * 10**(-SNR/20); the window's rms at 8 kHz is ~0.71 of its peak weight (960/1024 = 0.94)
    w_rms = math.sqrt((448**2 + 960**2) / 2) / 1024 / 16
    return _code_for(rms * 10 ** (-TARGET_SNR_DB / 20) / w_rms)


def embed_audio_robust(
    samples: np.ndarray,
    lo: int,
    hi: int,
    message: bytes,
    secret: bytes,
    *,
    sample_rate: float | None,
    linear: np.ndarray | None = None,
    frozen: int | None = None,
    codes: np.ndarray | None = None,
) -> tuple[np.ndarray, AudioMark]:
    """Add the robust audio pattern carrying ``message`` to one channel.

    Parameters
    ----------
    samples : ndarray
        One channel's watermark-domain samples (1-D integers in ``[lo, hi]``,
        or equal to ``frozen``): stored values of linear audio, code ranks
        of µ-law / A-law.
    lo, hi : int
        Range every changed sample stays in.
    message : bytes
        8 bytes (:func:`dicom_wm.robust.message_for`).
    secret : bytes
        The key.
    sample_rate : float or None
        Stored sampling rate (Hz); None means 8 kHz.
    linear : ndarray, optional
        For companded samples: a 256-entry table from domain value (code
        rank) to linear amplitude; one amplitude for every block is then
        searched so the SNR on that scale is about :data:`COMPANDED_SNR_DB`.
        Without it the amplitude follows each block's rms.
    frozen : int, optional
        A padding value: never changed, never reached.
    codes : ndarray, optional
        Amplitude code per block (overrides the automatic choice).

    Returns
    -------
    (marked, mark)
    """
    x = _check_samples(samples, lo, hi, frozen)
    if not isinstance(message, bytes) or len(message) != MESSAGE_BYTES:
        raise ValueError(f"message must be {MESSAGE_BYTES} bytes, got {message!r}")
    rate = _rate_of(sample_rate)
    nb = max(1, -(-x.size // _block_len(rate)))
    if codes is None:
        if linear is None:
            codes = _linear_codes(np.where(x == frozen, 0, x) if frozen is not None else x, rate)
        else:
            codes = _companded_codes(x, lo, hi, message, secret, rate, nb, np.asarray(linear), frozen)
    codes = np.asarray(codes, dtype=np.int64)
    if codes.shape != (nb,) or codes.min(initial=0) < 0 or codes.max(initial=0) > 255:
        raise ValueError(f"codes must be {nb} values in 0..255")
    delta, chip = _delta(x.size, rate, codes, message, secret)
    marked, skip = _apply(x, delta, chip, lo, hi, frozen)
    flags = skip[_ambiguous(marked, delta, chip, lo, hi, frozen)]
    packed = zlib.compress(np.packbits(flags.astype(np.uint8)).tobytes(), 9) if flags.any() else b""
    mark = AudioMark(message=message, rate=rate, block=_block_len(rate), codes=codes.astype(np.uint8).tobytes(), skipped=packed)
    return marked, mark


def _companded_codes(
    x: np.ndarray, lo: int, hi: int, message: bytes, secret: bytes, rate: int, nb: int, table: np.ndarray, frozen: int | None
) -> np.ndarray:
    lin = table[x].astype(np.float64)
    power = float(np.sum(lin**2))
    q = 8 * 4  # amplitude 16: about one rank on the window's peak
    tried: dict[int, float] = {}
    for _ in range(8):
        codes = np.full(nb, q, np.int64)
        delta, chip = _delta(x.size, rate, codes, message, secret)
        y, _ = _apply(x, delta, chip, lo, hi, frozen)
        err = float(np.sum((table[y] - lin) ** 2))
        snr = math.inf if err == 0 else 10 * math.log10(power / err) if power else -math.inf
        tried[q] = snr
        # amplitude in code steps: 8 codes per doubling = 6.02 dB
        new = int(np.clip(q + round((min(max(snr, -100.0), 100.0) - COMPANDED_SNR_DB) / 6.02 * 8), 1, 255))
        if new in tried:
            break
        q = new
    fitting = [c for c, s in tried.items() if s >= COMPANDED_SNR_DB - 0.25]
    return np.full(nb, max(fitting) if fitting else min(tried), np.int64)


def undo_audio_robust(marked: np.ndarray, lo: int, hi: int, mark: AudioMark, secret: bytes, *, frozen: int | None = None) -> np.ndarray:
    """The channel :func:`embed_audio_robust` was given, sample for sample."""
    y = _check_samples(marked, lo, hi, frozen)
    codes = np.frombuffer(mark.codes, dtype=np.uint8).astype(np.int64)
    if mark.block != _block_len(mark.rate) or codes.size != max(1, -(-y.size // mark.block)):
        raise ValueError("AudioMark does not match this channel (block layout)")
    delta, chip = _delta(y.size, mark.rate, codes, mark.message, secret)
    ambiguous = _ambiguous(y, delta, chip, lo, hi, frozen)
    back = y - delta
    pad = (y == frozen) if frozen is not None else np.zeros(y.shape, bool)
    skip = _chip_any(_out(back, lo, hi, frozen) | pad, chip)
    n = int(ambiguous.sum())
    if mark.skipped:
        try:
            flags = np.unpackbits(np.frombuffer(zlib.decompress(mark.skipped), dtype=np.uint8))[:n].astype(bool)
        except zlib.error as exc:
            raise ValueError(f"AudioMark skip list unreadable: {exc}") from None
        if flags.size != n:
            raise ValueError("AudioMark does not match this channel (skip list too short)")
        skip[ambiguous] = flags
    return np.where(skip[chip], y, back)


# ---------------------------------------------------------------- decoding

_LPC_ORDER = 12
_LPC_FRAME = 256  # canonical samples (32 ms)
_NORM = 160  # local-rms window of the whitened signal (20 ms)
_UP = 2  # analysis resolution: half a canonical sample


def _canonical(channels: np.ndarray, sample_rate: float) -> np.ndarray:
    """Mono (channel mean) float signal at :data:`AUDIO_RATE`."""
    from scipy.signal import resample_poly

    x = np.asarray(channels, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise ValueError(f"samples must be (channels, samples) or 1-D, got shape {np.shape(channels)}")
    rate = Fraction(_rate_of(sample_rate))
    if rate != AUDIO_RATE:
        f = Fraction(AUDIO_RATE) / rate
        x = resample_poly(x, f.numerator, f.denominator)
    return x


def _whiten(x: np.ndarray) -> np.ndarray:
    """Short-time LPC residual, divided by its local rms and clipped to +-3:
    the host speech's spectral envelope and loudness are taken out, the
    (broadband) mark is kept."""
    from scipy.linalg import solve_toeplitz
    from scipy.ndimage import uniform_filter1d

    n = x.size
    x = x - x.mean()
    nf = -(-n // _LPC_FRAME)
    pad = np.zeros(nf * _LPC_FRAME + 2 * _LPC_FRAME)
    pad[_LPC_FRAME : _LPC_FRAME + n] = x
    # analysis window: 2 frames centred on each frame
    idx = np.arange(nf)[:, None] * _LPC_FRAME + np.arange(2 * _LPC_FRAME)[None, :] + _LPC_FRAME // 2
    seg = pad[idx] * np.hanning(2 * _LPC_FRAME)
    spec = np.fft.rfft(seg, 4 * _LPC_FRAME, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, : _LPC_ORDER + 1]
    coeffs = np.zeros((nf, _LPC_ORDER))
    for k in range(nf):
        r = ac[k]
        if r[0] <= 1e-9:
            continue
        r = r * np.exp(-0.5 * (0.01 * np.arange(_LPC_ORDER + 1)) ** 2)  # lag window
        r[0] *= 1.0 + 1e-4  # white-noise correction
        try:
            coeffs[k] = solve_toeplitz(r[:-1], r[1:])
        except np.linalg.LinAlgError:
            pass
    lagged = np.stack([np.concatenate([np.zeros(i), x[: n - i]]) for i in range(1, _LPC_ORDER + 1)], axis=1)
    e = x - np.einsum("ti,ti->t", lagged, coeffs[np.arange(n) // _LPC_FRAME])
    local = np.sqrt(uniform_filter1d(e * e, _NORM, mode="nearest"))
    floor = max(float(np.median(local)) * 0.1, 1e-9)
    w = e / np.maximum(local, floor)
    np.clip(w, -3.0, 3.0, out=w)
    return w


class _AudioKey:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.layout = _layout(secret)
        t = np.arange(PERIOD * _UP)
        pos = ((2 * t + 1) * _SUB) // (2 * _UP)  # sixteenths, at the analysis resolution
        self.window = _window(pos % _WIN).astype(np.float64)
        self.chip = pos // _WIN
        sync = _chip_signs(None, secret)[self.chip] * self.window
        self.sync_fft = np.conj(np.fft.rfft(sync))
        one = np.zeros(PERIOD * _UP)
        one[: CHIP * _UP] = self.window[: CHIP * _UP]
        self.chip_fft = np.conj(np.fft.rfft(one))


def _fold(w: np.ndarray) -> np.ndarray:
    p = PERIOD * _UP
    n = -(-w.size // p) * p
    acc = np.zeros(n)
    cnt = np.zeros(n)
    acc[: w.size] = w
    cnt[: w.size] = 1.0
    return acc.reshape(-1, p).sum(axis=0) / np.maximum(cnt.reshape(-1, p).sum(axis=0), 1.0)


def _zscore(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / (float(v.std()) or 1.0)


def _data_energy(spec: np.ndarray, key: _AudioKey, n: int) -> np.ndarray:
    """Per shift: the energy of the coded bits' coherent chip sums (each
    bit's three chips per period have known relative signs, the bit itself
    is unknown), a sync statistic that uses the 90 % of the pattern the sync
    chips do not."""
    r = np.fft.irfft(spec * key.chip_fft, n=n)  # r[t]: chip matched filter starting at t
    lay = key.layout
    step = CHIP * _UP
    energy = np.empty(n)
    for s0 in range(0, n, 1024):
        shifts = np.arange(s0, min(s0 + 1024, n))
        c = r[(shifts[:, None] + step * lay.data[None, :]) % n] * lay.sign[lay.data]
        b = c.reshape(shifts.size, -1, CODED_BITS).sum(axis=1)
        energy[shifts] = np.sum(b * b, axis=1)
    return energy


def _sync_peaks(folded: np.ndarray, key: _AudioKey, k: int) -> list[tuple[float, int]]:
    """The ``k`` best shifts, best first, at least a chip apart: the sync
    chips' correlation plus the data chips' energy (both as z-scores over
    all shifts)."""
    spec = np.fft.rfft(folded)
    corr = np.fft.irfft(spec * key.sync_fft, n=folded.size)
    z = _zscore(corr) + _zscore(_data_energy(spec, key, folded.size))
    out: list[tuple[float, int]] = []
    for i in np.argsort(z)[::-1]:
        # one candidate per peak: skip neighbours of a peak already taken
        if all(min(abs(int(i) - j), folded.size - abs(int(i) - j)) > _UP * CHIP for _, j in out):
            out.append((float(z[i]), int(i)))
        if len(out) == k:
            break
    return out


def _soft_bits(folded: np.ndarray, shift: int, key: _AudioKey) -> np.ndarray:
    aligned = np.roll(folded, -shift)
    chips = np.bincount(key.chip, weights=aligned * key.window, minlength=CHIPS)
    lay = key.layout
    soft = np.zeros(CODED_BITS)
    np.add.at(soft, lay.bit_of, chips[lay.data] * lay.sign[lay.data])
    return soft


def _decode_soft(soft: np.ndarray, secret: bytes) -> bytes | None:
    return checked_message(viterbi_decode(soft / (float(soft.std()) or 1.0)), secret)


def _analyses(channels: np.ndarray, sample_rate: float) -> list[np.ndarray]:
    """The whitened canonical signal at the analysis resolution: as it is,
    and weighted by the envelope (the mark follows the envelope and is
    absent in pauses, where the whitened signal is noise only: with added
    noise the weighted one does better, on clean copies the plain one)."""
    from scipy.ndimage import uniform_filter1d
    from scipy.signal import resample_poly

    x = _canonical(channels, sample_rate)
    w = _whiten(x)
    # weight: the square root of the envelope (50 ms rms) relative to its
    # 80th percentile (measured better than the envelope itself, capped or not)
    env = np.sqrt(uniform_filter1d((x - x.mean()) ** 2, 400, mode="nearest"))
    ref = float(np.percentile(env, 80)) or 1.0
    return [resample_poly(w, _UP, 1), resample_poly(w * np.sqrt(env / ref), _UP, 1)]


def decode_audio_robust(samples: np.ndarray, sample_rate: float, secret: bytes) -> bytes | None:
    """The 8-byte message the audio robust layer put in ``samples`` under ``secret``, or None.

    Parameters
    ----------
    samples : ndarray
        Linear samples, float or int, 1-D or ``(channels, samples)``
        (channels are averaged), in any scale: a decoded DICOM waveform, a
        WAV file, a recording of a copy; any start and length (about 2 s or
        more; robustness grows with length).
    sample_rate : float
        Their sampling rate (Hz); they are resampled to 8 kHz.
    secret : bytes
        The key to try.

    At most :data:`MAX_AUDIO_DECODES` (8) candidate shifts are decoded and a
    message is returned only when its keyed 32-bit check matches, so an
    unmarked signal yields a message with probability at most
    ``MAX_AUDIO_DECODES * 2**-32`` per key.
    """
    if np.size(samples) == 0:
        return None
    key = _AudioKey(secret)
    for w in _analyses(samples, sample_rate):
        if w.size < CHIP * _UP * 64:
            return None
        folded = _fold(w)
        for _, shift in _sync_peaks(folded, key, _PEAKS):
            msg = _decode_soft(_soft_bits(folded, shift, key), secret)
            if msg is not None:
                return msg
    return None


def robust_snr_db(original: np.ndarray, marked: np.ndarray) -> float:
    """SNR (dB) of the robust layer alone: 10 log10(sum x^2 / sum (y - x)^2)
    on linear samples; inf when nothing changed."""
    a = np.asarray(original, dtype=np.float64)
    d = np.asarray(marked, dtype=np.float64) - a
    err = float(np.sum(d * d))
    return math.inf if err == 0 else 10 * math.log10(float(np.sum(a * a)) / err)


# ---------------------------------------------------------------- loading


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A RIFF/WAVE file: PCM 8 (unsigned) / 16 / 24 / 32-bit, IEEE float 32/64,
    G.711 A-law (format 6) or µ-law (format 7); linear float on the 16-bit
    scale for 8/16-bit and companded input, native scale otherwise."""
    from dicom_wm.waveform.companding import alaw_decode, ulaw_decode

    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    off, fmt, body = 12, None, None
    while off + 8 <= len(data):
        cid, size = data[off : off + 4], struct.unpack_from("<I", data, off + 4)[0]
        chunk = data[off + 8 : off + 8 + size]
        if cid == b"fmt ":
            fmt = chunk
        elif cid == b"data":
            body = chunk
        off += 8 + size + (size & 1)
    if fmt is None or body is None or len(fmt) < 16:
        raise ValueError("WAVE file without a fmt or data chunk")
    tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's tag
        tag = struct.unpack_from("<H", fmt, 24)[0]
    if channels < 1 or rate < 1:
        raise ValueError(f"WAVE file with {channels} channels at {rate} Hz")
    width = bits // 8
    n = len(body) // (width * channels) if width else 0
    raw = body[: n * width * channels]
    if tag == 1 and bits == 8:
        x = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) * 256.0
    elif tag == 1 and bits == 16:
        x = np.frombuffer(raw, "<i2").astype(np.float64)
    elif tag == 1 and bits == 24:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int64)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = np.where(v >= 1 << 23, v - (1 << 24), v).astype(np.float64)
    elif tag == 1 and bits == 32:
        x = np.frombuffer(raw, "<i4").astype(np.float64)
    elif tag == 3 and bits in (32, 64):
        x = np.frombuffer(raw, "<f4" if bits == 32 else "<f8").astype(np.float64)
    elif tag == 7 and bits == 8:
        x = ulaw_decode(np.frombuffer(raw, np.uint8)).astype(np.float64)
    elif tag == 6 and bits == 8:
        x = alaw_decode(np.frombuffer(raw, np.uint8)).astype(np.float64)
    else:
        raise ValueError(f"WAVE format tag {tag} with {bits} bits per sample is not supported")
    return x.reshape(n, channels).T.copy(), int(rate)


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Linear samples and sampling rate of an audio file, for tracing.

    ``path`` is a WAV file (PCM 8/16/24/32-bit, float, µ-law or A-law) or a
    DICOM waveform object (the first multiplex group with a Sampling
    Frequency, decoded through :mod:`dicom_wm.waveform`: µ-law / A-law
    expanded, unsigned values centred).

    Returns
    -------
    (channels, sample_rate)
        ``channels`` float64 shaped ``(n_channels, n_samples)``; the rate in Hz
        (rounded to an integer).

    Raises ValueError when the file is neither (or holds no audio).
    """
    data = Path(path).read_bytes()
    if data[:4] == b"RIFF":
        return _read_wav(data)
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError

    from dicom_wm.errors import UnsupportedInput
    from dicom_wm.waveform.quality import _linear
    from dicom_wm.waveform.samples import read_groups

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        groups = read_groups(ds)
    except (InvalidDicomError, UnsupportedInput) as exc:
        raise ValueError(f"{path}: neither a WAV file nor a DICOM waveform ({exc})") from None
    for g in groups:
        if g.sampling_frequency:
            return _linear(g).astype(np.float64), int(round(g.sampling_frequency))
    raise ValueError(f"{path}: no waveform group with a Sampling Frequency")


def trace_audio(path: str | Path, secret: bytes) -> bytes | None:
    """The robust message (8 bytes) in the audio file ``path`` under
    ``secret``, or None: :func:`load_audio` then :func:`decode_audio_robust`."""
    channels, rate = load_audio(path)
    return decode_audio_robust(channels, rate, secret)
