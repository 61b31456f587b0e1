"""Durable reception of one instance: spool file + RECEIVED row.

This is the C-STORE handler's library half (scp/ only translates DIMSE). It
never decodes pixel data. Order of operations (DESIGN.md invariant 4):

1. read the index attributes from the already-parsed header and check the
   UIDs (they become paths);
2. write the received bytes to the spool: temp file, fsync, rename, fsync dir;
3. insert the instance row (RECEIVED) and its ``received`` event, commit;
4. only then may the caller report success and enqueue the row id.

If step 2 fails nothing is left behind (:class:`StorageFull`); if step 3
fails the spool file is removed again (:class:`DatabaseUnavailable`).

Same SOP Instance UID again (the versioning policy):

* same bytes as any stored version: success, no new row; a ``received``
  event with ``duplicate_of`` records the repeat;
* different bytes: a new row with the next ``version`` becomes the current
  one (older versions stay, ``is_current`` false), and it is watermarked in
  turn. Nothing a modality sent is ever overwritten.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_wm.db.models import Event, EventKind, Instance, InstanceState, utcnow
from dicom_wm.fileio import atomic_write_bytes, unlink_quietly
from dicom_wm.ingest.errors import CannotUnderstand, DatabaseUnavailable, DatasetMismatch, StorageFull
from dicom_wm.ingest.events import add_event
from dicom_wm.ingest.layout import new_token, spool_relpath
from dicom_wm.ingest.uids import check_uid

__all__ = ["StoreRequest", "ReceiveOutcome", "Received", "receive_instance", "index_attributes"]

log = logging.getLogger(__name__)

# receptions of one SOP Instance UID racing for the next version number: each
# round one of them wins, so this many lets a burst of that size through
_CONFLICT_ATTEMPTS = 20


@dataclass(frozen=True)
class StoreRequest:
    """What the C-STORE request said, besides the dataset."""

    calling_ae: str
    called_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    peer: str | None = None  # "address:port"


class ReceiveOutcome(str, enum.Enum):
    NEW = "new"  # first version of this SOP Instance
    NEW_VERSION = "new_version"  # same UID, different bytes
    DUPLICATE = "duplicate"  # same UID, same bytes as a stored version


@dataclass(frozen=True)
class Received:
    instance_id: int
    outcome: ReceiveOutcome
    version: int

    @property
    def needs_processing(self) -> bool:
        return self.outcome is not ReceiveOutcome.DUPLICATE


# (keyword, column, max length) of the string index attributes
_TEXT_ATTRIBUTES: tuple[tuple[str, str, int], ...] = (
    ("PatientID", "patient_id", 64),
    ("PatientName", "patient_name", 324),
    ("PatientBirthDate", "patient_birth_date", 8),
    ("PatientSex", "patient_sex", 16),
    ("StudyDate", "study_date", 8),
    ("StudyTime", "study_time", 16),
    ("AccessionNumber", "accession_number", 16),
    ("StudyID", "study_id", 16),
    ("StudyDescription", "study_description", 64),
    ("ReferringPhysicianName", "referring_physician_name", 324),
    ("Modality", "modality", 16),
    ("SeriesDescription", "series_description", 64),
)
_INT_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("SeriesNumber", "series_number"),
    ("InstanceNumber", "instance_number"),
    ("Rows", "rows"),
    ("Columns", "columns"),
    ("NumberOfFrames", "number_of_frames"),
)


def _value(ds: Dataset, keyword: str) -> Any:
    try:
        elem = ds.get(keyword)
        return None if elem is None else elem
    except Exception as exc:  # pydicom raises many types for a corrupt value
        raise CannotUnderstand(f"cannot decode {keyword}: {type(exc).__name__}: {exc}") from None


def _text(value: Any, limit: int) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text[:limit] or None


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def index_attributes(ds: Dataset) -> dict[str, Any]:
    """The instance-table columns read from ``ds`` (header only).

    Raises :class:`CannotUnderstand` when a required UID is missing or a value
    cannot be decoded, :class:`InvalidUID` when a UID breaks the grammar.
    """
    out: dict[str, Any] = {}
    for keyword, column in (
        ("SOPInstanceUID", "sop_instance_uid"),
        ("SOPClassUID", "sop_class_uid"),
        ("StudyInstanceUID", "study_instance_uid"),
        ("SeriesInstanceUID", "series_instance_uid"),
    ):
        value = _value(ds, keyword)
        if value is None or str(value).strip() == "":
            raise CannotUnderstand(f"the dataset has no {keyword}")
        out[column] = check_uid(str(value).rstrip("\0 "), keyword)
    for keyword, column, limit in _TEXT_ATTRIBUTES:
        out[column] = _text(_value(ds, keyword), limit)
    for keyword, column in _INT_ATTRIBUTES:
        out[column] = _int(_value(ds, keyword))
    out["specific_character_set"] = _text(_value(ds, "SpecificCharacterSet"), 128)
    return out


def receive_instance(
    sessions: sessionmaker[Session],
    data_dir: Path,
    data: bytes,
    header: Dataset,
    request: StoreRequest,
) -> Received:
    """Store one received instance durably (see the module docstring).

    ``data`` is the Part 10 file (preamble, file meta, dataset as received);
    ``header`` the parsed dataset (pixel data is not touched).

    Raises :class:`CannotUnderstand`, :class:`InvalidUID`,
    :class:`DatasetMismatch`, :class:`StorageFull`, :class:`DatabaseUnavailable`.
    """
    attrs = index_attributes(header)
    check_uid(request.sop_instance_uid, "Affected SOP Instance UID")
    if attrs["sop_instance_uid"] != request.sop_instance_uid:
        raise DatasetMismatch(
            f"dataset SOP Instance UID {attrs['sop_instance_uid']} does not match the request's "
            f"Affected SOP Instance UID {request.sop_instance_uid}"
        )
    if attrs["sop_class_uid"] != request.sop_class_uid:
        raise DatasetMismatch(
            f"dataset SOP Class UID {attrs['sop_class_uid']} does not match the request's "
            f"Affected SOP Class UID {request.sop_class_uid}"
        )
    sha = hashlib.sha256(data).hexdigest()
    sop = attrs["sop_instance_uid"]
    event_common = {
        "calling_ae": request.calling_ae,
        "called_ae": request.called_ae,
        "peer": request.peer,
        "transfer_syntax": request.transfer_syntax_uid,
        "size": len(data),
        "sha256": sha,
    }

    spool_rel: Path | None = None
    committing = False  # a failed COMMIT may still have committed (lost reply)
    try:
        for attempt in range(_CONFLICT_ATTEMPTS):  # an IntegrityError means a concurrent reception: look again
            if attempt:
                time.sleep(random.uniform(0, 0.002 * attempt))  # jitter: the racers do not collide again in step
            try:
                with sessions() as session:
                    versions = session.execute(
                        select(Instance.id, Instance.version, Instance.received_sha256).where(
                            Instance.sop_instance_uid == sop
                        )
                    ).all()
                    same = next((v for v in versions if v.received_sha256 == sha), None)
                    if same is not None:
                        _record_duplicate(session, same.id, same.version, sop, request, event_common)
                        if spool_rel is not None:
                            unlink_quietly(data_dir / spool_rel)
                        return Received(same.id, ReceiveOutcome.DUPLICATE, same.version)
                    version = max((v.version for v in versions), default=0) + 1
                    if spool_rel is None:
                        spool_rel = spool_relpath(sop, new_token())
                        _write_spool(data, data_dir / spool_rel)
                    now = utcnow()
                    if versions:
                        session.execute(
                            update(Instance.__table__)
                            .where(Instance.sop_instance_uid == sop, Instance.is_current.is_(True))
                            .values(is_current=False)
                        )
                    # Core inserts: this runs once per C-STORE, inside the association
                    instance_id = session.execute(
                        insert(Instance.__table__)
                        .values(
                            **attrs,
                            version=version,
                            is_current=True,
                            calling_ae=request.calling_ae,
                            called_ae=request.called_ae,
                            received_at=now,
                            updated_at=now,
                            received_transfer_syntax_uid=request.transfer_syntax_uid,
                            received_size=len(data),
                            received_sha256=sha,
                            spool_path=str(spool_rel),
                            state=InstanceState.RECEIVED,
                            attempts=0,
                        )
                        .returning(Instance.__table__.c.id)
                    ).scalar_one()
                    session.execute(
                        insert(Event.__table__).values(
                            time=now,
                            kind=EventKind.RECEIVED.value,
                            actor=request.calling_ae,
                            instance_id=instance_id,
                            sop_instance_uid=sop,
                            details={**event_common, "version": version},
                        )
                    )
                    committing = True
                    session.commit()
                    outcome = ReceiveOutcome.NEW if version == 1 else ReceiveOutcome.NEW_VERSION
                    return Received(instance_id, outcome, version)
            except IntegrityError:
                committing = False
                continue
        raise DatabaseUnavailable(f"could not record {sop}: concurrent receptions kept conflicting")
    except SQLAlchemyError as exc:
        if spool_rel is not None and not committing:
            unlink_quietly(data_dir / spool_rel)
        elif spool_rel is not None:
            # Unknown outcome: keep the complete file. If the row did commit,
            # it is processed; if not, serve removes the orphan at its next start.
            log.error("commit of %s failed with an unknown outcome; keeping %s", sop, spool_rel)
        raise DatabaseUnavailable(f"could not record {sop}: {type(exc).__name__}: {_short(exc)}") from exc
    except DatabaseUnavailable:
        if spool_rel is not None:
            unlink_quietly(data_dir / spool_rel)
        raise


def _record_duplicate(
    session: Session, instance_id: int, version: int, sop: str, request: StoreRequest, common: dict[str, Any]
) -> None:
    # The bytes are already stored and committed: the repeat is a success even
    # if this audit line cannot be written.
    try:
        add_event(
            session,
            EventKind.RECEIVED,
            actor=request.calling_ae,
            instance_id=instance_id,
            sop_instance_uid=sop,
            details={**common, "version": version, "duplicate_of": instance_id},
        )
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        log.warning("duplicate of %s (instance %d) not recorded: %s", sop, instance_id, _short(exc))


def _write_spool(data: bytes, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(data, path)
    except OSError as exc:
        raise StorageFull(f"cannot write the spool file {path}: {exc.strerror or exc}") from exc



def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]
