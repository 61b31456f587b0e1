"""The audio robust leak-tracing layer (dicom_wm.robust.audio): exact undo
through embed / verify / restore, blind decoding after attacks, no false
positives, tracing a WAV export."""

from __future__ import annotations

import copy
import struct
import uuid
from functools import lru_cache

import numpy as np
import pytest
from scipy.signal import resample_poly

from dicom_wm.keys import KeyStore
from dicom_wm.robust import message_for
from dicom_wm.robust.audio import (
    AudioMark,
    decode_audio_robust,
    embed_audio_robust,
    load_audio,
    trace_audio,
    undo_audio_robust,
)
from dicom_wm.watermark import EmbedOptions, VerifyStatus, embed_dataset, restore_dataset, verify_dataset
from dicom_wm.waveform import linear_samples, snr_db, ulaw_decode, ulaw_encode
from waveform_support import ecg_dataset, one_group, speech_like, voice_dataset

SECRET = b"\x11" * 32
KEYS = KeyStore.in_memory({"ktest0001": SECRET}, "ktest0001")
RECORD = uuid.UUID("12345678-9abc-4def-8123-456789abcdef")
MESSAGE = message_for(RECORD, "VIEWER_AE")


@lru_cache(maxsize=None)
def _marked(interp: str, seed: int = 7) -> tuple:
    ds = voice_dataset(speech_like(5.0, seed=seed), interp)
    res = embed_dataset(ds, KEYS, record_uuid=RECORD, options=EmbedOptions(robust=True, recipient="VIEWER_AE"))
    return ds, res


def _linear(ds) -> np.ndarray:
    return linear_samples(ds)[0][0].astype(np.float64)


@pytest.mark.parametrize("interp", ["MB", "AB", "SS"])
def test_restore_is_sample_exact_and_verify_authentic(interp: str) -> None:
    ds, res = _marked(interp)
    assert res.robust_message == MESSAGE.hex()
    assert verify_dataset(res.dataset, KEYS).status is VerifyStatus.AUTHENTIC
    back = restore_dataset(res.dataset, KEYS).dataset
    assert bytes(back.WaveformSequence[0].WaveformData) == bytes(ds.WaveformSequence[0].WaveformData)
    # the robust layer really changed the audio, by a bounded amount
    snr = snr_db(ds, res.dataset)
    assert 20.0 < snr < 40.0
    assert decode_audio_robust(_linear(res.dataset), 8000, SECRET) == MESSAGE


def test_tampering_is_still_detected() -> None:
    _, res = _marked("MB")
    bad = copy.deepcopy(res.dataset)
    data = bytearray(bad.WaveformSequence[0].WaveformData)
    data[20000:20040] = bytes(40)
    bad.WaveformSequence[0].WaveformData = bytes(data)
    result = verify_dataset(bad, KEYS)
    assert result.status is VerifyStatus.TAMPERED
    assert any(t[2] <= 20000 < t[3] for t in result.tampered_tiles)


def test_ecg_ignores_robust() -> None:
    res = embed_dataset(ecg_dataset(), KEYS, options=EmbedOptions(robust=True))
    assert res.robust_message is None
    assert verify_dataset(res.dataset, KEYS).status is VerifyStatus.AUTHENTIC


