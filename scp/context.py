"""What the handlers need, bound to them at AE start."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import Session, sessionmaker

from dicom_wm.settings import Settings

if TYPE_CHECKING:
    from dicom_wm.retrieve.pool import EgressPool

__all__ = ["ScpContext", "Enqueue"]


class Enqueue(Protocol):
    def __call__(self, instance_id: int) -> None: ...


@dataclass
class ScpContext:
    settings: Settings
    sessions: sessionmaker[Session]
    enqueue: Enqueue
    allowed_calling_aes: frozenset[str] = field(default_factory=frozenset)  # empty: any
    egress: EgressPool | None = None  # C-MOVE/C-GET verification (scp.retrieve makes it on first use)

    def calling_ae_allowed(self, ae_title: str) -> bool:
        return not self.allowed_calling_aes or ae_title.strip() in self.allowed_calling_aes
