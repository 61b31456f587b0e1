"""The Query/Retrieve information models, their levels, and the attributes
dicom-wm can match and return (all of them answered from the ``instances``
index columns; no file is ever opened for a query).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dicom_wm.query.errors import UnsupportedSOPClass

__all__ = [
    "Level",
    "InformationModel",
    "Service",
    "Kind",
    "Attribute",
    "ATTRIBUTES",
    "UNIQUE_KEYS",
    "SOP_CLASSES",
    "model_for_sop_class",
]


class Level(str, enum.Enum):
    """(0008,0052) Query/Retrieve Level values, top to bottom."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return _DEPTH[self]


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}


class Service(str, enum.Enum):
    FIND = "C-FIND"
    MOVE = "C-MOVE"
    GET = "C-GET"


class InformationModel(str, enum.Enum):
    """The two hierarchical models dicom-wm answers."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"

    @property
    def levels(self) -> tuple[Level, ...]:
        if self is InformationModel.PATIENT_ROOT:
            return (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
        return (Level.STUDY, Level.SERIES, Level.IMAGE)

    @property
    def label(self) -> str:
        return "Patient Root" if self is InformationModel.PATIENT_ROOT else "Study Root"

    def level_of(self, attribute: Attribute) -> Level:
        """The level an attribute belongs to in this model: the Study Root
        model has no patient level, its patient attributes are study's."""
        if self is InformationModel.STUDY_ROOT and attribute.level is Level.PATIENT:
            return Level.STUDY
        return attribute.level

    def unique_key(self, level: Level) -> str:
        return UNIQUE_KEYS[level]


#: (model, service) -> SOP Class UID
SOP_CLASSES: dict[tuple[InformationModel, Service], str] = {
    (InformationModel.PATIENT_ROOT, Service.FIND): "1.2.840.10008.5.1.4.1.2.1.1",
    (InformationModel.PATIENT_ROOT, Service.MOVE): "1.2.840.10008.5.1.4.1.2.1.2",
    (InformationModel.PATIENT_ROOT, Service.GET): "1.2.840.10008.5.1.4.1.2.1.3",
    (InformationModel.STUDY_ROOT, Service.FIND): "1.2.840.10008.5.1.4.1.2.2.1",
    (InformationModel.STUDY_ROOT, Service.MOVE): "1.2.840.10008.5.1.4.1.2.2.2",
    (InformationModel.STUDY_ROOT, Service.GET): "1.2.840.10008.5.1.4.1.2.2.3",
}
_BY_UID = {uid: key for key, uid in SOP_CLASSES.items()}


def model_for_sop_class(uid: str) -> tuple[InformationModel, Service]:
    """The model and service of a Q/R SOP Class UID (:class:`UnsupportedSOPClass` if not ours)."""
    try:
        return _BY_UID[str(uid)]
    except KeyError:
        raise UnsupportedSOPClass(f"SOP class {str(uid)[:64]} is not a query/retrieve model of this service") from None


class Kind(enum.Enum):
    """How an attribute is matched (PS3.4 C.2.2.2)."""

    UID = "uid"  # single value or list of UIDs
    TEXT = "text"  # single value or wildcard, case-sensitive
    PN = "pn"  # single value or wildcard, case-insensitive
    DATE = "date"  # DA: single value or range
    TIME = "time"  # TM: single value or range
    INT = "int"  # IS / US: single value
    MODALITIES = "modalities"  # Modalities in Study: any of the study's series modalities
    COUNT = "count"  # Number of ... Related ...: returned, never matched


@dataclass(frozen=True)
class Attribute:
    """One attribute dicom-wm can match on and return.

    ``column`` is the ``instances`` column it comes from (``None`` for the
    derived ones: counts and Modalities in Study)."""

    keyword: str
    level: Level
    kind: Kind
    column: str | None
    vr: str


def _a(keyword: str, level: Level, kind: Kind, column: str | None, vr: str) -> Attribute:
    return Attribute(keyword, level, kind, column, vr)


_P, _ST, _SE, _IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

#: keyword -> attribute
ATTRIBUTES: dict[str, Attribute] = {
    a.keyword: a
    for a in (
        _a("PatientID", _P, Kind.TEXT, "patient_id", "LO"),
        _a("PatientName", _P, Kind.PN, "patient_name", "PN"),
        _a("PatientBirthDate", _P, Kind.DATE, "patient_birth_date", "DA"),
        _a("PatientSex", _P, Kind.TEXT, "patient_sex", "CS"),
        _a("NumberOfPatientRelatedStudies", _P, Kind.COUNT, None, "IS"),
        _a("NumberOfPatientRelatedSeries", _P, Kind.COUNT, None, "IS"),
        _a("NumberOfPatientRelatedInstances", _P, Kind.COUNT, None, "IS"),
        _a("StudyInstanceUID", _ST, Kind.UID, "study_instance_uid", "UI"),
        _a("StudyDate", _ST, Kind.DATE, "study_date", "DA"),
        _a("StudyTime", _ST, Kind.TIME, "study_time", "TM"),
        _a("AccessionNumber", _ST, Kind.TEXT, "accession_number", "SH"),
        _a("StudyID", _ST, Kind.TEXT, "study_id", "SH"),
        _a("StudyDescription", _ST, Kind.TEXT, "study_description", "LO"),
        _a("ReferringPhysicianName", _ST, Kind.PN, "referring_physician_name", "PN"),
        _a("ModalitiesInStudy", _ST, Kind.MODALITIES, "modality", "CS"),
        _a("NumberOfStudyRelatedSeries", _ST, Kind.COUNT, None, "IS"),
        _a("NumberOfStudyRelatedInstances", _ST, Kind.COUNT, None, "IS"),
        _a("SeriesInstanceUID", _SE, Kind.UID, "series_instance_uid", "UI"),
        _a("Modality", _SE, Kind.TEXT, "modality", "CS"),
        _a("SeriesNumber", _SE, Kind.INT, "series_number", "IS"),
        _a("SeriesDescription", _SE, Kind.TEXT, "series_description", "LO"),
        _a("NumberOfSeriesRelatedInstances", _SE, Kind.COUNT, None, "IS"),
        _a("SOPInstanceUID", _IM, Kind.UID, "sop_instance_uid", "UI"),
        _a("SOPClassUID", _IM, Kind.UID, "sop_class_uid", "UI"),
        _a("InstanceNumber", _IM, Kind.INT, "instance_number", "IS"),
        _a("Rows", _IM, Kind.INT, "rows", "US"),
        _a("Columns", _IM, Kind.INT, "columns", "US"),
        _a("NumberOfFrames", _IM, Kind.INT, "number_of_frames", "IS"),
    )
}

#: the unique key of each level
UNIQUE_KEYS: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
