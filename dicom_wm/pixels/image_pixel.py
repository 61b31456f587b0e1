"""The Image Pixel module of a dataset, read once and checked eagerly.

Every check raises :class:`~dicom_wm.errors.UnsupportedInput` with one line
that names the element (tag and keyword) and the offending value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom import Dataset

from dicom_wm.errors import UnsupportedInput

__all__ = ["ImagePixel", "image_pixel", "PALETTE_REASON"]

#: Why PALETTE COLOR is refused (docs/pixels.md explains the policy).
PALETTE_REASON = (
    "PALETTE COLOR is not watermarked: an index ±1 can be a large colour change "
    "(it selects a different palette entry), so the ±1 bound would not hold"
)

_MONO = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")


@dataclass(frozen=True)
class ImagePixel:
    """The Image Pixel module values that decide how samples are stored."""

    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    signed: bool
    photometric: str
    planar_configuration: int

    @property
    def native_bytes(self) -> int:
        """Bytes of native (uncompressed) pixel data the header calls for,
        before the trailing pad byte of an odd length."""
        per_pixel = self.samples_per_pixel
        if self.photometric == "YBR_FULL_422":  # two Y per CbCr pair (PS3.3 C.7.6.3.1.2)
            per_pixel = 2
        return self.frames * self.rows * self.columns * per_pixel * self.bits_allocated // 8

    def native_formula(self) -> str:
        """How `native_bytes` was computed, for error messages."""
        spp = "2 (YBR_FULL_422)" if self.photometric == "YBR_FULL_422" else str(self.samples_per_pixel)
        return (
            f"Rows x Columns x SamplesPerPixel x Frames x BitsAllocated/8 = "
            f"{self.rows} x {self.columns} x {spp} x {self.frames} x {self.bits_allocated // 8}"
        )


def _int(ds: Dataset, tag: int, keyword: str, *, default: int | None = None) -> int:
    elem = ds.get(tag)
    value: Any = None if elem is None else elem.value
    if value is None or value == "":
        if default is not None:
            return default
        raise UnsupportedInput(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword} is missing")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UnsupportedInput(
            f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword} {value!r} is not a single integer"
        ) from None


def image_pixel(ds: Dataset) -> ImagePixel:
    """Read and check the Image Pixel module of `ds`.

    Raises
    ------
    UnsupportedInput
        If an element is missing, has an impossible value, contradicts
        another, or describes data we deliberately do not watermark.
    """
    bits_allocated = _int(ds, 0x00280100, "Bits Allocated")
    if bits_allocated == 1:
        raise UnsupportedInput("1-bit pixel data (BitsAllocated 1) is not supported")
    if bits_allocated not in (8, 16, 32):
        raise UnsupportedInput(
            f"(0028,0100) Bits Allocated {bits_allocated} is not supported (only 8, 16 or 32)"
        )
    bits_stored = _int(ds, 0x00280101, "Bits Stored")
    if not 1 <= bits_stored <= bits_allocated:
        raise UnsupportedInput(
            f"(0028,0100) Bits Allocated {bits_allocated} is not consistent with "
            f"Bits Stored {bits_stored}"
        )
    high_bit = _int(ds, 0x00280102, "High Bit", default=bits_stored - 1)
    if high_bit != bits_stored - 1:
        raise UnsupportedInput(
            f"(0028,0102) High Bit {high_bit} is not consistent with Bits Stored "
            f"{bits_stored} (must be {bits_stored - 1})"
        )
    representation = _int(ds, 0x00280103, "Pixel Representation")
    if representation not in (0, 1):
        raise UnsupportedInput(f"(0028,0103) Pixel Representation {representation} is not 0 or 1")

    rows = _int(ds, 0x00280010, "Rows")
    columns = _int(ds, 0x00280011, "Columns")
    if rows < 1 or columns < 1:
        raise UnsupportedInput(f"(0028,0010) Rows {rows} x (0028,0011) Columns {columns} is empty")
    # pydicom reads a missing, empty or zero Number of Frames as one frame; so do we
    frames = _int(ds, 0x00280008, "Number of Frames", default=1) or 1
    if frames < 0:
        raise UnsupportedInput(f"(0028,0008) Number of Frames {frames} is negative")

    elem = ds.get(0x00280004)
    photometric = str(elem.value).strip() if elem is not None and elem.value else ""
    if not photometric:
        raise UnsupportedInput("(0028,0004) Photometric Interpretation is missing")
    if photometric == "PALETTE COLOR":
        raise UnsupportedInput(PALETTE_REASON)
    if photometric not in _MONO + _COLOUR:
        raise UnsupportedInput(
            f"(0028,0004) Photometric Interpretation {photometric} is not supported"
        )
    spp = _int(ds, 0x00280002, "Samples per Pixel")
    if spp != (1 if photometric in _MONO else 3):
        raise UnsupportedInput(
            f"(0028,0002) Samples per Pixel {spp} is not consistent with "
            f"Photometric Interpretation {photometric}"
        )
    planar = 0
    if spp > 1:
        planar = _int(ds, 0x00280006, "Planar Configuration")
        if planar not in (0, 1):
            raise UnsupportedInput(f"(0028,0006) Planar Configuration {planar} is not 0 or 1")

    return ImagePixel(
        rows=rows,
        columns=columns,
        frames=frames,
        samples_per_pixel=spp,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        high_bit=high_bit,
        signed=representation == 1,
        photometric=photometric,
        planar_configuration=planar,
    )
