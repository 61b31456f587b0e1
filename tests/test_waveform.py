"""Waveform embed / verify / restore: pydicom's 12-lead ECG and Basic Voice
Audio (µ-law, A-law, 16-bit linear) built from generated speech-like
signals (issue #7, item 3)."""

from __future__ import annotations

import copy
import io
import uuid

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_wm.errors import InsufficientCapacity, NotAuthentic, UnsupportedInput
from dicom_wm.header import read_watermark_header
from dicom_wm.keys import KeyStore
from dicom_wm.waveform import (
    embed_waveform,
    is_waveform,
    read_groups,
    restore_waveform,
    snr_db,
    verify_waveform,
    write_group,
)
from dicom_wm.waveform.capacity import waveform_capacity, with_loaded
from dicom_wm.watermark import VerifyStatus
from waveform_support import ecg_dataset, one_group, speech_like, voice_dataset

KEYS = KeyStore.in_memory({"ktest0001": b"\x11" * 32}, "ktest0001")
OTHER_KEYS = KeyStore.in_memory({"kother001": b"\x22" * 32}, "kother001")
SAME_ID_OTHER_SECRET = KeyStore.in_memory({"ktest0001": b"\x33" * 32}, "ktest0001")
RECORD = uuid.UUID("00000000-0000-4000-8000-000000000007")
VOICE_SECONDS = 5.0


def _roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def _changed(ds: Dataset, group: int, channel: int, sample: int) -> Dataset:
    """``ds`` with one sample moved by one step of its domain."""
    g = read_groups(ds)[group]
    domain = g.domain.copy()
    domain[channel, sample] += 1 if domain[channel, sample] < g.hi else -1
    out = copy.deepcopy(ds)
    write_group(out, g, domain)
    return out


def _window(sample: int, n_samples: int, width: int) -> tuple[int, int]:
    s0 = sample // width * width
    return s0, min(s0 + width, n_samples)


@pytest.fixture(scope="module")
def ecg() -> Dataset:
    return ecg_dataset()


@pytest.fixture(scope="module")
def ecg_wm(ecg):
    return embed_waveform(ecg, KEYS, record_uuid=RECORD)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speech_like(VOICE_SECONDS, seed=1)


# -- ECG --------------------------------------------------------------------------


def test_ecg_is_a_waveform(ecg):
    assert is_waveform(ecg)
    assert "PixelData" not in ecg


def test_ecg_changes_every_sample_by_at_most_one_lsb(ecg, ecg_wm):
    assert ecg_wm.max_abs_delta == 1
    for before, after in zip(read_groups(ecg), read_groups(ecg_wm.dataset)):
        delta = np.abs(after.stored - before.stored)
        assert delta.max() <= 1
        assert np.count_nonzero(delta) > 0
    assert read_watermark_header(ecg_wm.dataset).predictor == "waveform-linear"
    assert ecg_wm.record_uuid == str(RECORD)


def test_ecg_restore_is_sample_exact_and_element_exact(ecg, ecg_wm):
    stored = _roundtrip(ecg_wm.dataset)
    restored = restore_waveform(stored, KEYS)
    assert restored.verify.status is VerifyStatus.AUTHENTIC
    for a, b in zip(restored.dataset.WaveformSequence, ecg.WaveformSequence):
        assert a.WaveformData == b.WaveformData
    assert restored.dataset == ecg
    assert read_watermark_header(restored.dataset) is None
    assert "ContributingEquipmentSequence" not in restored.dataset


def test_ecg_capacity_at_least_100_bits_per_second_per_lead(ecg):
    groups = waveform_capacity(ecg)
    assert [g.group for g in groups] == [0, 1]
    for g in groups:
        per_lead = g.bits_per_second()
        assert per_lead.shape == (12,)
        assert per_lead.min() >= 100, (g.group, per_lead)


def test_ecg_verifies_authentic_with_its_record(ecg_wm):
    result = verify_waveform(_roundtrip(ecg_wm.dataset), KEYS)
    assert result.status is VerifyStatus.AUTHENTIC, result.error
    assert result.record_uuid == str(RECORD)
    assert result.key_id == "ktest0001"
    assert result.tampered_tiles == []
    assert result.original_sample_sha256 == ecg_wm.original_sample_sha256


