"""Image attacks for the robust-watermark benchmark (issue 6).

Independent of dicom_wm: numpy, scipy and Pillow only (all core
dependencies), so the unit tests in tests/test_attacks.py run in CI without
the ``bench`` extra.

Every attack takes a float image in [0, 1] (the caller normalises), shaped
``(rows, cols)`` or ``(rows, cols, channels)``, and returns a float image in
[0, 1] with the same number of dimensions (rows and cols may change: crop,
resize). Random attacks take a ``numpy.random.Generator``; the same seed gives
the same output. Deterministic attacks ignore it.

Two domains (``Domain``), decided per attack:

* ``RENDER8``: image-format attacks (JPEG, PNG, JPEG 2000). The input is an
  8-bit rendering (the caller windows it); the attack quantises to uint8,
  encodes with Pillow and decodes. The result has 256 levels.
* ``SAMPLES``: signal attacks (noise, filters, geometry) on the
  [0, 1]-normalised samples, at full precision; the caller maps the result
  back to its own sample scale.

Geometry: rotation is about the centre, bilinear, same canvas size, corners
filled with 0. Crop keeps a window of the requested *area* fraction (each
side scaled by sqrt(fraction)) at a random offset. Resize is Pillow bilinear
(area-aware on downscaling). Nothing is rescaled back to the original size:
the decoder sees the attacked geometry.
"""

from __future__ import annotations

import enum
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "ATTACKS",
    "Attack",
    "Domain",
    "attack_by_name",
    "crop",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg",
    "jpeg2000",
    "median",
    "png8",
    "resize",
    "rotate",
    "rotate_crop",
    "salt_pepper",
    "sharpen",
    "to_uint8",
]


class Domain(enum.Enum):
    """Where an attack operates (see the module docstring)."""

    SAMPLES = "samples"
    RENDER8 = "render8"


def _check(x: np.ndarray) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D or 3-D (rows, cols, channels) array, got {getattr(x, 'shape', type(x))}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"expected a float image in [0, 1], got dtype {x.dtype}")
    return x.astype(np.float64, copy=False)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Quantise a [0, 1] float image to uint8 (round half to even, clipped)."""
    return np.clip(np.rint(_check(x) * 255.0), 0, 255).astype(np.uint8)


def _per_channel(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    if x.ndim == 2:
        return fn(x)
    return np.stack([fn(x[..., c]) for c in range(x.shape[2])], axis=-1)


def _pil_roundtrip(x: np.ndarray, fmt: str, **params: object) -> np.ndarray:
    u8 = to_uint8(x)
    if u8.ndim == 3 and u8.shape[2] == 1:
        u8 = u8[..., 0]
    if u8.ndim == 3 and u8.shape[2] != 3:
        raise ValueError(f"{fmt} export takes 1 or 3 channels, got {u8.shape[2]}")
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format=fmt, **params)
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert("L" if u8.ndim == 2 else "RGB"), dtype=np.float64) / 255.0
    return out.reshape(x.shape) if x.ndim == 3 and x.shape[2] == 1 else out


# -- image-format attacks (RENDER8) -------------------------------------------


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """Baseline JPEG at ``quality`` (Pillow/libjpeg, 4:2:0 for colour)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    return _pil_roundtrip(x, "JPEG", quality=quality)


def png8(x: np.ndarray) -> np.ndarray:
    """8-bit PNG export (lossless once quantised to 8 bits)."""
    return _pil_roundtrip(x, "PNG")


def jpeg2000(x: np.ndarray, ratio: float) -> np.ndarray:
    """Lossy JPEG 2000 (Pillow's OpenJPEG, 9/7 irreversible wavelet) at a
    compression ``ratio``:1 of the 8-bit rendering."""
    if ratio <= 1:
        raise ValueError(f"JPEG 2000 compression ratio must be > 1, got {ratio}")
    return _pil_roundtrip(x, "JPEG2000", quality_mode="rates", quality_layers=[float(ratio)], irreversible=True)


# -- signal attacks (SAMPLES) -------------------------------------------------


def gaussian_noise(x: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise of variance ``var``, clipped to [0, 1]."""
    if var < 0:
        raise ValueError(f"noise variance must be >= 0, got {var}")
    x = _check(x)
    return np.clip(x + rng.normal(0.0, math.sqrt(var), size=x.shape), 0.0, 1.0)


def salt_pepper(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Set a fraction ``amount`` of the pixels (all channels) to 0 or 1, half each."""
    if not 0 <= amount <= 1:
        raise ValueError(f"salt-and-pepper amount must be in [0, 1], got {amount}")
    x = _check(x).copy()
    hit = rng.random(x.shape[:2]) < amount
    salt = rng.random(x.shape[:2]) < 0.5
    x[hit & salt] = 1.0
    x[hit & ~salt] = 0.0
    return x


def rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the centre by ``degrees`` (counter-clockwise), bilinear,
    same canvas, corners filled with 0."""
    x = _check(x)
    out = ndimage.rotate(x, degrees, axes=(1, 0), reshape=False, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0)


def crop(x: np.ndarray, area: float, rng: np.random.Generator) -> np.ndarray:
    """Keep a window of ``area`` of the image's area (sides scaled by
    sqrt(area)) at a uniformly random offset."""
    if not 0 < area <= 1:
        raise ValueError(f"crop area fraction must be in (0, 1], got {area}")
    x = _check(x)
    rows, cols = x.shape[:2]
    s = math.sqrt(area)
    h, w = max(1, round(rows * s)), max(1, round(cols * s))
    r0 = int(rng.integers(0, rows - h + 1))
    c0 = int(rng.integers(0, cols - w + 1))
    return x[r0 : r0 + h, c0 : c0 + w].copy()


def rotate_crop(x: np.ndarray, degrees: float, area: float, rng: np.random.Generator) -> np.ndarray:
    """Rotation followed by a crop (see ``rotate`` and ``crop``)."""
    return crop(rotate(x, degrees), area, rng)


def _spatial(x: np.ndarray, size: int | float) -> tuple[int | float, ...]:
    return (size, size) if x.ndim == 2 else (size, size, 0 if isinstance(size, float) else 1)


def gaussian_blur(x: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian low-pass of standard deviation ``sigma`` pixels."""
    x = _check(x)
    return ndimage.gaussian_filter(x, _spatial(x, float(sigma)), mode="reflect")


