"""Waveform test data: the bundled ECG and Basic Voice Audio objects built
from generated speech-like signals (nothing is downloaded or synthesised by
external tools, so the tests run anywhere)."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_wm.waveform import alaw_encode, ulaw_encode

BASIC_VOICE_AUDIO = "1.2.840.10008.5.1.4.1.1.9.4.1"
VOICE_RATE = 8000


def ecg_dataset() -> Dataset:
    """pydicom's 12-lead ECG: a 10 s rhythm group and a 1.2 s median beat,
    both 12 x SS 16-bit at 1000 Hz."""
    return pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))


def _resonate(x: np.ndarray, freq: float, bandwidth: float, rate: int) -> np.ndarray:
    """Two-pole resonator (a formant), applied sample by sample."""
    r = np.exp(-np.pi * bandwidth / rate)
    a1, a2 = 2 * r * np.cos(2 * np.pi * freq / rate), -r * r
    y = np.zeros_like(x)
    y1 = y2 = 0.0
    for i, v in enumerate(x):
        y0 = v + a1 * y1 + a2 * y2
        y[i] = y0
        y2, y1 = y1, y0
    return y * (1 - r)


def speech_like(seconds: float = 3.0, rate: int = VOICE_RATE, seed: int = 0, peak: float = 0.5) -> np.ndarray:
    """A speech-like signal on the 16-bit linear scale (int64): syllables of
    voiced sound (a jittered glottal pulse train at 90-220 Hz through three
    formants that glide) and unvoiced noise bursts, separated by pauses with a
    faint noise floor. ``peak`` is the largest amplitude as a fraction of
    full scale."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n)
    t = 0
    while t < n:
        pause = int(rng.uniform(0.08, 0.3) * rate)
        t += pause
        length = min(int(rng.uniform(0.12, 0.35) * rate), n - t)
        if length <= 0:
            break
        if rng.random() < 0.75:  # voiced
            f0 = rng.uniform(90, 220)
            phase = np.cumsum(f0 * (1 + 0.01 * rng.standard_normal(length)) / rate)
            source = np.diff(np.floor(phase), prepend=0.0) * 1.0  # one pulse per period
            source = np.convolve(source, np.hanning(12), mode="same")
            f1, f2, f3 = rng.uniform(300, 800), rng.uniform(900, 2200), rng.uniform(2300, 3200)
            glide = np.linspace(1.0, rng.uniform(0.85, 1.15), length)
            y = np.zeros(length)
            for f, bw, gain in ((f1, 80, 1.0), (f2, 120, 0.5), (f3, 200, 0.25)):
                y += gain * _resonate(source, f * float(glide.mean()), bw, rate)
        else:  # unvoiced fricative
            y = np.diff(rng.standard_normal(length + 1)) * 0.3
        envelope = np.sin(np.linspace(0, np.pi, length)) ** 0.7
        y = y * envelope
        out[t : t + length] = y / (np.abs(y).max() + 1e-12) * rng.uniform(0.4, 1.0)
        t += length
    out *= peak * 32767
    out += rng.normal(0, 6, n)  # noise floor, about -75 dBFS
    return np.clip(np.round(out), -32768, 32767).astype(np.int64)


def voice_dataset(linear: np.ndarray, interpretation: str = "MB", rate: int = VOICE_RATE) -> Dataset:
    """A Basic Voice Audio instance (one group, one channel) holding
    ``linear`` (16-bit scale) as ``interpretation`` MB (µ-law), AB (A-law)
    or SS (16-bit linear)."""
    linear = np.asarray(linear, dtype=np.int64)
    if interpretation == "MB":
        data, bits, vr = ulaw_encode(linear).astype(np.uint8).tobytes(), 8, "OB"
    elif interpretation == "AB":
        data, bits, vr = alaw_encode(linear).astype(np.uint8).tobytes(), 8, "OB"
    elif interpretation == "SS":
        data, bits, vr = linear.astype("<i2").tobytes(), 16, "OW"
    else:
        raise ValueError(f"interpretation {interpretation!r}")
    if len(data) % 2:
        data += b"\x00"
    ds = Dataset()
    ds.SOPClassUID = BASIC_VOICE_AUDIO
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "AU"
    ds.PatientName = "Test^Voice"
    ds.PatientID = "VOICE1"
    ds.InstanceNumber = 1
    channel = Dataset()
    source = Dataset()
    source.CodeValue, source.CodingSchemeDesignator, source.CodeMeaning = "110009", "DCM", "No Pain Management"
    channel.ChannelSourceSequence = Sequence([source])
    channel.WaveformBitsStored = bits
    group = Dataset()
    group.MultiplexGroupTimeOffset = 0
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = 1
    group.NumberOfWaveformSamples = len(linear)
    group.SamplingFrequency = rate
    group.ChannelDefinitionSequence = Sequence([channel])
    group.WaveformBitsAllocated = bits
    group.WaveformSampleInterpretation = interpretation
    group.add_new(0x54001010, vr, data)
    ds.WaveformSequence = Sequence([group])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def one_group(samples: np.ndarray, interpretation: str, *, bits_stored: int | None = None, padding: int | None = None) -> Dataset:
    """A minimal waveform instance with one group of ``samples`` (channels,
    n) stored as ``interpretation`` (SB UB MB AB SS US)."""
    samples = np.asarray(samples, dtype=np.int64)
    channels, n = samples.shape
    dtype = {"SB": "i1", "UB": "u1", "MB": "u1", "AB": "u1", "SS": "<i2", "US": "<u2"}[interpretation]
    bits = 8 if interpretation.endswith("B") else 16
    data = samples.T.astype(dtype).tobytes()
    if len(data) % 2:
        data += b"\x00"
    ds = voice_dataset(np.zeros(2, dtype=np.int64), "SS")
    group = ds.WaveformSequence[0]
    group.NumberOfWaveformChannels = channels
    group.NumberOfWaveformSamples = n
    group.WaveformBitsAllocated = bits
    group.WaveformSampleInterpretation = interpretation
    group.ChannelDefinitionSequence = Sequence(
        [copy.deepcopy(group.ChannelDefinitionSequence[0]) for _ in range(channels)]
    )
    for ch in group.ChannelDefinitionSequence:
        ch.WaveformBitsStored = bits_stored or bits
    group["WaveformData"].VR = "OB" if bits == 8 else "OW"
    group["WaveformData"].value = data
    if padding is not None:
        group.add_new(0x5400100A, "OB" if bits == 8 else "OW", np.array([padding]).astype(dtype).tobytes())
    return ds