def test_ecg_original_is_not_watermarked(ecg):
    assert verify_waveform(ecg, KEYS).status is VerifyStatus.NOT_WATERMARKED


@pytest.mark.parametrize("keys", [OTHER_KEYS, SAME_ID_OTHER_SECRET], ids=["other-key-id", "same-id-other-secret"])
def test_ecg_other_key_is_invalid(ecg_wm, keys):
    result = verify_waveform(ecg_wm.dataset, keys)
    assert result.status is VerifyStatus.INVALID
    with pytest.raises(NotAuthentic):
        restore_waveform(ecg_wm.dataset, keys)


@pytest.mark.parametrize(
    "group, channel, sample",
    [(0, 0, 0), (0, 3, 4567), (0, 6, 7551), (0, 11, 9999), (1, 2, 100), (1, 9, 1199)],
)
def test_ecg_changed_sample_is_localised_to_its_time_window(ecg_wm, group, channel, sample):
    n = read_groups(ecg_wm.dataset)[group].n_samples
    result = verify_waveform(_changed(ecg_wm.dataset, group, channel, sample), KEYS)
    assert result.status is VerifyStatus.TAMPERED, result.error
    # 1000 Hz: windows of 16 x 64 = 1024 samples (about 1 s).
    expected = [group, channel, *_window(sample, n, 1024)]
    assert expected in result.tampered_tiles, result.tampered_tiles
    assert len(result.tampered_tiles) <= 2, result.tampered_tiles


def test_ecg_random_sample_changes_are_detected_and_localised(ecg_wm):
    rng = np.random.default_rng(11)
    groups = read_groups(ecg_wm.dataset)
    for _ in range(20):
        g = groups[int(rng.integers(0, 2))]
        channel, sample = int(rng.integers(0, 12)), int(rng.integers(0, g.n_samples))
        result = verify_waveform(_changed(ecg_wm.dataset, g.index, channel, sample), KEYS)
        assert result.status is VerifyStatus.TAMPERED
        assert [g.index, channel, *_window(sample, g.n_samples, 1024)] in result.tampered_tiles


def test_ecg_relabelled_or_rescaled_lead_is_invalid(ecg_wm):
    rescaled = copy.deepcopy(ecg_wm.dataset)
    rescaled.WaveformSequence[0].ChannelDefinitionSequence[3].ChannelSensitivity = "2.5"
    assert verify_waveform(rescaled, KEYS).status is VerifyStatus.INVALID
    relabelled = copy.deepcopy(ecg_wm.dataset)
    relabelled.WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSourceSequence[0].CodeValue = "5.6.3-9-2"
    assert verify_waveform(relabelled, KEYS).status is VerifyStatus.INVALID
    moved = copy.deepcopy(ecg_wm.dataset)
    moved.SeriesInstanceUID = "1.2.3.4.5"
    assert verify_waveform(moved, KEYS).status is VerifyStatus.INVALID


def test_ecg_restore_refuses_tampered_unless_forced(ecg, ecg_wm):
    bad = _changed(ecg_wm.dataset, 0, 5, 2500)
    with pytest.raises(NotAuthentic):
        restore_waveform(bad, KEYS)
    forced = restore_waveform(bad, KEYS, force=True)
    assert forced.verify.status is VerifyStatus.TAMPERED
    # Everything outside the edited window comes back exactly.
    before, after = read_groups(ecg)[0].stored, read_groups(forced.dataset)[0].stored
    outside = np.ones_like(before, dtype=bool)
    outside[5, 2048:3072] = False
    assert np.array_equal(before[outside], after[outside])


def test_embedding_twice_is_refused(ecg_wm):
    with pytest.raises(UnsupportedInput, match="already watermarked"):
        embed_waveform(ecg_wm.dataset, KEYS)


def test_embed_leaves_its_input_untouched(ecg):
    before = copy.deepcopy(ecg)
    embed_waveform(ecg, KEYS)
    assert ecg == before


