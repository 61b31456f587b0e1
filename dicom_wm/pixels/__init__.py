"""Pixel I/O: decode an image instance to its stored integer samples and
write samples back as native, lossless pixel data without changing one.

See docs/pixels.md for what is supported, what is refused and why.
"""

from .planes import PixelPlanes, sample_dtype
from .reader import read_samples
from .writer import write_samples

__all__ = ["PixelPlanes", "read_samples", "sample_dtype", "write_samples"]
