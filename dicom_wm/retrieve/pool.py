"""Where verification runs: in worker processes, ahead of the sender.

A retrieve sends instance *i* while instances *i+1 ... i+window* are read,
hashed and verified (for ``original`` also restored) in a pool of spawned
processes, so verification overlaps the network and the association
threads keep the GIL. With ``workers = 0`` everything runs in the calling
thread (small installations, tests).

The sending process reads each archived file itself and hands the *bytes*
to the verifier, so what is sent is exactly what was verified.

Verified-bytes cache: once the watermark of an instance's archived bytes
has been verified authentic (keyed MAC, provenance checks), the process
remembers the SHA-256 of those bytes, with the key store's state. A later
``watermarked`` retrieve whose bytes hash to the same value, with the key
store unchanged, is sending bytes identical to ones already verified, and
skips the second verification; any other difference (file changed, row
pointing elsewhere, key store rotated or edited) verifies in full. The
cache lives in this process's memory only (neither the database nor the
archive can vouch for an instance) and holds at most :data:`CACHE_ENTRIES`
instances. ``original`` always restores, and restoring verifies.

Each verification process loads the key store itself and reloads it when
the file changes (key rotation); no secret crosses a pipe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from dicom_wm.allocator import tune_allocator
from dicom_wm.db.destinations import EgressPolicy
from dicom_wm.db.models import InstanceState
from dicom_wm.errors import KeyStoreError
from dicom_wm.keys import KeyStore
from dicom_wm.process_setup import configure_logging, exit_when_orphaned
from dicom_wm.query.find import RetrieveItem
from dicom_wm.retrieve.egress import Prepared, Verdict, prepare, read_archived

__all__ = ["EgressPool", "KeyCache", "VerifiedCache", "default_workers", "CACHE_ENTRIES"]

log = logging.getLogger(__name__)

CACHE_ENTRIES = 200_000
READER_THREADS = 2

Stamp = tuple[int, int]


def default_workers() -> int:
    """Verification processes by default: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


