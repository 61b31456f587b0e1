"""Process set-up shared by ``serve`` / ``worker`` and the service's pool
processes (the embedded watermark workers, the retrieve's verification
processes): logging, and ending a pool process with its parent."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

__all__ = ["LOG_FORMAT", "configure_logging", "exit_when_orphaned"]

LOG_FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"


def configure_logging(level: int | str, *, force: bool = False) -> None:
    """Log to stderr with the process name. Below DEBUG the libraries say
    less: pynetdicom and alembic only warnings, pydicom nothing. pydicom's
    decode failures come back to us as exceptions, which the instance's
    FAILED reason (or the refusal) reports in one line; its own log lines
    repeated them with tracebacks that only alarmed."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=force)
    numeric = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int) or numeric > logging.DEBUG:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)


def exit_when_orphaned(parent: int, interval_s: float = 1.0) -> None:
    """End this process within ``interval_s`` of the death of ``parent``
    (the pid of the process that created the pool, passed in: it may
    already be gone when this runs).

    A pool process waits on its queue forever, so a ``kill -9`` of serve (or
    the OOM killer) left the pools running, re-parented to init, across
    later restarts. A daemon thread watches the parent id instead of the
    kernel's parent-death signal, which follows the *thread* that spawned
    the process and would fire when an association thread ends."""

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(0)  # nothing of ours to flush: every task commits its own state

    threading.Thread(target=watch, name="exit-when-orphaned", daemon=True).start()
