"""The robust layer: exact undo, blind decode, attacks, no false decodes."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_wm.pixels import read_samples
from dicom_wm.robust import (
    MESSAGE_BITS,
    RobustMark,
    decode_robust,
    embed_robust,
    message_for,
    parse_message,
    recipient_tag,
    robust_distortion,
    undo_robust,
)
from tests.corpus import pydicom_data_files

SECRET = b"robust-test-secret-0123456789abcdef"
OTHER = b"another-key-entirely-9876543210"
MESSAGE = message_for(uuid.UUID("0123abcd-4567-4def-8901-23456789abcd"), "VIEWER_A")

_DATA = pydicom_data_files()
needs_data = pytest.mark.skipif(_DATA is None, reason="needs pydicom-data")
# (file, channel): CT 16-bit signed, MR 12-bit, US RGB (one channel), CR large
REAL = [("693_UNCR.dcm", 0), ("MR2_UNCR.dcm", 0), ("US1_UNCR.dcm", 1), ("RG1_UNCR.dcm", 0)]


def _plane(name: str, channel: int) -> tuple[np.ndarray, int, int]:
    assert _DATA is not None
    planes = read_samples(pydicom.dcmread(_DATA / name))
    return planes.samples[0, :, :, channel], planes.lo, planes.hi


def _to8(plane: np.ndarray, ref: np.ndarray) -> np.ndarray:
    p1, p99 = np.percentile(ref, [1, 99])
    return np.clip(np.round((plane - p1) / (p99 - p1) * 255), 0, 255).astype(np.uint8)


# -- message ---------------------------------------------------------------------------


def test_message_layout() -> None:
    rec = uuid.uuid4()
    msg = message_for(rec, "PACS_B")
    assert len(msg) * 8 == MESSAGE_BITS
    tag, who = parse_message(msg)
    assert tag == rec.bytes[:6] and str(rec).replace("-", "").startswith(tag.hex())
    assert who == recipient_tag("PACS_B") == recipient_tag("  PACS_B ") and 1 <= who <= 65535
    assert parse_message(message_for(rec))[1] == 0
    with pytest.raises(ValueError):
        parse_message(b"short")
    with pytest.raises(ValueError):
        recipient_tag("  ")


def test_mark_round_trip_and_validation() -> None:
    mark = RobustMark(message=MESSAGE, amplitude=37, skipped=b"\x78\x9c")
    assert RobustMark.from_bytes(mark.to_bytes()) == mark
    gains = bytes((i % 15) + 1 for i in range(306))
    with_gains = RobustMark(message=MESSAGE, amplitude=37, skipped=b"\x78\x9c", gains=gains)
    blob = with_gains.to_bytes()
    assert blob[0] == 2 and len(blob) == 14 + 153 + 2
    assert RobustMark.from_bytes(blob) == with_gains
    with pytest.raises(ValueError):
        RobustMark(message=b"x", amplitude=1)
    with pytest.raises(ValueError):
        RobustMark(message=MESSAGE, amplitude=1, gains=b"\x00" * 306)
    with pytest.raises(ValueError):
        RobustMark.from_bytes(b"\x09" + blob[1:])
    smap = bytes([8, 8, 4, 4, 0, 15] * 7)
    with_map = RobustMark(message=MESSAGE, amplitude=37, skipped=b"\x78\x9c", gains=gains, smap=smap)
    blob3 = with_map.to_bytes()
    assert blob3[0] == 3 and blob3[1] == 0x03
    assert RobustMark.from_bytes(blob3) == with_map
    map_only = RobustMark(message=MESSAGE, amplitude=37, smap=smap)
    assert RobustMark.from_bytes(map_only.to_bytes()) == map_only
    with pytest.raises(ValueError):
        RobustMark(message=MESSAGE, amplitude=1, smap=b"\x10")
    with pytest.raises(ValueError):
        RobustMark.from_bytes(blob3[: 14 + 153 + 2])  # map cut short
    with pytest.raises(ValueError):
        embed_robust(np.zeros((8, 8), np.int64) + 5, 0, 4, MESSAGE, SECRET)


# -- exact undo ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 200),
    cols=st.integers(1, 200),
    bits=st.integers(1, 16),
    signed=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    saturate=st.sampled_from(["none", "lo", "hi", "both", "near"]),
)
def test_undo_is_exact_on_random_planes(rows: int, cols: int, bits: int, signed: bool, seed: int, saturate: str) -> None:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed and bits > 1 else (0, (1 << bits) - 1)
    rng = np.random.default_rng(seed)
    plane = rng.integers(lo, hi + 1, (rows, cols))
    if saturate in ("lo", "both"):
        plane[: rows // 2] = lo
    if saturate in ("hi", "both"):
        plane[:, cols // 2 :] = hi
    if saturate == "near":
        plane = np.clip(lo + rng.integers(0, 3, (rows, cols)), lo, hi)
    marked, mark = embed_robust(plane, lo, hi, MESSAGE, SECRET)
    assert marked.dtype == np.int64 and marked.min() >= lo and marked.max() <= hi
    again = RobustMark.from_bytes(mark.to_bytes())
    assert np.array_equal(undo_robust(marked, lo, hi, again, SECRET), plane)


@needs_data
@pytest.mark.parametrize(("name", "channel"), REAL, ids=[n for n, _ in REAL])
def test_real_planes_undo_exactly_and_decode(name: str, channel: int) -> None:
    plane, lo, hi = _plane(name, channel)
    plane = plane.copy()
    plane[:40, :40] = lo  # a saturated corner as well as the image's own
    plane[-40:, -40:] = hi
    marked, mark = embed_robust(plane, lo, hi, MESSAGE, SECRET)
    assert np.array_equal(undo_robust(marked, lo, hi, RobustMark.from_bytes(mark.to_bytes()), SECRET), plane)
    assert len(mark.to_bytes()) < 2048
    dist = robust_distortion(plane, marked, lo, hi)
    assert dist["psnr_8bit_windowed_db"] >= 45.0
    # the strength map (8-bit ultrasound) puts 1.5x the strength on the black
    # background, where the one-sided pattern shifts the mean: SSIM 0.95 -> 0.93
    assert dist["ssim"] > (0.92 if mark.smap else 0.95)
    assert decode_robust(marked, SECRET) == MESSAGE
    assert decode_robust(marked, OTHER) is None


def test_version_1_marks_still_undo() -> None:
    """A version-1 mark (no gains: every coded bit at unit gain) reads and undoes exactly."""
    import struct

    plane = np.random.default_rng(11).integers(0, 256, (150, 170))
    plane[:30] = 0
    marked, mark = embed_robust(plane, 0, 255, MESSAGE, SECRET, informed=False, adaptive=False)
    assert mark.gains == b"" and mark.smap == b""
    v1 = struct.pack(">BB8sI", 1, 0, MESSAGE, mark.amplitude) + mark.skipped
    assert np.array_equal(undo_robust(marked, 0, 255, RobustMark.from_bytes(v1), SECRET), plane)


def test_strength_map_undo_and_version_2_marks() -> None:
    """A textured plane with a black background gets a strength map (a
    version-3 mark; the rule-based map, ``deep=False``, gives 1.5x the
    strength to the background) that undoes exactly; without it
    (``adaptive=False``) the mark is version 2, as before, and a map that
    does not fit the plane is refused."""
    rng = np.random.default_rng(12)
    plane = rng.integers(0, 256, (200, 260))
    plane[:, :120] = 0
    marked, mark = embed_robust(plane, 0, 255, MESSAGE, SECRET, deep=False)
    q = np.frombuffer(mark.smap, np.uint8).reshape(13, 17)
    assert mark.to_bytes()[0] == 3 and set(q[:, :7].ravel()) == {6} and set(q[:, 8:].ravel()) == {4}
    assert np.array_equal(undo_robust(marked, 0, 255, RobustMark.from_bytes(mark.to_bytes()), SECRET), plane)
    d = (marked - plane)[:, :120]
    assert robust_distortion(plane, marked, 0, 255)["psnr_8bit_windowed_db"] >= 45.0
    assert decode_robust(marked, SECRET) == MESSAGE
    flat, mark2 = embed_robust(plane, 0, 255, MESSAGE, SECRET, adaptive=False)
    assert mark2.smap == b"" and mark2.to_bytes()[0] == 2
    assert np.array_equal(undo_robust(flat, 0, 255, RobustMark.from_bytes(mark2.to_bytes()), SECRET), plane)
    assert np.abs(d).max() > np.abs(flat - plane)[:, :120].max()
    with pytest.raises(ValueError):
        undo_robust(marked[:100], 0, 255, mark, SECRET)
    # a smooth plane (no interference-dominated texture) keeps the uniform strength
    smooth = np.add.outer(np.arange(200), np.arange(260)) // 2
    smooth[:50] = 0
    assert embed_robust(smooth, 0, 255, MESSAGE, SECRET)[1].smap == b""
    assert embed_robust(smooth, 0, 255, MESSAGE, SECRET, deep=False)[1].smap == b""


# -- attacks ---------------------------------------------------------------------------


@needs_data
def test_8bit_ultrasound_after_jpeg50_and_salt_and_pepper() -> None:
    """The informed gains cancel the speckle's own correlation with the coded
    bits (JPEG Q50 on 8-bit US decoded 1 time in 9 without them; about 9 in
    10 with them) and the strength map moves energy to the black background
    (more again), hence at least 3 of 4 keys here; impulse rejection keeps salt and
    pepper from blanking the whitened image."""
    from PIL import Image

    plane, lo, hi = _plane("US1_UNCR.dcm", 0)
    decoded = 0
    for k in range(4):
        secret = SECRET + bytes([k])
        marked, _ = embed_robust(plane, lo, hi, MESSAGE, secret)
        jpg = io.BytesIO()
        Image.fromarray(marked.astype(np.uint8)).save(jpg, "JPEG", quality=50)
        decoded += decode_robust(np.asarray(Image.open(io.BytesIO(jpg.getvalue()))), secret) == MESSAGE
        if k == 0:
            rng = np.random.default_rng(5)
            hit, salt = rng.random(plane.shape) < 0.05, rng.random(plane.shape) < 0.5
            noisy = np.where(hit, np.where(salt, 255, 0), marked)
            assert decode_robust(noisy, secret) == MESSAGE
    assert decoded >= 3


@needs_data
def test_decode_after_png_jpeg50_and_crop() -> None:
    from PIL import Image

    plane, lo, hi = _plane("693_UNCR.dcm", 0)
    marked, _ = embed_robust(plane, lo, hi, MESSAGE, SECRET)
    png = io.BytesIO()
    Image.fromarray(_to8(marked, plane)).save(png, "PNG")
    exported = np.asarray(Image.open(io.BytesIO(png.getvalue())))
    assert decode_robust(exported, SECRET) == MESSAGE
    jpg = io.BytesIO()
    Image.fromarray(exported).save(jpg, "JPEG", quality=50)
    lossy = np.asarray(Image.open(io.BytesIO(jpg.getvalue())))
    h, w = lossy.shape
    side = np.sqrt(0.75)
    r0, c0 = 37, 11
    cropped = lossy[r0 : r0 + int(h * side), c0 : c0 + int(w * side)]
    assert decode_robust(cropped, SECRET) == MESSAGE


@needs_data
def test_decode_after_rotation_and_resize() -> None:
    from PIL import Image

    plane, lo, hi = _plane("693_UNCR.dcm", 0)
    marked, _ = embed_robust(plane, lo, hi, MESSAGE, SECRET)
    img = Image.fromarray(_to8(marked, plane))
    rotated = np.asarray(img.rotate(5, resample=Image.BILINEAR))
    assert decode_robust(rotated, SECRET) == MESSAGE
    half = np.asarray(img.resize((256, 256), Image.BICUBIC))
    assert decode_robust(half, SECRET) == MESSAGE


@needs_data
def test_unmarked_and_wrong_key_decode_to_none() -> None:
    plane, lo, hi = _plane("693_UNCR.dcm", 0)
    assert decode_robust(plane, SECRET) is None
    assert decode_robust(np.random.default_rng(3).normal(size=(300, 300)), SECRET) is None
    marked, _ = embed_robust(plane, lo, hi, MESSAGE, OTHER)
    assert decode_robust(marked, SECRET) is None
    assert decode_robust(np.zeros((16, 16)), SECRET) is None


def test_learned_filter_is_pinned_and_small() -> None:
    import hashlib

    from dicom_wm.robust import learned

    blob = learned._PATH.read_bytes()
    assert len(blob) < 10 * 2**20
    assert hashlib.sha256(blob).hexdigest() == learned.MODEL_SHA256
    kernel = learned.load_kernel()
    assert kernel is not None and kernel.shape == (2 * learned.RADIUS + 1,) * 2


@needs_data
def test_rgb_marked_per_channel_decodes_on_luminance() -> None:
    assert _DATA is not None
    planes = read_samples(pydicom.dcmread(_DATA / "US1_UNCR.dcm"))
    rgb = planes.samples[0]
    marked = np.stack(
        [embed_robust(rgb[:, :, c], planes.lo, planes.hi, MESSAGE, SECRET)[0] for c in range(3)], axis=-1
    ).astype(np.uint8)
    assert decode_robust(marked, SECRET) == MESSAGE


@needs_data
def test_strong_noise_decodes_at_a_runner_up_sync_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """Noise of variance 0.01 on 8-bit ultrasound: the 106 sync chips put the
    true tile shift behind a wrong one, the 918 data chips still decode
    there. Only the best peak: nothing; the 8 best: the message."""
    from dicom_wm.robust import detect

    plane, lo, hi = _plane("US1_UNCR.dcm", 0)
    rng = np.random.default_rng([31, 1])  # a trial of bench_robust.py's noise row where this happens
    message = message_for(uuid.UUID(bytes=rng.bytes(16), version=4), None)
    secret = rng.bytes(32)
    marked, _ = embed_robust(plane, lo, hi, message, secret)
    span = float(plane.max() - plane.min())
    x = (marked - plane.min()) / span + np.random.default_rng([31, 1, 1]).normal(0.0, 0.1, plane.shape)
    noisy = np.clip(np.rint(np.clip(x, 0.0, 1.0) * span + plane.min()), lo, hi).astype(np.int64)
    assert decode_robust(noisy, secret) == message
    monkeypatch.setattr(detect, "_IVAR_SHIFTS", 1)
    assert decode_robust(noisy, secret) is None
