"""Retrieve destinations: the AEs dicom-wm sends to, and how.

One row per AE title. C-MOVE sends only to AEs in this table (anything
else is "move destination unknown", 0xA801), to the row's host and port.
The row's :class:`EgressPolicy` says what leaves: the watermarked instance
as stored, or the restored original. A C-GET requester's row (by calling AE
title) gives its policy too; a requester without a row gets
``watermarked``.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Integer, String, UniqueConstraint
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import Mapped, mapped_column

from dicom_wm.db.models import Base, utcnow

__all__ = ["Destination", "EgressPolicy"]


class EgressPolicy(str, enum.Enum):
    """What a destination receives (every instance is verified first)."""

    WATERMARKED = "watermarked"  # the archived, watermarked instance, verified authentic
    ORIGINAL = "original"  # the restored original, its sample hash checked against provenance
    FINGERPRINT = "fingerprint"  # verified, restored, then watermarked again with a robust mark naming the recipient


class Destination(Base):
    """One retrieve destination."""

    __tablename__ = "destinations"
    __table_args__ = (UniqueConstraint("ae_title", name="uq_destinations_ae_title"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ae_title: Mapped[str] = mapped_column(String(16))  # stripped, as it appears on the wire
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    policy: Mapped[EgressPolicy] = mapped_column(
        SAEnum(EgressPolicy, native_enum=False, length=16, create_constraint=False,
               values_callable=lambda kinds: [k.value for k in kinds]),
        default=EgressPolicy.WATERMARKED,
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"Destination({self.ae_title!r} {self.host}:{self.port}, {self.policy.value})"