# -- Basic Voice Audio ------------------------------------------------------------


@pytest.mark.parametrize("interpretation", ["MB", "AB", "SS"])
def test_voice_round_trip(speech, interpretation):
    ds = voice_dataset(speech, interpretation)
    result = embed_waveform(ds, KEYS)
    wm = _roundtrip(result.dataset)
    if interpretation == "SS":  # 16-bit linear audio: the smallest step with 200 bits/s, at most 16 LSB
        (cap,) = waveform_capacity(ds)
        assert 0 < cap.step_bits <= 4
        assert result.max_abs_delta == 2**cap.step_bits
    else:  # one quantisation step: one code rank
        assert result.max_abs_delta == 1
    check = verify_waveform(wm, KEYS)
    assert check.status is VerifyStatus.AUTHENTIC, check.error
    restored = restore_waveform(wm, KEYS).dataset
    assert restored.WaveformSequence[0].WaveformData == ds.WaveformSequence[0].WaveformData
    assert restored == _roundtrip(ds)
    # SNR on the decoded linear signal at the payload actually embedded.
    snr = snr_db(ds, result.dataset)
    assert snr >= 40, snr
    assert result.payload_bits / VOICE_SECONDS >= 150


@pytest.mark.parametrize("interpretation", ["MB", "AB", "SS"])
def test_voice_capacity_at_least_200_bits_per_second_at_40_db(speech, interpretation):
    ds = voice_dataset(speech, interpretation)
    (full,) = waveform_capacity(ds)
    assert full.bits_per_second()[0] >= 200, full.bits_per_second()
    (at_200,) = waveform_capacity(ds, bits_per_second=200)
    assert at_200.loaded_bits == round(200 * VOICE_SECONDS)
    assert snr_db(ds, with_loaded(ds, [at_200])) >= 40


