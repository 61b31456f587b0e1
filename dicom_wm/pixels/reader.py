"""Decode any supported image instance to its stored integer samples."""

from __future__ import annotations

import numpy as np
from pydicom import Dataset, uid
from pydicom.pixels import get_decoder

from dicom_wm.errors import UnsupportedInput

from .image_pixel import ImagePixel, image_pixel
from .planes import PixelPlanes, sample_dtype
from .syntaxes import SyntaxInfo, syntax_info

__all__ = ["read_samples", "transfer_syntax"]

_FLOAT_ELEMENTS = {
    0x7FE00008: "float pixel data (7FE0,0008) is not supported",
    0x7FE00009: "double float pixel data (7FE0,0009) is not supported",
}

# Errors pydicom's decoders and plugins raise for data they cannot decode.
_DECODE_ERRORS = (ValueError, RuntimeError, AttributeError, NotImplementedError, KeyError, IndexError)


def transfer_syntax(ds: Dataset) -> uid.UID:
    """The transfer syntax of `ds`: its file meta (0002,0010), else the
    encoding it was read with (files without a meta group)."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax:
        return uid.UID(str(tsyntax).strip())
    implicit, little = ds.original_encoding
    if implicit is None:
        raise UnsupportedInput("no (0002,0010) Transfer Syntax UID and no known encoding")
    if implicit:
        return uid.ImplicitVRLittleEndian
    return uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian


def read_samples(ds: Dataset) -> PixelPlanes:
    """Decode the pixel data of `ds` to its stored integer samples.

    Parameters
    ----------
    ds : pydicom.Dataset
        An image instance; it is not modified.

    Returns
    -------
    PixelPlanes
        ``samples`` is ``int32`` (``int64`` above 16 bits stored) shaped
        ``(frames, rows, columns, channels)``.

    Raises
    ------
    UnsupportedInput
        With one line naming the problem: no or float pixel data, 1-bit data,
        an inconsistent or unsupported Image Pixel module (PALETTE COLOR
        included), pixel data shorter than the header needs, an unsupported
        transfer syntax, a missing decoder package, or data that fails to
        decode.
    """
    if 0x7FE00010 not in ds:
        for tag, message in _FLOAT_ELEMENTS.items():
            if tag in ds:
                raise UnsupportedInput(message)
        raise UnsupportedInput("no Pixel Data element")

    tsyntax = transfer_syntax(ds)
    info = syntax_info(tsyntax)
    if info is None:
        name = f" ({tsyntax.name})" if tsyntax.name != str(tsyntax) else ""
        raise UnsupportedInput(f"transfer syntax {tsyntax}{name} is not supported")

    header = image_pixel(ds)
    if info.uid.is_encapsulated:
        arr, photometric = _decode_encapsulated(ds, info)
    else:
        arr, photometric = _decode_native(ds, header, info)

    expected = header.frames * header.rows * header.columns * header.samples_per_pixel
    if arr.size != expected:
        raise UnsupportedInput(
            f"decoded {info.uid.name} pixel data has {arr.size} samples but the header needs "
            f"{expected} (Frames x Rows x Columns x SamplesPerPixel)"
        )
    samples = arr.reshape(
        header.frames, header.rows, header.columns, header.samples_per_pixel
    ).astype(sample_dtype(header.bits_stored, header.signed))

    planes = PixelPlanes(
        samples=samples,
        bits_allocated=header.bits_allocated,
        bits_stored=header.bits_stored,
        signed=header.signed,
        photometric=photometric,
        lossy_source=info.lossy or str(ds.get("LossyImageCompression", "")).strip() == "01",
        source_transfer_syntax=str(info.uid),
    )
    if info.uid.is_encapsulated:
        # A codestream has its own precision and signedness; pydicom corrects
        # the sign of JPEG 2000 / JPEG-LS data but does not mask it to Bits
        # Stored. Samples outside that range cannot be written back under this
        # header, so refuse them here (native data is masked by pydicom).
        lo, hi = int(samples.min()), int(samples.max())
        if lo < planes.lo or hi > planes.hi:
            raise UnsupportedInput(
                f"decoded {info.uid.name} samples span [{lo}, {hi}], outside the "
                f"(0028,0101) Bits Stored {header.bits_stored} range [{planes.lo}, {planes.hi}]"
            )
    return planes


def _decode_native(ds: Dataset, header: ImagePixel, info: SyntaxInfo) -> tuple[np.ndarray, str]:
    value = ds.PixelData
    actual = len(value) if value is not None else 0
    needed = header.native_bytes
    if actual < needed:
        raise UnsupportedInput(
            f"pixel data is {actual} bytes but {header.native_formula()} needs {needed}"
        )
    if actual > needed + needed % 2:  # more than the pad byte of an odd length
        # the bytes after the last frame would not be written back (a frame
        # the header does not count, say): restore could not be exact
        raise UnsupportedInput(
            f"pixel data is {actual} bytes, {actual - needed} more than {header.native_formula()} describes "
            "(Number of Frames missing or wrong?)"
        )
    if header.photometric == "YBR_FULL_422" and header.columns % 2:
        raise UnsupportedInput(
            f"(0028,0011) Columns {header.columns} is odd, which YBR_FULL_422 does not allow"
        )
    # A view of the element's bytes when no bit correction is needed; pydicom
    # masks / sign-extends bits above Bits Stored (on a copy) otherwise.
    view_only = header.bits_allocated == header.bits_stored
    arr, props = _as_array(ds, info, view_only=view_only)
    return arr, _photometric_as_decoded(props)


def _decode_encapsulated(ds: Dataset, info: SyntaxInfo) -> tuple[np.ndarray, str]:
    decoder = get_decoder(info.uid)
    if not decoder.is_available:
        package = info.package or "a pydicom decoding plugin"
        raise UnsupportedInput(f"needs {package} for {info.uid.name}")
    arr, props = _as_array(ds, info, view_only=False)
    return arr, _photometric_as_decoded(props)


def _as_array(
    ds: Dataset, info: SyntaxInfo, *, view_only: bool
) -> tuple[np.ndarray, dict[str, str | int]]:
    decoder = get_decoder(info.uid)
    plugin = info.plugin if info.plugin in decoder.available_plugins else ""
    try:
        return decoder.as_array(
            ds,
            raw=True,  # stored samples: no YCbCr -> RGB conversion
            decoding_plugin=plugin,
            allow_excess_frames=False,
            view_only=view_only,
        )
    except _DECODE_ERRORS as exc:
        raise UnsupportedInput(
            f"cannot decode {info.uid.name} pixel data: {_one_line(exc)}"
        ) from exc


def _one_line(exc: Exception) -> str:
    """pydicom's "exceptions were raised by all available plugins:" header
    says nothing; keep the plugins' own reasons, on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    return "; ".join(lines) or type(exc).__name__


def _photometric_as_decoded(props: dict[str, str | int]) -> str:
    photometric = str(props["photometric_interpretation"])
    # Native YBR_FULL_422 is upsampled by pydicom and JPEG by the codec: the
    # samples are full resolution YCbCr, i.e. YBR_FULL.
    return "YBR_FULL" if photometric == "YBR_FULL_422" else photometric
