"""Read and write the integer samples of a Waveform Sequence.

Each item of (5400,0100) Waveform Sequence is a **multiplex group**: channels
sampled together, stored multiplexed (channel fastest) in (5400,1010)
Waveform Data. This module turns each group into

* ``stored``: the stored sample values, int64 shaped ``(channels, samples)``
  (µ-law / A-law codes as their unsigned byte values), and
* ``domain``: the values the watermark works on, same shape. They equal the
  stored values except for companded audio (MB / AB), where they are the
  codes' monotonic ranks (:mod:`dicom_wm.waveform.companding`).

Byte order follows the dataset's transfer syntax, and writing keeps it, the
element's VR and any bytes after the samples (the even-length pad), so no
other element changes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

import numpy as np
from pydicom.dataset import Dataset

from dicom_wm.errors import UnsupportedInput
from dicom_wm.pixels.reader import transfer_syntax
from dicom_wm.waveform.companding import ALAW_TO_RANK, RANK_TO_ALAW, RANK_TO_ULAW, ULAW_TO_RANK

__all__ = [
    "SampleInterpretation",
    "WaveformGroup",
    "is_waveform",
    "read_groups",
    "write_group",
    "tile_units",
    "to_domain",
    "from_domain",
    "TILE_UNIT",
]

TILE_UNIT = 64  # a time window is a whole number of 64-sample units


class SampleInterpretation(str, enum.Enum):
    """(003A,0220) Waveform Sample Interpretation values this package reads."""

    SB = "SB"  # signed 8-bit linear
    UB = "UB"  # unsigned 8-bit linear
    MB = "MB"  # 8-bit µ-law (G.711)
    AB = "AB"  # 8-bit A-law (G.711)
    SS = "SS"  # signed 16-bit linear
    US = "US"  # unsigned 16-bit linear

    @property
    def bits_allocated(self) -> int:
        return 8 if self.value.endswith("B") else 16

    @property
    def signed(self) -> bool:
        return self in (SampleInterpretation.SB, SampleInterpretation.SS)

    @property
    def companded(self) -> bool:
        return self in (SampleInterpretation.MB, SampleInterpretation.AB)


@dataclass(frozen=True)
class WaveformGroup:
    """One multiplex group's samples and what the watermark needs about it.

    ``step_bits`` k > 0 (16-bit linear samples only) makes the watermark
    domain ``stored >> k``: a ±1 change there moves a sample by 2**k, and the
    low k bits are kept as they are (``remainder``).
    """

    index: int  # position in the Waveform Sequence
    interpretation: SampleInterpretation
    bits_stored: int  # of the linear range; 8 for companded codes
    sampling_frequency: float | None
    stored: np.ndarray  # int64 (channels, samples): stored values
    padding: int | None  # (5400,100A) Waveform Padding Value as stored, or None
    little_endian: bool
    step_bits: int = 0
    # Derived from the above:
    domain: np.ndarray = field(init=False, repr=False)  # values the watermark changes
    remainder: np.ndarray = field(init=False, repr=False)  # stored bits below the step
    lo: int = field(init=False)  # range the walk keeps every changed sample in (domain values)
    hi: int = field(init=False)
    frozen: int | None = field(init=False)  # padding value (domain): never changed, never reached

    def __post_init__(self) -> None:
        k = self.step_bits
        if k and (self.interpretation.bits_allocated != 16 or not 0 <= k <= self.bits_stored - 4):
            raise ValueError(f"step of {k} bits needs 16-bit linear samples with more than {k + 3} bits stored")
        base = to_domain(self.stored, self.interpretation)
        lo, hi = (0, 255) if self.interpretation.companded else _linear_range(self.bits_stored, self.interpretation.signed)
        frozen = None
        if self.padding is not None:
            frozen = int(to_domain(np.array([self.padding], dtype=np.int64), self.interpretation)[0]) >> k
        lo, hi = lo >> k, hi >> k
        if frozen == lo:
            lo += 1
        elif frozen == hi:
            hi -= 1
        domain = base >> k
        set_ = object.__setattr__
        set_(self, "domain", domain)
        set_(self, "remainder", base - (domain << k))
        set_(self, "lo", lo)
        set_(self, "hi", hi)
        set_(self, "frozen", frozen)

    @property
    def n_channels(self) -> int:
        return int(self.stored.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.stored.shape[1])

    def with_step(self, step_bits: int) -> WaveformGroup:
        """The same group with another watermark step (ValueError if the
        samples do not allow it)."""
        return replace(self, step_bits=step_bits)

    def to_stored(self, domain: np.ndarray) -> np.ndarray:
        """Stored values for watermark-domain values of this group."""
        return from_domain((np.asarray(domain, dtype=np.int64) << self.step_bits) + self.remainder, self.interpretation)


def is_waveform(ds: Dataset) -> bool:
    """True when ``ds`` has a Waveform Sequence with Waveform Data in some
    item. (Whether it also has pixel data is the caller's question.)"""
    seq = ds.get("WaveformSequence")
    return bool(seq) and any("WaveformData" in item for item in seq)


def _dtype(interp: SampleInterpretation, little_endian: bool) -> np.dtype:
    code = {8: "i1", 16: "i2"}[interp.bits_allocated] if interp.signed else {8: "u1", 16: "u2"}[interp.bits_allocated]
    return np.dtype(("<" if little_endian else ">") + code)


def to_domain(stored: np.ndarray, interp: SampleInterpretation) -> np.ndarray:
    """Stored values -> watermark domain (code ranks for MB / AB)."""
    if interp is SampleInterpretation.MB:
        return ULAW_TO_RANK[stored]
    if interp is SampleInterpretation.AB:
        return ALAW_TO_RANK[stored]
    return stored


def from_domain(domain: np.ndarray, interp: SampleInterpretation) -> np.ndarray:
    """Watermark domain -> stored values (inverse of :func:`to_domain`)."""
    if interp is SampleInterpretation.MB:
        return RANK_TO_ULAW[domain]
    if interp is SampleInterpretation.AB:
        return RANK_TO_ALAW[domain]
    return domain


def _linear_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _int(item: Dataset, keyword: str, where: str) -> int:
    value = item.get(keyword)
    if value is None or value == "":
        raise UnsupportedInput(f"{where}: {keyword} is missing")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UnsupportedInput(f"{where}: {keyword} {value!r} is not an integer") from None


def _bits_stored(item: Dataset, interp: SampleInterpretation, n_channels: int, where: str) -> int:
    """The group's Waveform Bits Stored: the smallest over its channels
    (their Bits Allocated when a channel does not say)."""
    if interp.companded:
        return 8
    defs = item.get("ChannelDefinitionSequence") or []
    values = [int(ch.WaveformBitsStored) for ch in defs[:n_channels] if ch.get("WaveformBitsStored") not in (None, "")]
    for bits in values:
        if not 2 <= bits <= interp.bits_allocated:
            raise UnsupportedInput(
                f"{where}: (003A,021A) Waveform Bits Stored {bits} is not consistent with "
                f"(5400,1004) Waveform Bits Allocated {interp.bits_allocated}"
            )
    return min(values, default=interp.bits_allocated)


def _padding(item: Dataset, dtype: np.dtype, where: str) -> int | None:
    """(5400,100A) Waveform Padding Value as a stored value, or None."""
    raw = item.get("WaveformPaddingValue")
    if raw is None or raw == b"" or raw == "":
        return None
    if isinstance(raw, int):
        return raw
    data = bytes(raw)
    if len(data) < dtype.itemsize:
        raise UnsupportedInput(f"{where}: (5400,100A) Waveform Padding Value has {len(data)} bytes")
    return int(np.frombuffer(data[: dtype.itemsize], dtype=dtype)[0])


def tile_units(sampling_frequency: float | None) -> int:
    """Time-window length in 64-sample units: about one second (the tile
    field of the block, 1..255)."""
    if not sampling_frequency or sampling_frequency <= 0:
        return 16
    return int(min(255, max(1, round(sampling_frequency / TILE_UNIT))))


def _read_group(item: Dataset, index: int, little_endian: bool) -> WaveformGroup:
    where = f"Waveform Sequence item {index + 1}"
    if "WaveformData" not in item:
        raise UnsupportedInput(f"{where}: (5400,1010) Waveform Data is missing")
    text = str(item.get("WaveformSampleInterpretation", "")).strip()
    try:
        interp = SampleInterpretation(text)
    except ValueError:
        raise UnsupportedInput(
            f"{where}: (5400,1006) Waveform Sample Interpretation {text!r} is not supported "
            f"(supported: {', '.join(i.value for i in SampleInterpretation)})"
        ) from None
    bits_allocated = _int(item, "WaveformBitsAllocated", where)
    if bits_allocated != interp.bits_allocated:
        raise UnsupportedInput(
            f"{where}: (5400,1004) Waveform Bits Allocated {bits_allocated} is not consistent with "
            f"(5400,1006) Waveform Sample Interpretation {interp.value}"
        )
    n_channels = _int(item, "NumberOfWaveformChannels", where)
    n_samples = _int(item, "NumberOfWaveformSamples", where)
    if not 1 <= n_channels <= 255:
        raise UnsupportedInput(f"{where}: (003A,0005) Number of Waveform Channels {n_channels} is not in 1..255")
    if n_samples < 2:
        raise UnsupportedInput(f"{where}: (003A,0010) Number of Waveform Samples {n_samples} is fewer than 2")
    dtype = _dtype(interp, little_endian)
    data = item.WaveformData or b""
    need = n_channels * n_samples * dtype.itemsize
    if len(data) < need:
        raise UnsupportedInput(
            f"{where}: (5400,1010) Waveform Data has {len(data)} bytes, "
            f"{n_channels} channels x {n_samples} samples need {need}"
        )
    stored = np.frombuffer(data[:need], dtype=dtype).astype(np.int64).reshape(n_samples, n_channels).T.copy()
    bits = _bits_stored(item, interp, n_channels, where)
    lo, hi = (0, 255) if interp.companded else _linear_range(bits, interp.signed)
    padding = _padding(item, dtype, where)
    domain = to_domain(stored, interp)
    frozen = None if padding is None else int(to_domain(np.array([padding], dtype=np.int64), interp)[0])
    if frozen is not None and lo < frozen < hi:
        raise UnsupportedInput(
            f"{where}: (5400,100A) Waveform Padding Value {padding} lies inside the sample range "
            f"[{lo}, {hi}]; only a padding value at either end of it (or outside) is supported"
        )
    outside = (domain < lo) | (domain > hi)
    if frozen is not None:
        outside &= domain != frozen
    if outside.any():
        ch, s = (int(v[0]) for v in np.nonzero(outside))
        raise UnsupportedInput(
            f"{where}: channel {ch + 1} sample {s} value {int(stored[ch, s])} is outside the "
            f"(003A,021A) Waveform Bits Stored {bits} range"
        )
    fs = item.get("SamplingFrequency")
    try:
        frequency = float(fs) if fs not in (None, "") else None
    except (TypeError, ValueError):
        raise UnsupportedInput(f"{where}: (003A,001A) Sampling Frequency {fs!r} is not a number") from None
    return WaveformGroup(
        index=index, interpretation=interp, bits_stored=bits, sampling_frequency=frequency,
        stored=stored, padding=padding, little_endian=little_endian,
    )


def read_groups(ds: Dataset) -> list[WaveformGroup]:
    """Every multiplex group of ``ds`` (not modified), in sequence order.

    Raises
    ------
    UnsupportedInput
        One line naming the item and the element: no Waveform Sequence, an
        unsupported sample interpretation (only 8/16-bit SB UB MB AB SS US),
        inconsistent sizes, data shorter than the header needs, a sample
        outside its Bits Stored range, or a padding value inside the range.
    """
    seq = ds.get("WaveformSequence")
    if not seq:
        raise UnsupportedInput("no (5400,0100) Waveform Sequence")
    little_endian = transfer_syntax(ds).is_little_endian
    return [_read_group(item, i, little_endian) for i, item in enumerate(seq)]


def write_group(ds: Dataset, group: WaveformGroup, domain: np.ndarray) -> None:
    """Store watermark-domain values ``domain`` (channels, samples) as the
    Waveform Data of ``group``'s item in ``ds``, in place: same byte order,
    VR and trailing bytes."""
    if domain.shape != group.stored.shape:
        raise ValueError(f"samples shaped {domain.shape}, group {group.index} holds {group.stored.shape}")
    dtype = _dtype(group.interpretation, group.little_endian)
    stored = group.to_stored(domain)
    info = np.iinfo(dtype)
    if stored.size and (stored.min() < info.min or stored.max() > info.max):
        raise ValueError(f"group {group.index}: samples outside {dtype} range")
    elem = ds.WaveformSequence[group.index]["WaveformData"]
    old = bytes(elem.value)
    body = np.ascontiguousarray(stored.T).astype(dtype).tobytes()
    elem.value = body + old[len(body):]
