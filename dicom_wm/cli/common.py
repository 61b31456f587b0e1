"""Options, key store loading, input discovery and output shared by the
file-level commands."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dicom_wm.errors import KeyStoreError
from dicom_wm.keys import DATA_DIR_ENV, KEYS_ENV, KeyStore, default_keys_path

if TYPE_CHECKING:  # sqlalchemy and pydantic load only in the commands that use them
    from sqlalchemy.orm import Session, sessionmaker

    from dicom_wm.settings import Settings

__all__ = [
    "DataDirOpt",
    "KeysOpt",
    "JsonOpt",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_CONFIG",
    "fail",
    "load_keystore",
    "Job",
    "plan_pairs",
    "plan_inputs",
    "FileRecord",
    "run_jobs",
    "exit_error",
    "cli_settings",
    "open_database",
    "sessions_for",
]

EXIT_OK = 0
EXIT_FAILED = 1  # at least one file did not succeed (or did not verify)
EXIT_USAGE = 2  # bad arguments (also click's own usage errors)
EXIT_CONFIG = 3  # cannot run at all: key store missing or invalid, ...

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar=DATA_DIR_ENV, help="data dir (default ./dicom-wm-data)", show_default=False),
]
KeysOpt = Annotated[
    Path | None,
    typer.Option("--keys", envvar=KEYS_ENV, help="key store file (default <data dir>/keys.json)", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON object per line per file on stdout")]

out_console = Console(highlight=False, soft_wrap=True, emoji=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def exit_error(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise
    (``raise exit_error(...) from None`` keeps the cause out of the output)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def cli_settings(config: Path | None, **overrides: Any) -> Settings:
    """Settings from flags (``overrides``) / env / TOML ``config``; exits
    with a one-line error."""
    from pydantic import ValidationError

    from dicom_wm.settings import load_settings

    try:
        return load_settings(config, **overrides)
    except (ValidationError, ValueError) as exc:
        raise exit_error(f"invalid configuration: {exc}", 2) from None


def open_database(
    config: Path | None, data_dir: Path | None, db: str | None, *, create: bool = True
) -> sessionmaker[Session]:
    """Settings from flags / env / TOML, the schema checked (SQLite: created
    or upgraded), and the session factory; exits with a one-line error.
    ``create=False`` (commands that only read) refuses a SQLite database
    that does not exist yet instead of creating one."""
    return sessions_for(cli_settings(config, data_dir=data_dir, db=db), create=create)


def sessions_for(settings: Settings, *, create: bool = True) -> sessionmaker[Session]:
    """The session factory of ``settings``' database, its schema checked
    (SQLite: created or upgraded, as ``serve`` does); exits with a one-line
    error. ``create``: as in :func:`open_database`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_wm.db.engine import get_sessionmaker
    from dicom_wm.ingest.runtime import SchemaOutOfDate, ensure_schema
    from dicom_wm.settings import redact_url

    url = make_url(settings.db_url)
    if not create and url.get_backend_name() == "sqlite" and not _has_schema(url.database):
        # a mistyped --data-dir must not report "0 instances" or leave a database behind
        raise exit_error(f"no dicom-wm database at {url.database} (wrong --data-dir? `dicom-wm serve` creates it)")
    try:
        ensure_schema(settings, upgrade_sqlite=True)
    except SchemaOutOfDate as exc:
        raise exit_error(str(exc), 2) from None
    except (SQLAlchemyError, OSError) as exc:
        raise exit_error(f"database {redact_url(settings.db_url)} unavailable: {str(exc).splitlines()[0]}") from None
    return get_sessionmaker(settings.db_url)


def _has_schema(sqlite_path: str | None) -> bool:
    """A SQLite file that exists and was migrated (an empty file is a valid,
    empty SQLite database: not ours)."""
    from dicom_wm.db import migrate

    path = Path(sqlite_path or "")
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        return migrate.current_revision(f"sqlite:///{path}") is not None
    except Exception:  # noqa: BLE001 - not a database at all: sessions_for reports it as unavailable
        return True


def fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    err_console.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def load_keystore(keys: Path | None, data_dir: Path | None) -> KeyStore:
    """The key store, or exit with :data:`EXIT_CONFIG` and a one-line reason."""
    try:
        return KeyStore.load(default_keys_path(keys, data_dir))
    except KeyStoreError as exc:
        fail(str(exc))


# -- inputs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One file to process: where it comes from and (embed/restore) where it goes."""

    src: Path
    dst: Path | None = None


