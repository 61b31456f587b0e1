"""The decoded stored samples of one instance and how to interpret them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PixelPlanes", "stored_range", "sample_dtype"]


def stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    """(lo, hi) of the values *Bits Stored* bits can hold."""
    return (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)


def sample_dtype(bits_stored: int, signed: bool) -> type[np.signedinteger]:
    """The integer type samples are decoded to: ``int32`` up to 16 bits (sums
    of a few samples and their differences stay far inside it, at half the
    memory of a long cine), ``int64`` above."""
    return np.int32 if bits_stored <= 16 else np.int64


@dataclass(frozen=True)
class PixelPlanes:
    """Stored integer samples of an image instance, as decoded.

    Attributes
    ----------
    samples : numpy.ndarray
        ``sample_dtype(bits_stored, signed)`` (``int32`` up to 16 bits,
        ``int64`` above), shape ``(frames, rows, columns, channels)``, always colour
        by pixel whatever the dataset's *Planar Configuration*. These are the
        *stored* values: signed samples are sign-extended from *Bits Stored*,
        bits above *Bits Stored* are dropped; no rescale, LUT or colour
        conversion has been applied.
    bits_allocated, bits_stored : int
        (0028,0100) and (0028,0101) of the dataset.
    signed : bool
        ``True`` when (0028,0103) *Pixel Representation* is 1.
    photometric : str
        Photometric interpretation of `samples`. Equal to the dataset's, except
        where decoding changed the data: ``YBR_FULL_422`` comes out upsampled
        as ``YBR_FULL``; JPEG 2000 ``YBR_ICT``/``YBR_RCT`` come out as ``RGB``
        (the codestream's inverse component transform is part of decoding).
    lossy_source : bool
        The source transfer syntax allows lossy coding, or (0028,2110)
        *Lossy Image Compression* is ``"01"``.
    source_transfer_syntax : str
        The transfer syntax UID the samples were decoded from.
    """

    samples: np.ndarray
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    lossy_source: bool
    source_transfer_syntax: str

    @property
    def lo(self) -> int:
        """Smallest value the *Bits Stored* range allows."""
        return stored_range(self.bits_stored, self.signed)[0]

    @property
    def hi(self) -> int:
        """Largest value the *Bits Stored* range allows."""
        return stored_range(self.bits_stored, self.signed)[1]

    @property
    def frames(self) -> int:
        """Number of frames (first axis of `samples`)."""
        return int(self.samples.shape[0])

    @property
    def channels(self) -> int:
        """Samples per pixel (last axis of `samples`)."""
        return int(self.samples.shape[3])
