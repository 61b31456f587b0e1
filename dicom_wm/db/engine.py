"""Engine and session factory: one engine per process and URL.

SQLite (the embedded default) is opened in WAL mode with a busy timeout and
``synchronous=FULL``, so a committed row survives a power cut and readers do
not block the writer. Forked children (Celery prefork) get their own engine:
the cache is keyed by process id as well as by URL.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["get_engine", "get_sessionmaker", "session_scope", "dispose_engines", "SQLITE_BUSY_TIMEOUT_MS"]

SQLITE_BUSY_TIMEOUT_MS = 30_000

_lock = threading.Lock()
_engines: dict[tuple[int, str], Engine] = {}
_makers: dict[tuple[int, str], sessionmaker[Session]] = {}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
    finally:
        cur.close()


def _create(url: str) -> Engine:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
        # the driver's own lock wait; busy_timeout below covers the rest
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def get_engine(url: str) -> Engine:
    """The process's engine for ``url`` (created on first use)."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = _engines[key] = _create(url)
    return engine


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    """The process's session factory for ``url`` (``expire_on_commit=False``:
    rows stay readable after their transaction)."""
    key = (os.getpid(), url)
    maker = _makers.get(key)
    if maker is None:
        engine = get_engine(url)
        with _lock:
            maker = _makers.get(key)
            if maker is None:
                maker = _makers[key] = sessionmaker(engine, expire_on_commit=False)
    return maker


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with get_sessionmaker(url)() as session:
        with session.begin():
            yield session


def dispose_engines() -> None:
    """Close every pooled connection of this process (tests, shutdown)."""
    with _lock:
        for (pid, _url), engine in list(_engines.items()):
            if pid == os.getpid():
                engine.dispose()
        _engines.clear()
        _makers.clear()
