"""Query/retrieve end to end: ``dicom-wm serve`` as a subprocess holding a
small archive (three patients, four studies), real DCMTK and pynetdicom
clients, DCMTK storescp and a pynetdicom Storage SCP as move destinations.

The module shares one server; the tamper test changes an archived file and
therefore runs last and only touches its own study.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from sqlalchemy import select

from dicom_wm.db import Event, Instance, InstanceState, get_sessionmaker
from dicom_wm.keys import KeyStore
from dicom_wm.payload.block import TILE
from dicom_wm.watermark import VerifyStatus, verify_dataset
from ingest_support import ServiceProcess, dicom_wm_command, free_port, send_with_pynetdicom, wait_for_echo, wait_until
from qr_support import (
    DcmtkStoreSCP,
    PynetStorageSCP,
    QRFile,
    assert_same_instance,
    build_qr_corpus,
    dcmtk,
    dcmtk_env,
    failed_uids,
    find,
    get,
    identifier,
    move,
    tile_of,
    write_archive_copy,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.slow]

if dcmtk("movescu") is None or dcmtk("storescp") is None:  # pragma: no cover - environment
    pytest.skip("DCMTK command-line tools are not installed", allow_module_level=True)


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(dicom_wm_command() + [*args, "--data-dir", str(data_dir)], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("qr")
    files = build_qr_corpus(root / "in")
    data_dir = root / "data"
    port = free_port()
    started = datetime.now(UTC)
    server = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir), "--workers", "1"],
        root / "serve.log",
        env={"DICOM_WM_EGRESS_WORKERS": "1", "DICOM_WM_LOG_LEVEL": "INFO"},
    )
    dcmtk_scp = pyscp = None
    try:
        wait_for_echo(port, timeout=120, proc=server.proc)
        assert send_with_pynetdicom(port, [f.path for f in files]) == [0] * len(files)
        sessions = get_sessionmaker(f"sqlite:///{(data_dir / 'dicom-wm.sqlite3').resolve()}")

        def all_final() -> bool:
            with sessions() as s:
                states = s.scalars(select(Instance.state)).all()
            return len(states) == len(files) and all(
                st in (InstanceState.WATERMARKED, InstanceState.FAILED, InstanceState.SKIPPED) for st in states
            )

        wait_until(all_final, 600, interval=0.5, what="every instance in a final state")
        dcmtk_scp = DcmtkStoreSCP(root / "storescp", "DCMTKWM")
        pyscp = PynetStorageSCP("PYWM")
        for args in (
            ("DCMTKWM", str(dcmtk_scp.port)),
            ("DCMTKORIG", str(dcmtk_scp.port), "--policy", "original"),
            ("PYWM", str(pyscp.port)),
            ("PYORIG", str(pyscp.port), "--policy", "original"),
            ("GETORIG", "1", "--policy", "original"),  # C-GET requester from 127.0.0.1
        ):
            out = _cli(data_dir, "destinations", "add", args[0], "127.0.0.1", *args[1:])
            assert out.returncode == 0, out.stderr
        out = _cli(data_dir, "destinations", "add", "GETSPOOF", "192.0.2.7", "104", "--policy", "original")
        assert out.returncode == 0, out.stderr
        yield SimpleNamespace(
            port=port, root=root, files=files, data_dir=data_dir, sessions=sessions, server=server,
            dcmtk=dcmtk_scp, pyscp=pyscp, keys=KeyStore.load(data_dir / "keys.json"), started=started,
        )
    finally:
        if dcmtk_scp is not None:
            dcmtk_scp.stop()
        if pyscp is not None:
            pyscp.stop()
        server.stop()


def _study(files: list[QRFile], accession: str) -> list[QRFile]:
    return [f for f in files if f.accession == accession]


def _uid(files: list[QRFile], accession: str) -> str:
    return _study(files, accession)[0].study_uid


# -- C-FIND ------------------------------------------------------------------------------------


def _findscu(archive, model: str, keys: list[str], out: Path) -> tuple[subprocess.CompletedProcess[str], list[pydicom.Dataset]]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    cmd = [dcmtk("findscu"), "-v", "-aet", "FINDSCU", "-aec", "DICOMWM", model, "-X", "-od", str(out)]
    for k in keys:
        cmd += ["-k", k]
    proc = subprocess.run([*cmd, "127.0.0.1", str(archive.port)], capture_output=True, text=True, timeout=120,
                          env=dcmtk_env())
    return proc, [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _find_cases(files: list[QRFile]):
    """(model flag, keys, unique key returned, expected values) for DCMTK findscu."""
    a1, a2, b1, c1 = (_uid(files, acc) for acc in ("ACC-A1", "ACC-A2", "ACC-B1", "ACC-C1"))
    a1_files = _study(files, "ACC-A1")
    ct = [f for f in a1_files if f.modality == "CT"]
    mr_series = next(f.series_uid for f in a1_files if f.modality == "MR")
    a2_series = {f.series_uid for f in _study(files, "ACC-A2")}
    return [
        # Patient Root, every level
        ("-P", ["QueryRetrieveLevel=PATIENT", "PatientName=*a*", "PatientID"], "PatientID", {"QR-A", "QR-C"}),
        ("-P", ["QueryRetrieveLevel=PATIENT", "PatientBirthDate=19700101-19991231", "PatientID"], "PatientID",
         {"QR-B", "QR-C"}),
        ("-P", ["QueryRetrieveLevel=STUDY", "PatientID=QR-A", "StudyDate=20250101-", "StudyInstanceUID"],
         "StudyInstanceUID", {a2}),
        ("-P", ["QueryRetrieveLevel=SERIES", "PatientID=QR-A", f"StudyInstanceUID={a1}", "Modality=M?",
                "SeriesInstanceUID"], "SeriesInstanceUID", {mr_series}),
        ("-P", ["QueryRetrieveLevel=IMAGE", "PatientID=QR-A", f"StudyInstanceUID={a1}", f"SeriesInstanceUID={ct[0].series_uid}",
                f"SOPInstanceUID={ct[0].sop_uid}\\{ct[2].sop_uid}"], "SOPInstanceUID", {ct[0].sop_uid, ct[2].sop_uid}),
        # Study Root, every level
        ("-S", ["QueryRetrieveLevel=STUDY", "StudyDate=20240101-20251231", "StudyInstanceUID"], "StudyInstanceUID",
         {a1, a2, b1}),
        ("-S", ["QueryRetrieveLevel=STUDY", "AccessionNumber=ACC-?1", "StudyInstanceUID"], "StudyInstanceUID",
         {a1, b1, c1}),
        ("-S", ["QueryRetrieveLevel=STUDY", "StudyTime=-1200", "StudyInstanceUID"], "StudyInstanceUID", {a1, c1}),
        ("-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a1}\\{c1}"], "StudyInstanceUID", {a1, c1}),
        ("-S", ["QueryRetrieveLevel=STUDY", "ModalitiesInStudy=US", "StudyInstanceUID"], "StudyInstanceUID", {a2}),
        ("-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={a2}", "SeriesDescription=*", "SeriesInstanceUID"],
         "SeriesInstanceUID", a2_series),
        ("-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={b1}", "Modality=SR", "SeriesInstanceUID"],
         "SeriesInstanceUID", {f.series_uid for f in _study(files, "ACC-B1") if f.modality == "SR"}),
        ("-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={a1}", f"SeriesInstanceUID={mr_series}", "InstanceNumber",
                "SOPInstanceUID"], "SOPInstanceUID", {f.sop_uid for f in a1_files if f.modality == "MR"}),
    ]


def test_findscu_matches_exactly_at_every_level_of_both_models(archive) -> None:
    for i, (model, keys, unique, expected) in enumerate(_find_cases(archive.files)):
        proc, responses = _findscu(archive, model, keys, archive.root / "find" / str(i))
        assert proc.returncode == 0, (keys, proc.stderr)
        got = {str(r.get(unique, "")) for r in responses}
        assert got == expected, (model, keys)
        assert len(responses) == len(expected), (model, keys)  # one response per entity
        for r in responses:
            assert r.QueryRetrieveLevel == keys[0].split("=")[1] and r.RetrieveAETitle == "DICOMWM"


def test_findscu_refuses_a_bad_identifier_with_a900(archive) -> None:
    for model, keys in (
        ("-S", ["QueryRetrieveLevel=PATIENT", "PatientID"]),  # no PATIENT level in Study Root
        ("-P", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"]),  # Patient ID missing above STUDY
        ("-S", ["QueryRetrieveLevel=STUDY", "StudyDate=2024-01-15"]),  # not a DA
        ("-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.*"]),  # wildcard in a UID
    ):
        proc, responses = _findscu(archive, model, keys, archive.root / "find" / "bad")
        text = (proc.stdout + proc.stderr).lower()
        assert responses == [] and "final find response (error: datasetdoesnotmatchsopclass)" in text, (keys, text)


def test_find_on_a_model_we_do_not_serve_is_refused_0122(archive) -> None:
    """Modality Worklist: the storage service's any-SOP-class acceptance lets
    its context through; the C-FIND is refused as not supported (it was
    0xC0FF with a traceback), and the service keeps answering."""
    from pynetdicom import AE

    mwl = "1.2.840.10008.5.1.4.31"
    ae = AE(ae_title="WLSCU")
    ae.add_requested_context(mwl)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="DICOMWM")
    assert assoc.is_established
    try:
        statuses = [int(status.Status) for status, _ in assoc.send_c_find(identifier("PATIENT", PatientName=""), mwl)]
    finally:
        assoc.release()
    assert statuses == [0x0122]
    assert "unexpected error" not in archive.server.log_text()
    with archive.sessions() as s:  # audited as every C-FIND is
        (event,) = [e for e in s.scalars(select(Event).where(Event.kind == "query")) if e.actor == "WLSCU"]
    assert event.details["model"] == mwl and "UnsupportedSOPClass" in event.details["error"]
    final, _ = find(archive.port, identifier("STUDY", StudyInstanceUID=""))
    assert final == 0x0000


def test_pynetdicom_find_returns_the_requested_keys(archive) -> None:
    files = archive.files
    a1 = _uid(files, "ACC-A1")
    ident = identifier(
        "STUDY", StudyInstanceUID=a1, PatientName="", PatientID="", StudyDate="", StudyTime="", AccessionNumber="",
        ModalitiesInStudy="", NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="", InstitutionName="",
        ProcedureCodeSequence=[],
    )
    status, responses = find(archive.port, ident)
    assert status == 0x0000 and len(responses) == 1
    r = responses[0]
    assert (str(r.PatientName), r.PatientID, r.StudyDate, r.StudyTime, r.AccessionNumber) == (
        "Alpha^Anna", "QR-A", "20240115", "083000", "ACC-A1")
    assert list(r.ModalitiesInStudy) == ["CT", "MR"]
    assert int(r.NumberOfStudyRelatedSeries) == 2 and int(r.NumberOfStudyRelatedInstances) == 6
    assert "InstitutionName" in r and not r.InstitutionName  # not supported: returned empty
    assert "ProcedureCodeSequence" in r and len(r.ProcedureCodeSequence) == 0  # sequence key ignored

    # PN matching is case-insensitive and answered in UTF-8
    status, responses = find(archive.port, identifier("PATIENT", SpecificCharacterSet="ISO_IR 192",
                                                      PatientName="müller*", PatientID="",
                                                      NumberOfPatientRelatedInstances=""), model="P")
    assert status == 0x0000 and [r.PatientID for r in responses] == ["QR-B"]
    assert str(responses[0].PatientName) == "Müller^Jörg" and responses[0].SpecificCharacterSet == "ISO_IR 192"
    assert int(responses[0].NumberOfPatientRelatedInstances) == 3

    status, responses = find(archive.port, identifier("SERIES", StudyInstanceUID=a1), model="S")
    assert status == 0x0000 and len(responses) == 2
    status, responses = find(archive.port, identifier("SERIES", Modality="CT"), model="S")  # no Study UID
    assert status == 0xA900 and responses == []

    with archive.sessions() as s:
        queries = s.scalars(select(Event).where(Event.kind == "query", Event.actor == "FINDSCU")).all()
    assert len(queries) >= 4
    assert any(q.details.get("matches") == 1 and q.details["keys"].get("StudyInstanceUID") == a1 for q in queries)
    assert any("error" in q.details and q.details.get("level") == "SERIES" for q in queries)


# -- C-MOVE ------------------------------------------------------------------------------------


def _movescu(archive, destination: str, model: str, keys: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [dcmtk("movescu"), "-v", "-aet", "MOVESCU", "-aec", "DICOMWM", "-aem", destination, model]
    for k in keys:
        cmd += ["-k", k]
    return subprocess.run([*cmd, "127.0.0.1", str(archive.port)], capture_output=True, text=True, timeout=300,
                          env=dcmtk_env())


def _row(archive, sop_uid: str) -> Instance:
    with archive.sessions() as s:
        return s.scalars(select(Instance).where(Instance.sop_instance_uid == sop_uid)).one()


def test_movescu_to_storescp_watermarked_instances_verify_authentic(archive) -> None:
    archive.dcmtk.clear()
    study = _study(archive.files, "ACC-A1") + _study(archive.files, "ACC-A2")
    for acc in ("ACC-A1", "ACC-A2"):
        proc = _movescu(archive, "DCMTKWM", "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={_uid(archive.files, acc)}"])
        assert proc.returncode == 0, proc.stderr
    received = archive.dcmtk.received()
    assert set(received) == {f.sop_uid for f in study}
    for f in study:
        check = verify_dataset(received[f.sop_uid], archive.keys)
        assert check.status is VerifyStatus.AUTHENTIC, (f.source, check.error)
        row = _row(archive, f.sop_uid)
        assert check.record_uuid == row.record_uuid and check.original_sample_sha256 == row.original_sample_sha256


def test_movescu_original_policy_gives_back_exactly_what_was_sent_in(archive) -> None:
    """Also the FAILED JPEG 2000 instance, stored as received, which storescp
    (uncompressed only) gets decoded, and the SKIPPED SR."""
    archive.dcmtk.clear()
    study = [f for f in archive.files if f.patient_id in ("QR-A", "QR-B")]
    proc = _movescu(archive, "DCMTKORIG", "-P", ["QueryRetrieveLevel=PATIENT", "PatientID=QR-A"])
    assert proc.returncode == 0, proc.stderr
    proc = _movescu(archive, "DCMTKORIG", "-P", ["QueryRetrieveLevel=PATIENT", "PatientID=QR-B"])
    assert proc.returncode == 0, proc.stderr
    received = archive.dcmtk.received()
    assert set(received) == {f.sop_uid for f in study}
    for f in study:
        assert_same_instance(f.path, received[f.sop_uid], decoded_photometric=f.decoded_photometric)
        if f.expected_state == "WATERMARKED":
            assert verify_dataset(received[f.sop_uid], archive.keys).status is VerifyStatus.NOT_WATERMARKED
    j2k = next(f for f in study if f.source == "MR_small_jp2klossless.dcm")
    assert received[j2k.sop_uid].file_meta.TransferSyntaxUID != pydicom.uid.JPEG2000Lossless
    with archive.sessions() as s:
        sent = s.scalars(select(Event).where(Event.kind == "sent", Event.sop_instance_uid == j2k.sop_uid)).all()
    assert any(e.details.get("converted_to") and e.details["destination"] == "DCMTKORIG" for e in sent)


def test_pynetdicom_move_original_element_and_sample_exact(archive) -> None:
    archive.pyscp.clear()
    study = [f for f in archive.files if f.patient_id != "QR-C"]
    for acc in ("ACC-A1", "ACC-A2", "ACC-B1"):
        final = move(archive.port, "PYORIG", identifier("STUDY", StudyInstanceUID=_uid(archive.files, acc)))
        n = len(_study(archive.files, acc))
        assert (final.Status, final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0, n, 0)
    assert set(archive.pyscp.received) == {f.sop_uid for f in study}
    for f in study:
        ds = archive.pyscp.received[f.sop_uid]
        assert_same_instance(f.path, ds, decoded_photometric=f.decoded_photometric)
    j2k = next(f for f in study if f.source == "MR_small_jp2klossless.dcm")  # stored as received, peer takes J2K
    assert archive.pyscp.received[j2k.sop_uid].file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    with archive.sessions() as s:
        events = s.scalars(select(Event).where(Event.kind == "sent", Event.actor == "MOVESCU")).all()
    mine = [e for e in events if e.details["destination"] == "PYORIG"]
    assert len(mine) == len(study) and all(e.details["result"] == "sent" and e.details["policy"] == "original"
                                           for e in mine)
    assert {e.details["verification"] for e in mine} == {"authentic", "hash_verified"}


def test_movescu_to_the_pynetdicom_scp_gets_originals_in_their_stored_syntax(archive) -> None:
    """This peer takes JPEG 2000: the FAILED one goes as stored; native ones in
    whichever native encoding the peer chose."""
    archive.pyscp.clear()
    b1 = _study(archive.files, "ACC-B1")
    proc = _movescu(archive, "PYORIG", "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={b1[0].study_uid}"])
    assert proc.returncode == 0, proc.stderr
    assert "Final Move Response (Success)" in proc.stdout + proc.stderr
    assert set(archive.pyscp.received) == {f.sop_uid for f in b1}
    for f in b1:
        assert_same_instance(f.path, archive.pyscp.received[f.sop_uid])
        got, stored = (archive.pyscp.received[f.sop_uid].file_meta.TransferSyntaxUID,
                       pydicom.dcmread(f.path).file_meta.TransferSyntaxUID)
        assert got == stored if stored.is_compressed else not got.is_compressed


def test_series_and_image_level_moves_in_the_patient_root_model(archive) -> None:
    archive.pyscp.clear()
    a1 = _study(archive.files, "ACC-A1")
    mr = [f for f in a1 if f.modality == "MR"]
    final = move(archive.port, "PYWM", identifier("SERIES", PatientID="QR-A", StudyInstanceUID=a1[0].study_uid,
                                                  SeriesInstanceUID=mr[0].series_uid), model="P")
    assert final.Status == 0 and final.NumberOfCompletedSuboperations == len(mr)
    final = move(archive.port, "PYWM", identifier("IMAGE", PatientID="QR-A", StudyInstanceUID=a1[0].study_uid,
                                                  SeriesInstanceUID=mr[0].series_uid,
                                                  SOPInstanceUID=[mr[0].sop_uid, mr[1].sop_uid]), model="P")
    assert final.Status == 0 and final.NumberOfCompletedSuboperations == 2
    assert set(archive.pyscp.received) == {f.sop_uid for f in mr}
    for ds in archive.pyscp.received.values():
        assert verify_dataset(ds, archive.keys).status is VerifyStatus.AUTHENTIC


def test_unknown_destination_is_a801(archive) -> None:
    final = move(archive.port, "NOSUCHAE", identifier("STUDY", StudyInstanceUID=_uid(archive.files, "ACC-A1")))
    assert final.Status == 0xA801
    proc = _movescu(archive, "NOSUCHAE", "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={_uid(archive.files, 'ACC-A1')}"])
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in proc.stdout + proc.stderr
    refused = _refusals(archive, "NOSUCHAE")
    assert len(refused) == 2 and all(e.details["status"] == "0xA801" and e.details["service"] == "C-MOVE"
                                     for e in refused)


def _refusals(archive, destination: str) -> list[Event]:
    with archive.sessions() as s:
        return [e for e in s.scalars(select(Event).where(Event.kind == "retrieve_refused"))
                if e.details["destination"] == destination]


def test_bad_move_identifier_is_a900_and_nothing_is_sent(archive) -> None:
    archive.pyscp.clear()
    final = move(archive.port, "PYWM", identifier("SERIES", SeriesInstanceUID=archive.files[0].series_uid))
    assert final.Status == 0xA900 and final.NumberOfCompletedSuboperations == 0
    final = move(archive.port, "PYWM", identifier("STUDY"))  # retrieve needs the Study Instance UID
    assert final.Status == 0xA900
    assert archive.pyscp.received == {}
    refused = _refusals(archive, "PYWM")  # a refusal leaves an audit line, as a refused C-FIND does
    assert [e.details["status"] for e in refused] == ["0xA900", "0xA900"]
    assert "StudyInstanceUID" in refused[1].details["reason"] and refused[1].actor == "MOVESCU"


# -- C-GET -------------------------------------------------------------------------------------


def test_getscu_gets_verified_watermarked_instances(archive) -> None:
    out = archive.root / "getscu"
    out.mkdir()
    a1 = _study(archive.files, "ACC-A1")
    ct = [f for f in a1 if f.modality == "CT"]
    cmd = [dcmtk("getscu"), "-aet", "GETSCU", "-aec", "DICOMWM", "-S", "-od", str(out),
           "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={ct[0].study_uid}",
           "-k", f"SeriesInstanceUID={ct[0].series_uid}", "127.0.0.1", str(archive.port)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dcmtk_env())
    assert proc.returncode == 0, proc.stderr
    got = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in out.iterdir() if p.is_file())}
    assert set(got) == {f.sop_uid for f in ct}
    for ds in got.values():
        assert verify_dataset(ds, archive.keys).status is VerifyStatus.AUTHENTIC


def test_pynetdicom_get_policy_comes_from_the_requesters_row(archive) -> None:
    a2 = _study(archive.files, "ACC-A2")
    classes = {f.sop_class for f in a2}
    final, received = get(archive.port, identifier("STUDY", StudyInstanceUID=a2[0].study_uid), classes,
                          calling="GETORIG")
    assert final.Status == 0 and final.NumberOfCompletedSuboperations == len(a2)
    for f in a2:
        assert_same_instance(f.path, received[f.sop_uid], decoded_photometric=f.decoded_photometric)
    # same AE title policy "original", but registered for another host: watermarked only
    final, received = get(archive.port, identifier("STUDY", StudyInstanceUID=a2[0].study_uid), classes,
                          calling="GETSPOOF")
    assert final.Status == 0 and set(received) == {f.sop_uid for f in a2}
    for ds in received.values():
        assert verify_dataset(ds, archive.keys).status is VerifyStatus.AUTHENTIC
    with archive.sessions() as s:
        spoof = s.scalars(select(Event).where(Event.kind == "sent", Event.actor == "GETSPOOF")).all()
    assert spoof and all(e.details["policy"] == "watermarked" and "lowered" in e.details["note"] for e in spoof)


def test_get_without_a_storage_context_fails_each_sub_operation(archive) -> None:
    a1 = _study(archive.files, "ACC-A1")
    final, received = get(archive.port, identifier("STUDY", StudyInstanceUID=a1[0].study_uid),
                          {"1.2.840.10008.5.1.4.1.1.2"}, calling="GETCT")  # CT only: MR has no context
    n_ct = sum(f.modality == "CT" for f in a1)
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (n_ct, len(a1) - n_ct)
    assert set(failed_uids(final)) == {f.sop_uid for f in a1 if f.modality != "CT"}
    assert len(received) == n_ct


# -- audit and studies ---------------------------------------------------------------------------


def test_studies_and_audit_commands(archive) -> None:
    out = _cli(archive.data_dir, "studies", "--json")
    assert out.returncode == 0, out.stderr
    studies = {s["accession_number"]: s for s in map(json.loads, out.stdout.splitlines())}
    assert studies["ACC-A1"]["states"]["WATERMARKED"] == 6 and studies["ACC-A1"]["instances"] == 6
    assert studies["ACC-B1"]["states"] == {**{k: 0 for k in studies["ACC-B1"]["states"]}, "FAILED": 2, "SKIPPED": 1}
    assert studies["ACC-A2"]["modalities"] == ["MR", "US"]

    since = archive.started.isoformat()
    out = _cli(archive.data_dir, "audit", "--json", "--since", since)
    assert out.returncode == 0, out.stderr
    kinds = {json.loads(line)["kind"] for line in out.stdout.splitlines()}
    assert {"received", "watermarked", "destination", "query", "sent"} <= kinds
    out = _cli(archive.data_dir, "audit", "--json", "--since", "2999-01-01")
    assert out.returncode == 0 and out.stdout == ""


# -- tampering (last: it changes an archived file) --------------------------------------------------


def test_tampered_file_fails_its_sub_operation_and_the_others_still_arrive(archive) -> None:
    c1 = _study(archive.files, "ACC-C1")
    victim = c1[1]
    row = _row(archive, victim.sop_uid)
    path = archive.data_dir / row.archive_path
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.copy()
    r, c = 300, 200
    arr[r, c] = arr[r, c] + 9 if arr[r, c] < 1000 else arr[r, c] - 9
    ds.PixelData = arr.tobytes()
    write_archive_copy(path, ds)
    expected_tile = tile_of(r, c, TILE, victim.rows, victim.columns)

    for destination in ("PYWM", "PYORIG"):
        archive.pyscp.clear()
        final = move(archive.port, destination, identifier("STUDY", StudyInstanceUID=victim.study_uid))
        assert final.Status == 0xB000, destination
        assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
        assert failed_uids(final) == [victim.sop_uid]
        assert set(archive.pyscp.received) == {f.sop_uid for f in c1 if f is not victim}

    # DCMTK movescu sees the same
    archive.dcmtk.clear()
    proc = _movescu(archive, "DCMTKWM", "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={victim.study_uid}"])
    assert "b000" in (proc.stdout + proc.stderr).lower() or "warning" in (proc.stdout + proc.stderr).lower()
    assert set(archive.dcmtk.received()) == {f.sop_uid for f in c1 if f is not victim}

    # C-GET of the tampered instance alone: every sub-operation failed
    final, received = get(archive.port, identifier("IMAGE", StudyInstanceUID=victim.study_uid,
                                                   SeriesInstanceUID=victim.series_uid, SOPInstanceUID=victim.sop_uid),
                          {victim.sop_class})
    assert final.Status == 0xA702 and received == {}

    with archive.sessions() as s:
        events = s.scalars(select(Event).where(Event.sop_instance_uid == victim.sop_uid)).all()
    tamper = [e for e in events if e.kind == "tamper_detected"]
    assert len(tamper) == 4
    for e in tamper:
        assert e.details["verdict"] == "tampered" and expected_tile in e.details["tiles"]
        assert all(t[0] == 0 for t in e.details["tiles"]) and len(e.details["tiles"]) <= 4
        assert e.details["file_changed"] is True
    sent = [e for e in events if e.kind == "sent"]  # study C was not retrieved before
    assert len(sent) == 4 and all(e.details["result"] == "failed" and e.details["verification"] == "tampered"
                                  for e in sent)
    alerts = [line for line in archive.server.log_text().splitlines() if "SECURITY ALERT" in line]
    assert len(alerts) == 4 and all(victim.sop_uid in line and str(expected_tile) in line for line in alerts)

    out = _cli(archive.data_dir, "audit", "--json", "--kind", "tamper_detected")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 4 and all(line["sop_instance_uid"] == victim.sop_uid for line in lines)


def test_getscu_of_large_radiographs_arrives_whole(archive) -> None:
    """C-GET of 6 MB images: the sender's sendall and pynetdicom's pending
    C-GET responses shared the socket without a lock, and their bytes
    interleaved mid-PDU (getscu: "Unrecognized PDU type"; 1-5 of 8 arrived).
    Last in this module: it adds a study."""
    from ingest_support import source_file
    from pydicom.uid import generate_uid

    src = archive.root / "large"
    src.mkdir()
    study, series = generate_uid(), generate_uid()
    sops = []
    for i in range(5):
        ds = pydicom.dcmread(source_file("RG3_UNCR.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(src / f"{i}.dcm", enforce_file_format=True)
        sops.append(str(ds.SOPInstanceUID))
    assert send_with_pynetdicom(archive.port, sorted(src.iterdir())) == [0] * 5

    def watermarked() -> bool:
        with archive.sessions() as s:
            states = s.scalars(select(Instance.state).where(Instance.study_instance_uid == study)).all()
        return len(states) == 5 and all(st is InstanceState.WATERMARKED for st in states)

    wait_until(watermarked, 600, interval=0.5, what="the radiographs watermarked")
    # the second and third retrieves send back to back (verified-bytes cache):
    # that is when the two writers met
    for run in range(3):
        out = archive.root / f"getscu-large-{run}"
        out.mkdir()
        cmd = [dcmtk("getscu"), "-aet", "GETSCU", "-aec", "DICOMWM", "-S", "-od", str(out),
               "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(archive.port)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dcmtk_env())
        assert proc.returncode == 0, (run, proc.stderr)
        got = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in out.iterdir() if p.is_file())}
        assert set(got) == set(sops), run
        for ds in got.values():
            assert verify_dataset(ds, archive.keys).status is VerifyStatus.AUTHENTIC
