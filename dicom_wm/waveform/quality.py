"""Signal measures for waveform watermarks: linear samples and SNR."""

from __future__ import annotations

import math

import numpy as np
from pydicom.dataset import Dataset

from dicom_wm.waveform.companding import alaw_decode, ulaw_decode
from dicom_wm.waveform.samples import SampleInterpretation, WaveformGroup, read_groups

__all__ = ["linear_samples", "snr_db"]


def _linear(group: WaveformGroup) -> np.ndarray:
    if group.interpretation is SampleInterpretation.MB:
        return ulaw_decode(group.stored)
    if group.interpretation is SampleInterpretation.AB:
        return alaw_decode(group.stored)
    if group.interpretation is SampleInterpretation.UB:
        return group.stored - 128  # offset binary
    if group.interpretation is SampleInterpretation.US:
        return group.stored - 32768
    return group.stored


def linear_samples(ds: Dataset) -> list[np.ndarray]:
    """Each group's samples on a linear scale, int64 (channels, samples):
    µ-law / A-law decoded (G.711, 16-bit scale), unsigned ones centred."""
    return [_linear(g) for g in read_groups(ds)]


def snr_db(reference: Dataset, other: Dataset) -> float:
    """SNR (dB) of ``other``'s linear samples against ``reference``'s, over
    all groups: 10 log10(sum ref^2 / sum (other - ref)^2); inf if equal."""
    signal = noise = 0.0
    for a, b in zip(linear_samples(reference), linear_samples(other), strict=True):
        if a.shape != b.shape:
            raise ValueError(f"groups shaped {a.shape} and {b.shape}")
        signal += float(np.sum(a.astype(np.float64) ** 2))
        noise += float(np.sum((b - a).astype(np.float64) ** 2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal else -math.inf
