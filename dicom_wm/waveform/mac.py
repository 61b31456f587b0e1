"""MACs for waveforms: identity text and per-time-window digests.

The digests are :func:`dicom_wm.payload.mac.tile_digests` applied to one
channel at a time as a 1 x samples plane, with the group index as the frame
and windows of ``64 x tile`` samples as the tiles; so a waveform tile digest
is the image one with frame = group, channel = channel, tile = window index.
"""

from __future__ import annotations

import uuid

from pydicom.dataset import Dataset

from dicom_wm.payload.mac import tile_digests, tile_grid
from dicom_wm.waveform.samples import TILE_UNIT, WaveformGroup

__all__ = [
    "INSTANCE_KEYWORDS",
    "GROUP_KEYWORDS",
    "CHANNEL_KEYWORDS",
    "CANONICAL_DTYPE",
    "waveform_identity",
    "group_digests",
    "windows",
]

CANONICAL_DTYPE = "<i4"  # stored values (codes for MB / AB), sign-extended

INSTANCE_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
GROUP_KEYWORDS = (
    "NumberOfWaveformChannels",
    "NumberOfWaveformSamples",
    "SamplingFrequency",
    "WaveformBitsAllocated",
    "WaveformSampleInterpretation",
)
CHANNEL_KEYWORDS = (
    "ChannelSensitivity",
    "ChannelSensitivityCorrectionFactor",
    "ChannelBaseline",
    "WaveformBitsStored",
)


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _source(channel: Dataset) -> str:
    seq = channel.get("ChannelSourceSequence") or []
    if not seq:
        return ""
    code = seq[0]
    return f"{_text(code.get('CodeValue'))}^{_text(code.get('CodingSchemeDesignator'))}"


def waveform_identity(ds: Dataset, step_bits: list[int]) -> bytes:
    """``KEYWORD=value`` lines bound into the instance MAC: the instance's
    UIDs, then per multiplex group g its layout (``G<g>.KEYWORD=``), the
    watermark step (``G<g>.StepBits=k``) and per channel c its source code
    and scaling (``G<g>.C<c>.KEYWORD=``; the source as
    ``CodeValue^CodingSchemeDesignator``). Relabelling a lead, rescaling a
    channel or changing the sampling frequency breaks the MAC."""
    lines = [f"{kw}={_text(ds.get(kw))}" for kw in INSTANCE_KEYWORDS]
    for g, item in enumerate(ds.get("WaveformSequence") or []):
        lines += [f"G{g}.{kw}={_text(item.get(kw))}" for kw in GROUP_KEYWORDS]
        lines.append(f"G{g}.StepBits={step_bits[g] if g < len(step_bits) else ''}")
        for c, channel in enumerate(item.get("ChannelDefinitionSequence") or []):
            lines.append(f"G{g}.C{c}.ChannelSource={_source(channel)}")
            lines += [f"G{g}.C{c}.{kw}={_text(channel.get(kw))}" for kw in CHANNEL_KEYWORDS]
    return "\n".join(lines).encode("utf-8")


def windows(n_samples: int, tile: int) -> list[tuple[int, int]]:
    """Time windows (sample0, sample1), end-exclusive, of ``64 x tile`` samples."""
    return [(c0, c1) for (_, c0, _, c1) in tile_grid(1, n_samples, TILE_UNIT * tile)]


def group_digests(
    secret: bytes, record_uuid: uuid.UUID, group: WaveformGroup, stored, tile: int
) -> list[bytes]:
    """Full digests of every (channel, window) of a group's stored samples
    ``(channels, samples)``, channel-major: index = channel x windows + window."""
    out: list[bytes] = []
    for c in range(stored.shape[0]):
        out += tile_digests(
            secret, record_uuid, group.index, c, stored[c : c + 1], TILE_UNIT * tile, CANONICAL_DTYPE
        )
    return out
