"""Running a :class:`~dicom_wm.query.identifier.Query` against the index.

Only *current* versions in a *final* state (WATERMARKED, FAILED, SKIPPED)
are visible: an instance still waiting for its watermark has no archived
file yet, so it is neither listed nor retrieved until its worker finishes
(usually seconds after it arrived).

Two steps, both plain SQL on the ``instances`` table:

1. candidate rows: the final, current rows the conditions' SQL halves allow;
   Python applies the exact rules and collects the matching entities
   (patients by Patient ID, studies, series, instances);
2. one aggregate per entity (the lowest value of each attribute over its
   instances, counts of related series / instances, the study's distinct
   modalities), over *all* of the entity's visible instances, so counts and
   Modalities in Study do not depend on what was matched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, distinct, func, select
from sqlalchemy.orm import Session

from dicom_wm.db.models import FINAL_STATES, PENDING_STATES, Instance, InstanceState
from dicom_wm.query.identifier import Query
from dicom_wm.query.model import ATTRIBUTES, InformationModel, Kind, Level

__all__ = ["find_matches", "select_instances", "RetrieveItem", "Selection", "visible"]

CHUNK = 500  # entity keys per IN (...) list


def visible() -> Any:
    """The rows query/retrieve sees."""
    return Instance.is_current.is_(True) & Instance.state.in_(sorted(FINAL_STATES, key=lambda s: s.value))


def _entity_column(level: Level) -> Any:
    if level is Level.PATIENT:
        return func.coalesce(Instance.patient_id, "")
    if level is Level.STUDY:
        return Instance.study_instance_uid
    if level is Level.SERIES:
        return Instance.series_instance_uid
    return Instance.id


def _column(name: str) -> Any:
    return getattr(Instance, name)


def _candidates(session: Session, query: Query, entity: Any, extra: Any = None) -> Iterator[Any]:
    """Step 1: rows the SQL halves allow, with the columns Python checks."""
    cols = [entity.label("entity")] + [_column(c.attribute.column).label(f"c{i}")  # type: ignore[arg-type]
                                       for i, c in enumerate(query.conditions)]
    stmt: Select[Any] = select(*cols).where(extra if extra is not None else visible())
    for cond in query.conditions:
        clause = cond.matcher.sql(_column(cond.attribute.column))  # type: ignore[arg-type]
        if clause is not None:
            stmt = stmt.where(clause)
    for row in session.execute(stmt):
        if all(c.matcher.matches(row[i + 1]) for i, c in enumerate(query.conditions)):
            yield row


def _matching_entities(session: Session, query: Query) -> list[Any]:
    seen: dict[Any, None] = {}
    for row in _candidates(session, query, _entity_column(query.level)):
        seen.setdefault(row.entity, None)
    return list(seen)


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _returned_attributes(model: InformationModel, level: Level) -> list[str]:
    """Column-backed attributes of the query level and above."""
    return [
        a.keyword
        for a in ATTRIBUTES.values()
        if a.column is not None and a.kind is not Kind.MODALITIES and model.level_of(a).depth <= level.depth
    ]


_SORT = {
    Level.PATIENT: ("PatientID",),
    Level.STUDY: ("StudyDate", "StudyTime", "StudyInstanceUID"),
    Level.SERIES: ("SeriesNumber", "SeriesInstanceUID"),
    Level.IMAGE: ("InstanceNumber", "SOPInstanceUID"),
}


def _sort_key(level: Level, values: dict[str, Any]) -> tuple[Any, ...]:
    return tuple((values.get(k) is None, values.get(k) if values.get(k) is not None else 0) for k in _SORT[level])


def find_matches(session: Session, query: Query) -> list[dict[str, Any]]:
    """The entities matching ``query``, each as ``{keyword: value}`` with
    every supported attribute of its level and above (``None``: no value)."""
    keys = _matching_entities(session, query)
    if not keys:
        return []
    level, model = query.level, query.model
    names = _returned_attributes(model, level)
    entity = _entity_column(level)
    out: list[dict[str, Any]] = []
    for chunk in _chunks(keys):
        if level is Level.IMAGE:
            stmt = select(*[_column(ATTRIBUTES[n].column).label(n) for n in names]).where(  # type: ignore[arg-type]
                Instance.id.in_(chunk)
            )
            out.extend(dict(row._mapping) for row in session.execute(stmt))
            continue
        aggregates = [func.min(_column(ATTRIBUTES[n].column)).label(n) for n in names]  # type: ignore[arg-type]
        counts = _counts(level)
        stmt = (
            select(entity.label("entity"), *aggregates, *counts)
            .where(visible(), entity.in_(chunk))
            .group_by(entity)
        )
        rows = [dict(row._mapping) for row in session.execute(stmt)]
        if level is Level.PATIENT:
            for r in rows:
                r["PatientID"] = r.pop("entity") or None
        else:
            for r in rows:
                r.pop("entity")
        if level is Level.STUDY:
            modalities = _modalities(session, [r["StudyInstanceUID"] for r in rows])
            for r in rows:
                r["ModalitiesInStudy"] = modalities.get(r["StudyInstanceUID"], [])
        out.extend(rows)
    out.sort(key=lambda v: _sort_key(level, v))
    return out


def _counts(level: Level) -> list[Any]:
    if level is Level.PATIENT:
        return [
            func.count(distinct(Instance.study_instance_uid)).label("NumberOfPatientRelatedStudies"),
            func.count(distinct(Instance.series_instance_uid)).label("NumberOfPatientRelatedSeries"),
            func.count(Instance.id).label("NumberOfPatientRelatedInstances"),
        ]
    if level is Level.STUDY:
        return [
            func.count(distinct(Instance.series_instance_uid)).label("NumberOfStudyRelatedSeries"),
            func.count(Instance.id).label("NumberOfStudyRelatedInstances"),
        ]
    return [func.count(Instance.id).label("NumberOfSeriesRelatedInstances")]


def _modalities(session: Session, studies: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    stmt = (
        select(Instance.study_instance_uid, Instance.modality)
        .where(visible(), Instance.study_instance_uid.in_(list(studies)), Instance.modality.is_not(None))
        .distinct()
        .order_by(Instance.modality)
    )
    for study, modality in session.execute(stmt):
        out.setdefault(study, []).append(modality)
    return out


# -- retrieve ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrieveItem:
    """What sending one instance needs from its row."""

    instance_id: int
    sop_instance_uid: str
    sop_class_uid: str
    state: InstanceState
    archive_path: str | None
    stored_transfer_syntax_uid: str | None
    stored_sha256: str | None
    original_sample_sha256: str | None
    record_uuid: str | None


@dataclass(frozen=True)
class Selection:
    items: list[RetrieveItem]
    pending: int  # matching instances still waiting for their watermark (not offered)


def select_instances(session: Session, query: Query) -> Selection:
    """The instances a C-MOVE / C-GET ``query`` names, in study / series /
    instance order, and how many more are still pending."""
    pending_filter = Instance.is_current.is_(True) & Instance.state.in_(sorted(PENDING_STATES, key=lambda s: s.value))
    pending = sum(1 for _ in _candidates(session, query, Instance.id, pending_filter))
    ids = [row.entity for row in _candidates(session, query, Instance.id)]
    rows: list[Any] = []
    for chunk in _chunks(ids):
        stmt = select(
            Instance.id, Instance.sop_instance_uid, Instance.sop_class_uid, Instance.state, Instance.archive_path,
            Instance.stored_transfer_syntax_uid, Instance.stored_sha256, Instance.original_sample_sha256,
            Instance.record_uuid, Instance.study_instance_uid, Instance.series_number, Instance.series_instance_uid,
            Instance.instance_number,
        ).where(Instance.id.in_(chunk))
        rows.extend(session.execute(stmt))
    rows.sort(
        key=lambda r: (r.study_instance_uid, r.series_number is None, r.series_number or 0, r.series_instance_uid,
                       r.instance_number is None, r.instance_number or 0, r.sop_instance_uid)
    )
    items = [
        RetrieveItem(r.id, r.sop_instance_uid, r.sop_class_uid, r.state, r.archive_path,
                     r.stored_transfer_syntax_uid, r.stored_sha256, r.original_sample_sha256, r.record_uuid)
        for r in rows
    ]
    return Selection(items, pending)
