"""Helpers for the query/retrieve tests.

* :func:`build_qr_corpus` writes a small archive's worth of studies (three
  patients, four studies, CT / MR / US / SC / SR, native and JPEG 2000,
  images that carry a watermark and tiny ones that end FAILED) with fresh
  UIDs and known index values, and describes every file.
* :class:`PynetStorageSCP` is a pynetdicom Storage SCP collecting what it
  receives; :class:`DcmtkStoreSCP` runs DCMTK's storescp into a folder.
* :func:`dcmtk` finds a DCMTK tool (pynetdicom installs Python tools with the
  same names that can shadow them on PATH).
* :func:`move` / :func:`get` / :func:`find` are pynetdicom SCUs.
* :func:`assert_same_instance` compares a received instance with the file
  sent in: every element (except group lengths, and Photometric
  Interpretation where decoding changed it) and every stored sample.

Nothing here downloads anything; readiness is polled with deadlines.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import Verification

from dicom_wm.pixels import read_samples
from ingest_support import dcmtk_tool, echo_ok, free_port, source_file, wait_until

__all__ = [
    "QRFile",
    "build_qr_corpus",
    "PynetStorageSCP",
    "DcmtkStoreSCP",
    "dcmtk",
    "move",
    "get",
    "find",
    "assert_same_instance",
    "tile_of",
    "failed_uids",
]


@dataclass(frozen=True)
class QRFile:
    path: Path
    source: str
    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    study_time: str
    accession: str
    study_description: str
    series_uid: str
    series_number: int
    modality: str
    sop_uid: str
    sop_class: str
    instance_number: int
    rows: int
    columns: int
    expected_state: str  # WATERMARKED | FAILED | SKIPPED
    decoded_photometric: bool  # restore gives the decoded photometric interpretation


# patient id, name, birth date, sex, charset,
#   [(study date, time, accession, description, [(modality, description, [(source, copies, state)])])]
LAYOUT: tuple[Any, ...] = (
    ("QR-A", "Alpha^Anna", "19600101", "F", None, (
        ("20240115", "083000", "ACC-A1", "CT CHEST", (
            ("CT", "axial", (("693_UNCR.dcm", 3, "WATERMARKED"),)),
            ("MR", "t1 overlays", (("MR-SIEMENS-DICOM-WithOverlays.dcm", 2, "WATERMARKED"), ("MR2_UNCR.dcm", 1, "WATERMARKED"))),
        )),
        ("20250620", "141500.5", "ACC-A2", "US ABDOMEN", (
            ("US", "colour", (("US1_UNCR.dcm", 1, "WATERMARKED"), ("SC_rgb.dcm", 1, "WATERMARKED"))),
            ("MR", "j2k", (("MR2_J2KR.dcm", 1, "WATERMARKED"), ("US1_J2KR.dcm", 1, "WATERMARKED"))),
        )),
    )),
    ("QR-B", "Müller^Jörg", "19751231", "M", "ISO_IR 192", (
        ("20251201", "2359", "ACC-B1", "MIXED SMALL", (
            ("OT", "too small", (("MR_small_jp2klossless.dcm", 1, "FAILED"), ("CT_small.dcm", 1, "FAILED"))),
            ("SR", "report", (("reportsi.dcm", 1, "SKIPPED"),)),
        )),
    )),
    ("QR-C", "Gamma^Carl", "19900505", "O", None, (
        ("20260301", "101010", "ACC-C1", "TAMPER TARGET", (
            ("CT", "axial", (("693_UNCR.dcm", 3, "WATERMARKED"),)),
        )),
    )),
)

_DECODED_PHOTOMETRIC = {"US1_J2KR.dcm"}  # YBR_RCT in the codestream: restores as RGB


def build_qr_corpus(out_dir: Path) -> list[QRFile]:
    """Write the corpus under ``out_dir`` and describe each file."""
    files: list[QRFile] = []
    for patient_id, name, birth, sex, charset, studies in LAYOUT:
        for study_date, study_time, accession, description, series_list in studies:
            study_uid = generate_uid()
            for series_number, (modality, series_desc, sources) in enumerate(series_list, start=1):
                series_uid = generate_uid()
                number = 0
                for source, copies, state in sources:
                    template = pydicom.dcmread(source_file(source))
                    for _ in range(copies):
                        number += 1
                        ds = copy.deepcopy(template)
                        sop_uid = generate_uid()
                        if charset:
                            ds.SpecificCharacterSet = charset
                        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, name, birth, sex
                        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, sop_uid
                        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
                        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = study_date, study_time, accession
                        ds.StudyDescription, ds.StudyID = description, accession[-2:]
                        ds.ReferringPhysicianName = "Ref^Erring"
                        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, series_number, series_desc
                        ds.InstanceNumber = number
                        path = out_dir / patient_id / accession / f"{series_number}-{number:03d}.dcm"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        ds.save_as(path, enforce_file_format=True)
                        files.append(QRFile(
                            path, source, patient_id, name, study_uid, study_date, study_time, accession, description,
                            series_uid, series_number, modality, sop_uid, str(ds.SOPClassUID), number,
                            int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), state,
                            source in _DECODED_PHOTOMETRIC,
                        ))
    return files


# -- DCMTK ---------------------------------------------------------------------------------


def dcmtk(tool: str) -> str | None:
    """Path of DCMTK's ``tool`` (findscu, movescu, ...), or None."""
    return dcmtk_tool(tool)


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


