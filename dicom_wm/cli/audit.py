"""``dicom-wm audit`` (the event log) and ``dicom-wm studies`` (studies with
instance counts per state)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dicom_wm.cli.common import exit_error, open_database
from dicom_wm.cli.service import ConfigOpt, DataDirOpt, DbOpt

__all__ = ["register", "audit", "studies"]

JsonLinesOpt = Annotated[bool, typer.Option("--json", help="one JSON object per line")]
# dicom_wm.db.models.EventKind's values, spelled out so that starting the CLI
# does not import sqlalchemy (tests/test_cli.py keeps the two equal)
EVENT_KINDS = ("received", "queued", "watermarked", "failed", "skipped", "verified", "restored", "sent",
               "tamper_detected", "query", "retrieve_refused", "destination")


def audit(
    since: Annotated[str | None, typer.Option("--since", help="only events at or after this ISO 8601 date / date-time (UTC unless an offset is given)")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="only events of this kind: " + ", ".join(EVENT_KINDS))] = None,
    data_dir: DataDirOpt = None,
    db: DbOpt = None,
    as_json: JsonLinesOpt = False,
    config: ConfigOpt = None,
) -> None:
    """The audit log: receptions, watermarks, queries, retrieves, tamper detections, destination changes."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_wm.audit import list_events, parse_since

    try:
        moment = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise exit_error(str(exc), 2) from None
    if kind is not None and kind not in EVENT_KINDS:
        raise exit_error(f"--kind {kind!r} must be one of {', '.join(EVENT_KINDS)}", 2)
    sessions = open_database(config, data_dir, db, create=False)
    try:
        events = list_events(sessions, since=moment, kind=kind)
    except SQLAlchemyError as exc:
        raise exit_error(f"database: {str(exc).splitlines()[0]}") from None
    if as_json:
        for e in events:
            typer.echo(json.dumps(e, sort_keys=True))
        return
    table = Table(title=f"audit log ({len(events)} events)")
    for col in ("time", "kind", "actor", "SOP Instance UID", "details"):
        table.add_column(col, overflow="fold")
    for e in events:
        table.add_row(e["time"] or "", e["kind"], e["actor"] or "", e["sop_instance_uid"] or "",
                      json.dumps(e["details"], sort_keys=True))
    Console().print(table)


def studies(
    data_dir: DataDirOpt = None,
    db: DbOpt = None,
    as_json: JsonLinesOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Studies in the archive with their instance counts per state (current versions)."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_wm.db.models import InstanceState
    from dicom_wm.query.studies import study_summaries

    sessions = open_database(config, data_dir, db, create=False)
    try:
        rows = study_summaries(sessions)
    except SQLAlchemyError as exc:
        raise exit_error(f"database: {str(exc).splitlines()[0]}") from None
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r, sort_keys=True))
        return
    table = Table(title=f"studies ({len(rows)})")
    for col in ("Study Instance UID", "patient", "date", "description", "modalities", "series", "instances", "states"):
        table.add_column(col, overflow="fold")
    for r in rows:
        states = " ".join(f"{s.value}={r['states'][s.value]}" for s in InstanceState if r["states"][s.value])
        table.add_row(
            r["study_instance_uid"], f"{r['patient_id'] or ''} {r['patient_name'] or ''}".strip(), r["study_date"] or "",
            r["study_description"] or "", "\\".join(r["modalities"]), str(r["series"]), str(r["instances"]), states,
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``audit`` and ``studies`` to ``app``."""
    app.command("audit")(audit)
    app.command("studies")(studies)
