"""Cine loops and volumes: frame drops, insertions, reordering and edits are
reported by frame index (issue #7, item 1)."""

from __future__ import annotations

import copy
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MultiFrameGrayscaleWordSecondaryCaptureImageStorage, generate_uid

from dicom_wm.keys import KeyStore
from dicom_wm.pixels import read_samples, write_samples
from dicom_wm.watermark import VerifyStatus, embed_dataset, restore_dataset, verify_dataset

KEYS = KeyStore.in_memory({"kframes01": b"\x61" * 32}, "kframes01")
N_FRAMES = 6


def cine(frames: int = N_FRAMES, size: int = 96) -> Dataset:
    """A smooth, slowly changing 12-bit cine loop."""
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0:size, 0:size]
    stack = np.stack(
        [1500 + 300 * np.sin((xx + 4 * f) / 15.0) * np.cos(yy / 21.0) + rng.normal(0, 1.2, (size, size)) for f in range(frames)]
    )
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.clip(np.rint(stack), 0, 4095).astype("<u2").tobytes()
    return ds


def edited(ds: Dataset, frames: np.ndarray) -> Dataset:
    px = read_samples(ds)
    out = copy.deepcopy(ds)  # Dataset.copy() shares elements: writing would edit ds
    out.NumberOfFrames = len(frames)
    write_samples(out, frames, px)
    return out


@pytest.fixture(scope="module")
def watermarked() -> Dataset:
    return embed_dataset(cine(), KEYS).dataset


def frames_of(ds: Dataset) -> np.ndarray:
    return read_samples(ds).samples


def test_intact_cine_is_authentic_and_restores(watermarked):
    check = verify_dataset(watermarked, KEYS)
    assert check.status is VerifyStatus.AUTHENTIC
    assert check.frames == {"missing": [], "extra": [], "reordered": [], "modified": []}
    assert np.array_equal(frames_of(restore_dataset(watermarked, KEYS).dataset), read_samples(cine()).samples)


def test_dropped_frame(watermarked):
    s = frames_of(watermarked)
    check = verify_dataset(edited(watermarked, np.delete(s, 2, axis=0)), KEYS)
    assert check.status is VerifyStatus.TAMPERED
    assert check.frames == {"missing": [2], "extra": [], "reordered": [], "modified": []}


def test_inserted_frames(watermarked):
    s = frames_of(watermarked)
    foreign = read_samples(cine(frames=1)).samples  # an unmarked frame
    with_dup = np.insert(s, 4, s[1], axis=0)  # a copy of frame 1 at position 4
    check = verify_dataset(edited(watermarked, np.concatenate([with_dup, foreign])), KEYS)
    assert check.status is VerifyStatus.TAMPERED
    assert check.frames["extra"] == [4, N_FRAMES + 1]
    assert check.frames["missing"] == [] and check.frames["reordered"] == []


def test_reordered_frames(watermarked):
    s = frames_of(watermarked)
    order = [0, 1, 4, 2, 3, 5]  # frame 4 moved before 2 and 3
    check = verify_dataset(edited(watermarked, s[order]), KEYS)
    assert check.status is VerifyStatus.TAMPERED
    assert check.frames["reordered"] == [4]
    assert check.frames["missing"] == [] and check.frames["extra"] == []


def test_modified_frame_reports_original_index_and_tile(watermarked):
    s = frames_of(watermarked).copy()
    s[3, 70, 10, 0] += 1
    check = verify_dataset(edited(watermarked, s), KEYS)
    assert check.status is VerifyStatus.TAMPERED
    assert check.frames["modified"] == [3]
    assert [3, 64, 0, 96, 64] in check.tampered_tiles


def test_modified_frame_after_a_drop_names_original_index(watermarked):
    s = np.delete(frames_of(watermarked), 0, axis=0).copy()
    s[2, 5, 5, 0] += 1  # received position 2 = original frame 3
    check = verify_dataset(edited(watermarked, s), KEYS)
    assert check.frames["missing"] == [0]
    assert check.frames["modified"] == [3]
    assert [2, 0, 0, 64, 64] in check.tampered_tiles  # tiles name received positions


def _without_header(ds: Dataset) -> Dataset:
    out = copy.deepcopy(ds)
    for elem in list(out):
        if elem.tag.group == 0x0077:
            del out[elem.tag]
    return out


def test_unwatermarked_multiframe_is_decided_from_a_probe(monkeypatch):
    """Without our header, a long multi-frame instance is probed on 5 frames
    first; nothing there means not_watermarked without reading the rest."""
    import dicom_wm.watermark as wm

    calls: list[int] = []
    real = wm.read_plane
    monkeypatch.setattr(wm, "read_plane", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert verify_dataset(cine(frames=12), KEYS).status is VerifyStatus.NOT_WATERMARKED
    assert len(calls) == 5 * 2  # 5 probed frames x 2 walk modes, not 12 x 2


def test_multiframe_without_header_is_still_read_in_full(watermarked):
    """A probed frame that carries a payload sends verify through every
    frame: the header is not needed to verify, nor to find an edit."""
    bare = _without_header(watermarked)
    assert verify_dataset(bare, KEYS).status is VerifyStatus.AUTHENTIC
    s = frames_of(bare).copy()
    s[3, 40, 40, 0] += 1  # frame 3 is the one of 6 that is not probed (0, 1, 2, 4, 5 are)
    check = verify_dataset(edited(bare, s), KEYS)
    assert check.status is VerifyStatus.TAMPERED and check.frames["modified"] == [3]
