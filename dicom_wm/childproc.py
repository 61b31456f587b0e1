"""Set-up shared by the service's pool processes (the embedded watermark
workers, the retrieve's verification processes)."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["exit_when_orphaned"]


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
