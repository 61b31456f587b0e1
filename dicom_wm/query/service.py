"""One C-FIND, start to end: parse, match, build responses, audit.

Every C-FIND appends one ``query`` event (actor: the calling AE), whether it
matched, matched nothing, or was refused: model, level, the matching keys
and their values, the number of matches, or the error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_wm.db.models import EventKind
from dicom_wm.ingest.errors import CallingAENotAllowed, DatabaseUnavailable
from dicom_wm.ingest.events import add_event
from dicom_wm.query.find import Selection, find_matches, select_instances
from dicom_wm.query.identifier import Query, parse_identifier
from dicom_wm.query.model import InformationModel, Service, model_for_sop_class
from dicom_wm.query.responses import build_response

__all__ = ["run_find", "record_query", "select_for_retrieve"]

log = logging.getLogger(__name__)


def record_query(sessions: sessionmaker[Session], *, actor: str, details: dict[str, Any]) -> None:
    """Append the ``query`` event; an audit write failure is logged, not raised
    (the answer is already computed)."""
    try:
        with sessions() as session, session.begin():
            add_event(session, EventKind.QUERY, actor=actor, details=details)
    except SQLAlchemyError as exc:
        log.error("query event from %s could not be written: %s", actor, str(exc).splitlines()[0][:200])


def run_find(
    sessions: sessionmaker[Session],
    read_identifier: Callable[[], Dataset],
    sop_class: str,
    *,
    actor: str,
    peer: str | None,
    retrieve_ae_title: str,
    allowed: bool = True,
) -> list[Dataset]:
    """The response identifiers of one C-FIND (and its ``query`` event).

    ``read_identifier`` returns the request identifier (it may raise
    :class:`~dicom_wm.query.errors.InvalidIdentifier` for one that cannot be
    decoded); ``sop_class`` is the request's Affected SOP Class UID;
    ``allowed`` is false when the calling AE may not query.

    Raises :class:`~dicom_wm.query.errors.UnsupportedSOPClass`,
    :class:`~dicom_wm.ingest.errors.CallingAENotAllowed`,
    :class:`~dicom_wm.query.errors.InvalidIdentifier` or
    :class:`~dicom_wm.ingest.errors.DatabaseUnavailable`; each is recorded in
    the event before it propagates."""
    details: dict[str, Any] = {"model": sop_class[:64], "peer": peer}
    try:
        model, _service = model_for_sop_class(sop_class)
        details["model"] = model.value
        if not allowed:
            raise CallingAENotAllowed(f"calling AE {actor!r} is not on the allow-list")
        identifier = read_identifier()
        details["level"] = str(identifier.get("QueryRetrieveLevel", "") or "")[:16]
        query = parse_identifier(identifier, model, Service.FIND)
        details.update(query.audit())
        try:
            with sessions() as session:
                matches = find_matches(session, query)
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"index query failed: {str(exc).splitlines()[0][:200]}") from exc
    except Exception as exc:
        details["error"] = f"{type(exc).__name__}: {exc}"[:300]
        record_query(sessions, actor=actor, details=details)
        raise
    details["matches"] = len(matches)
    record_query(sessions, actor=actor, details=details)
    return [build_response(query, m, retrieve_ae_title) for m in matches]


def select_for_retrieve(
    sessions: sessionmaker[Session], identifier: Dataset, model: InformationModel, service: Service
) -> tuple[Query, Selection]:
    """The instances a C-MOVE / C-GET identifier names (unique keys only).

    Raises :class:`~dicom_wm.query.errors.InvalidIdentifier` or
    :class:`~dicom_wm.ingest.errors.DatabaseUnavailable`."""
    query = parse_identifier(identifier, model, service)
    try:
        with sessions() as session:
            return query, select_instances(session, query)
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(f"index query failed: {str(exc).splitlines()[0][:200]}") from exc