def sharpen(x: np.ndarray) -> np.ndarray:
    """The 3x3 sharpening kernel [[0,-1,0],[-1,5,-1],[0,-1,0]], clipped."""
    x = _check(x)
    k = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float64)
    return np.clip(_per_channel(x, lambda p: ndimage.convolve(p, k, mode="reflect")), 0.0, 1.0)


def median(x: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` median filter (per channel)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"median size must be odd and >= 1, got {size}")
    x = _check(x)
    return ndimage.median_filter(x, size=_spatial(x, size), mode="reflect")


def resize(x: np.ndarray, factor: float) -> np.ndarray:
    """Resize both sides by ``factor`` (Pillow bilinear, area-aware when
    shrinking); the result keeps the new size."""
    if factor <= 0:
        raise ValueError(f"resize factor must be > 0, got {factor}")
    x = _check(x)
    rows, cols = x.shape[:2]
    size = (max(1, round(cols * factor)), max(1, round(rows * factor)))

    def one(p: np.ndarray) -> np.ndarray:
        im = Image.fromarray(p.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.float64)

    return np.clip(_per_channel(x, one), 0.0, 1.0)


# -- the benchmark's attack table ---------------------------------------------


@dataclass(frozen=True)
class Attack:
    """One row of the benchmark: a named attack at one setting."""

    name: str
    domain: Domain
    fn: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    target: bool = False  # one of issue 6's >= 99 % rows

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.fn(x, rng)


def _table() -> tuple[Attack, ...]:
    S, R = Domain.SAMPLES, Domain.RENDER8
    rows: list[Attack] = [Attack("none", S, lambda x, g: _check(x).copy())]
    for q in (10, 30, 50, 70, 90):
        rows.append(Attack(f"JPEG Q{q}", R, lambda x, g, q=q: jpeg(x, q), target=q == 50))
    for v in (0.001, 0.005, 0.01):
        rows.append(Attack(f"Gaussian noise var {v:g}", S, lambda x, g, v=v: gaussian_noise(x, v, g), target=v == 0.01))
    for a in (0.01, 0.05):
        rows.append(Attack(f"salt & pepper {a:.0%}", S, lambda x, g, a=a: salt_pepper(x, a, g)))
    for d in (1, 5, 10):
        for sign in (1, -1):
            rows.append(Attack(f"rotate {sign * d:+d}°", S, lambda x, g, d=sign * d: rotate(x, d), target=d == 5))
    for a in (0.9, 0.75, 0.5):
        rows.append(Attack(f"crop {a:.0%} area", S, lambda x, g, a=a: crop(x, a, g), target=a == 0.75))
    rows.append(Attack("Gaussian blur σ=1", S, lambda x, g: gaussian_blur(x, 1.0)))
    rows.append(Attack("sharpen 3×3", S, lambda x, g: sharpen(x)))
    rows.append(Attack("median 3×3", S, lambda x, g: median(x, 3), target=True))
    rows.append(Attack("median 5×5", S, lambda x, g: median(x, 5)))
    for f in (0.5, 0.75, 1.5, 2.0):
        rows.append(Attack(f"resize ×{f:g}", S, lambda x, g, f=f: resize(x, f), target=f == 0.5))
    rows.append(Attack("export 8-bit PNG", R, lambda x, g: png8(x), target=True))
    rows.append(Attack("export JPEG (Q75)", R, lambda x, g: jpeg(x, 75)))
    rows.append(Attack("export JPEG 2000 10:1", R, lambda x, g: jpeg2000(x, 10.0)))
    rows.append(Attack("rotate +5° + crop 75%", S, lambda x, g: rotate_crop(x, 5.0, 0.75, g)))
    rows.append(Attack("rotate -10° + crop 50%", S, lambda x, g: rotate_crop(x, -10.0, 0.5, g)))
    return tuple(rows)


ATTACKS: tuple[Attack, ...] = _table()
"""Issue 6's attacks at its ranges, in table order."""


def attack_by_name(name: str) -> Attack:
    """The entry of ``ATTACKS`` called ``name``; ``ValueError`` names the choices."""
    for a in ATTACKS:
        if a.name == name:
            return a
    raise ValueError(f"unknown attack {name!r}; one of {[a.name for a in ATTACKS]}")
