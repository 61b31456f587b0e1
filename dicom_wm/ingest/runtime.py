"""Start-up chores shared by ``serve`` and ``worker``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from dicom_wm.db import migrate
from dicom_wm.db.models import Instance
from dicom_wm.errors import KeyStoreError
from dicom_wm.keys import KeyStore
from dicom_wm.settings import Settings, redact_url

__all__ = ["prepare_data_dir", "ensure_schema", "ensure_keys", "clean_spool", "SchemaOutOfDate"]

log = logging.getLogger(__name__)


class SchemaOutOfDate(RuntimeError):
    """The database is not at the migrations' head revision."""


def prepare_data_dir(settings: Settings) -> None:
    for path in (settings.data_dir, settings.spool_dir, settings.archive_dir):
        path.mkdir(parents=True, exist_ok=True)


def ensure_schema(settings: Settings, *, upgrade_sqlite: bool) -> str | None:
    """SQLite (embedded): upgrade in place when ``upgrade_sqlite``. Any other
    database must already be at head (``dicom-wm db upgrade``); otherwise
    :class:`SchemaOutOfDate` names the revisions. Returns the revision."""
    url = settings.db_url
    if upgrade_sqlite and make_url(url).get_backend_name() == "sqlite":
        before = migrate.current_revision(url)
        migrate.upgrade(url)
        after = migrate.current_revision(url)
        if before != after:
            log.info("database %s upgraded from %s to %s", redact_url(url), before or "empty", after)
        return after
    current, head = migrate.current_revision(url), migrate.head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"database {redact_url(url)} is at revision {current or 'none (empty)'}, this version needs {head}: "
            "run `dicom-wm db upgrade`"
        )
    return current


def ensure_keys(settings: Settings, *, create: bool) -> KeyStore | None:
    """Load the key store; with ``create``, make one (one fresh active key)
    when there is none. Logs where it is, never a secret."""
    path = settings.keys_path
    if path.exists():
        store = KeyStore.load(path)
        if store.insecure_permissions():
            log.warning("key store %s is readable by group or others; chmod 600 it", path)
        log.info("key store %s: active key %s, %d key(s)", path, store.active_id, len(store.ids()))
        return store
    if not create:
        log.warning("key store %s not found yet; tasks wait for it (retry with backoff)", path)
        return None
    try:
        store = KeyStore.init(path)
    except KeyStoreError:
        if path.exists():  # another process created it first
            return KeyStore.load(path)
        raise
    log.info("created key store %s with active key %s (mode 0600; back it up)", path, store.active_id)
    return store


def clean_spool(settings: Settings, sessions: sessionmaker[Session], *, min_age_s: float = 0.0) -> int:
    """Remove spool files no row refers to: a crash between the spool write
    and the commit (the sender got no success and sends again), an
    interrupted temp file, or a crash between a worker's commit and its
    clean-up. Called by serve before it listens, when no reception can be in
    progress (one serve per data dir), and at every reconcile with
    ``min_age_s`` = ``orphan_spool_after_s``, which spares the files of
    receptions in progress. Returns how many were removed."""
    spool = settings.spool_dir
    if not spool.is_dir():
        return 0
    with sessions() as session:
        referenced = {Path(p).name for p in session.scalars(select(Instance.spool_path).where(Instance.spool_path.is_not(None)))}
    now = time.time()
    removed = 0
    for path in spool.iterdir():
        if path.name in referenced or not path.is_file():
            continue
        try:
            if now - path.stat().st_mtime < min_age_s:
                continue  # may belong to a reception in progress
            path.unlink()
            removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.info("removed %d orphaned spool file(s)", removed)
    return removed
