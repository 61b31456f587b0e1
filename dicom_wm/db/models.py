"""Provenance database: typed SQLAlchemy 2 models.

Two tables:

``instances``
    One row per received version of a SOP Instance: its DICOM index
    attributes (patient, study, series, instance level: what C-FIND answers
    from), where its bytes are (spool while waiting, archive once final), its
    state, and the watermark's provenance (hashes, key id, record UUID,
    engine / predictor versions, timings, worker host).
``events``
    The append-only audit log (the database refuses UPDATE and DELETE on it).

The SOP Instance UID is not unique on its own: a second C-STORE of the same
UID with different bytes is kept as a new *version* (``version`` 2, 3 ...);
exactly one version per UID has ``is_current`` true, the newest one. Query /
retrieve only looks at current rows.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Base",
    "Instance",
    "Event",
    "InstanceState",
    "EventKind",
    "FINAL_STATES",
    "PENDING_STATES",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class InstanceState(str, enum.Enum):
    """Life cycle of an instance row (DESIGN.md): RECEIVED -> QUEUED ->
    WATERMARKING -> WATERMARKED | FAILED | SKIPPED."""

    RECEIVED = "RECEIVED"  # bytes in the spool, row committed
    QUEUED = "QUEUED"  # handed to the queue
    WATERMARKING = "WATERMARKING"  # a worker claimed it
    WATERMARKED = "WATERMARKED"  # watermarked file in the archive
    FAILED = "FAILED"  # could not be watermarked; received bytes archived as they came
    SKIPPED = "SKIPPED"  # nothing to protect (no pixel data); archived as received


FINAL_STATES = frozenset({InstanceState.WATERMARKED, InstanceState.FAILED, InstanceState.SKIPPED})
PENDING_STATES = frozenset(set(InstanceState) - FINAL_STATES)


class EventKind(str, enum.Enum):
    """Kinds of audit events. Stored as plain strings (no database enum), so
    adding a kind needs no migration."""

    RECEIVED = "received"
    QUEUED = "queued"
    WATERMARKED = "watermarked"
    FAILED = "failed"
    SKIPPED = "skipped"
    VERIFIED = "verified"
    RESTORED = "restored"
    SENT = "sent"
    TAMPER_DETECTED = "tamper_detected"
    QUERY = "query"  # one per C-FIND
    RETRIEVE_REFUSED = "retrieve_refused"  # a C-MOVE / C-GET refused as a whole (no sub-operation)
    DESTINATION = "destination"  # a retrieve destination added, changed or removed


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them
    naive; they come back with UTC attached)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def _ts() -> UTCDateTime:
    return UTCDateTime()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class Instance(Base):
    """One received version of one SOP Instance."""

    __tablename__ = "instances"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "version", name="uq_instances_sop_version"),
        Index("ix_instances_study_series", "study_instance_uid", "series_instance_uid"),
        Index("ix_instances_state_updated", "state", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)

    # -- identity and versioning ---------------------------------------------
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    is_current: Mapped[bool] = mapped_column(Boolean, default=True, index=True)

    # -- index attributes (C-FIND) ------------------------------------------------
    # patient level
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(324))  # PN: up to 5 groups x 64 chars
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))  # DA as sent, YYYYMMDD
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    # study level
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8), index=True)  # DA
    study_time: Mapped[str | None] = mapped_column(String(16))  # TM
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    study_id: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    referring_physician_name: Mapped[str | None] = mapped_column(String(324))
    # series level
    series_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))  # ModalitiesInStudy derives from it
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    # instance level
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    specific_character_set: Mapped[str | None] = mapped_column(String(128))

    # -- reception ------------------------------------------------------------------
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    called_ae: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(_ts(), default=utcnow)
    received_transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    received_size: Mapped[int] = mapped_column(BigInteger)
    received_sha256: Mapped[str] = mapped_column(String(64), index=True)  # of the file as received (with file meta)

    # -- where the bytes are (paths relative to the data dir) --------------------------
    spool_path: Mapped[str | None] = mapped_column(Text)  # until final
    archive_path: Mapped[str | None] = mapped_column(Text)  # once final
    stored_transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    stored_size: Mapped[int | None] = mapped_column(BigInteger)
    stored_sha256: Mapped[str | None] = mapped_column(String(64))  # of the archived file

    # -- state ----------------------------------------------------------------------------
    state: Mapped[InstanceState] = mapped_column(
        SAEnum(InstanceState, native_enum=False, length=16, create_constraint=False),
        default=InstanceState.RECEIVED,
        index=True,
    )
    state_reason: Mapped[str | None] = mapped_column(Text)  # why FAILED / SKIPPED
    last_error: Mapped[str | None] = mapped_column(Text)  # last transient error (retried)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claim_token: Mapped[str | None] = mapped_column(String(32))  # the attempt allowed to finish
    claimed_at: Mapped[datetime | None] = mapped_column(_ts())
    updated_at: Mapped[datetime] = mapped_column(_ts(), default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(_ts())
    worker_host: Mapped[str | None] = mapped_column(String(255))

    # -- watermark provenance ---------------------------------------------------------
    key_id: Mapped[str | None] = mapped_column(String(32))
    record_uuid: Mapped[str | None] = mapped_column(String(36), index=True)
    original_sample_sha256: Mapped[str | None] = mapped_column(String(64))
    engine_version: Mapped[str | None] = mapped_column(String(32))
    predictor: Mapped[str | None] = mapped_column(String(64))
    predictor_version: Mapped[str | None] = mapped_column(String(32))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    payload_bits: Mapped[int | None] = mapped_column(BigInteger)
    capacity_bits: Mapped[int | None] = mapped_column(BigInteger)
    psnr_db: Mapped[float | None] = mapped_column(Float)  # +inf is stored as NULL with max_abs_delta 0
    max_abs_delta: Mapped[int | None] = mapped_column(Integer)
    lossy_source: Mapped[bool | None] = mapped_column(Boolean)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # seconds per stage

    events: Mapped[list[Event]] = relationship(back_populates="instance", order_by="Event.id", viewonly=True)

    def __repr__(self) -> str:
        return f"Instance(id={self.id}, sop={self.sop_instance_uid!r}, v{self.version}, {self.state.value})"


class Event(Base):
    """One audit event. Append-only: insert, never update or delete."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(_ts(), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)  # an EventKind value
    actor: Mapped[str | None] = mapped_column(String(255))  # calling AE, "user@host", "worker@host"
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"), index=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    instance: Mapped[Instance | None] = relationship(back_populates="events")

    def __repr__(self) -> str:
        return f"Event(id={self.id}, {self.kind}, instance={self.instance_id})"
