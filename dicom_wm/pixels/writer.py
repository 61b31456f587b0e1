"""Store integer samples back into a dataset as native, lossless pixel data."""

from __future__ import annotations

import numpy as np
from pydicom import Dataset, config
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset

from dicom_wm.errors import UnsupportedInput

from .image_pixel import image_pixel
from .planes import PixelPlanes
from .reader import transfer_syntax
from .syntaxes import WRITE_SYNTAX

__all__ = ["write_samples"]

# Photometric changes that decoding can force, per samples-per-pixel value.
_PHOTOMETRIC_FOR_SPP = {1: ("MONOCHROME1", "MONOCHROME2"), 3: ("RGB", "YBR_FULL")}

# Elements that describe the encapsulated form of the pixel data and are
# meaningless (and wrong) once the pixel data is native.
_ENCAPSULATION_ELEMENTS = (0x7FE00001, 0x7FE00002)  # Extended Offset Table (+ Lengths)

# Binary VRs whose values are words in the transfer syntax's byte order, and
# their word size. pydicom keeps them as bytes and does not swap them when the
# byte order of the encoding changes (see pydicom.filewriter.dcmwrite).
_WORD_VRS = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def write_samples(ds: Dataset, samples: np.ndarray, like: PixelPlanes) -> None:
    """Store `samples` in `ds` as Explicit VR Little Endian native pixel data.

    The Image Pixel module (Bits Allocated/Stored, High Bit, Pixel
    Representation, Samples per Pixel, Planar Configuration, Number of Frames,
    Rows, Columns) is kept as it is; samples are laid out in the planar
    configuration the dataset declares. The only other changes are the ones
    decoding forced: (0028,0004) becomes ``like.photometric`` where that
    differs, the Extended Offset Table elements of encapsulated data are
    removed, and the (0002,0010) Transfer Syntax UID (file meta created if
    absent) becomes Explicit VR Little Endian.

    Afterwards ``read_samples(ds).samples`` equals `samples` bit for bit.

    Parameters
    ----------
    ds : pydicom.Dataset
        Modified in place.
    samples : numpy.ndarray
        Integer array shaped ``(frames, rows, columns, channels)``.
    like : PixelPlanes
        What ``read_samples(ds)`` returned before the samples were changed.

    Raises
    ------
    TypeError
        If `samples` is not an integer array.
    ValueError
        If `samples` has the wrong shape, `like` disagrees with the dataset's
        header, or a sample is outside ``[like.lo, like.hi]``.
    """
    arr = np.asarray(samples)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"samples must be an integer array, not {arr.dtype}")
    header = image_pixel(ds)
    for name, ours, theirs in (
        ("bits_allocated", header.bits_allocated, like.bits_allocated),
        ("bits_stored", header.bits_stored, like.bits_stored),
        ("signed", header.signed, like.signed),
    ):
        if ours != theirs:
            raise ValueError(f"like.{name} {theirs!r} does not match the dataset's {ours!r}")
    shape = (header.frames, header.rows, header.columns, header.samples_per_pixel)
    if arr.shape != shape:
        raise ValueError(
            f"samples have shape {arr.shape} but the dataset needs {shape} "
            "(frames, rows, columns, channels)"
        )
    if like.photometric not in _PHOTOMETRIC_FOR_SPP[header.samples_per_pixel]:
        raise ValueError(
            f"like.photometric {like.photometric!r} cannot be stored with "
            f"Samples per Pixel {header.samples_per_pixel}"
        )
    _check_range(arr, like)

    if header.samples_per_pixel > 1 and header.planar_configuration == 1:
        arr = arr.transpose(0, 3, 1, 2)  # (frames, channels, rows, columns)
    dtype = np.dtype(f"<{'i' if header.signed else 'u'}{header.bits_allocated // 8}")
    data = arr.astype(dtype, order="C", copy=False).tobytes()
    if len(data) % 2:
        data += b"\x00"  # PS3.5 8.1.1: even length

    if _is_big_endian(ds):
        _words_to_little_endian(ds, skip=0x7FE00010)
    if header.photometric != like.photometric:
        ds.PhotometricInterpretation = like.photometric
    for tag in _ENCAPSULATION_ELEMENTS:
        if tag in ds:
            del ds[tag]
    ds[0x7FE00010] = DataElement(0x7FE00010, "OB" if header.bits_allocated == 8 else "OW", data)

    _own_up_to_implicit_vr(ds)
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = WRITE_SYNTAX
    if not config._use_future:
        # pydicom 3 encodes by the Transfer Syntax UID; keep its deprecated
        # per-dataset encoding attributes in step for code that still reads
        # them (the public setters only emit a DeprecationWarning).
        ds._is_little_endian = True
        ds._is_implicit_VR = False


def _check_range(arr: np.ndarray, like: PixelPlanes) -> None:
    if arr.size == 0:
        return
    lo, hi = arr.min(), arr.max()
    if lo >= like.lo and hi <= like.hi:
        return
    bad = int(np.flatnonzero((arr < like.lo) | (arr > like.hi))[0])
    index = tuple(int(i) for i in np.unravel_index(bad, arr.shape))
    raise ValueError(
        f"sample {int(arr.flat[bad])} at (frame, row, column, channel) {index} is outside "
        f"[{like.lo}, {like.hi}], the range of Bits Stored {like.bits_stored}"
        f"{' signed' if like.signed else ''}"
    )


def _is_big_endian(ds: Dataset) -> bool:
    try:
        return not transfer_syntax(ds).is_little_endian
    except UnsupportedInput:  # built in memory: values carry no byte order
        return False


def _words_to_little_endian(ds: Dataset, skip: int | None = None) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _words_to_little_endian(item)
            continue
        size = _WORD_VRS.get(str(elem.VR))
        value = elem.value
        if size is None or elem.tag == skip or not isinstance(value, (bytes, bytearray)):
            continue
        if len(value) % size == 0:
            elem.value = np.frombuffer(value, dtype=f">u{size}").astype(f"<u{size}").tobytes()


def _own_up_to_implicit_vr(ds: Dataset) -> None:
    """Some files declare an explicit VR transfer syntax but encode the
    dataset in implicit VR; pydicom reads them (its raw elements then have no
    VR) but records the declared encoding, so it would write those raw
    elements without a VR and fail. Record the encoding actually read, so that
    pydicom's writer looks their VRs up, as for any implicit -> explicit
    re-encoding."""
    implicit, little = ds.original_encoding
    if implicit is not False:
        return
    for tag in ds.keys():
        elem = ds.get_item(tag)
        if getattr(elem, "is_raw", False) and elem.VR is None:
            ds.set_original_encoding(True, little)
            return
