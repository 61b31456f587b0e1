"""Property tests of the reversible engine on raw planes (no DICOM)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_wm.engine.histogram_shift import (
    ambiguous_positions,
    carrier_mask,
    embed_walk,
    read_bits,
    restore_walk,
    _stable_order,
    a_lattice_index,
    walk_order,
)
from dicom_wm.engine.plane_codec import _moved_flags, embed_plane, plane_walk, read_plane, reembed_plane
from dicom_wm.engine.predictors import ClassicRhombus, a_lattice_mask
from dicom_wm.errors import InsufficientCapacity
from dicom_wm.payload.block import PlaneBlock

PRED = ClassicRhombus()
SECRET = b"\x01" * 32
RANGES = [(bits, signed) for bits in (3, 8, 10, 12, 15, 16, 31, 32) for signed in (False, True)]


def bit_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def walk_of(plane: np.ndarray, lo: int, hi: int):
    p = plane[None]
    return walk_order(PRED.predict(p)[0], PRED.complexity(p)[0], lo, hi)


def make_image(kind: str, rows: int, cols: int, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "min":
        return np.full((rows, cols), lo, np.int64)
    if kind == "max":
        return np.full((rows, cols), hi, np.int64)
    if kind == "constant":
        return np.full((rows, cols), int(rng.integers(lo, hi, endpoint=True)), np.int64)
    if kind == "checkerboard":
        return np.where(a_lattice_mask(rows, cols), lo, hi).astype(np.int64)
    if kind == "noise":
        return rng.integers(lo, hi, size=(rows, cols), endpoint=True, dtype=np.int64)
    # smooth ramp plus small noise, with saturated corners: near-boundary stress
    base = np.linspace(lo, hi, cols)[None, :].repeat(rows, 0)
    img = np.rint(base + rng.normal(0, 2, (rows, cols))).astype(np.int64)
    img[: rows // 4, : cols // 4] = lo
    img[-rows // 4 :, -cols // 4 :] = hi
    return np.clip(img, lo, hi)


@settings(max_examples=150, deadline=None)
@given(
    rng_seed=st.integers(0, 2**32 - 1),
    rows=st.integers(2, 48),
    cols=st.integers(2, 48),
    depth=st.sampled_from(RANGES),
    kind=st.sampled_from(["min", "max", "constant", "checkerboard", "noise", "ramp"]),
    fill=st.floats(0, 1),
)
def test_walk_embed_restore_is_exact_and_bounded(rng_seed, rows, cols, depth, kind, fill):
    """Any bit stream on any prefix of the walk: |delta| <= 1, in range, and
    restore (with the boundary flags) gives back every sample."""
    rng = np.random.default_rng(rng_seed)
    lo, hi = bit_range(*depth)
    img = make_image(kind, rows, cols, lo, hi, rng).reshape(-1)
    walk = walk_of(img.reshape(rows, cols), lo, hi)
    n_used = int(round(fill * len(walk.index)))
    carriers = carrier_mask(img[walk.index[:n_used]] - walk.pred[:n_used])
    bits = rng.integers(0, 2, int(carriers.sum()), dtype=np.uint8)
    wm = embed_walk(img, walk, bits, n_used, lo, hi)

    assert np.abs(wm - img).max(initial=0) <= 1
    assert wm.min() >= lo and wm.max() <= hi
    # B lattice untouched, so the extractor sees the same walk
    b = ~a_lattice_mask(rows, cols).reshape(-1)
    assert np.array_equal(wm[b], img[b])
    walk2 = walk_of(wm.reshape(rows, cols), lo, hi)
    assert np.array_equal(walk2.index, walk.index)
    assert np.array_equal(read_bits(wm, walk2)[: len(bits)], bits)
    amb = ambiguous_positions(wm, walk2, n_used, lo, hi)
    moved = wm[walk.index[:n_used]][amb] != img[walk.index[:n_used]][amb]
    # the embedder predicts the flags from the original alone (they must not
    # depend on the bits, which carry them)
    assert np.array_equal(_moved_flags(img, walk, n_used, lo, hi), moved)
    assert np.array_equal(restore_walk(wm, walk2, n_used, moved, lo, hi), img)


TEMPLATE = PlaneBlock(
    frame=0, channel=0, n_frames=1, n_channels=1, lattice_pass=0, passes=1, walk_flags=0, copies=1, key_id="ktest",
    record_uuid=uuid.UUID(int=7), instance_mac=bytes(16), predictor_code=0, model_sha256_prefix=bytes(16),
    n_used=0, moved_flags=np.zeros(0, bool), tile=64, tile_mac_len=4, first_tile=0, tile_macs=b"",
)


def _embed(img: np.ndarray, lo: int, hi: int, n_tiles: int | None = None, max_copies: int = 3):
    rows, cols = img.shape
    n = n_tiles if n_tiles is not None else ((rows + 63) // 64) * ((cols + 63) // 64)
    macs = [i.to_bytes(4, "big") for i in range(n)]
    return embed_plane(img, walk_of(img, lo, hi), PRED, TEMPLATE, macs, SECRET, lo, hi, max_copies, "test plane")


def _read(wm: np.ndarray, lo: int, hi: int, secret: bytes = SECRET):
    return read_plane(wm, walk_of(wm, lo, hi), PRED, lambda k: secret, lo, hi)


@settings(max_examples=60, deadline=None)
@given(
    rng_seed=st.integers(0, 2**32 - 1),
    size=st.integers(8, 160),
    depth=st.sampled_from(RANGES),
    kind=st.sampled_from(["min", "max", "constant", "checkerboard", "noise", "ramp"]),
)
def test_plane_codec_round_trip_or_clear_capacity_error(rng_seed, size, depth, kind):
    rng = np.random.default_rng(rng_seed)
    lo, hi = bit_range(*depth)
    img = make_image(kind, size, size, lo, hi, rng)
    before = img.copy()
    try:
        emb = _embed(img, lo, hi)
    except InsufficientCapacity as exc:
        assert "insufficient capacity" in str(exc)
        assert np.array_equal(img, before)
        return
    assert np.abs(emb.watermarked - img).max() <= 1
    reading = _read(emb.watermarked, lo, hi)
    assert len(reading.blocks) == emb.passes
    assert np.array_equal(reading.restored, img)


def test_smooth_plane_carries_three_copies_and_survives_one_corrupted_copy():
    rng = np.random.default_rng(1)
    lo, hi = 0, 4095
    img = np.clip(np.rint(1000 + rng.normal(0, 1.5, (256, 256))), lo, hi).astype(np.int64)
    walk = walk_of(img, lo, hi)
    emb = _embed(img, lo, hi)
    assert emb.copies == 3 and emb.passes == 1
    # Flip the carrier of bit 100 of the first copy: copy 0 fails its MAC,
    # the reader finds copy 1 by its sync word.
    wm = emb.watermarked.reshape(-1).copy()
    carriers = np.flatnonzero(carrier_mask(img.reshape(-1)[walk.index] - walk.pred))
    pos = walk.index[carriers[100]]
    wm[pos] += 1 if wm[pos] - walk.pred[carriers[100]] in (0, -2) else -1
    reading = _read(wm.reshape(256, 256), lo, hi)
    assert len(reading.blocks) == 1
    # A bit flip restores to the same original; re-embedding shows the edit.
    assert np.array_equal(reading.restored, img)
    diff = reembed_plane(reading.restored, reading.blocks, PRED, SECRET, lo, hi) != wm.reshape(256, 256)
    assert np.flatnonzero(diff).tolist() == [pos]


def test_plane_that_needs_both_lattices_round_trips():
    """Many tiles on a noisy plane: the A lattice alone cannot hold the block,
    the B pass carries the rest; still ±1 and exact."""
    rng = np.random.default_rng(3)
    lo, hi = 0, 4095
    img = np.clip(np.rint(2000 + rng.normal(0, 2, (192, 192))), lo, hi).astype(np.int64)
    emb = _embed(img, lo, hi, n_tiles=450, max_copies=1)
    assert emb.passes == 2
    assert np.abs(emb.watermarked - img).max() == 1
    reading = _read(emb.watermarked, lo, hi)
    assert [b.lattice_pass for b in reading.blocks] == [0, 1]
    assert reading.blocks[0].first_tile == 0 and reading.blocks[1].first_tile > 0
    assert np.array_equal(reading.restored, img)


def test_other_key_finds_no_block():
    rng = np.random.default_rng(2)
    img = np.clip(np.rint(100 + rng.normal(0, 1, (64, 64))), 0, 255).astype(np.int64)
    emb = _embed(img, 0, 255)
    reading = _read(emb.watermarked, 0, 255, secret=b"\x02" * 32)
    assert reading.blocks == [] and reading.problem == "mac"


@pytest.mark.parametrize("shape", [(1, 5), (5, 1)])
def test_degenerate_planes_rejected(shape):
    with pytest.raises(ValueError, match="too small"):
        PRED.predict(np.zeros((1, *shape), np.int64))
    with pytest.raises(ValueError, match="too small"):
        PRED.predict_a_lattice(np.zeros(shape, np.int64))


@settings(max_examples=200, deadline=None)
@given(
    rng_seed=st.integers(0, 2**32 - 1),
    rows=st.integers(2, 19),
    cols=st.integers(2, 19),
    depth=st.sampled_from(RANGES),
    kind=st.sampled_from(["noise", "ramp", "checkerboard", "min", "max"]),
    int32_input=st.booleans(),
    protected=st.booleans(),
)
def test_a_lattice_fast_path_equals_the_full_maps(rng_seed, rows, cols, depth, kind, int32_input, protected):
    """The engine walks from ``predict_a_lattice`` when a predictor has it:
    its values, and the walk built from them, must equal the full maps' at
    every A position, or an embedder and a reader on different paths would
    disagree about the walk."""
    lo, hi = bit_range(*depth)
    rng = np.random.default_rng(rng_seed)
    img = make_image(kind, rows, cols, lo, hi, rng)
    if int32_input and -(2**31) <= lo and hi < 2**31:
        img = img.astype(np.int32)
    full_pred, full_cost = PRED.predict_and_complexity(img[None].astype(np.int64))
    a_idx = a_lattice_index(rows, cols)
    fast = PRED.predict_a_lattice(img)
    if fast is None:  # samples too wide for int32 sums: the full maps serve
        assert max(abs(lo), abs(hi)) >= 2**28
    else:
        assert np.array_equal(fast[0], full_pred.reshape(-1)[a_idx])
        assert np.array_equal(fast[1], full_cost.reshape(-1)[a_idx])
    protect = rng.random((rows, cols)) < 0.3 if protected else None
    expected = walk_order(full_pred[0], full_cost[0], lo, hi, protect)
    got = plane_walk(img, PRED, lo, hi, protect)
    assert np.array_equal(got.index, expected.index)
    assert np.array_equal(got.pred, expected.pred)


@pytest.mark.parametrize("size", [0, 1, 2, 1000, 70_000, 300_000])
@pytest.mark.parametrize("key_max", [0, 1, 255, 0x3FFF, 0xFFFF])
def test_stable_order_is_the_stable_argsort(size, key_max):
    """Packed sorting (keys and positions in 32 bits) and the radix argsort
    it falls back to (wider keys or longer walks) give one order."""
    rng = np.random.default_rng(size + key_max)
    key = np.minimum(rng.geometric(0.05, size), key_max).astype(np.uint16)
    assert np.array_equal(_stable_order(key), np.argsort(key, kind="stable"))
