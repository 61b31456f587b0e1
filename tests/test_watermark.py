"""embed / verify / restore over the whole image corpus (issue #2's tests)."""

from __future__ import annotations

import copy
import hashlib
import io
import uuid
import warnings

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from dicom_wm.engine.histogram_shift import carrier_mask, walk_order
from dicom_wm.engine.predictors import ClassicRhombus
from dicom_wm.errors import InsufficientCapacity, NotAuthentic, UnsupportedInput
from dicom_wm.keys import KeyStore
from dicom_wm.payload.block import TILE
from dicom_wm.pixels import read_samples, write_samples
from dicom_wm.watermark import VerifyStatus, embed_dataset, restore_dataset, verify_dataset
from corpus import synthetic_image, corpus_params

KEYS = KeyStore.in_memory({"ktest0001": b"\x11" * 32}, "ktest0001")
OTHER_KEYS = KeyStore.in_memory({"kother001": b"\x22" * 32}, "kother001")
SAME_ID_OTHER_SECRET = KeyStore.in_memory({"ktest0001": b"\x33" * 32}, "ktest0001")
PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}

# Images too small for one payload block (the block needs ~700 bits; these
# carry fewer at ±1): thumbnails, 10x10 dose grids, 64x64 MR, 128x128 CT.
# They must fail with a clear capacity error and leave the input untouched.
TOO_SMALL_PREFIXES = (
    "pydicom/CT_small",
    "pydicom/ExplVR_BigEnd",
    "pydicom/JPEGLSNearLossless_",
    "pydicom/MR_small",
    "pydicom/SC_rgb_small_odd",
    "pydicom/dicomdirtests/",
    "pydicom/rtdose",
    "pydicom-data/emri_small",
)


def _quiet_load(entry) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return entry.load()


def _roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def _with_sample_changed(ds: Dataset, index: tuple[int, int, int, int]) -> Dataset:
    px = read_samples(ds)
    samples = px.samples.copy()
    samples[index] += 1 if samples[index] < px.hi else -1
    out = copy.deepcopy(ds)  # Dataset.copy() shares elements: writing would edit ds
    write_samples(out, samples, px)
    return out