def test_16_bit_linear_voice_step_follows_the_noise_floor():
    quiet = voice_dataset(speech_like(VOICE_SECONDS, seed=2) // 8, "SS")  # noise floor below 1 LSB
    noisy = voice_dataset(speech_like(VOICE_SECONDS, seed=2) + np.random.default_rng(2).normal(0, 40, 40000).astype(int), "SS")
    steps = [waveform_capacity(ds)[0].step_bits for ds in (quiet, noisy)]
    assert steps[0] == 0 and 0 < steps[1] <= 4
    for ds in (quiet, noisy):
        result = embed_waveform(ds, KEYS)
        assert result.max_abs_delta <= 16
        assert snr_db(ds, result.dataset) >= 40
        assert restore_waveform(result.dataset, KEYS).dataset == ds
    with pytest.raises(InsufficientCapacity):  # what ±1 LSB alone would give
        embed_waveform(noisy, KEYS, step_bits=0)
    forced = embed_waveform(quiet, KEYS, step_bits=2)
    assert forced.max_abs_delta == 4
    assert verify_waveform(forced.dataset, KEYS).status is VerifyStatus.AUTHENTIC
    assert restore_waveform(forced.dataset, KEYS).dataset == quiet


def test_ecg_is_never_stepped(ecg):
    """Not audio: ±1 LSB even where a step would carry more."""
    assert [c.step_bits for c in waveform_capacity(ecg)] == [0, 0]


@pytest.mark.parametrize("interpretation", ["MB", "AB", "SS"])
def test_voice_changed_sample_is_localised_to_its_second(speech, interpretation):
    wm = embed_waveform(voice_dataset(speech, interpretation), KEYS, record_uuid=RECORD).dataset
    for sample in (12_345, 30_001):
        result = verify_waveform(_changed(wm, 0, 0, sample), KEYS)
        assert result.status is VerifyStatus.TAMPERED, result.error
        # 8000 Hz: windows of 125 x 64 = 8000 samples (1 s).
        assert [0, 0, *_window(sample, len(speech), 8000)] in result.tampered_tiles


def test_ulaw_sign_flip_of_silence_is_one_step(speech):
    """µ-law -0 and +0 are ranks 127 and 128: a ±1 change between them flips
    the code's top bit (0x7F <-> 0xFF) but not the decoded amplitude."""
    ds = voice_dataset(np.zeros(16000, dtype=np.int64), "MB")
    result = embed_waveform(ds, KEYS)
    before = np.frombuffer(ds.WaveformSequence[0].WaveformData, np.uint8)
    after = np.frombuffer(result.dataset.WaveformSequence[0].WaveformData, np.uint8)
    assert set(np.unique(before)) == {0xFF}
    assert set(np.unique(after)) <= {0xFF, 0xFE}  # +0 -> one step up
    assert restore_waveform(result.dataset, KEYS).dataset.WaveformSequence[0].WaveformData == bytes(before)


# -- ranges and padding -----------------------------------------------------------


def test_padding_samples_never_change_and_nothing_becomes_padding():
    rng = np.random.default_rng(5)
    x = np.round(np.cumsum(rng.normal(0, 1.0, (2, 6000)), axis=1)).astype(np.int64) - 32760
    x = np.clip(x, -32767, 32767)
    x[:, 1000:1400] = -32768  # a gap
    x[0, 3001] = x[1, 4000] = -32768  # isolated padded samples
    x[1, 5000:5010] = -32767  # real samples next to the padding value
    ds = one_group(x, "SS", padding=-32768)
    result = embed_waveform(ds, KEYS)
    after = read_groups(result.dataset)[0].stored
    assert np.array_equal(after == -32768, x == -32768)
    assert np.abs(after - x).max() == 1
    assert restore_waveform(result.dataset, KEYS).dataset == ds


def test_waveform_bits_stored_range_is_kept():
    rng = np.random.default_rng(6)
    x = np.clip(np.round(np.cumsum(rng.normal(0, 3, (1, 8000)), axis=1)), -2048, 2047).astype(np.int64)
    x[0, :2000] = 2047
    x[0, 2000:4000] = -2048
    ds = one_group(x, "SS", bits_stored=12)
    result = embed_waveform(ds, KEYS)
    after = read_groups(result.dataset)[0].stored
    assert after.min() >= -2048 and after.max() <= 2047
    assert restore_waveform(result.dataset, KEYS).dataset == ds


def test_big_endian_waveform_round_trip():
    rng = np.random.default_rng(8)
    x = np.round(np.cumsum(rng.normal(0, 2, (3, 4000)), axis=1)).astype(np.int64)
    little = one_group(x, "SS")
    big = copy.deepcopy(little)
    big.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    big.WaveformSequence[0].WaveformData = x.T.astype(">i2").tobytes()
    assert np.array_equal(read_groups(big)[0].stored, x)
    result = embed_waveform(big, KEYS)
    assert verify_waveform(result.dataset, KEYS).status is VerifyStatus.AUTHENTIC
    assert restore_waveform(result.dataset, KEYS).dataset.WaveformSequence[0].WaveformData == (
        big.WaveformSequence[0].WaveformData
    )


@pytest.mark.parametrize("n", [2, 3, 5, 200])
def test_too_short_groups_refuse_with_a_capacity_error(n):
    ds = one_group(np.arange(n)[None] + 10, "SS")
    before = copy.deepcopy(ds)
    with pytest.raises(InsufficientCapacity, match="multiplex group 1 of 1"):
        embed_waveform(ds, KEYS)
    assert ds == before
    assert verify_waveform(ds, KEYS).status is VerifyStatus.NOT_WATERMARKED


def test_unreadable_waveform_is_unsupported_not_an_exception(ecg_wm):
    short = copy.deepcopy(ecg_wm.dataset)
    short.WaveformSequence[1].WaveformData = short.WaveformSequence[1].WaveformData[:100]
    result = verify_waveform(short, KEYS)
    assert result.status is VerifyStatus.UNSUPPORTED
    assert "Waveform Sequence item 2" in result.error
    with pytest.raises(UnsupportedInput):
        restore_waveform(short, KEYS)


def test_restoring_an_original_is_refused(ecg):
    with pytest.raises(NotAuthentic, match="not_watermarked"):
        restore_waveform(ecg, KEYS)
