"""ROI-lossless mode: the detected body is walked last (issue #5, item 3)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from corpus import pydicom_data_files
from dicom_wm.engine.roi import body_mask
from dicom_wm.keys import KeyStore
from dicom_wm.pixels import read_samples
from dicom_wm.watermark import EmbedOptions, VerifyStatus, embed_dataset, restore_dataset, verify_dataset

KEYS = KeyStore.in_memory({"kroi00001": b"\x71" * 32}, "kroi00001")
ROI = EmbedOptions(roi_lossless=True)


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "MR2_UNCR.dcm", "US1_UNCR.dcm"])
def test_body_untouched_when_background_suffices(name):
    ds = pydicom.dcmread(pydicom_data_files() / name)
    before = read_samples(ds).samples
    result = embed_dataset(ds, KEYS, options=ROI)
    after = read_samples(result.dataset).samples
    assert result.walk_mode == "roi-lossless" and result.body_unchanged is True
    for f in range(before.shape[0]):
        for c in range(before.shape[3]):
            mask = body_mask(before[f, :, :, c])
            assert 0.05 < mask.mean() < 0.95  # a body was found, not the whole image
            changed = after[f, :, :, c] != before[f, :, :, c]
            assert changed.any() and not changed[mask].any()
    assert verify_dataset(result.dataset, KEYS).status is VerifyStatus.AUTHENTIC
    assert np.array_equal(read_samples(restore_dataset(result.dataset, KEYS).dataset).samples, before)


def _synthetic(img: np.ndarray) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.StudyInstanceUID = ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = img.astype("<u2").tobytes()
    return ds


def test_roi_moves_the_payload_out_of_a_smooth_body():
    """A perfectly smooth body in a noisy background: the standard walk
    starts in the body (smoothest first), the ROI walk stays outside."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:256, 0:256]
    body = (yy - 128) ** 2 + (xx - 128) ** 2 < 70**2
    img = np.where(body, 2000, np.clip(np.rint(100 + rng.normal(0, 1.5, (256, 256))), 0, 4095)).astype(np.int64)
    ds = _synthetic(img)
    mask = body_mask(img)
    assert mask[body].all()
    standard = read_samples(embed_dataset(ds, KEYS).dataset).samples[0, :, :, 0]
    assert (standard != img)[body].any()
    result = embed_dataset(ds, KEYS, options=ROI)
    roi = read_samples(result.dataset).samples[0, :, :, 0]
    assert result.body_unchanged is True and not (roi != img)[mask].any()


def test_body_is_used_when_the_background_is_too_small():
    """A plane that is almost all body: the payload spills into it, the
    result says so, and it still verifies and restores."""
    rng = np.random.default_rng(4)
    img = np.clip(np.rint(2000 + rng.normal(0, 1.0, (160, 160))), 0, 4095).astype(np.int64)
    img[:3, :] = 0  # a thin dark strip: background too small for the payload
    ds = _synthetic(img)
    result = embed_dataset(ds, KEYS, options=ROI)
    assert result.body_unchanged is False
    assert verify_dataset(result.dataset, KEYS).status is VerifyStatus.AUTHENTIC
    assert np.array_equal(read_samples(restore_dataset(result.dataset, KEYS).dataset).samples[0, :, :, 0], img)


@pytest.mark.parametrize("seed", [2, 3, 8])
def test_roi_instance_is_not_read_along_the_standard_walk(seed):
    """A flat band at the bottom of the range is cheapest, and outside the
    body, so both walks start there: the first payload copy reads back along
    the standard walk too. Verify must not take it (its undo would walk the
    wrong positions and call an intact instance tampered)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:128, 0:128]
    img = 2048 + 800 * np.sin(xx / rng.uniform(3, 40)) * np.cos(yy / rng.uniform(3, 40))
    img = img + rng.normal(0, float(rng.choice([0.5, 2, 10])), img.shape)
    img[:42, :] = 0
    img = np.clip(np.rint(img), 0, 4095).astype(np.int64)
    ds = _synthetic(img)
    result = embed_dataset(ds, KEYS, options=ROI)
    standard = embed_dataset(ds, KEYS)
    # the premise: the two walks differ, but the payload starts in the same place
    stored = read_samples(result.dataset).samples[0, :, :, 0]
    assert not np.array_equal(stored, read_samples(standard.dataset).samples[0, :, :, 0])
    assert (stored != img)[:42].any()
    assert verify_dataset(result.dataset, KEYS).status is VerifyStatus.AUTHENTIC
    assert np.array_equal(read_samples(restore_dataset(result.dataset, KEYS).dataset).samples[0, :, :, 0], img)