def _noise(x: np.ndarray, snr: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return x + rng.normal(0, np.sqrt(np.mean(x**2) / 10 ** (snr / 10)), x.size)


ATTACKS = {
    "shift": lambda x: (x[1234:], 8000),
    "crop_70pct": lambda x: (x[5000 : 5000 + 28000], 8000),
    "resample_16k_round_trip": lambda x: (resample_poly(resample_poly(x, 2, 1), 1, 2), 8000),
    "resample_11025_round_trip": lambda x: (resample_poly(resample_poly(x, 441, 320), 320, 441), 8000),
    "handover_16k_odd_crop": lambda x: (resample_poly(x, 2, 1)[3001:], 16000),
    "handover_44k1": lambda x: (resample_poly(x, 441, 80)[777:], 44100),
    "noise_20db": lambda x: (_noise(x, 20.0, 1), 8000),
    "ulaw_reencode": lambda x: (ulaw_decode(ulaw_encode(np.round(x))).astype(np.float64), 8000),
    "crop_plus_noise": lambda x: (_noise(x[3000:35000], 20.0, 2), 8000),
}


@pytest.mark.parametrize("interp", ["MB", "SS"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_message_survives_attack(interp: str, attack: str) -> None:
    _, res = _marked(interp)
    y, rate = ATTACKS[attack](_linear(res.dataset))
    assert decode_audio_robust(y, rate, SECRET) == MESSAGE


@pytest.mark.parametrize("seed", [1, 2])
def test_unmarked_and_wrong_key_decode_to_none(seed: int) -> None:
    x = speech_like(5.0, seed=seed).astype(np.float64)
    assert decode_audio_robust(x, 8000, SECRET) is None
    _, res = _marked("MB")
    assert decode_audio_robust(_linear(res.dataset), 8000, bytes([seed]) * 32) is None


def test_decode_attempts_are_bounded(monkeypatch) -> None:
    import dicom_wm.robust.audio as ra

    calls = []
    real = ra._decode_soft

    def counting(soft, secret):
        calls.append(1)
        return real(soft, secret)

    monkeypatch.setattr(ra, "_decode_soft", counting)
    assert decode_audio_robust(speech_like(5.0, seed=3).astype(np.float64), 8000, SECRET) is None
    assert len(calls) == ra.MAX_AUDIO_DECODES
    assert ra.MAX_AUDIO_DECODES * 2.0**-32 <= 1e-6


def test_embed_undo_with_clipping_and_padding_is_exact() -> None:
    # a loud, clipped signal with a padding value at the bottom of the range
    x = np.clip(speech_like(3.0, seed=5, peak=1.4), -32767, 32767)
    x[100:400] = -32768  # padding (frozen) samples
    y, mark = embed_audio_robust(x, -32767, 32767, MESSAGE, SECRET, sample_rate=8000, frozen=-32768)
    assert (y[100:400] == -32768).all()
    assert not np.array_equal(y, x)
    assert ((y >= -32767) | (y == -32768)).all() and (y <= 32767).all()
    again = undo_audio_robust(y, -32767, 32767, AudioMark.from_bytes(mark.to_bytes()), SECRET, frozen=-32768)
    assert np.array_equal(again, x)


@pytest.mark.parametrize("interp", ["MB", "SS"])
def test_silence_is_handled(interp: str) -> None:
    ds = voice_dataset(np.zeros(16000, dtype=np.int64), interp)
    res = embed_dataset(ds, KEYS, options=EmbedOptions(robust=True))
    back = restore_dataset(res.dataset, KEYS).dataset
    assert bytes(back.WaveformSequence[0].WaveformData) == bytes(ds.WaveformSequence[0].WaveformData)
    assert decode_audio_robust(_linear(ds), 8000, SECRET) is None


def test_two_channels_are_marked_and_restored() -> None:
    stereo = np.stack([ulaw_encode(speech_like(5.0, seed=11)), ulaw_encode(speech_like(5.0, seed=12))])
    ds = one_group(stereo, "MB")
    res = embed_dataset(ds, KEYS, record_uuid=RECORD, options=EmbedOptions(robust=True, recipient="VIEWER_AE"))
    back = restore_dataset(res.dataset, KEYS).dataset
    assert bytes(back.WaveformSequence[0].WaveformData) == bytes(ds.WaveformSequence[0].WaveformData)
    both = linear_samples(res.dataset)[0]
    assert both.shape[0] == 2
    assert decode_audio_robust(both, 8000, SECRET) == MESSAGE
    assert decode_audio_robust(both[1], 8000, SECRET) == MESSAGE


def test_general_audio_at_44k1_is_marked_and_traced() -> None:
    x = speech_like(5.0, seed=9)
    hi = np.clip(np.round(resample_poly(x.astype(np.float64), 441, 80)), -32768, 32767).astype(np.int64)
    y, mark = embed_audio_robust(hi, -32768, 32767, MESSAGE, SECRET, sample_rate=44100)
    assert np.array_equal(undo_audio_robust(y, -32768, 32767, mark, SECRET), hi)
    assert decode_audio_robust(y.astype(np.float64), 44100, SECRET) == MESSAGE


def _write_wav(path, samples: np.ndarray, rate: int, fmt: int = 1) -> None:
    body = samples.astype("<i2").tobytes() if fmt == 1 else samples.astype(np.uint8).tobytes()
    bits = 16 if fmt == 1 else 8
    fmt_chunk = struct.pack("<HHIIHH", fmt, 1, rate, rate * bits // 8, bits // 8, bits)
    data = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + b"data" + struct.pack("<I", len(body)) + body
    path.write_bytes(b"RIFF" + struct.pack("<I", len(data)) + data)


def test_wav_export_and_dicom_trace(tmp_path) -> None:
    ds, res = _marked("MB")
    lin = linear_samples(res.dataset)[0][0]
    _write_wav(tmp_path / "leak.wav", lin, 8000)
    chans, rate = load_audio(tmp_path / "leak.wav")
    assert rate == 8000 and chans.shape == (1, lin.size) and np.array_equal(chans[0], lin)
    assert trace_audio(tmp_path / "leak.wav", SECRET) == MESSAGE
    # a µ-law WAV of a 16 kHz handover
    up = np.clip(np.round(resample_poly(lin.astype(np.float64), 2, 1)), -32768, 32767)
    _write_wav(tmp_path / "leak_ulaw.wav", ulaw_encode(up), 16000, fmt=7)
    assert trace_audio(tmp_path / "leak_ulaw.wav", SECRET) == MESSAGE
    # the DICOM object itself, and an unmarked one
    res.dataset.save_as(tmp_path / "marked.dcm", enforce_file_format=True)
    ds.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    assert trace_audio(tmp_path / "marked.dcm", SECRET) == MESSAGE
    assert trace_audio(tmp_path / "plain.dcm", SECRET) is None
