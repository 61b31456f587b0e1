"""``dicom-wm archive check``: is every archived file present and unchanged
(dicom_wm.ingest.archive_check)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dicom_wm.cli.common import EXIT_FAILED, KeysOpt, cli_settings, err_console, exit_error, load_keystore, sessions_for
from dicom_wm.cli.service import ConfigOpt, DataDirOpt, DbOpt, JsonOpt

__all__ = ["register", "archive_app"]

archive_app = typer.Typer(help="Archive maintenance.", no_args_is_help=True)


@archive_app.command("check")
def check(
    verify: Annotated[
        bool, typer.Option("--verify", help="also verify every WATERMARKED file's watermark with the key store (slower)")
    ] = False,
    move_orphans: Annotated[
        bool,
        typer.Option("--move-orphans", help="move archive files no row names (older than --min-age-hours) "
                     "to <data dir>/orphans/"),
    ] = False,
    min_age_hours: Annotated[
        float, typer.Option("--min-age-hours", min=0.0, help="orphans younger than this are left in place")
    ] = 1.0,
    keys: KeysOpt = None,
    data_dir: DataDirOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Check that every archived file is present and unchanged (recorded SHA-256), and list files no row names.

    Exit 0 when every file is as recorded (orphans alone do not fail), 1 otherwise.
    A changed file is recorded as a tamper detection, as on a retrieve."""
    settings = cli_settings(config, data_dir=data_dir, db=db)
    store = load_keystore(keys or settings.keys_path, None) if verify else None
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_wm.ingest.archive_check import ORPHANS_DIR, check_archive

    sessions = sessions_for(settings, create=False)
    progress = Progress(
        TextColumn("checking"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True, disable=not err_console.is_terminal,
    )
    task = progress.add_task("files", total=None)
    try:
        with progress:
            report = check_archive(
                settings.data_dir, sessions, keys=store, move_orphans=move_orphans, min_age_s=min_age_hours * 3600,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except SQLAlchemyError as exc:
        raise exit_error(f"database unavailable: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise exit_error(f"archive: {exc}") from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), sort_keys=True))
    else:
        _print(report, settings.data_dir / ORPHANS_DIR, verify)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _print(report, orphans_dir, verify: bool) -> None:  # type: ignore[no-untyped-def]
    console = Console(highlight=False, soft_wrap=True)
    line = f"{report.files_checked} archived files ({report.bytes_checked / 1e6:.1f} MB) checked"
    if verify:
        line += f", {report.verified} watermarks verified"
    line += f": {len(report.findings)} not as recorded, {len(report.orphans)} not named by any row"
    console.print(line, markup=False)
    for f in report.findings:
        tiles = f"; tiles {', '.join(str(t) for t in f.tiles)}" if f.tiles else ""
        console.print(f"{f.problem}  {f.archive_path}  (row {f.instance_id}, {f.sop_instance_uid} v{f.version}, "
                      f"{f.state}): {f.detail}{tiles}", markup=False)
    moved = set(report.moved)
    for rel in report.orphans:
        why = report.not_moved.get(rel)
        status = f" (moved to {orphans_dir})" if rel in moved else (f" (not moved: {why})" if why else "")
        console.print(f"orphan: {rel}{status}", markup=False)


def register(app: typer.Typer) -> None:
    """Add the ``archive`` group to ``app``."""
    app.add_typer(archive_app, name="archive")
