"""``dicom-wm destinations add | list | remove``: where C-MOVE may send, and
what each destination (and C-GET requester) receives.

Like the service commands, each takes ``--data-dir``, ``--db`` and
``--config``; the embedded SQLite database is created or upgraded as
needed, any other database must be at the current revision
(``dicom-wm db upgrade``).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dicom_wm.cli.common import exit_error, open_database
from dicom_wm.cli.service import ConfigOpt, DataDirOpt, DbOpt, JsonOpt

__all__ = ["register", "dest_app"]

dest_app = typer.Typer(
    help="Retrieve destinations: C-MOVE targets and the policy each one (or a C-GET requester) gets.",
    no_args_is_help=True,
)

PolicyOpt = Annotated[
    str,
    typer.Option("--policy", help="watermarked: verified watermarked instances; original: verified, restored originals; fingerprint: verified copies re-marked with a robust mark naming this destination"),
]


@dest_app.command("add")
def add(
    ae_title: Annotated[str, typer.Argument(help="the destination's AE title (C-MOVE Move Destination)")],
    host: Annotated[str, typer.Argument(help="host name or IP address")],
    port: Annotated[int, typer.Argument(help="DICOM port")],
    policy: PolicyOpt = "watermarked",
    data_dir: DataDirOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Add a destination, or change the host, port and policy of an existing one."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_wm.ingest.events import user_actor
    from dicom_wm.retrieve.destinations import add_destination

    sessions = open_database(config, data_dir, db)
    try:
        info, created = add_destination(sessions, ae_title, host, port, policy, actor=user_actor())
    except ValueError as exc:
        raise exit_error(str(exc), 2) from None
    except SQLAlchemyError as exc:
        raise exit_error(f"database: {str(exc).splitlines()[0]}") from None
    if as_json:
        typer.echo(json.dumps({**info.as_dict(), "created": created}, sort_keys=True))
        return
    verb = "added" if created else "changed"
    typer.echo(f"{verb} {info.ae_title} {info.host}:{info.port} policy {info.policy.value}")


@dest_app.command("list")
def list_(
    data_dir: DataDirOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """The destinations, by AE title."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_wm.retrieve.destinations import list_destinations

    sessions = open_database(config, data_dir, db, create=False)
    try:
        rows = list_destinations(sessions)
    except SQLAlchemyError as exc:
        raise exit_error(f"database: {str(exc).splitlines()[0]}") from None
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows], sort_keys=True))
        return
    table = Table(title=f"retrieve destinations ({len(rows)})")
    for col in ("AE title", "host", "port", "policy"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.ae_title, r.host, str(r.port), r.policy.value)
    Console().print(table)


@dest_app.command("remove")
def remove(
    ae_title: Annotated[str, typer.Argument(help="the destination's AE title")],
    data_dir: DataDirOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Remove a destination (C-MOVE to it then fails with 0xA801)."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_wm.ingest.events import user_actor
    from dicom_wm.retrieve.destinations import remove_destination

    sessions = open_database(config, data_dir, db)
    try:
        removed = remove_destination(sessions, ae_title, actor=user_actor())
    except ValueError as exc:
        raise exit_error(str(exc), 2) from None
    except SQLAlchemyError as exc:
        raise exit_error(f"database: {str(exc).splitlines()[0]}") from None
    if removed is None:
        raise exit_error(f"no destination {ae_title.strip()!r}")
    typer.echo(f"removed {removed.ae_title}")


def register(app: typer.Typer) -> None:
    """Add the ``destinations`` group to ``app``."""
    app.add_typer(dest_app, name="destinations")
