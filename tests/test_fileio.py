"""Atomic writes and careful reads."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_wm.errors import UnsupportedInput
from dicom_wm.fileio import atomic_write_bytes, atomic_write_dataset, read_dataset, sha256_file


def test_write_bytes_replaces_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(b"one", target)
    atomic_write_bytes(b"two", target)
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_new_file_mode_follows_umask_and_existing_mode_is_kept(tmp_path: Path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(b"x", tmp_path / "new")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o640
    (tmp_path / "new").chmod(0o604)
    atomic_write_bytes(b"y", tmp_path / "new")
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o604
    atomic_write_bytes(b"z", tmp_path / "secret", mode=0o600)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600


def test_failed_dataset_write_leaves_target_untouched(tmp_path: Path):
    target = tmp_path / "out.dcm"
    target.write_bytes(b"old content")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.file_meta.TransferSyntaxUID  # pydicom cannot write this
    with pytest.raises(Exception):
        atomic_write_dataset(ds, target)
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.dcm"]


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch):
    target = tmp_path / "out.bin"

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(b"data", target)
    assert list(tmp_path.iterdir()) == []


def test_dataset_round_trip_and_sha(tmp_path: Path):
    src = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(src)
    target = tmp_path / "ct.dcm"
    atomic_write_dataset(ds, target)
    back = read_dataset(target)
    assert back == ds
    assert back.pixel_array.tolist() == ds.pixel_array.tolist()
    assert sha256_file(target) == hashlib.sha256(target.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"hello, not dicom\n" * 20, "not a DICOM file"),
        (b"", "not a DICOM file"),
    ],
)
def test_read_rejects_non_dicom(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "x.dcm"
    path.write_bytes(content)
    with pytest.raises(UnsupportedInput, match=message):
        read_dataset(path)


@pytest.mark.parametrize("keep", [300, 1000, -1000, -1])
def test_read_rejects_truncated_file(tmp_path: Path, keep: int):
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:keep])
    with pytest.raises(UnsupportedInput, match="truncated"):
        read_dataset(path)


def test_read_directory_and_missing_raise_oserror(tmp_path: Path):
    with pytest.raises(IsADirectoryError):
        read_dataset(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path / "missing.dcm")