class KeyCache:
    """The key store at ``path``, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._store: KeyStore | None = None
        self._stamp: Stamp | None = None
        self._lock = threading.Lock()

    def get(self) -> tuple[KeyStore, Stamp]:
        """The key store and the (mtime, size) stamp of the file it was read from."""
        try:
            st = self.path.stat()
        except OSError:
            raise KeyStoreError(f"key store {self.path} not found") from None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if self._store is None or stamp != self._stamp:
                self._store = KeyStore.load(self.path)
                self._stamp = stamp
            return self._store, stamp


class VerifiedCache:
    """Instance id -> (SHA-256 of bytes verified authentic, key store stamp); LRU."""

    def __init__(self, capacity: int = CACHE_ENTRIES) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, tuple[str, Stamp]] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, instance_id: int, digest: str, stamp: Stamp) -> bool:
        with self._lock:
            entry = self._entries.get(instance_id)
            if entry != (digest, stamp):
                return False
            self._entries.move_to_end(instance_id)
            return True

    def add(self, instance_id: int, digest: str, stamp: Stamp) -> None:
        with self._lock:
            self._entries[instance_id] = (digest, stamp)
            self._entries.move_to_end(instance_id)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def forget(self, instance_id: int) -> None:
        with self._lock:
            self._entries.pop(instance_id, None)

    def __len__(self) -> int:
        return len(self._entries)


_child: KeyCache | None = None


def _init_child(keys_path: str, log_level: int, parent: int) -> None:
    global _child
    tune_allocator()
    exit_when_orphaned(parent)
    configure_logging(log_level)
    _child = KeyCache(Path(keys_path))


def _prepare_in_child(
    item: RetrieveItem, policy: EgressPolicy, data: bytes, digest: str, recipient: str | None = None
) -> Prepared:
    if _child is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("verification process not initialised")
    out = _safe_prepare(item, policy, _child, data, digest, recipient)
    if policy is EgressPolicy.WATERMARKED:
        out.payload = None  # the sender has these bytes already: do not ship them back
    return out


def _safe_prepare(
    item: RetrieveItem, policy: EgressPolicy, keys: KeyCache, data: bytes, digest: str, recipient: str | None = None
) -> Prepared:
    try:
        store, _stamp = keys.get()
        return prepare(item, policy, store, data, digest, recipient)
    except KeyStoreError as exc:
        return Prepared(item, policy, Verdict.UNREADABLE, reason=f"key store: {exc}")
    except Exception as exc:  # one instance's bug must not end the whole retrieve
        log.exception("verification of instance %d failed unexpectedly", item.instance_id)
        return Prepared(item, policy, Verdict.UNREADABLE, reason=f"internal error: {type(exc).__name__}: {exc}"[:300])


@dataclass
class _Job:
    item: RetrieveItem
    ready: Prepared | None = None  # decided without a verification process
    future: Future[Prepared] | None = None
    pool: ProcessPoolExecutor | None = None
    data: bytes | None = None
    digest: str | None = None
    stamp: Stamp | None = None


class EgressPool:
    """Verifies instances for retrieves (see the module docstring)."""

    def __init__(self, data_dir: Path, keys_path: Path, workers: int, *, cache_entries: int = CACHE_ENTRIES) -> None:
        if workers < 0:
            raise ValueError(f"workers {workers} must be 0 (in the caller's thread) or more")
        self.data_dir = Path(data_dir)
        self.keys = KeyCache(Path(keys_path))
        self.workers = workers
        self.cache = VerifiedCache(cache_entries)
        self._executor: ProcessPoolExecutor | None = None
        # reads and hashes files ahead of the sender (file I/O and hashlib release the GIL)
        self._readers = ThreadPoolExecutor(max_workers=READER_THREADS, thread_name_prefix="egress-read")
        self._lock = threading.Lock()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=get_context("spawn"),
                    initializer=_init_child,
                    initargs=(str(self.keys.path), logging.getLogger().level, os.getpid()),
                )
                log.info("started %d verification process(es) for retrieves", self.workers)
            return self._executor

    def start(self) -> None:
        """Start the processes now (they otherwise start with the first retrieve)."""
        if self.workers:
            list(self._pool().map(int, range(self.workers)))  # wait until they are up
            log.info("%d verification process(es) ready", self.workers)

    def prepared(
        self, items: Iterable[RetrieveItem], policy: EgressPolicy, recipient: str | None = None
    ) -> Iterator[Prepared]:
        """Each item verified and prepared, in order; at most ``2 * workers``
        (at least 2) ahead of the consumer."""
        window = max(4, 2 * self.workers)
        queue: deque[Future[_Job]] = deque()
        try:
            for item in items:
                queue.append(self._readers.submit(self._start, item, policy, recipient))
                if len(queue) >= window:
                    yield self._finish(queue.popleft().result(), policy)
            while queue:
                yield self._finish(queue.popleft().result(), policy)
        finally:
            for started in queue:  # the consumer stopped early (cancel, abort)
                if not started.cancel():
                    job = started.result()
                    if job.future is not None:
                        job.future.cancel()

    def _start(self, item: RetrieveItem, policy: EgressPolicy, recipient: str | None = None) -> _Job:
        data = read_archived(item, policy, self.data_dir)
        if isinstance(data, Prepared):
            return _Job(item, ready=data)
        digest = hashlib.sha256(data).hexdigest()
        try:
            _store, stamp = self.keys.get()
        except KeyStoreError as exc:
            return _Job(item, ready=Prepared(item, policy, Verdict.UNREADABLE, reason=f"key store: {exc}"))
        job = _Job(item, data=data, digest=digest, stamp=stamp)
        if item.state is not InstanceState.WATERMARKED:  # a hash comparison: no process needed
            job.ready = _safe_prepare(item, policy, self.keys, data, digest, recipient)
        elif (policy is EgressPolicy.WATERMARKED and digest == item.stored_sha256
              and self.cache.hit(item.instance_id, digest, stamp)):
            job.ready = Prepared(item, policy, Verdict.AUTHENTIC, payload=data, cached=True, file_changed=False)
        elif not self.workers:
            job.ready = _safe_prepare(item, policy, self.keys, data, digest, recipient)
        else:
            job.pool = self._pool()
            try:
                job.future = job.pool.submit(_prepare_in_child, item, policy, data, digest, recipient)
            except RuntimeError:  # the pool broke (a process was killed): start a new one
                self._replace(job.pool)
                job.pool = self._pool()
                job.future = job.pool.submit(_prepare_in_child, item, policy, data, digest, recipient)
        return job

    def _finish(self, job: _Job, policy: EgressPolicy) -> Prepared:
        if job.ready is not None:
            out = job.ready
        else:
            assert job.future is not None and job.pool is not None
            try:
                out = job.future.result()
            except Exception as exc:  # BrokenProcessPool and the like
                log.error("verification process failed on instance %d: %s", job.item.instance_id, exc)
                self._replace(job.pool)
                return Prepared(job.item, policy, Verdict.UNREADABLE,
                                reason=f"verification process failed: {type(exc).__name__}")
            if out.verdict is Verdict.AUTHENTIC and out.payload is None:  # watermarked: the bytes we read
                out.payload = job.data
        if job.item.state is InstanceState.WATERMARKED and job.digest is not None and job.stamp is not None:
            if out.verdict is Verdict.AUTHENTIC and not out.cached:
                self.cache.add(job.item.instance_id, job.digest, job.stamp)
            elif not out.ok:
                self.cache.forget(job.item.instance_id)
        return out

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Drop ``broken`` if it is still the current pool (the next submit starts a new one)."""
        with self._lock:
            if self._executor is not broken:
                return
            self._executor = None
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            old, self._executor = self._executor, None
        if old is not None:
            old.shutdown(wait=True, cancel_futures=True)
        self._readers.shutdown(wait=True, cancel_futures=True)
