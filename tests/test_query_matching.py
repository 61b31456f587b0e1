"""C-FIND matching and the retrieve selection, against the index tables
(SQLite, and PostgreSQL where available), without the network."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from sqlalchemy import create_engine, text

from dicom_wm.db import Instance, InstanceState, get_sessionmaker, migrate, utcnow
from dicom_wm.query import (
    InformationModel,
    InvalidIdentifier,
    Level,
    Service,
    build_response,
    find_matches,
    parse_identifier,
    select_instances,
)
from dicom_wm.query.matching import TextMatcher, normalise_time
from dicom_wm.query.model import ATTRIBUTES
from ingest_support import FreshPostgres, require_services

PR, SR = InformationModel.PATIENT_ROOT, InformationModel.STUDY_ROOT

# (sop, patient id, name, birth, study, date, time, accession, description, series, modality, series no,
#  instance no, state, is_current)
ROWS: tuple[tuple[Any, ...], ...] = (
    ("1.9.1", "P1", "Doe^John", "19500101", "1.2.3.1", "20200101", "0930", "A1", "HEAD CT", "1.5.1", "CT", 1, 1, "WATERMARKED", True),
    ("1.9.2", "P1", "Doe^John", "19500101", "1.2.3.1", "20200101", "0930", "A1", "HEAD CT", "1.5.1", "CT", 1, 2, "WATERMARKED", True),
    ("1.9.3", "P1", "Doe^John", "19500101", "1.2.3.1", "20200101", "0930", "A1", "HEAD CT", "1.5.1", "CT", 1, 3, "QUEUED", True),
    ("1.9.4", "P1", "Doe^John", "19500101", "1.2.3.1", "20200101", "0930", "A1", "HEAD CT", "1.5.2", "MR", 2, 1, "WATERMARKED", True),
    ("1.9.5", "P1", "Doe^John", "19500101", "1.2.3.2", "20210615", "235959.123", "A2", "CHEST", "1.5.3", "CR", 1, 1, "WATERMARKED", True),
    ("1.9.6", "P2", "doe^jane", "19801231", "1.2.3.3", "20221231", "1200", "B1", "Head MR", "1.5.4", "MR", 1, 1, "FAILED", True),
    ("1.9.6", "P2", "doe^jane", "19801231", "1.2.3.3", "20221231", "1200", "B1", "Head MR", "1.5.4", "MR", 1, 1, "WATERMARKED", False),
    ("1.9.7", "P2", "doe^jane", "19801231", "1.2.3.3", "20221231", "1200", "B1", "Head MR", "1.5.4", "SR", 1, 2, "SKIPPED", True),
    ("1.9.8", "P3", "Ünïcode^Name", None, "1.2.3.4", None, None, None, None, "1.5.5", "OT", None, None, "WATERMARKED", True),
    ("1.9.9", None, "Anon", None, "1.2.3.5", "20230101", "080000", "X1", "NO ID", "1.5.6", "CT", 1, 1, "WATERMARKED", True),
)


def _insert(url: str) -> None:
    migrate.upgrade(url)
    sessions = get_sessionmaker(url)
    with sessions() as s, s.begin():
        for i, (sop, pid, name, birth, study, date, time, acc, desc, series, mod, sno, ino, state, current) in enumerate(ROWS):
            now = utcnow()
            s.add(Instance(
                sop_instance_uid=sop, version=1 if current or sop != "1.9.6" else 0, is_current=current,
                patient_id=pid, patient_name=name, patient_birth_date=birth, patient_sex="O",
                study_instance_uid=study, study_date=date, study_time=time, accession_number=acc,
                study_description=desc, referring_physician_name="Ref^A" if study in ("1.2.3.1", "1.2.3.2") else None,
                series_instance_uid=series, modality=mod, series_number=sno, series_description=f"s{series[-1]}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2" if mod == "CT" else "1.2.840.10008.5.1.4.1.1.4",
                instance_number=ino, rows=None if mod == "SR" else 512, columns=None if mod == "SR" else 512,
                received_at=now, updated_at=now, received_transfer_syntax_uid="1.2.840.10008.1.2.1",
                received_size=1, received_sha256=f"{i:064x}", state=InstanceState(state), attempts=0,
                archive_path=f"archive/{sop}.dcm", stored_sha256=f"{i:064x}",
            ))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('qdb') / 'index.sqlite3'}"
        _insert(url)
        yield get_sessionmaker(url)
        return
    require_services()
    with FreshPostgres() as url:
        _insert(url)
        yield get_sessionmaker(url)


def _ident(level: str | None, **keys: Any) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def _with_raw(ds: Dataset, tag: int, vr: str, value: bytes) -> Dataset:
    """``ds`` with an element as it came off the wire (not yet converted)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    return ds


