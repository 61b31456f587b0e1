"""Archive integrity check (``dicom-wm archive check``): every file the
database names is present and unchanged, and every file in the archive is
accounted for.

* Each row that names an archived file (every version, any final state)
  must find it, and its SHA-256 must equal the recorded ``stored_sha256``.
* With a key store, WATERMARKED files are also verified as a retrieve
  verifies them (:func:`dicom_wm.retrieve.egress.prepare`): authentic, and
  this row's instance. This also catches a key store that lost a key old
  instances need.
* A changed file is a tamper detection, as on a retrieve: a
  ``tamper_detected`` event (details ``"check": "archive"``) and the
  security alert.
* Files under ``archive/`` that no row names are *orphans*: the file of an
  attempt whose worker died between writing it and committing, or the temp
  file of an interrupted write. They are listed; on request the ones older
  than ``min_age_s`` (a younger one may belong to an attempt about to
  commit) are moved to ``orphans/`` under the data dir, keeping their path,
  for the administrator to inspect. The check deletes nothing.

The check only reads the archive (besides that move) and may run beside a
running service.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_wm.db.destinations import EgressPolicy
from dicom_wm.db.models import EventKind, Instance, InstanceState
from dicom_wm.fileio import NotARegularFile, read_regular_bytes, sha256_file
from dicom_wm.ingest.events import add_event, user_actor
from dicom_wm.keys import KeyStore
from dicom_wm.query.find import RetrieveItem

__all__ = ["Finding", "ArchiveReport", "check_archive", "ORPHANS_DIR"]

ORPHANS_DIR = "orphans"
security = logging.getLogger("dicom_wm.security")


@dataclass
class Finding:
    """One archived file that is not as recorded."""

    instance_id: int
    sop_instance_uid: str
    version: int
    current: bool
    state: str
    archive_path: str
    problem: str  # missing | unreadable | changed | not_authentic | no_hash
    detail: str
    tiles: list[list[int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ArchiveReport:
    files_checked: int = 0
    bytes_checked: int = 0
    verified: int = 0  # WATERMARKED files whose watermark was verified authentic
    findings: list[Finding] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # relative to the data dir
    moved: list[str] = field(default_factory=list)  # orphans moved to orphans/
    not_moved: dict[str, str] = field(default_factory=dict)  # orphan -> why it could not be moved

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "files_checked": self.files_checked, "bytes_checked": self.bytes_checked,
            "verified": self.verified, "findings": [f.as_dict() for f in self.findings],
            "orphans": self.orphans, "moved": self.moved, "not_moved": self.not_moved,
        }


_COLUMNS = (
    Instance.id, Instance.sop_instance_uid, Instance.version, Instance.is_current, Instance.state,
    Instance.archive_path, Instance.stored_sha256, Instance.sop_class_uid, Instance.stored_transfer_syntax_uid,
    Instance.original_sample_sha256, Instance.record_uuid,
)


def _archived_rows(sessions: sessionmaker[Session]) -> list[Any]:
    with sessions() as session:
        return list(session.execute(select(*_COLUMNS).where(Instance.archive_path.is_not(None)).order_by(Instance.id)))


def _named_paths(sessions: sessionmaker[Session]) -> set[str]:
    with sessions() as session:
        return set(session.scalars(select(Instance.archive_path).where(Instance.archive_path.is_not(None))))


def _check_file(row: Any, data_dir: Path, keys: KeyStore | None) -> tuple[Finding | None, int, bool]:
    """(finding or None, bytes read, watermark verified)."""
    from dicom_wm.retrieve.egress import Verdict, prepare  # loads the engine: only when a file is checked

    def finding(problem: str, detail: str, tiles: list[list[int]] | None = None) -> Finding:
        return Finding(row.id, row.sop_instance_uid, row.version, bool(row.is_current), row.state.value,
                       row.archive_path, problem, detail, tiles or [])

    path = data_dir / row.archive_path
    verify = keys is not None and row.state is InstanceState.WATERMARKED
    try:
        if verify:
            data = read_regular_bytes(path)
            size, digest = len(data), hashlib.sha256(data).hexdigest()
        else:
            digest = sha256_file(path)
            size = path.stat().st_size
    except FileNotFoundError:
        return finding("missing", "the archived file is missing"), 0, False
    except NotARegularFile:
        return finding("changed", "the archived file is no longer a regular file (something was put in its place)"), 0, False
    except OSError as exc:
        return finding("unreadable", f"the archived file cannot be read: {exc.strerror or exc}"), 0, False
    if row.stored_sha256 is None:
        return finding("no_hash", "no SHA-256 is recorded for this file"), size, False
    changed = digest != row.stored_sha256
    if not verify:
        return (finding("changed", "SHA-256 differs from the one recorded") if changed else None), size, False
    item = RetrieveItem(row.id, row.sop_instance_uid, row.sop_class_uid, row.state, row.archive_path,
                        row.stored_transfer_syntax_uid, row.stored_sha256, row.original_sample_sha256, row.record_uuid)
    prepared = prepare(item, EgressPolicy.WATERMARKED, keys, data, digest)  # type: ignore[arg-type]
    authentic = prepared.verdict is Verdict.AUTHENTIC
    if changed:
        verdict = "watermark still authentic" if authentic else prepared.reason
        return finding("changed", f"SHA-256 differs from the one recorded; {verdict}",
                       prepared.tampered_tiles), size, False
    if not authentic:
        detail = f"the file is as recorded (SHA-256), but: {prepared.reason}"
        return finding("not_authentic", detail, prepared.tampered_tiles), size, False
    return None, size, True


def _record_tamper(sessions: sessionmaker[Session], f: Finding, actor: str) -> None:
    security.error(
        "SECURITY ALERT: archived instance %s (row %d, version %d) failed the archive check: %s; %s",
        f.sop_instance_uid, f.instance_id, f.version, f.problem, f.detail,
    )
    details = {"check": "archive", "problem": f.problem, "reason": f.detail, "tiles": f.tiles,
               "archive_path": f.archive_path, "file_changed": f.problem == "changed"}
    try:
        with sessions() as session, session.begin():
            add_event(session, EventKind.TAMPER_DETECTED, actor=actor, instance_id=f.instance_id,
                      sop_instance_uid=f.sop_instance_uid, details=details)
    except SQLAlchemyError as exc:
        security.error("tamper_detected event for %s could not be written: %s", f.sop_instance_uid, exc)


def _archive_files(data_dir: Path) -> list[str]:
    """Every file under archive/, as data-dir-relative POSIX paths (as rows store them)."""
    root = data_dir / "archive"
    out = []
    for dirpath, _dirs, files in os.walk(root):
        rel = Path(dirpath).relative_to(data_dir)
        out.extend((rel / name).as_posix() for name in files)
    return sorted(out)


def _move_orphan(data_dir: Path, rel: str) -> None:
    target = data_dir / ORPHANS_DIR / Path(rel).relative_to("archive")
    target.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:  # never over an orphan moved before under the same name
        try:
            os.link(data_dir / rel, target, follow_symlinks=False)
            break
        except FileExistsError:
            n += 1
            target = target.with_name(f"{Path(rel).name}.{n}")
    os.unlink(data_dir / rel)


def check_archive(
    data_dir: Path,
    sessions: sessionmaker[Session],
    *,
    keys: KeyStore | None = None,
    move_orphans: bool = False,
    min_age_s: float = 3600.0,
    progress: Callable[[int, int], None] | None = None,
) -> ArchiveReport:
    """Check every archived file against its row (module docstring).
    ``keys``: also verify the watermarks; ``progress(done, total)`` is
    called after each file."""
    report = ArchiveReport()
    actor = user_actor()
    rows = _archived_rows(sessions)
    for done, row in enumerate(rows, 1):
        found, size, verified = _check_file(row, data_dir, keys)
        report.files_checked += 1
        report.bytes_checked += size
        report.verified += verified
        if found is not None:
            report.findings.append(found)
            if found.problem in ("changed", "not_authentic"):
                _record_tamper(sessions, found, actor)
        if progress is not None:
            progress(done, len(rows))

    # the rows read again: a file archived during the check is not an orphan
    named = {row.archive_path for row in rows} | _named_paths(sessions)
    report.orphans = [rel for rel in _archive_files(data_dir) if rel not in named]
    if move_orphans and report.orphans:
        still = set(report.orphans) - _named_paths(sessions)  # and once more just before the move
        now = time.time()
        for rel in report.orphans:
            try:
                if rel in still and now - (data_dir / rel).lstat().st_mtime >= min_age_s:
                    _move_orphan(data_dir, rel)
                    report.moved.append(rel)
            except FileNotFoundError:
                continue
            except OSError as exc:  # e.g. a file where orphans/ needs a folder: left in place, said why
                report.not_moved[rel] = exc.strerror or str(exc)
    return report
