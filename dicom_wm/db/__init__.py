"""Provenance database: models, engine/session factory, migrations."""

from dicom_wm.db.destinations import Destination, EgressPolicy
from dicom_wm.db.engine import dispose_engines, get_engine, get_sessionmaker, session_scope
from dicom_wm.db.models import (
    FINAL_STATES,
    PENDING_STATES,
    Base,
    Event,
    EventKind,
    Instance,
    InstanceState,
    utcnow,
)

__all__ = [
    "Base",
    "Destination",
    "EgressPolicy",
    "Event",
    "EventKind",
    "FINAL_STATES",
    "Instance",
    "InstanceState",
    "PENDING_STATES",
    "dispose_engines",
    "get_engine",
    "get_sessionmaker",
    "session_scope",
    "utcnow",
]
