"""Waveform sample I/O and G.711 companding (dicom_wm.waveform.samples,
dicom_wm.waveform.companding)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from dicom_wm.errors import UnsupportedInput
from dicom_wm.waveform import (
    alaw_decode,
    alaw_encode,
    is_waveform,
    linear_samples,
    read_groups,
    ulaw_decode,
    ulaw_encode,
    write_group,
)
from dicom_wm.waveform.companding import ALAW_TO_RANK, RANK_TO_ALAW, RANK_TO_ULAW, ULAW_TO_RANK
from dicom_wm.waveform.predictor import NOT_WALKED, Linear1D
from waveform_support import ecg_dataset, one_group

RANGES = {"SB": (-128, 127), "UB": (0, 255), "MB": (0, 255), "AB": (0, 255), "SS": (-32768, 32767), "US": (0, 65535)}


@pytest.mark.parametrize(
    "to_rank, from_rank, decode",
    [(ULAW_TO_RANK, RANK_TO_ULAW, ulaw_decode), (ALAW_TO_RANK, RANK_TO_ALAW, alaw_decode)],
    ids=["mu-law", "A-law"],
)
def test_rank_is_a_bijection_ordered_by_amplitude(to_rank, from_rank, decode):
    assert sorted(to_rank.tolist()) == list(range(256))
    assert np.array_equal(from_rank[to_rank], np.arange(256))
    amplitude = decode(from_rank)
    assert np.all(np.diff(amplitude) >= 0)
    assert amplitude[0] < 0 < amplitude[255]


def test_g711_reference_values():
    # ITU-T G.711 on the 16-bit scale: µ-law 0xFF/0x7F are +0/-0, 0x80 the
    # largest positive; A-law 0xD5/0x55 are +8/-8, 0xAA the largest.
    assert ulaw_decode(np.array([0xFF, 0x7F, 0x80, 0x00, 0xFE])).tolist() == [0, 0, 32124, -32124, 8]
    assert alaw_decode(np.array([0xD5, 0x55, 0xAA, 0x2A])).tolist() == [8, -8, 32256, -32256]
    assert ulaw_encode(np.array([0])).tolist() == [0xFF]
    assert alaw_encode(np.array([0])).tolist() == [0xD5]
    codes = np.arange(256)
    assert np.array_equal(alaw_encode(alaw_decode(codes)), codes)


def test_ecg_groups():
    ds = ecg_dataset()
    groups = read_groups(ds)
    assert [(g.n_channels, g.n_samples, g.interpretation.value) for g in groups] == [(12, 10000, "SS"), (12, 1200, "SS")]
    raw = ds.waveform_array(0)  # pydicom's own reading, (samples, channels), scaled
    assert np.array_equal(groups[0].stored.T * 1.25, raw)
    assert (groups[0].lo, groups[0].hi, groups[0].frozen) == (-32768, 32767, None)


@pytest.mark.parametrize("interpretation", list(RANGES))
def test_write_then_read_round_trip_keeps_pad_byte(interpretation):
    lo, hi = RANGES[interpretation]
    rng = np.random.default_rng(0)
    x = rng.integers(lo, hi + 1, size=(3, 7))  # 21 samples: odd byte count when 8-bit
    ds = one_group(x, interpretation)
    before = bytes(ds.WaveformSequence[0].WaveformData)
    (g,) = read_groups(ds)
    assert np.array_equal(g.stored, x)
    assert (g.lo, g.hi) == (lo, hi)
    out = copy.deepcopy(ds)
    write_group(out, g, g.domain)
    assert out.WaveformSequence[0].WaveformData == before
    changed = g.domain.copy()
    changed[1, 2] = hi if changed[1, 2] != hi else lo
    write_group(out, g, changed)
    assert np.array_equal(read_groups(out)[0].domain, changed)
    assert len(out.WaveformSequence[0].WaveformData) == len(before)
    assert out.WaveformSequence[0]["WaveformData"].VR == ds.WaveformSequence[0]["WaveformData"].VR


def test_linear_samples_decode_companded_and_centre_unsigned():
    codes = np.array([[0xFF, 0x80, 0x00]])
    assert linear_samples(one_group(codes, "MB"))[0].tolist() == [[0, 32124, -32124]]
    assert linear_samples(one_group(np.array([[0, 128, 255]]), "UB"))[0].tolist() == [[-128, 0, 127]]


def test_is_waveform():
    assert is_waveform(ecg_dataset())
    ds = ecg_dataset()
    for item in ds.WaveformSequence:
        del item.WaveformData
    assert not is_waveform(ds)
    del ds.WaveformSequence
    assert not is_waveform(ds)


def _broken(change) -> object:
    ds = one_group(np.zeros((2, 10), dtype=np.int64), "SS")
    change(ds.WaveformSequence[0])
    return ds


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda g: setattr(g, "WaveformSampleInterpretation", "SL"), "Waveform Sample Interpretation 'SL'"),
        (lambda g: setattr(g, "WaveformBitsAllocated", 8), "Waveform Bits Allocated 8 is not consistent"),
        (lambda g: setattr(g, "NumberOfWaveformSamples", 11), "need 44"),
        (lambda g: setattr(g, "NumberOfWaveformChannels", 0), "Number of Waveform Channels 0"),
        (lambda g: setattr(g.ChannelDefinitionSequence[0], "WaveformBitsStored", 17), "Waveform Bits Stored 17"),
        (lambda g: g.add_new(0x5400100A, "OW", b"\x00\x00"), "Padding Value 0 lies inside"),
        (lambda g: delattr(g, "WaveformData"), "Waveform Data is missing"),
    ],
)
def test_bad_groups_are_refused_naming_the_element(change, message):
    with pytest.raises(UnsupportedInput, match=message):
        read_groups(_broken(change))


def test_sample_outside_bits_stored_is_refused():
    x = np.zeros((1, 10), dtype=np.int64)
    x[0, 4] = 2048
    with pytest.raises(UnsupportedInput, match="channel 1 sample 4 value 2048 is outside"):
        read_groups(one_group(x, "SS", bits_stored=12))


def test_padding_at_range_end_narrows_the_walk_range():
    x = np.array([[-32768, 5, 6, -32768]])
    (g,) = read_groups(one_group(x, "SS", padding=-32768))
    assert (g.lo, g.hi, g.frozen) == (-32767, 32767, -32768)
    (g,) = read_groups(one_group(np.array([[0xFF, 3]]), "UB", padding=0xFF))
    assert (g.lo, g.hi, g.frozen) == (0, 254, 255)


def test_predictor_sees_other_lattice_only_and_skips_padding():
    x = np.array([[[10, 20, 30, 41, 50, 60]]])
    p = Linear1D()
    assert p.predict(x).tolist() == [[[20, 20, 31, 40, 51, 50]]]  # mirror: x[-1] = x[1], x[6] = x[4]
    changed = x.copy()
    changed[0, 0, 2] = 999  # an even sample: no even prediction or cost moves
    assert np.array_equal(p.predict(changed)[0, 0, 0::2], p.predict(x)[0, 0, 0::2])
    assert np.array_equal(p.complexity(changed)[0, 0, 0::2], p.complexity(x)[0, 0, 0::2])
    frozen = Linear1D(frozen=30).predict(x)
    assert frozen[0, 0, 2] == NOT_WALKED
    assert (Linear1D().complexity(x) >= 0).all()
