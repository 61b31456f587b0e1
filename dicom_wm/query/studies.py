"""The studies in the index, with instance counts per state (``dicom-wm studies``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_wm.db.models import Instance, InstanceState

__all__ = ["study_summaries"]


def study_summaries(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """One entry per study (current versions of its instances, every state):
    patient, date, description, modalities, series count, instances per
    state and in all; newest study date first."""
    current = Instance.is_current.is_(True)
    with sessions() as session:
        heads = session.execute(
            select(
                Instance.study_instance_uid,
                func.min(Instance.patient_id),
                func.min(Instance.patient_name),
                func.min(Instance.study_date),
                func.min(Instance.study_time),
                func.min(Instance.accession_number),
                func.min(Instance.study_description),
                func.count(distinct(Instance.series_instance_uid)),
                func.count(Instance.id),
            )
            .where(current)
            .group_by(Instance.study_instance_uid)
        ).all()
        states: dict[str, dict[str, int]] = {}
        for study, state, count in session.execute(
            select(Instance.study_instance_uid, Instance.state, func.count())
            .where(current)
            .group_by(Instance.study_instance_uid, Instance.state)
        ):
            states.setdefault(study, {})[state.value] = int(count)
        modalities: dict[str, list[str]] = {}
        for study, modality in session.execute(
            select(Instance.study_instance_uid, Instance.modality)
            .where(current, Instance.modality.is_not(None))
            .distinct()
            .order_by(Instance.modality)
        ):
            modalities.setdefault(study, []).append(modality)
    out = []
    for uid, patient_id, patient_name, date, time, accession, description, series, total in heads:
        out.append({
            "study_instance_uid": uid,
            "patient_id": patient_id,
            "patient_name": patient_name,
            "study_date": date,
            "study_time": time,
            "accession_number": accession,
            "study_description": description,
            "modalities": modalities.get(uid, []),
            "series": int(series),
            "instances": int(total),
            "states": {s.value: states.get(uid, {}).get(s.value, 0) for s in InstanceState},
        })
    out.sort(key=lambda s: (s["study_date"] or "", s["study_time"] or "", s["study_instance_uid"]), reverse=True)
    return out
