"""The reversible layer carries the robust layer's undo information: with the
robust option, restore is still sample-exact and verify still localises.

The robust layer itself is dicom_wm.robust; here a stand-in with the same
contract (embed / undo / RobustMark bytes) isolates the integration."""

from __future__ import annotations

import sys
import types
import uuid
from dataclasses import dataclass

import numpy as np
import pydicom
import pytest

from corpus import pydicom_data_files
from dicom_wm.keys import KeyStore
from dicom_wm.pixels import read_samples, write_samples
from dicom_wm.watermark import EmbedOptions, VerifyStatus, embed_dataset, restore_dataset, verify_dataset

KEYS = KeyStore.in_memory({"krob00001": b"\x42" * 32}, "krob00001")


@dataclass(frozen=True)
class _Mark:
    message: bytes
    clipped: bytes  # int64 pairs (flat index, original value)

    def to_bytes(self) -> bytes:
        return self.message + self.clipped

    @classmethod
    def from_bytes(cls, data: bytes) -> _Mark:
        if len(data) < 8 or (len(data) - 8) % 16:
            raise ValueError("bad mark")
        return cls(data[:8], data[8:])


def _pattern(shape, secret: bytes) -> np.ndarray:
    rng = np.random.default_rng(int.from_bytes(secret[:8], "big"))
    return rng.integers(-3, 4, size=shape)


def _embed(plane, lo, hi, message, secret):
    raw = plane + _pattern(plane.shape, secret)
    marked = np.clip(raw, lo, hi)
    idx = np.flatnonzero(raw != marked)
    pairs = np.stack([idx, plane.reshape(-1)[idx]], axis=1).astype("<i8").tobytes()
    return marked, _Mark(message, pairs)


def _undo(marked, lo, hi, mark, secret):
    out = marked - _pattern(marked.shape, secret)
    pairs = np.frombuffer(mark.clipped, "<i8").reshape(-1, 2)
    out.reshape(-1)[pairs[:, 0]] = pairs[:, 1]
    return out


@pytest.fixture
def stand_in(monkeypatch):
    module = types.ModuleType("dicom_wm.robust")
    module.message_for = lambda record, recipient=None: uuid.UUID(str(record)).bytes[:8]
    module.embed_robust = _embed
    module.undo_robust = _undo
    module.RobustMark = _Mark
    monkeypatch.setitem(sys.modules, "dicom_wm.robust", module)
    import dicom_wm

    monkeypatch.setattr(dicom_wm, "robust", module, raising=False)
    return module


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "JPEG2000_UNC.dcm"])
def test_robust_option_round_trip(stand_in, name):
    ds = pydicom.dcmread(pydicom_data_files() / name)
    before = read_samples(ds).samples
    result = embed_dataset(ds, KEYS, options=EmbedOptions(robust=True))
    assert result.robust_message == uuid.UUID(result.record_uuid).bytes[:8].hex()
    after = read_samples(result.dataset).samples
    assert np.abs(after - before).max() <= 4  # the stand-in's ±3 plus the reversible ±1
    check = verify_dataset(result.dataset, KEYS)
    assert check.status is VerifyStatus.AUTHENTIC
    assert check.original_sample_sha256 == result.original_sample_sha256
    assert np.array_equal(read_samples(restore_dataset(result.dataset, KEYS).dataset).samples, before)


def test_robust_option_still_localises_tampering(stand_in):
    ds = pydicom.dcmread(pydicom_data_files() / "693_UNCR.dcm")
    wm = embed_dataset(ds, KEYS, options=EmbedOptions(robust=True)).dataset
    px = read_samples(wm)
    samples = px.samples.copy()
    samples[0, 300, 40, 0] += 1
    bad = pydicom.dcmread(pydicom_data_files() / "693_UNCR.dcm")
    write_samples(bad, samples, px)
    for elem in wm:  # same header as the watermarked instance
        if elem.tag != 0x7FE00010:
            bad[elem.tag] = elem
    check = verify_dataset(bad, KEYS)
    assert check.status is VerifyStatus.TAMPERED
    assert [0, 256, 0, 320, 64] in check.tampered_tiles


def test_oversized_undo_information_is_a_capacity_error(stand_in):
    """An 8-bit image with large black areas: the stand-in clips so many
    samples that its undo list cannot travel; nothing is written."""
    from dicom_wm.errors import InsufficientCapacity

    ds = pydicom.dcmread(pydicom_data_files() / "US1_UNCR.dcm")
    with pytest.raises(InsufficientCapacity, match="robust layer"):
        embed_dataset(ds, KEYS, options=EmbedOptions(robust=True))


def test_robust_layer_missing_is_a_clear_error(monkeypatch):
    import dicom_wm

    monkeypatch.setitem(sys.modules, "dicom_wm.robust", None)  # import fails
    monkeypatch.delattr(dicom_wm, "robust", raising=False)  # ...also when already imported
    ds = pydicom.dcmread(pydicom_data_files() / "693_UNCR.dcm")
    from dicom_wm.errors import UnsupportedInput

    with pytest.raises(UnsupportedInput, match="robust layer is not available"):
        embed_dataset(ds, KEYS, options=EmbedOptions(robust=True))


def test_real_robust_layer_round_trip_and_trace():
    """The shipped robust layer under the reversible one: authentic, exact
    restore, and the robust message reads back from the stored samples."""
    robust = pytest.importorskip("dicom_wm.robust")
    ds = pydicom.dcmread(pydicom_data_files() / "693_UNCR.dcm")
    before = read_samples(ds).samples
    result = embed_dataset(ds, KEYS, options=EmbedOptions(robust=True, recipient="VIEWER1"))
    message = bytes.fromhex(result.robust_message)
    assert robust.parse_message(message)[1] == robust.recipient_tag("VIEWER1")
    assert verify_dataset(result.dataset, KEYS).status is VerifyStatus.AUTHENTIC
    assert np.array_equal(read_samples(restore_dataset(result.dataset, KEYS).dataset).samples, before)
    stored = read_samples(result.dataset).samples[0, :, :, 0]
    assert robust.decode_robust(stored, KEYS.secret("krob00001")) == message


def test_real_robust_layer_marks_planes_in_threads_with_the_same_result():
    """``threads`` only changes how many planes are marked at once: the
    stored samples are the same as one at a time, and restore stays exact."""
    pytest.importorskip("dicom_wm.robust")
    ds = pydicom.dcmread(pydicom_data_files() / "US1_UNCR.dcm")  # 3 planes (RGB)
    record = uuid.UUID(int=7)
    one = embed_dataset(ds, KEYS, record_uuid=record, options=EmbedOptions(robust=True, threads=1))
    three = embed_dataset(ds, KEYS, record_uuid=record, options=EmbedOptions(robust=True, threads=3))
    assert three.robust_message == one.robust_message
    assert np.array_equal(read_samples(three.dataset).samples, read_samples(one.dataset).samples)
    assert three.dataset.PixelData == one.dataset.PixelData
    restored = restore_dataset(three.dataset, KEYS).dataset
    assert np.array_equal(read_samples(restored).samples, read_samples(ds).samples)
    with pytest.raises(ValueError, match="threads 0"):
        embed_dataset(ds, KEYS, options=EmbedOptions(robust=True, threads=0))