class DcmtkStoreSCP:
    """DCMTK storescp on a free port, writing into ``folder``."""

    def __init__(self, folder: Path, ae_title: str, *, accept_all: bool = False) -> None:
        exe = dcmtk("storescp")
        if exe is None:
            raise RuntimeError("DCMTK storescp not found")
        self.folder, self.ae_title, self.port = folder, ae_title, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        args = [exe, "-aet", ae_title, "-od", str(folder), "-uf"]  # -uf: file names from SOP Instance UIDs
        if accept_all:
            args.append("+xa")
        self._log = open(folder.parent / f"storescp-{ae_title}.log", "ab")
        self.proc = subprocess.Popen([*args, str(self.port)], stdout=self._log, stderr=subprocess.STDOUT, env=dcmtk_env())

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"storescp exited with {self.proc.returncode}")
            return echo_ok(self.port, ae_title=ae_title)

        wait_until(ready, 30, interval=0.1, what=f"storescp on {self.port}")

    def received(self) -> dict[str, Dataset]:
        out = {}
        for path in self.folder.iterdir():
            if path.is_file() and not path.name.startswith("."):
                ds = pydicom.dcmread(path)
                out[str(ds.SOPInstanceUID)] = ds
        return out

    def clear(self) -> None:
        for path in self.folder.iterdir():
            if path.is_file():
                path.unlink()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


# -- pynetdicom peers ------------------------------------------------------------------------


@dataclass
class PynetStorageSCP:
    """A pynetdicom Storage SCP accepting every storage class in the transfer
    syntaxes it is given (default: whatever is proposed first)."""

    ae_title: str
    transfer_syntaxes: list[str] | None = None
    port: int = field(default_factory=free_port)
    received: dict[str, Dataset] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(Verification)
        for cx in StoragePresentationContexts:
            if self.transfer_syntaxes:
                ae.add_supported_context(cx.abstract_syntax, self.transfer_syntaxes)
            else:
                ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax + _COMPRESSED)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    def clear(self) -> None:
        with self._lock:
            self.received.clear()

    def stop(self) -> None:
        self._server.shutdown()


_COMPRESSED = [
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.5",
]


def failed_uids(final: Dataset) -> list[str]:
    """(0008,0058) Failed SOP Instance UID List of a final response, as a list."""
    value = final.get("FailedSOPInstanceUIDList")
    if value is None or value == "":
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def _scu(calling: str) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    return ae


def find(port: int, identifier: Dataset, *, model: str = "S", calling: str = "FINDSCU") -> tuple[int, list[Dataset]]:
    """C-FIND; (final status, pending identifiers)."""
    sop = {"P": "1.2.840.10008.5.1.4.1.2.1.1", "S": "1.2.840.10008.5.1.4.1.2.2.1"}[model]
    ae = _scu(calling)
    ae.add_requested_context(sop)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMWM")
    assert assoc.is_established
    out: list[Dataset] = []
    final = -1
    try:
        for status, ident in assoc.send_c_find(identifier, sop):
            if status is None:
                raise RuntimeError("C-FIND: no response")
            if status.Status in (0xFF00, 0xFF01):
                out.append(ident)
            else:
                final = int(status.Status)
    finally:
        assoc.release()
    return final, out


def move(port: int, destination: str, identifier: Dataset, *, model: str = "S", calling: str = "MOVESCU") -> Dataset:
    """C-MOVE; the final response's status dataset."""
    sop = {"P": "1.2.840.10008.5.1.4.1.2.1.2", "S": "1.2.840.10008.5.1.4.1.2.2.2"}[model]
    ae = _scu(calling)
    ae.add_requested_context(sop)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMWM")
    assert assoc.is_established
    final: Dataset | None = None
    try:
        for status, ident in assoc.send_c_move(identifier, destination, sop):
            if status is None:
                raise RuntimeError("C-MOVE: no response")
            if status.Status != 0xFF00:
                final = status
                if ident is not None and "FailedSOPInstanceUIDList" in ident:
                    final.FailedSOPInstanceUIDList = ident.FailedSOPInstanceUIDList
    finally:
        assoc.release()
    assert final is not None
    return final


