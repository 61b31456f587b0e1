"""Property tests: random 1-D signals of every supported sample type either
refuse cleanly (insufficient capacity) or embed within one step, stay in
range, keep padding samples, verify and restore exactly."""

from __future__ import annotations

import copy

import numpy as np
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from dicom_wm.errors import InsufficientCapacity
from dicom_wm.keys import KeyStore
from dicom_wm.waveform import embed_waveform, read_groups, restore_waveform, verify_waveform
from dicom_wm.waveform.capacity import waveform_capacity
from dicom_wm.watermark import VerifyStatus
from waveform_support import one_group

KEYS = KeyStore.in_memory({"ktest0001": b"\x11" * 32}, "ktest0001")
RANGES = {"SB": (-128, 127), "UB": (0, 255), "MB": (0, 255), "AB": (0, 255), "SS": (-32768, 32767), "US": (0, 65535)}
KINDS = ["min", "max", "constant", "noise", "walk", "ramp", "mixed"]


def _signal(kind: str, n: int, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "min":
        return np.full(n, lo)
    if kind == "max":
        return np.full(n, hi)
    if kind == "constant":
        return np.full(n, int(rng.integers(lo, hi + 1)))
    if kind == "noise":
        return rng.integers(lo, hi + 1, n)
    if kind == "walk":
        step = max(1.0, (hi - lo) / 2000)
        return np.clip(np.round(np.cumsum(rng.normal(0, step, n)) + rng.integers(lo, hi + 1)), lo, hi).astype(np.int64)
    if kind == "ramp":
        return np.clip(np.arange(n) * int(rng.integers(-3, 4)) + int(rng.integers(lo, hi + 1)), lo, hi)
    # mixed: stretches of every other kind, including the range ends
    parts = [_signal(str(k), n // 6 + 1, lo, hi, rng) for k in rng.permutation(KINDS[:-1])]
    return np.concatenate(parts)[:n]


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    interpretation=st.sampled_from(sorted(RANGES)),
    channels=st.integers(1, 3),
    n=st.integers(2000, 6000),
    kinds=st.lists(st.sampled_from(KINDS), min_size=3, max_size=3),
    padding=st.sampled_from([None, "lo", "hi"]),
    step=st.sampled_from([None, 0, 2, 4]),
)
# A ramp read at step 1 spells the block embedded at step 2: the block's step field decides.
@example(seed=0, interpretation="SS", channels=1, n=2000, kinds=["ramp", "min", "min"], padding=None, step=2)
def test_random_signals_embed_within_one_step_and_restore_exactly(
    seed, interpretation, channels, n, kinds, padding, step
):
    rng = np.random.default_rng(seed)
    lo, hi = RANGES[interpretation]
    x = np.stack([_signal(kinds[c], n, lo, hi, rng) for c in range(channels)]).astype(np.int64)
    pad = None
    if padding is not None and interpretation not in ("MB", "AB"):
        pad = lo if padding == "lo" else hi
        x[:, rng.integers(0, n, n // 20)] = pad  # scattered padded samples
    ds = one_group(x, interpretation, padding=pad)
    before = copy.deepcopy(ds)
    try:
        result = embed_waveform(ds, KEYS, step_bits=step)
    except InsufficientCapacity:
        event("insufficient capacity")
        assert ds == before
        # One copy of a block (about 95 bytes here) did not fit on the A lattice.
        assert int(waveform_capacity(ds, step_bits=step)[0].bits_a.sum()) < 8 * 100
        return
    event(f"embedded: {interpretation}")
    assert ds == before
    (g0,) = read_groups(ds)
    (g1,) = read_groups(result.dataset)
    # One step: one code rank (8-bit), 2**k LSB for 16-bit (k = 0 unless asked or audio-automatic).
    delta = np.abs(g1.domain - g0.domain).max()
    assert delta == result.max_abs_delta
    assert delta == 1 if interpretation.endswith("B") else delta in (1, 2, 4, 8, 16)
    if step is not None and interpretation in ("SS", "US"):
        assert delta <= 2**step
    assert g1.stored.min() >= lo and g1.stored.max() <= hi
    if pad is not None:
        assert np.array_equal(g1.stored == pad, x == pad)
    check = verify_waveform(result.dataset, KEYS)
    assert check.status is VerifyStatus.AUTHENTIC, check.error
    restored = restore_waveform(result.dataset, KEYS).dataset
    assert restored == ds
