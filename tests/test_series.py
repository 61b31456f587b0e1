"""Series-level verification (dicom_wm.series, issue #7 item 2): statuses per
instance, instances missing from and added to a series, with and without a
provenance database."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from dicom_wm.db.models import Base, Instance, InstanceState, utcnow
from dicom_wm.fileio import atomic_write_dataset
from dicom_wm.keys import KeyStore
from dicom_wm.series import Provenance, archived_series_paths, verify_series
from dicom_wm.waveform import embed_waveform, read_groups, restore_waveform, write_group
from dicom_wm.watermark import VerifyStatus, embed_dataset
from waveform_support import ecg_dataset

KEYS = KeyStore.in_memory({"ktest0001": b"\x11" * 32}, "ktest0001")
SERIES = "1.2.826.0.1.3680043.8.498.7.1"
STUDY = "1.2.826.0.1.3680043.8.498.7"


def _instance(number: int, series: str = SERIES) -> Dataset:
    ds = ecg_dataset()
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    return ds


@pytest.fixture(scope="module")
def series() -> list[tuple[Dataset, str]]:
    """Five watermarked instances (InstanceNumber 1..5) and their record UUIDs."""
    out = []
    for k in range(1, 6):
        result = embed_waveform(_instance(k), KEYS)
        out.append((result.dataset, result.record_uuid))
    return out


def _write(directory: Path, datasets: list[Dataset]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.InstanceNumber:03d}_{ds.SOPInstanceUID[-8:]}.dcm"
        atomic_write_dataset(ds, path)
        paths.append(path)
    return paths


def test_complete_series_is_ok(series, tmp_path):
    _write(tmp_path / "s", [ds for ds, _ in series])
    report = verify_series([tmp_path / "s"], KEYS)
    assert report.ok
    assert report.series_instance_uid == SERIES
    assert [i.status for i in report.instances] == [VerifyStatus.AUTHENTIC] * 5
    assert [i.instance_number for i in report.instances] == [1, 2, 3, 4, 5]
    assert report.missing == [] and report.added == [] and report.duplicates == []


def test_removed_and_foreign_instances_are_reported(series, tmp_path):
    kept = [ds for ds, _ in series if ds.InstanceNumber != 3]
    foreign = embed_waveform(_instance(3, series="1.2.826.0.1.3680043.8.498.99"), KEYS).dataset
    paths = _write(tmp_path / "s", [*kept, foreign])
    (tmp_path / "s" / "notes.txt").write_text("not DICOM")
    report = verify_series([tmp_path / "s"], KEYS)
    assert not report.ok
    assert report.series_instance_uid == SERIES
    assert [(m.reason, m.instance_number) for m in report.missing] == [("instance_number_gap", 3)]
    assert [a.sop_instance_uid for a in report.added] == [foreign.SOPInstanceUID]
    assert "Series Instance UID" in report.added[0].added_reason
    # The foreign instance itself is authentic (it is ours, of another series).
    assert report.added[0].status is VerifyStatus.AUTHENTIC
    unreadable = [i for i in report.instances if i.source.endswith("notes.txt")]
    assert [i.status for i in unreadable] == [VerifyStatus.UNSUPPORTED]
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["missing"] == [{"reason": "instance_number_gap", "instance_number": 3, "sop_instance_uid": None}]
    assert doc["added"] == [str(p) for p in paths if foreign.SOPInstanceUID[-8:] in p.name]
    assert doc["counts"] == {"authentic": 5, "unsupported": 1}


def test_unwatermarked_instance_in_the_series_is_added(series):
    intruder = _instance(6)  # claims the series, never went through the archive
    report = verify_series([*(ds for ds, _ in series), intruder], KEYS)
    assert [a.sop_instance_uid for a in report.added] == [intruder.SOPInstanceUID]
    assert report.added[0].status is VerifyStatus.NOT_WATERMARKED
    assert report.missing == []
    assert [i.source for i in report.instances][-1] == "dataset 5"


def test_tampered_and_duplicate_instances(series):
    bad = copy.deepcopy(series[1][0])
    g = read_groups(bad)[0]
    domain = g.domain.copy()
    domain[4, 5000] += 1
    write_group(bad, g, domain)
    report = verify_series([series[0][0], bad, series[2][0], series[2][0], series[3][0], series[4][0]], KEYS)
    assert [i.status for i in report.instances].count(VerifyStatus.TAMPERED) == 1
    tampered = next(i for i in report.instances if i.status is VerifyStatus.TAMPERED)
    assert [0, 4, 4096, 5120] in tampered.tampered_tiles
    assert [d.sop_instance_uid for d in report.duplicates] == [series[2][0].SOPInstanceUID]
    assert report.missing == [] and report.added == []
    assert not report.ok


def _row(ds: Dataset, record_uuid: str | None, state: InstanceState = InstanceState.WATERMARKED, path: str | None = None):
    now = utcnow()
    return Instance(
        sop_instance_uid=ds.SOPInstanceUID, version=1, is_current=True, sop_class_uid=ds.SOPClassUID,
        study_instance_uid=ds.StudyInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
        instance_number=int(ds.InstanceNumber), received_at=now, updated_at=now,
        received_transfer_syntax_uid="1.2.840.10008.1.2.1", received_size=1, received_sha256="0" * 64,
        state=state, attempts=1, record_uuid=record_uuid, archive_path=path,
    )


@pytest.fixture
def session():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


def test_provenance_decides_missing_and_added(series, session, tmp_path):
    for ds, record in series:
        session.add(_row(ds, record, path=f"archive/{ds.InstanceNumber}.dcm"))
    old = _row(_instance(9), None)  # an older version of another instance: not current
    old.is_current = False
    session.add(old)
    session.commit()
    # The last instance is gone (no gap shows it), one was restored and
    # watermarked again under a new record, and an instance nobody archived
    # claims the series.
    present = [ds for ds, _ in series[:4]]
    substitute = embed_waveform(restore_waveform(series[2][0], KEYS).dataset, KEYS).dataset
    intruder = embed_waveform(_instance(7), KEYS).dataset
    report = verify_series([present[0], present[1], substitute, present[3], intruder], KEYS, session=session)
    assert report.provenance_checked
    assert [(m.reason, m.instance_number, m.sop_instance_uid) for m in report.missing] == [
        ("in_provenance", 5, series[4][0].SOPInstanceUID)
    ]
    assert [a.sop_instance_uid for a in report.added] == [intruder.SOPInstanceUID]
    assert report.added[0].provenance is Provenance.NOT_IN_PROVENANCE
    by_uid = {i.sop_instance_uid: i for i in report.instances}
    assert by_uid[substitute.SOPInstanceUID].provenance is Provenance.RECORD_MISMATCH
    assert by_uid[present[0].SOPInstanceUID].provenance is Provenance.MATCH
    assert not report.ok
    # Without the database, neither the end of the series nor the substitute shows.
    plain = verify_series([present[0], present[1], substitute, present[3]], KEYS)
    assert plain.ok
    paths = archived_series_paths(session, SERIES, tmp_path)
    assert paths == [tmp_path / "archive" / f"{k}.dcm" for k in range(1, 6)]


def test_images_and_waveforms_mix(series):
    """Image instances go through the image verifier."""
    rng = np.random.default_rng(3)
    image = Dataset()
    image.file_meta = copy.deepcopy(series[0][0].file_meta)
    image.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    image.SOPInstanceUID = generate_uid()
    image.StudyInstanceUID, image.SeriesInstanceUID, image.InstanceNumber = STUDY, SERIES, 6
    image.Rows = image.Columns = 256
    image.SamplesPerPixel, image.PhotometricInterpretation = 1, "MONOCHROME2"
    image.BitsAllocated, image.BitsStored, image.HighBit, image.PixelRepresentation = 16, 12, 11, 0
    yy, xx = np.mgrid[0:256, 0:256]
    pixels = (1000 + 3 * xx + 2 * yy + rng.integers(0, 3, (256, 256))).astype("<u2")
    image.PixelData = pixels.tobytes()
    wm_image = embed_dataset(image, KEYS).dataset
    report = verify_series([*(ds for ds, _ in series), wm_image], KEYS)
    assert report.ok, report.to_dict()
    assert [i.instance_number for i in report.instances] == [1, 2, 3, 4, 5, 6]