def get(
    port: int, identifier: Dataset, sop_classes: Iterable[str], *, model: str = "S", calling: str = "GETSCU"
) -> tuple[Dataset, dict[str, Dataset]]:
    """C-GET with SCP role for ``sop_classes``; (final status, received by SOP Instance UID)."""
    sop = {"P": "1.2.840.10008.5.1.4.1.2.1.3", "S": "1.2.840.10008.5.1.4.1.2.2.3"}[model]
    received: dict[str, Dataset] = {}

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    ae = _scu(calling)
    ae.add_requested_context(sop)
    roles = []
    for cls in sorted(set(sop_classes)):
        ae.add_requested_context(cls)
        roles.append(build_role(cls, scp_role=True))
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMWM", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    final: Dataset | None = None
    try:
        for status, ident in assoc.send_c_get(identifier, sop):
            if status is None:
                raise RuntimeError("C-GET: no response")
            if status.Status != 0xFF00:
                final = status
                if ident is not None and "FailedSOPInstanceUIDList" in ident:
                    final.FailedSOPInstanceUIDList = ident.FailedSOPInstanceUIDList
    finally:
        assoc.release()
    assert final is not None
    return final, received


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


# -- comparisons ----------------------------------------------------------------------------

# Pixel Data is compared as samples; (FFFC,FFFC) Data Set Trailing Padding
# has no meaning (PS3.5 7.2) and DCMTK's storescp drops it on reception.
_SKIP_ALWAYS = {0x7FE00010, 0xFFFCFFFC}


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, pydicom.sequence.Sequence) or isinstance(b, pydicom.sequence.Sequence):
        return len(a) == len(b) and all(_datasets_equal(x, y, set()) for x, y in zip(a, b, strict=True))
    return a == b


def _datasets_equal(a: Dataset, b: Dataset, skip: set[int]) -> bool:
    tags_a = {int(t) for t in a.keys() if t.element != 0 and int(t) not in skip}
    tags_b = {int(t) for t in b.keys() if t.element != 0 and int(t) not in skip}
    if tags_a != tags_b:
        return False
    return all(_values_equal(a[t].value, b[t].value) for t in tags_a)


def differing_elements(sent: Dataset, received: Dataset, skip: set[int]) -> list[str]:
    """Top-level elements that differ (by tag), for assertion messages."""
    out = []
    tags = {int(t) for t in sent.keys()} | {int(t) for t in received.keys()}
    for t in sorted(tags):
        if (t & 0xFFFF) == 0 or t in skip:
            continue
        if t not in sent or t not in received:
            out.append(f"({t >> 16:04X},{t & 0xFFFF:04X}) only in {'received' if t not in sent else 'sent'}")
        elif not _values_equal(sent[t].value, received[t].value):
            out.append(f"({t >> 16:04X},{t & 0xFFFF:04X}) {sent[t].keyword} differs")
    return out


def assert_same_instance(sent_path: Path, received: Dataset, *, decoded_photometric: bool = False) -> None:
    """``received`` is the instance in ``sent_path``: element-exact (group
    lengths and trailing padding aside; Photometric Interpretation aside
    where decoding changes it) and sample-exact."""
    sent = pydicom.dcmread(sent_path)
    skip = set(_SKIP_ALWAYS)
    if decoded_photometric:
        skip.add(0x00280004)
    diff = differing_elements(sent, received, skip)
    assert not diff, f"{sent_path.name}: {diff}"
    if "PixelData" in sent:
        a, b = read_samples(sent).samples, read_samples(received).samples
        assert a.shape == b.shape and np.array_equal(a, b), f"{sent_path.name}: samples differ"


def tile_of(row: int, col: int, tile: int, rows: int, cols: int, frame: int = 0) -> list[int]:
    r0, c0 = (row // tile) * tile, (col // tile) * tile
    return [frame, r0, c0, min(r0 + tile, rows), min(c0 + tile, cols)]


def write_archive_copy(path: Path, ds: Dataset) -> None:
    """Rewrite an archived file in place, as an attacker with pydicom would."""
    tmp = path.with_suffix(".tamper")
    ds.save_as(tmp, enforce_file_format=True)
    shutil.move(tmp, path)