def _walk(root: Path, exclude: Path | None) -> Iterator[Path]:
    """Regular files under ``root``, recursively, sorted, skipping hidden
    names (our own temporary files among them) and the ``exclude`` subtree."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and (exclude is None or (here / d).resolve() != exclude)
        )
        for name in sorted(filenames):
            if not name.startswith(".") and (here / name).is_file():
                yield here / name


def plan_pairs(inp: Path, out: Path) -> list[Job]:
    """Input -> output pairs for embed/restore.

    A file goes to ``out`` (or ``out/<name>`` when ``out`` is an existing
    directory); a directory is walked recursively and mirrored under ``out``.
    Exits with :data:`EXIT_USAGE` for impossible combinations.
    """
    if not inp.exists():
        fail(f"{inp} does not exist", EXIT_USAGE)
    if inp.is_dir():
        if out.exists() and not out.is_dir():
            fail(f"{inp} is a directory but {out} is a file", EXIT_USAGE)
        out_resolved = out.resolve()
        exclude = out_resolved if out_resolved.is_relative_to(inp.resolve()) else None
        jobs = [Job(src, out / src.relative_to(inp)) for src in _walk(inp, exclude)]
        if not jobs:
            fail(f"no files under {inp}", EXIT_FAILED)
        return jobs
    if out.is_dir():
        return [Job(inp, out / inp.name)]
    return [Job(inp, out)]


def plan_inputs(paths: Sequence[Path]) -> list[Job]:
    """Files named or found (recursively) under directories named, in order.
    A path that does not exist is kept so that it gets its own error line."""
    jobs: list[Job] = []
    for path in paths:
        if path.is_dir():
            found = [Job(p) for p in _walk(path, None)]
            if not found:
                err_console.print(f"warning: no files under {path}", markup=False)
            jobs.extend(found)
        else:
            jobs.append(Job(path))
    if not jobs:
        fail("no files to process", EXIT_FAILED)
    return jobs


# -- outputs -----------------------------------------------------------------------


@dataclass
class FileRecord:
    """What a command reports for one file (the ``--json`` line's fields)."""

    path: str
    status: str
    ok: bool = False
    output: str | None = None
    psnr_db: float | None = None
    max_abs_delta: int | None = None
    payload_bits: int | None = None
    capacity_bits: int | None = None
    record_uuid: str | None = None
    key_id: str | None = None
    tampered_tiles: list[list[int]] = field(default_factory=list)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> str:
        psnr = self.psnr_db if self.psnr_db is None or math.isfinite(self.psnr_db) else None
        doc: dict[str, Any] = {
            "path": self.path,
            "status": self.status,
            "output": self.output,
            "psnr_db": None if psnr is None else round(psnr, 3),
            "max_abs_delta": self.max_abs_delta,
            "payload_bits": self.payload_bits,
            "capacity_bits": self.capacity_bits,
            "record_uuid": self.record_uuid,
            "key_id": self.key_id,
            "tampered_tiles": self.tampered_tiles,
            "error": self.error,
        }
        doc.update(self.extra)
        return json.dumps(doc)


Renderer = Callable[[FileRecord], str]


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[tuple[Callable[[], None], Callable[[str], None]]]:
    """(advance, print_line). The bar lives on stderr; result lines go to
    stdout, or above the bar when both are the same terminal."""

    def plain(line: str) -> None:
        typer.echo(line)

    if not enabled or not err_console.is_terminal:
        yield (lambda: None), plain
        return
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    task = progress.add_task("files", total=total)
    above = sys.stdout.isatty()
    with progress:
        yield (lambda: progress.advance(task)), (
            (lambda line: progress.console.print(line, markup=False)) if above else plain
        )


def run_jobs(
    jobs: Sequence[Job],
    work: Callable[[Job], FileRecord],
    *,
    as_json: bool,
    render: Renderer,
    progress: bool,
) -> int:
    """Run ``work`` on every job, print one line per file, then a summary
    (stderr, human mode). Returns :data:`EXIT_OK` if every record is ok."""
    counts: dict[str, int] = {}
    all_ok = True
    with _progress(progress and not as_json, len(jobs)) as (advance, print_line):
        for job in jobs:
            record = work(job)
            all_ok &= record.ok
            counts[record.status] = counts.get(record.status, 0) + 1
            print_line(record.as_json() if as_json else render(record))
            advance()
    if not as_json and len(jobs) > 1:
        parts = ", ".join(f"{n} {status}" for status, n in counts.items())
        err_console.print(f"{len(jobs)} files: {parts}", markup=False)
    return EXIT_OK if all_ok else EXIT_FAILED
