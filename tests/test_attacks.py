"""Unit tests of the benchmark's attack functions (bench/attacks.py):
shapes, ranges, determinism with a seed, and that each attack does what its
name says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.attacks import (
    ATTACKS,
    Domain,
    attack_by_name,
    crop,
    gaussian_blur,
    gaussian_noise,
    jpeg,
    jpeg2000,
    median,
    png8,
    resize,
    rotate,
    rotate_crop,
    salt_pepper,
    sharpen,
    to_uint8,
)


def _image(shape: tuple[int, ...]) -> np.ndarray:
    """A smooth ramp plus texture in [0, 1]."""
    rows, cols = shape[:2]
    r, c = np.mgrid[0:rows, 0:cols]
    img = 0.5 + 0.3 * np.sin(r / 9.0) * np.cos(c / 13.0) + 0.1 * ((r // 8 + c // 8) % 2)
    img = np.clip(img, 0.0, 1.0)
    if len(shape) == 3:
        img = np.stack([img * (1 - 0.1 * k) for k in range(shape[2])], axis=-1)
    return img


SHAPES = [(96, 128), (96, 128, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_every_attack_keeps_range_dims_and_is_deterministic(attack, shape) -> None:
    x = _image(shape)
    a = attack(x, np.random.default_rng(7))
    b = attack(x, np.random.default_rng(7))
    assert a.ndim == x.ndim
    if x.ndim == 3:
        assert a.shape[2] == x.shape[2]
    assert np.issubdtype(a.dtype, np.floating)
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a))


def test_attack_table_covers_issue_6_and_marks_its_targets() -> None:
    names = [a.name for a in ATTACKS]
    assert len(names) == len(set(names))
    for q in (10, 30, 50, 70, 90):
        assert f"JPEG Q{q}" in names
    assert {a.name for a in ATTACKS if a.target} == {
        "JPEG Q50",
        "Gaussian noise var 0.01",
        "crop 75% area",
        "resize ×0.5",
        "rotate +5°",
        "rotate -5°",
        "median 3×3",
        "export 8-bit PNG",
    }
    fmt = {a.name for a in ATTACKS if a.domain is Domain.RENDER8}
    assert fmt == {f"JPEG Q{q}" for q in (10, 30, 50, 70, 90)} | {
        "export 8-bit PNG",
        "export JPEG (Q75)",
        "export JPEG 2000 10:1",
    }
    assert attack_by_name("median 5×5").name == "median 5×5"
    with pytest.raises(ValueError, match="unknown attack"):
        attack_by_name("JPEG Q51")


def test_random_attacks_differ_between_seeds() -> None:
    x = _image((64, 64))
    for fn in (lambda g: gaussian_noise(x, 0.01, g), lambda g: salt_pepper(x, 0.05, g), lambda g: crop(x, 0.5, g)):
        assert not np.array_equal(fn(np.random.default_rng(1)), fn(np.random.default_rng(2)))


def test_format_attacks_quantise_to_8_bits() -> None:
    x = _image((64, 80))
    for out in (jpeg(x, 90), png8(x), jpeg2000(x, 10.0)):
        np.testing.assert_allclose(out * 255, np.rint(out * 255), atol=1e-9)
    np.testing.assert_array_equal(png8(x), to_uint8(x) / 255.0)  # PNG: lossless once 8-bit


def test_jpeg_quality_orders_the_error() -> None:
    x = _image((128, 128))
    errs = [np.abs(jpeg(x, q) - x).mean() for q in (10, 50, 90)]
    assert errs[0] > errs[1] > errs[2] > 0


def test_jpeg2000_is_lossy_and_higher_ratio_loses_more() -> None:
    x = _image((128, 128)) + np.random.default_rng(0).normal(0, 0.02, (128, 128))
    x = np.clip(x, 0, 1)
    e10 = np.abs(jpeg2000(x, 10.0) - to_uint8(x) / 255).mean()
    e40 = np.abs(jpeg2000(x, 40.0) - to_uint8(x) / 255).mean()
    assert 0 < e10 < e40


def test_noise_has_the_requested_variance() -> None:
    x = np.full((256, 256), 0.5)
    out = gaussian_noise(x, 0.005, np.random.default_rng(3))
    assert out.var() == pytest.approx(0.005, rel=0.05)


def test_salt_pepper_hits_the_requested_fraction_in_all_channels() -> None:
    x = np.full((200, 200, 3), 0.5)
    out = salt_pepper(x, 0.05, np.random.default_rng(4))
    hit = np.any(out != 0.5, axis=-1)
    assert hit.mean() == pytest.approx(0.05, abs=0.005)
    assert set(np.unique(out[hit])) <= {0.0, 1.0}
    np.testing.assert_array_equal(out[hit][:, 0], out[hit][:, 1])


def test_crop_keeps_the_area_fraction_of_the_original() -> None:
    x = _image((120, 160))
    for area in (0.9, 0.75, 0.5):
        out = crop(x, area, np.random.default_rng(5))
        assert out.shape[0] * out.shape[1] / (120 * 160) == pytest.approx(area, abs=0.02)
        # it is a window of the input
        r, c = out.shape
        found = any(
            np.array_equal(x[i : i + r, j : j + c], out) for i in range(120 - r + 1) for j in range(160 - c + 1)
        )
        assert found


def test_rotate_turns_the_content_and_keeps_the_canvas() -> None:
    x = np.zeros((101, 101))
    x[50, 80] = 1.0  # a point 30 px right of the centre
    out = rotate(x, 90)
    assert out.shape == x.shape
    r, c = np.unravel_index(np.argmax(out), out.shape)
    assert (r, c) == (20, 50)  # counter-clockwise: right of centre goes above it
    assert rotate(x, 0.0) == pytest.approx(x)
    assert rotate(_image((64, 64)), 10)[0, 0] == 0.0  # corner filled


def test_rotate_crop_is_rotate_then_crop() -> None:
    x = _image((80, 80))
    out = rotate_crop(x, 5, 0.75, np.random.default_rng(9))
    ref = crop(rotate(x, 5), 0.75, np.random.default_rng(9))
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("factor", [0.5, 0.75, 1.5, 2.0])
def test_resize_scales_both_sides(factor) -> None:
    x = _image((80, 120, 3))
    out = resize(x, factor)
    assert out.shape == (round(80 * factor), round(120 * factor), 3)
    assert out.mean() == pytest.approx(x.mean(), abs=0.02)


def test_filters_act_as_named() -> None:
    x = np.zeros((31, 31))
    x[15, 15] = 1.0  # an isolated impulse
    assert median(x, 3).max() == 0.0  # median removes it
    blurred = gaussian_blur(x, 1.0)
    assert blurred.sum() == pytest.approx(1.0) and blurred.max() < 0.2
    step = np.zeros((20, 20))
    step[:, 10:] = 0.5
    s = sharpen(step)
    assert s[5, 10] > 0.5 and s[5, 9] == 0.0  # overshoot on the bright side, clipped on the dark
    flat = np.full((16, 16), 0.3)
    for f in (lambda v: median(v, 5), lambda v: gaussian_blur(v, 1.0), sharpen):
        np.testing.assert_allclose(f(flat), flat)


def test_inputs_are_validated() -> None:
    with pytest.raises(TypeError, match="float image"):
        png8(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        png8(np.zeros(8))
    with pytest.raises(ValueError, match="quality"):
        jpeg(_image((8, 8)), 0)
    with pytest.raises(ValueError, match="area"):
        crop(_image((8, 8)), 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="odd"):
        median(_image((8, 8)), 4)
    with pytest.raises(ValueError, match="factor"):
        resize(_image((8, 8)), 0)
    assert math.isclose(to_uint8(np.array([[0.5]]))[0, 0], 128)