def _find(sessions, model: InformationModel, level: str, **keys: Any) -> list[dict[str, Any]]:
    query = parse_identifier(_ident(level, **keys), model, Service.FIND)
    with sessions() as s:
        return find_matches(s, query)


UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}

CASES: tuple[tuple[InformationModel, str, dict[str, Any], set[Any]], ...] = (
    # Patient Root
    (PR, "PATIENT", {"PatientName": "doe*"}, {"P1", "P2"}),
    (PR, "PATIENT", {"PatientName": "DOE^JOHN"}, {"P1"}),
    (PR, "PATIENT", {"PatientName": "ünï*"}, {"P3"}),
    (PR, "PATIENT", {"PatientID": "P?"}, {"P1", "P2", "P3"}),
    (PR, "PATIENT", {"PatientBirthDate": "-19791231"}, {"P1"}),
    (PR, "PATIENT", {"PatientBirthDate": "19800101-"}, {"P2"}),
    (PR, "PATIENT", {"PatientID": ""}, {"P1", "P2", "P3", None}),
    (PR, "STUDY", {"PatientID": "P1", "StudyDate": "20200101-20201231"}, {"1.2.3.1"}),
    (PR, "STUDY", {"PatientID": "P1", "StudyDate": ""}, {"1.2.3.1", "1.2.3.2"}),
    (PR, "SERIES", {"PatientID": "P1", "StudyInstanceUID": "1.2.3.1", "Modality": "CT"}, {"1.5.1"}),
    (PR, "IMAGE", {"PatientID": "P1", "StudyInstanceUID": "1.2.3.1", "SeriesInstanceUID": "1.5.1",
                   "SOPInstanceUID": ["1.9.1", "1.9.99"]}, {"1.9.1"}),
    (PR, "IMAGE", {"PatientID": "P1", "StudyInstanceUID": "1.2.3.1", "SeriesInstanceUID": "1.5.1",
                   "InstanceNumber": "2"}, {"1.9.2"}),
    # Study Root
    (SR, "STUDY", {"StudyDescription": "*head*"}, set()),  # case-sensitive
    (SR, "STUDY", {"StudyDescription": "*HEAD*"}, {"1.2.3.1"}),
    (SR, "STUDY", {"StudyDescription": "H*"}, {"1.2.3.1", "1.2.3.3"}),
    (SR, "STUDY", {"AccessionNumber": "A?"}, {"1.2.3.1", "1.2.3.2"}),
    (SR, "STUDY", {"AccessionNumber": "A_"}, set()),  # SQL wildcards are literal
    (SR, "STUDY", {"StudyTime": "1200-"}, {"1.2.3.2", "1.2.3.3"}),
    (SR, "STUDY", {"StudyTime": "0900-1000"}, {"1.2.3.1"}),
    (SR, "STUDY", {"StudyTime": "12"}, {"1.2.3.3"}),
    (SR, "STUDY", {"ModalitiesInStudy": "MR"}, {"1.2.3.1", "1.2.3.3"}),
    (SR, "STUDY", {"ModalitiesInStudy": "C?"}, {"1.2.3.1", "1.2.3.2", "1.2.3.5"}),
    (SR, "STUDY", {"ModalitiesInStudy": ["CR", "SR"]}, {"1.2.3.2", "1.2.3.3"}),
    (SR, "STUDY", {"StudyInstanceUID": ["1.2.3.1", "1.2.3.3"]}, {"1.2.3.1", "1.2.3.3"}),
    (SR, "STUDY", {"StudyDate": "20221231"}, {"1.2.3.3"}),
    (SR, "STUDY", {"ReferringPhysicianName": "ref^a"}, {"1.2.3.1", "1.2.3.2"}),
    (SR, "STUDY", {"PatientName": "*"}, {"1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4", "1.2.3.5"}),
    (SR, "STUDY", {"PatientID": "P2", "ProcedureCodeSequence": []}, {"1.2.3.3"}),
    (SR, "SERIES", {"StudyInstanceUID": "1.2.3.3"}, {"1.5.4"}),
    (SR, "SERIES", {"StudyInstanceUID": "1.2.3.1", "SeriesNumber": "2"}, {"1.5.2"}),
    (SR, "SERIES", {"StudyInstanceUID": "1.2.3.1", "StudyDescription": "HEAD CT"}, {"1.5.1", "1.5.2"}),
    (SR, "IMAGE", {"StudyInstanceUID": "1.2.3.3", "SeriesInstanceUID": "1.5.4"}, {"1.9.6", "1.9.7"}),
    (SR, "IMAGE", {"StudyInstanceUID": "1.2.3.1", "SeriesInstanceUID": "1.5.1"}, {"1.9.1", "1.9.2"}),  # 1.9.3 pending
    (SR, "IMAGE", {"StudyInstanceUID": "1.2.3.1", "SeriesInstanceUID": "1.5.1",
                   "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}, set()),
)


@pytest.mark.parametrize(("model", "level", "keys", "expected"), CASES, ids=[f"{c[0].name}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_find_matches_exactly(sessions, model, level, keys, expected) -> None:
    matches = _find(sessions, model, level, **keys)
    assert {m[UNIQUE[level]] for m in matches} == expected
    assert len(matches) == len(expected)  # one answer per entity, old versions and pending rows unseen


def test_keys_with_thousands_of_values(sessions) -> None:
    """A multi-valued key is one SQL IN list (SQLite refused 1000+ OR-ed
    terms: "Expression tree is too large"); many wildcards or date ranges
    are matched in Python."""
    ids = [f"X{i}" for i in range(3000)] + ["P2"]
    assert {m["StudyInstanceUID"] for m in _find(sessions, SR, "STUDY", PatientID=ids)} == {"1.2.3.3"}
    names = [f"nobody{i}*" for i in range(1500)] + ["DOE^J*"]  # case-insensitive, wildcards
    assert {m["PatientID"] for m in _find(sessions, PR, "PATIENT", PatientName=names)} == {"P1", "P2"}
    dates = [f"1900{m:02d}01-1900{m:02d}02" for m in range(1, 13)] * 100 + ["20210615"]
    assert {m["StudyInstanceUID"] for m in _find(sessions, SR, "STUDY", StudyDate="\\".join(dates))} == {"1.2.3.2"}


def test_counts_and_derived_attributes_cover_the_whole_entity(sessions) -> None:
    (p1,) = _find(sessions, PR, "PATIENT", PatientID="P1")
    assert (p1["NumberOfPatientRelatedStudies"], p1["NumberOfPatientRelatedSeries"],
            p1["NumberOfPatientRelatedInstances"]) == (2, 3, 4)
    (s1,) = _find(sessions, SR, "STUDY", ModalitiesInStudy="MR", StudyInstanceUID="1.2.3.1")
    assert s1["ModalitiesInStudy"] == ["CT", "MR"]  # all the study's modalities, not just the matched one
    assert (s1["NumberOfStudyRelatedSeries"], s1["NumberOfStudyRelatedInstances"]) == (2, 3)
    (se,) = _find(sessions, SR, "SERIES", StudyInstanceUID="1.2.3.1", Modality="CT")
    assert se["NumberOfSeriesRelatedInstances"] == 2
    # responses are ordered: studies by date and time
    studies = _find(sessions, SR, "STUDY", StudyDate="")
    dated = [s["StudyDate"] for s in studies if s["StudyDate"]]
    assert dated == sorted(dated)


def test_response_carries_every_requested_key(sessions) -> None:
    ident = _ident("STUDY", StudyInstanceUID="1.2.3.4", PatientName="", StudyDate="", InstitutionName="",
                   ModalitiesInStudy="", NumberOfStudyRelatedInstances="", ReferencedStudySequence=[],
                   InstanceAvailability="")
    query = parse_identifier(ident, SR, Service.FIND)
    with sessions() as s:
        (match,) = find_matches(s, query)
    rsp = build_response(query, match, "DICOMWM")
    assert rsp.QueryRetrieveLevel == "STUDY" and rsp.RetrieveAETitle == "DICOMWM" and rsp.InstanceAvailability == "ONLINE"
    assert str(rsp.PatientName) == "Ünïcode^Name" and rsp.SpecificCharacterSet == "ISO_IR 192"
    assert rsp.StudyDate in ("", None) and rsp.InstitutionName in ("", None)
    assert len(rsp.ReferencedStudySequence) == 0 and rsp.ModalitiesInStudy == "OT"
    assert int(rsp.NumberOfStudyRelatedInstances) == 1
    # unique keys down to the query level are returned even when not asked for
    query = parse_identifier(_ident("IMAGE", PatientID="P1", StudyInstanceUID="1.2.3.2", SeriesInstanceUID="1.5.3"),
                             PR, Service.FIND)
    with sessions() as s:
        (match,) = find_matches(s, query)
    rsp = build_response(query, match, "DICOMWM")
    assert (rsp.PatientID, rsp.StudyInstanceUID, rsp.SeriesInstanceUID, rsp.SOPInstanceUID) == (
        "P1", "1.2.3.2", "1.5.3", "1.9.5")
    assert "SpecificCharacterSet" not in rsp


BAD: tuple[tuple[InformationModel, Service, Dataset, str], ...] = (
    (SR, Service.FIND, _ident(None, PatientID=""), "Query/Retrieve Level"),
    (SR, Service.FIND, _ident("FOO"), "not PATIENT, STUDY"),
    (SR, Service.FIND, _ident("PATIENT"), "no PATIENT level"),
    (PR, Service.FIND, _ident("STUDY", StudyDate=""), "PatientID"),
    (PR, Service.FIND, _ident("STUDY", PatientID="P*"), "single value"),
    (SR, Service.FIND, _ident("SERIES", Modality="CT"), "StudyInstanceUID"),
    (SR, Service.FIND, _ident("SERIES", StudyInstanceUID=["1.2.3.1", "1.2.3.2"]), "single value"),
    (SR, Service.FIND, _ident("STUDY", StudyDate="20201301"), "calendar date"),
    (SR, Service.FIND, _ident("STUDY", StudyDate="2020-2021-2022"), "range"),
    (SR, Service.FIND, _ident("STUDY", StudyDate="-"), "at least one end"),
    (SR, Service.FIND, _ident("STUDY", StudyTime="25"), "not a time"),
    (SR, Service.FIND, _ident("STUDY", StudyTime="12:00"), "not a time"),
    (SR, Service.FIND, _with_raw(_ident("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.3"),
                                 0x00200013, "IS", b"a*"), "InstanceNumber"),
    (SR, Service.FIND, _ident("STUDY", StudyInstanceUID="1.2.*"), "wildcards"),
    (SR, Service.FIND, _ident("STUDY", StudyInstanceUID="01.2"), "not a UID"),
    (SR, Service.MOVE, _ident("STUDY"), "must be given"),
    (SR, Service.MOVE, _ident("STUDY", StudyInstanceUID=""), "must be given"),
    (PR, Service.GET, _ident("PATIENT", PatientID="P*"), "no wildcards"),
    (SR, Service.GET, _ident("SERIES", SeriesInstanceUID="1.5.1"), "StudyInstanceUID"),
)


@pytest.mark.parametrize(("model", "service", "ident", "words"), BAD, ids=[f"bad-{i}" for i in range(len(BAD))])
def test_bad_identifiers_are_refused_naming_the_attribute(model, service, ident, words) -> None:
    with pytest.raises(InvalidIdentifier, match=re.escape(words)) as info:
        parse_identifier(ident, model, service)
    assert all(isinstance(t, int) for t in info.value.offending)


def test_retrieve_selects_visible_instances_and_counts_pending(sessions) -> None:
    query = parse_identifier(_ident("STUDY", StudyInstanceUID="1.2.3.1", StudyDescription="ignored for retrieve"),
                             SR, Service.MOVE)
    assert [c.attribute.keyword for c in query.conditions] == ["StudyInstanceUID"]
    with sessions() as s:
        selection = select_instances(s, query)
    assert [i.sop_instance_uid for i in selection.items] == ["1.9.1", "1.9.2", "1.9.4"]  # series, then instance order
    assert selection.pending == 1
    query = parse_identifier(_ident("IMAGE", StudyInstanceUID="1.2.3.3", SeriesInstanceUID="1.5.4",
                                    SOPInstanceUID=["1.9.6", "1.9.7"]), SR, Service.GET)
    with sessions() as s:
        selection = select_instances(s, query)
    items = {i.sop_instance_uid: i for i in selection.items}
    assert set(items) == {"1.9.6", "1.9.7"} and items["1.9.6"].state is InstanceState.FAILED  # current version only
    query = parse_identifier(_ident("PATIENT", PatientID="P3"), PR, Service.MOVE)
    with sessions() as s:
        assert [i.sop_instance_uid for i in select_instances(s, query).items] == ["1.9.8"]


def test_every_attribute_in_the_table_is_an_index_column() -> None:
    for attribute in ATTRIBUTES.values():
        if attribute.column is not None:
            assert attribute.column in Instance.__table__.columns, attribute.keyword


# -- the matching rules themselves ------------------------------------------------------------


def test_time_normalisation() -> None:
    assert normalise_time("12") == "120000000000"
    assert normalise_time("12", upper=True) == "125959999999"
    assert normalise_time("1230", upper=True) == "123059999999"
    assert normalise_time("123000.5") == "123000500000"
    assert normalise_time("123000.5", upper=True) == "123000599999"
    assert normalise_time("24") is None and normalise_time("12:30") is None and normalise_time("") is None


ALPHABET = "aAbB*?%_\\é"


@settings(max_examples=300, deadline=None)
@given(pattern=st.text(alphabet=ALPHABET, min_size=1, max_size=5), value=st.text(alphabet="aAbB%_\\é", max_size=6),
       ignore_case=st.booleans())
def test_wildcards_match_like_dicom_and_sql_never_loses_a_match(pattern: str, value: str, ignore_case: bool) -> None:
    """Python's rule is the DICOM one; SQLite's prefilter keeps every value it accepts."""
    if pattern == "*":
        return  # universal matching: no matcher
    matcher = TextMatcher((pattern,), ignore_case=ignore_case)
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    expected = re.fullmatch(regex, value, re.DOTALL | (re.IGNORECASE if ignore_case else 0)) is not None
    assert matcher.matches(value) is expected
    engine = _memory_engine()
    from sqlalchemy import column, select, table

    clause = matcher.sql(column("v"))
    if clause is None:
        return
    with engine.connect() as conn:
        conn.execute(text("DELETE FROM t"))
        conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})
        found = conn.execute(select(column("v")).select_from(table("t")).where(clause)).all()
    if expected:
        assert found, (pattern, value)


_ENGINE: list[Any] = []


def _memory_engine() -> Any:
    if not _ENGINE:
        engine = create_engine("sqlite://")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (v TEXT)"))
        _ENGINE.append(engine)
    return _ENGINE[0]


def test_levels_are_ordered() -> None:
    assert [lvl.depth for lvl in Level] == [0, 1, 2, 3]
    assert InformationModel.STUDY_ROOT.levels[0] is Level.STUDY


def test_find_opens_no_file(sessions, monkeypatch: pytest.MonkeyPatch) -> None:
    """C-FIND is answered from the index tables alone."""
    import builtins

    import pydicom

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a file was opened: {args[:1]}")

    with sessions() as s:  # connect first: the database file itself may be opened
        s.execute(text("SELECT 1"))
    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(Path, "read_bytes", refuse)
    monkeypatch.setattr(pydicom, "dcmread", refuse)
    matches = _find(sessions, SR, "IMAGE", StudyInstanceUID="1.2.3.1", SeriesInstanceUID="1.5.2",
                    SOPClassUID="", Rows="", NumberOfFrames="")
    assert [m["SOPInstanceUID"] for m in matches] == ["1.9.4"]