def _tile_of(index: tuple[int, int, int, int], rows: int, cols: int) -> list[int]:
    f, r, c, _ = index
    r0, c0 = (r // TILE) * TILE, (c // TILE) * TILE
    return [f, r0, c0, min(r0 + TILE, rows), min(c0 + TILE, cols)]


def _first_carrier(px) -> tuple[int, int, int, int]:
    """A sample that carries payload: the first carrier of frame 0, channel 0."""
    plane = px.samples[0, :, :, 0]
    pred = ClassicRhombus()
    walk = walk_order(pred.predict(plane[None])[0], pred.complexity(plane[None])[0], px.lo, px.hi)
    first = int(walk.index[np.flatnonzero(carrier_mask(plane.reshape(-1)[walk.index] - walk.pred))[0]])
    return (0, first // plane.shape[1], first % plane.shape[1], 0)


@pytest.mark.parametrize("entry", corpus_params(ok_only=True))
def test_corpus_embed_verify_restore(entry):
    original = _quiet_load(entry)
    before = read_samples(original).samples.copy()
    if entry.name.startswith(TOO_SMALL_PREFIXES):
        with pytest.raises(InsufficientCapacity, match="insufficient capacity"):
            embed_dataset(original, KEYS)
        assert np.array_equal(read_samples(original).samples, before)
        return

    pristine = copy.deepcopy(original)
    result = embed_dataset(original, KEYS)
    assert original == pristine and original.file_meta == pristine.file_meta, "embed modified its input"
    wm = result.dataset if entry.slow else _roundtrip(result.dataset)
    px = read_samples(wm)
    assert np.array_equal(read_samples(original).samples, before), "embed modified its input"
    assert np.abs(px.samples - before).max() <= 1 == result.max_abs_delta
    assert px.samples.min() >= px.lo and px.samples.max() <= px.hi
    assert wm.SOPInstanceUID == original.SOPInstanceUID
    assert result.payload_bits > 0 and result.capacity_bits >= result.payload_bits // 3

    check = verify_dataset(wm, KEYS)
    assert check.status is VerifyStatus.AUTHENTIC, check.error
    assert check.record_uuid == result.record_uuid and check.key_id == "ktest0001"
    assert check.original_sample_sha256 == result.original_sample_sha256
    # provenance pins the original samples as little-endian int32 (int64 for unsigned 32-bit), (f, r, c, ch)
    canonical = "<i8" if px.bits_stored == 32 and not px.signed else "<i4"
    assert result.original_sample_sha256 == hashlib.sha256(before.astype(canonical).tobytes()).hexdigest()

    # Element-exact on the in-memory result (writing a file drops the retired
    # group-length elements, as pydicom always does); sample-exact from file.
    assert np.array_equal(read_samples(restore_dataset(wm, KEYS).dataset).samples, before)
    restored = restore_dataset(result.dataset, KEYS).dataset
    assert np.array_equal(read_samples(restored).samples, before)
    assert {e.tag for e in restored} - PIXEL_TAGS == {e.tag for e in original} - PIXEL_TAGS
    decoded_photometric = read_samples(original).photometric
    for elem in original:
        if elem.tag in PIXEL_TAGS:
            continue
        if elem.keyword == "PhotometricInterpretation" and elem.value != decoded_photometric:
            # restored pixel data is native: it keeps the decoded colour space
            assert restored.PhotometricInterpretation == decoded_photometric
            continue
        assert restored[elem.tag] == elem, f"{elem.tag} differs after restore"

    assert verify_dataset(original, KEYS).status is VerifyStatus.NOT_WATERMARKED
    assert verify_dataset(wm, OTHER_KEYS).status is VerifyStatus.INVALID
    if entry.slow:
        return
    assert verify_dataset(wm, SAME_ID_OTHER_SECRET).status is VerifyStatus.INVALID

    f, rows, cols, ch = px.samples.shape
    for index in (_first_carrier(px), (f - 1, rows - 1, cols - 1, ch - 1), (f // 2, rows // 2, 1, 0)):
        tampered = verify_dataset(_with_sample_changed(wm, index), KEYS)
        assert tampered.status is VerifyStatus.TAMPERED, (index, tampered.error)
        assert _tile_of(index, rows, cols) in tampered.tampered_tiles, (index, tampered.tampered_tiles)


def test_embed_and_restore_leave_a_freshly_read_input_untouched():
    """Embed and restore copy only what they write, and share unparsed
    elements with their input: the input must still write the same bytes.
    Implicit VR and an existing Contributing Equipment item make both
    change elements they copied (transfer syntax, the sequence)."""
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    source.PixelData = np.tile(source.pixel_array, (4, 4)).tobytes()  # large enough to carry a payload
    source.Rows, source.Columns = source.Rows * 4, source.Columns * 4
    source.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    item = Dataset()
    item.Manufacturer = "modality vendor"
    source.ContributingEquipmentSequence = [item]
    raw = io.BytesIO()
    pydicom.dcmwrite(raw, source, enforce_file_format=True)

    def written(ds: Dataset) -> bytes:
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        return buf.getvalue()

    original = pydicom.dcmread(io.BytesIO(raw.getvalue()))
    result = embed_dataset(original, KEYS)
    assert written(original) == raw.getvalue(), "embed modified its input"
    marked = pydicom.dcmread(io.BytesIO(written(result.dataset)))
    marked_bytes = written(marked)
    restored = restore_dataset(marked, KEYS).dataset
    assert written(marked) == marked_bytes, "restore modified its input"
    assert np.array_equal(read_samples(restored).samples, read_samples(original).samples)


def test_restore_refuses_tampered_unless_forced():
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    wm = embed_dataset(ds, KEYS).dataset
    bad = _with_sample_changed(wm, (0, 100, 100, 0))
    with pytest.raises(NotAuthentic, match="tampered"):
        restore_dataset(bad, KEYS)
    forced = restore_dataset(bad, KEYS, force=True)
    assert forced.verify.status is VerifyStatus.TAMPERED
    assert [0, 64, 64, 128, 128] in forced.verify.tampered_tiles


def test_changed_identity_is_invalid_not_authentic():
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    wm = embed_dataset(ds, KEYS).dataset
    wm.SOPInstanceUID = "1.2.3.4"
    check = verify_dataset(wm, KEYS)
    assert check.status is VerifyStatus.INVALID and "identifying" in check.error


def _with_original_elements(wm: Dataset, evil: Dataset) -> Dataset:
    """``wm`` with its private block's Original Elements replaced by ``evil``
    (written, read back); its watermark still verifies: the MACs do not cover the block."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, evil)
    wm[wm.private_block(0x0077, "DICOM-WM 1").get_tag(0x08)].value = fp.getvalue()
    out = _roundtrip(wm)
    assert verify_dataset(out, KEYS).status is VerifyStatus.AUTHENTIC
    return out


def test_edited_original_elements_cannot_change_the_restored_identity():
    """The private block's original values are not MAC'd: an edit that
    makes restore write another SOP Instance UID or Rows is refused although
    the watermark still verifies; --force restores with the file's identity."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    evil = Dataset()
    evil.SOPInstanceUID, evil.Rows, evil.PatientID = "1.2.3.4.5.6.7.8.9", 64, "EVIL"
    wm = _with_original_elements(embed_dataset(ds, KEYS).dataset, evil)
    with pytest.raises(NotAuthentic, match="Rows, SOPInstanceUID"):
        restore_dataset(wm, KEYS)
    forced = restore_dataset(wm, KEYS, force=True).dataset
    assert forced.SOPInstanceUID == ds.SOPInstanceUID and forced.Rows == ds.Rows
    assert np.array_equal(read_samples(forced).samples, read_samples(ds).samples)


@pytest.mark.parametrize("edit", ["PixelData", "PlanarConfiguration"])
def test_edited_original_elements_cannot_replace_the_restored_samples(edit: str):
    """A Pixel Data element (or a different Planar Configuration) put into
    the block made restore write zeros (or misread colour) and report success."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    wm = embed_dataset(ds, KEYS).dataset
    evil = Dataset()
    if edit == "PixelData":
        evil.PixelData = b"\0" * len(wm.PixelData)
        evil["PixelData"].VR = "OB"
    else:
        evil.PlanarConfiguration = 1 - int(ds.PlanarConfiguration)
    wm = _with_original_elements(wm, evil)
    with pytest.raises(NotAuthentic, match=edit):
        restore_dataset(wm, KEYS)
    forced = restore_dataset(wm, KEYS, force=True).dataset
    assert np.array_equal(read_samples(forced).samples, read_samples(ds).samples)


def test_double_embed_refused_and_record_uuid_honoured():
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    rid = uuid.uuid4()
    wm = embed_dataset(ds, KEYS, record_uuid=rid)
    assert wm.record_uuid == str(rid)
    with pytest.raises(UnsupportedInput, match="already watermarked"):
        embed_dataset(wm.dataset, KEYS)


def test_rotated_key_still_verifies():
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    store = KeyStore.in_memory({"kaaaaaaaa": b"\x44" * 32}, "kaaaaaaaa")
    old = embed_dataset(ds, store).dataset
    store2 = KeyStore.in_memory({"kaaaaaaaa": b"\x44" * 32, "kbbbbbbbb": b"\x55" * 32}, "kbbbbbbbb")
    new = embed_dataset(ds, store2)
    assert new.key_id == "kbbbbbbbb"
    assert verify_dataset(old, store2).status is VerifyStatus.AUTHENTIC
    assert verify_dataset(new.dataset, store2).status is VerifyStatus.AUTHENTIC


def test_no_pixel_data_is_unsupported():
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("rtplan.dcm"))
    with pytest.raises(UnsupportedInput, match="no Pixel Data"):
        embed_dataset(ds, KEYS)
    assert verify_dataset(ds, KEYS).status is VerifyStatus.UNSUPPORTED




@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    depth=st.sampled_from([(8, 8), (8, 6), (16, 16), (16, 12), (16, 10), (32, 32), (32, 20)]),
    signed=st.booleans(),
    kind=st.sampled_from(["min", "max", "constant", "checkerboard", "noise", "smooth"]),
    frames=st.integers(1, 2),
    size=st.integers(100, 200),
)
def test_synthetic_images_round_trip_or_refuse_cleanly(seed, depth, signed, kind, frames, size):
    """Every bit depth and sign, degenerate and noisy content: either an
    exact, ±1, authentic round trip, or a clear capacity error."""
    bits_allocated, bits_stored = depth
    lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    rng = np.random.default_rng(seed)
    shape = (frames, size, size)
    if kind == "min":
        img = np.full(shape, lo)
    elif kind == "max":
        img = np.full(shape, hi)
    elif kind == "constant":
        img = np.full(shape, int(rng.integers(lo, hi, endpoint=True)))
    elif kind == "checkerboard":
        img = np.broadcast_to(np.where((np.indices((size, size)).sum(0) & 1) == 0, lo, hi), shape)
    elif kind == "noise":
        img = rng.integers(lo, hi, size=shape, endpoint=True)
    else:
        mid = (lo + hi) // 2
        img = np.clip(np.rint(mid + rng.normal(0, 2, shape)), lo, hi).astype(np.int64)
    ds = synthetic_image(np.asarray(img, dtype=np.int64), bits_allocated, bits_stored, signed)
    before = read_samples(ds).samples.copy()
    try:
        result = embed_dataset(ds, KEYS)
    except InsufficientCapacity as exc:
        assert "insufficient capacity" in str(exc)
        # Predictions must lie in [lo+3, hi-2] or equal lo: images at or near
        # the top of the range, and noise, may have no room; the rest must.
        assert kind in ("noise", "checkerboard", "max") or (kind == "constant" and int(img.flat[0]) in (lo + 1, lo + 2, hi - 1, hi))
        return
    wm = _roundtrip(result.dataset)
    after = read_samples(wm).samples
    assert np.abs(after - before).max() <= 1
    assert after.min() >= lo and after.max() <= hi
    assert verify_dataset(wm, KEYS).status is VerifyStatus.AUTHENTIC
    assert np.array_equal(read_samples(restore_dataset(wm, KEYS).dataset).samples, before)
