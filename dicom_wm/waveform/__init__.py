"""Reversible, authenticated watermarking of DICOM waveforms.

ECG, hemodynamic, Basic Voice Audio and other objects with a (5400,0100)
Waveform Sequence: the same payload blocks, MACs, header and key store as
images, on the integer samples of (5400,1010) Waveform Data. Each multiplex
group is one plane (channels x samples); tamper evidence is localised to
(group, channel, time window). Spec: docs/format.md, "Waveforms".
"""

from dicom_wm.waveform.companding import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from dicom_wm.waveform.predictor import Linear1D
from dicom_wm.waveform.quality import linear_samples, snr_db
from dicom_wm.waveform.samples import SampleInterpretation, WaveformGroup, is_waveform, read_groups, write_group
from dicom_wm.waveform.watermark import embed_waveform, restore_waveform, stored_sample_sha256, verify_waveform
from dicom_wm.waveform.capacity import GroupCapacity, waveform_capacity, with_loaded

__all__ = [
    "is_waveform",
    "embed_waveform",
    "verify_waveform",
    "restore_waveform",
    "stored_sample_sha256",
    "waveform_capacity",
    "with_loaded",
    "GroupCapacity",
    "read_groups",
    "write_group",
    "WaveformGroup",
    "SampleInterpretation",
    "Linear1D",
    "linear_samples",
    "snr_db",
    "ulaw_decode",
    "ulaw_encode",
    "alaw_decode",
    "alaw_encode",
]
