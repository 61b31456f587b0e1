"""The watermark task: one instance id in, one final state out.

The same function runs in the embedded pool and in Celery workers. It takes
an id (never an ORM object), re-reads the row, and is idempotent:

1. a row already in a final state is left alone;
2. the row is *claimed*: state WATERMARKING with a fresh claim token (a
   duplicate delivery may take a row over from a crashed worker);
3. the spooled file is read and watermarked (the engine self-checks);
4. the result goes into the archive under a name unique to this attempt
   (temp, fsync, rename);
5. the row is finished in one transaction *only if this attempt's token is
   still the row's*: state, hashes, key id, record UUID, versions, timings,
   worker host, plus the event. A superseded attempt deletes its file;
6. the spool copy is removed.

:func:`process_batch` does the same for several ids at once (the gpu
queue's mode): one shared prediction pass over all their planes, then each
row finished on its own, exactly as above.

So every instance reaches exactly one final state and one final event, even
with crashes and duplicate messages. Instances without pixel data are
SKIPPED and archived as received; instances the engine refuses are FAILED
with the reason, also archived as received. I/O, database and key-store
errors are transient: :class:`Outcome.RETRY` until the caller's last
attempt, then FAILED.
"""

from __future__ import annotations

import enum
import hashlib
import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

import dicom_wm
from dicom_wm.db.engine import get_sessionmaker
from dicom_wm.db.models import PENDING_STATES, EventKind, Instance, InstanceState, utcnow
from dicom_wm.errors import InsufficientCapacity, KeyStoreError, SelfCheckFailed, UnsupportedInput
from dicom_wm.fileio import atomic_write_bytes, read_dataset, unlink_quietly
from dicom_wm.ingest.events import add_event
from dicom_wm.ingest.layout import archive_relpath
from dicom_wm.keys import KeyStore
from dicom_wm.settings import Predictor as PredictorKind
from dicom_wm.settings import Settings

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from dicom_wm.engine.predictors import Predictor
    from dicom_wm.pixels import PixelPlanes

__all__ = [
    "Outcome",
    "TaskResult",
    "WorkerContext",
    "process_instance",
    "process_batch",
    "resolve_predictor",
    "check_predictor",
    "PIXEL_DATA_KEYWORDS",
]

log = logging.getLogger(__name__)

PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class Outcome(str, enum.Enum):
    WATERMARKED = "watermarked"
    SKIPPED = "skipped"
    FAILED = "failed"
    RETRY = "retry"  # transient error; call again later
    ALREADY_FINAL = "already_final"  # nothing to do (duplicate delivery)
    SUPERSEDED = "superseded"  # another attempt took the row over
    MISSING = "missing"  # no such row


@dataclass(frozen=True)
class TaskResult:
    instance_id: int
    outcome: Outcome
    reason: str | None = None


@dataclass
class WorkerContext:
    """What a worker process needs, built once per process."""

    settings: Settings
    host: str = field(default_factory=socket.gethostname)
    _keys: KeyStore | None = None
    _keys_stamp: tuple[int, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _predictor: tuple[Predictor, str] | None = None

    @property
    def sessions(self) -> sessionmaker[Session]:
        return get_sessionmaker(self.settings.db_url)

    @property
    def actor(self) -> str:
        return f"worker@{self.host}:{os.getpid()}"

    def keys(self) -> KeyStore:
        """The key store, re-read when its file changes (rotation)."""
        path = self.settings.keys_path
        try:
            st = path.stat()
        except OSError:
            raise KeyStoreError(f"key store {path} not found (serve creates it on first start)") from None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if self._keys is None or stamp != self._keys_stamp:
                self._keys = KeyStore.load(path)
                self._keys_stamp = stamp
            return self._keys

    def engine_predictor(self) -> tuple[Predictor, str]:
        """This process's predictor, loaded once, and the device it runs on
        (see :func:`resolve_predictor`)."""
        with self._lock:
            if self._predictor is None:
                self._predictor = resolve_predictor(self.settings)
            return self._predictor


_ADAPTIVE = (PredictorKind.CLASSIC_ADAPTIVE, PredictorKind.LEARNED_ADAPTIVE)


def check_predictor(settings: Settings) -> tuple[str, str]:
    """What :func:`resolve_predictor` will give, as (predictor name, device),
    without creating a CUDA context (a Celery parent must not, before it
    forks): checks the device is visible and the checkpoint's hash on the
    CPU. Raises like :func:`resolve_predictor`."""
    from dicom_wm.engine.predictors import ClassicRhombus

    from dicom_wm.engine.adaptive import ADAPTIVE_PREFIX

    kind = settings.predictor
    prefix = ADAPTIVE_PREFIX if kind in _ADAPTIVE else ""
    if kind in (PredictorKind.CLASSIC, PredictorKind.CLASSIC_ADAPTIVE):
        return prefix + ClassicRhombus.name, "cpu"
    from dicom_wm.engine.learned import load_learned_predictor, select_device

    device = select_device(settings.device.value)
    if kind is PredictorKind.AUTO and device.type != "cuda":
        return ClassicRhombus.name, "cpu"
    return prefix + load_learned_predictor(device="cpu").name, str(device)


def resolve_predictor(settings: Settings) -> tuple[Predictor, str]:
    """The predictor the settings ask for, and its device (``"cpu"``,
    ``"cuda:0"``, ...). ``predictor = "auto"`` takes the learned predictor
    when ``device`` resolves to CUDA and the classic one otherwise; the
    classic predictor always runs on the CPU. Raises ``ValueError`` for a
    device torch cannot see and ``ModelIntegrityError`` for a bad checkpoint."""
    from dicom_wm.engine.predictors import ClassicRhombus

    from dicom_wm.engine.adaptive import AdaptiveFitter

    kind = settings.predictor
    if kind is PredictorKind.CLASSIC:
        return ClassicRhombus(), "cpu"
    if kind is PredictorKind.CLASSIC_ADAPTIVE:
        return AdaptiveFitter(ClassicRhombus()), "cpu"
    from dicom_wm.engine.learned import load_learned_predictor, select_device

    device = select_device(settings.device.value)
    if kind is PredictorKind.AUTO and device.type != "cuda":
        return ClassicRhombus(), "cpu"
    learned = load_learned_predictor(device=device)
    if kind is PredictorKind.LEARNED_ADAPTIVE:
        return AdaptiveFitter(learned), str(learned.device)
    return learned, str(learned.device)


def process_instance(ctx: WorkerContext, instance_id: int, *, final_attempt: bool = False) -> TaskResult:
    """Watermark instance ``instance_id`` (see the module docstring)."""
    try:
        claimed = _claim(ctx, instance_id)
    except SQLAlchemyError as exc:
        return _transient(ctx, instance_id, None, f"database: {_short(exc)}", final_attempt)
    if isinstance(claimed, TaskResult):
        return claimed
    row, token = claimed
    started = time.perf_counter()

    def run() -> TaskResult:
        loaded = _load(ctx, row, token)
        if isinstance(loaded, TaskResult):
            return loaded
        ds, timings = loaded
        predictor, device = ctx.engine_predictor()
        return _embed(ctx, row, token, ds, timings, started, predictor, {"device": device})

    return _guarded(ctx, row, token, final_attempt, run)


def _guarded(ctx: WorkerContext, row: Instance, token: str, final_attempt: bool, step: Callable[[], Any]) -> Any:
    """Run one step of a claimed row's attempt: I/O, database and key-store
    errors are transient (RETRY, FAILED on the final attempt), anything else
    FAILS the row; either way only this row."""
    try:
        return step()
    except (OSError, SQLAlchemyError, KeyStoreError) as exc:
        kind = "database" if isinstance(exc, SQLAlchemyError) else "key store" if isinstance(exc, KeyStoreError) else "I/O"
        return _transient(ctx, row.id, token, f"{kind}: {_short(exc)}", final_attempt)
    except Exception as exc:  # a bug must not leave the row stuck
        log.exception("instance %d: unexpected error", row.id)
        return _fail(ctx, row, token, f"internal error: {type(exc).__name__}: {_short(exc)}", {})


def process_batch(
    ctx: WorkerContext, instance_ids: Sequence[int], *, final_attempts: Sequence[bool] | None = None
) -> dict[int, TaskResult]:
    """Watermark several instances, predicting their planes together.

    Each row is claimed, loaded, embedded, written and finished exactly as
    :func:`process_instance` does it (same rows, events, idempotence and
    transient-error handling), and a row's error ends only that row. The one
    shared step: before embedding, the planes of every image instance are
    predicted in as few forward passes as possible (grouped by plane shape,
    :func:`dicom_wm.engine.predictors.predict_many`), and each instance's
    embed is handed those maps through a
    :class:`~dicom_wm.engine.predictors.PrecomputedPredictor` (used only for
    planes equal to the ones predicted). If the shared pass fails, each
    instance predicts its own planes. The classic predictor is cheap per
    instance and is not batched.

    Returns one result per distinct id (a repeated id is processed once).
    """
    ids = list(dict.fromkeys(int(i) for i in instance_ids))
    finals = dict(zip((int(i) for i in instance_ids), final_attempts or [False] * len(instance_ids)))
    results: dict[int, TaskResult] = {}
    work: list[tuple[Instance, str, float, Dataset, dict[str, float]]] = []
    for instance_id in ids:
        try:
            claimed = _claim(ctx, instance_id)
        except SQLAlchemyError as exc:
            results[instance_id] = _transient(ctx, instance_id, None, f"database: {_short(exc)}", finals[instance_id])
            continue
        if isinstance(claimed, TaskResult):
            results[instance_id] = claimed
            continue
        row, token = claimed
        started = time.perf_counter()
        loaded = _guarded(ctx, row, token, finals[instance_id], lambda: _load(ctx, row, token))
        if isinstance(loaded, TaskResult):
            results[instance_id] = loaded
        else:
            work.append((row, token, started, *loaded))

    if not work:
        return results
    predictors: list[Predictor | None] = [None] * len(work)
    decoded: list[PixelPlanes | None] = [None] * len(work)
    shared_s = 0.0
    try:
        base, device = ctx.engine_predictor()
    except Exception as exc:  # noqa: BLE001 - each row then fails (or retries) on its own, as process_instance does
        log.error("cannot load the predictor for a batch of %d: %s", len(work), _short(exc))
    else:
        predictors = [base] * len(work)
        if not _is_classic(base):
            t = time.perf_counter()
            decoded = [_decoded(ctx, item[3]) for item in work]  # each embed reuses its instance's
            predictors = list(_batch_predictors(base, decoded))
            shared_s = time.perf_counter() - t
    for (row, token, started, ds, timings), predictor, px in zip(work, predictors, decoded):
        if shared_s:
            timings["batch_predict"] = shared_s

        def run(row=row, token=token, started=started, ds=ds, timings=timings, predictor=predictor, px=px) -> TaskResult:
            base, device = ctx.engine_predictor()  # loaded once; raises here again if it could not load
            extra = {"device": device, "batch_instances": len(work)}
            return _embed(ctx, row, token, ds, timings, started, predictor or base, extra, pixels=px)

        results[row.id] = _guarded(ctx, row, token, finals[row.id], run)
    return results


# Samples of one batch that are predicted together; the rest of a larger
# batch (long cine loops) predict inside their own embed. Bounds memory:
# planes, predictions and complexities are int64.
_BATCH_MAX_SAMPLES = 1 << 25


def _is_classic(predictor: Predictor) -> bool:
    from dicom_wm.engine.adaptive import AdaptiveFitter
    from dicom_wm.engine.predictors import ClassicRhombus

    if isinstance(predictor, AdaptiveFitter):
        predictor = predictor.base
    return isinstance(predictor, ClassicRhombus)


def _decoded(ctx: WorkerContext, ds: Dataset) -> PixelPlanes | None:
    """The samples embed_dataset will watermark, decoded once for the shared
    pass and the embed, or None where there is nothing to share: no pixel
    data, the robust layer (it marks the planes first), undecodable or
    already watermarked input (embed reports those)."""
    from dicom_wm.header import read_watermark_header
    from dicom_wm.pixels import read_samples

    if ctx.settings.robust or "PixelData" not in ds:
        return None
    try:
        if read_watermark_header(ds) is not None:
            return None
        px = read_samples(ds)
    except Exception:  # noqa: BLE001 - embed_dataset raises it again, for this instance only
        return None
    if px.samples.shape[1] < 2 or px.samples.shape[2] < 2:
        return None
    return px


def _batch_predictors(base: Predictor, decoded: list[PixelPlanes | None]) -> list[Predictor]:
    """One predictor per instance: a PrecomputedPredictor over the shared
    forward passes where its planes (its A-pass carriers) took part, else ``base``."""
    from dicom_wm.engine.adaptive import AdaptiveFitter
    from dicom_wm.engine.predictors import PrecomputedPredictor, predict_many
    from dicom_wm.watermark import _to_planes

    if isinstance(base, AdaptiveFitter):  # share the base's forward passes; each embed fits its own weights
        shared = _batch_predictors(base.base, decoded)
        return [base if p is base.base else AdaptiveFitter(p) for p in shared]
    out: list[Predictor] = [base] * len(decoded)
    members: list[tuple[int, np.ndarray]] = []
    budget = _BATCH_MAX_SAMPLES
    for i, px in enumerate(decoded):
        planes = None if px is None else _to_planes(px.samples)
        if planes is not None and planes.size <= budget:
            members.append((i, planes))
            budget -= planes.size
    if not members:
        return out
    try:
        maps = predict_many(base, [planes for _i, planes in members])
    except Exception as exc:  # noqa: BLE001 - e.g. device out of memory: each instance predicts alone
        log.warning("batch prediction of %d instance(s) failed, predicting one by one: %s", len(members), _short(exc))
        return out
    for (i, planes), (pred, cost) in zip(members, maps):
        out[i] = PrecomputedPredictor(base, planes, pred, cost)
    return out


# -- steps ---------------------------------------------------------------------------


# Claims beyond the retry budget that may end without a result for a benign
# reason (a duplicate delivery, a restart mid-task) before a row counts as one
# that kills its worker (out of memory, a crashing decoder) and is failed
# instead of being claimed again forever.
_UNFINISHED_CLAIMS_ALLOWED = 2


def _crash_loop_reason(attempts: int) -> str:
    return (f"gave up after {attempts} attempts without a final result (does this instance kill "
            "the worker process: out of memory, or a crashing decoder?)")


def _claim(ctx: WorkerContext, instance_id: int) -> tuple[Instance, str] | TaskResult:
    """Take the row (one UPDATE ... RETURNING); a final or missing row is not
    taken, and a row that has used up its attempts without a result is FAILED."""
    token = uuid.uuid4().hex
    now = utcnow()
    with ctx.sessions() as session:
        row = session.scalars(
            update(Instance)
            .where(Instance.id == instance_id, Instance.state.in_(PENDING_STATES))
            .values(
                state=InstanceState.WATERMARKING,
                claim_token=token,
                claimed_at=now,
                updated_at=now,
                attempts=Instance.attempts + 1,
                worker_host=ctx.host,
            )
            .returning(Instance),
            execution_options={"synchronize_session": False},
        ).one_or_none()
        session.commit()
        if row is None:
            if session.get(Instance, instance_id) is None:
                log.warning("instance %d: no such row", instance_id)
                return TaskResult(instance_id, Outcome.MISSING)
            return TaskResult(instance_id, Outcome.ALREADY_FINAL)
    if row.attempts > ctx.settings.max_retries + 1 + _UNFINISHED_CLAIMS_ALLOWED:
        return _fail(ctx, row, token, _crash_loop_reason(row.attempts - 1), {})
    return row, token


def _load(ctx: WorkerContext, row: Instance, token: str) -> tuple[Dataset, dict[str, float]] | TaskResult:
    """Read the spooled file; rows with nothing to embed are finished here."""
    from dicom_wm.waveform import is_waveform

    data_dir = ctx.settings.data_dir
    if not row.spool_path:
        return _fail(ctx, row, token, "no spool file recorded for this instance", {})
    spool = data_dir / row.spool_path
    if not spool.exists():
        return _fail(ctx, row, token, f"spool file {row.spool_path} is missing", {})
    timings: dict[str, float] = {}
    t = time.perf_counter()
    try:
        ds = read_dataset(spool)
    except UnsupportedInput as exc:
        return _store_as_received(ctx, row, token, InstanceState.FAILED, f"unreadable: {exc}", timings)
    timings["read"] = time.perf_counter() - t

    if not any(k in ds for k in PIXEL_DATA_KEYWORDS) and not is_waveform(ds):
        return _store_as_received(
            ctx, row, token, InstanceState.SKIPPED, "no pixel or waveform data to protect", timings
        )
    too_big = _memory_refusal(ds, ctx.settings.embed_memory_limit_mb)
    if too_big:
        return _store_as_received(ctx, row, token, InstanceState.FAILED, too_big, timings)
    return ds, timings


# Peak memory of embed + self-check per decoded int32 sample (bench/bench_multiframe.py
# measured 23-25 bytes); twice that for int64 samples (above 16 bits stored).
_EMBED_BYTES_PER_SAMPLE = 32


def _memory_refusal(ds: Dataset, limit_mb: int | None) -> str | None:
    """Why an image is too large to watermark within ``limit_mb``, before
    anything is decoded (an out-of-memory kill would take the worker, and
    the instances it holds, with it); None when it fits or cannot be told
    (the engine then names any header problem)."""
    from dicom_wm.pixels import sample_dtype
    from dicom_wm.pixels.image_pixel import image_pixel

    if limit_mb is None or "PixelData" not in ds:
        return None
    try:
        header = image_pixel(ds)
    except UnsupportedInput:
        return None
    samples = header.frames * header.rows * header.columns * header.samples_per_pixel
    width = np.dtype(sample_dtype(header.bits_stored, header.signed)).itemsize // 4  # 2 for int64 samples
    need_mb = samples * _EMBED_BYTES_PER_SAMPLE * width // 2**20
    if need_mb <= limit_mb:
        return None
    return (f"too large to watermark here: {samples} samples need about {need_mb} MiB, more than the "
            f"{limit_mb} MiB a worker may use (max_embed_memory_mb; fewer workers give each more)")


def _embed(
    ctx: WorkerContext,
    row: Instance,
    token: str,
    ds: Dataset,
    timings: dict[str, float],
    started: float,
    predictor: Predictor,
    extra: dict[str, Any],
    *,
    pixels: PixelPlanes | None = None,
) -> TaskResult:
    """Embed (with ``predictor``; ``pixels``: the decoded samples of ``ds``
    when a batch already decoded them), archive, finish. ``extra`` goes into
    the event (the predictor's device, the batch)."""
    from dicom_wm.watermark import EmbedOptions, embed_dataset

    data_dir = ctx.settings.data_dir
    keys = ctx.keys()
    record = uuid.uuid4()
    t = time.perf_counter()
    robust_left_out = None
    try:
        options = EmbedOptions(roi_lossless=ctx.settings.roi_lossless, robust=ctx.settings.robust)
        try:
            result = embed_dataset(
                ds, keys, record_uuid=record, options=options, engine_predictor=predictor, pixels=pixels
            )
        except InsufficientCapacity as exc:
            if not options.robust:
                raise
            # Tamper evidence comes first: a plane too small (or too clipped)
            # to also carry the robust layer's undo information still gets
            # the reversible watermark; the row says the robust layer is missing.
            robust_left_out = f"robust layer left out: {exc}"
            result = embed_dataset(
                ds, keys, record_uuid=record, options=replace(options, robust=False),
                engine_predictor=predictor, pixels=pixels,
            )
    except (UnsupportedInput, InsufficientCapacity, SelfCheckFailed) as exc:
        timings["embed"] = time.perf_counter() - t
        kind = type(exc).__name__
        return _store_as_received(ctx, row, token, InstanceState.FAILED, f"{kind}: {exc}", timings)
    timings["embed"] = time.perf_counter() - t
    timings.update({f"engine_{k}": v for k, v in result.timings.items()})

    rel = archive_relpath(row.study_instance_uid, row.series_instance_uid, row.sop_instance_uid, row.version, token[:12])
    target = data_dir / rel
    t = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    encoded = io.BytesIO()
    pydicom.dcmwrite(encoded, result.dataset, enforce_file_format=True)
    stored = encoded.getvalue()
    stored_sha = hashlib.sha256(stored).hexdigest()
    atomic_write_bytes(stored, target)
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started

    values: dict[str, Any] = {
        "state": InstanceState.WATERMARKED,
        "state_reason": robust_left_out,
        "archive_path": str(rel),
        "stored_transfer_syntax_uid": str(result.dataset.file_meta.TransferSyntaxUID),
        "stored_size": len(stored),
        "stored_sha256": stored_sha,
        "key_id": result.key_id,
        "record_uuid": str(result.record_uuid),
        "original_sample_sha256": result.original_sample_sha256,
        "engine_version": dicom_wm.__version__,
        "predictor": result.predictor,
        "predictor_version": str(predictor.version) if result.predictor == predictor.name else None,
        "model_sha256": result.model_sha256,
        "payload_bits": int(result.payload_bits),
        "capacity_bits": int(result.capacity_bits),
        "psnr_db": float(result.psnr_db) if result.psnr_db != float("inf") else None,
        "max_abs_delta": int(result.max_abs_delta),
        "lossy_source": bool(result.lossy_source),
        "timings": _round(timings),
    }
    details = {
        "record_uuid": values["record_uuid"],
        "key_id": result.key_id,
        "psnr_db": values["psnr_db"],
        "max_abs_delta": values["max_abs_delta"],
        "payload_bits": values["payload_bits"],
        "capacity_bits": values["capacity_bits"],
        "predictor": result.predictor,
        "walk_mode": result.walk_mode,
        "robust_message": result.robust_message,
        "robust_left_out": robust_left_out,
        "body_unchanged": result.body_unchanged,
        "archive_path": str(rel),
        "stored_sha256": stored_sha,
        "total_s": values["timings"]["total"],
        **{k: v for k, v in extra.items() if k != "device"},
    }
    if result.predictor == predictor.name:  # the image path (waveforms have their own predictor)
        details["device"] = extra.get("device")
        shared = getattr(predictor, "base", None) if not hasattr(predictor, "hits") else predictor  # adaptive: its base
        if hasattr(shared, "hits"):  # planes whose maps came from the batch's shared forward passes
            details["batched_planes"] = int(shared.hits)
    return _finish(ctx, row, token, values, EventKind.WATERMARKED, details, target, Outcome.WATERMARKED)


def _store_as_received(
    ctx: WorkerContext, row: Instance, token: str, state: InstanceState, reason: str, timings: dict[str, float]
) -> TaskResult:
    """Archive the received bytes unchanged and finish as FAILED / SKIPPED."""
    data_dir = ctx.settings.data_dir
    rel = archive_relpath(row.study_instance_uid, row.series_instance_uid, row.sop_instance_uid, row.version, token[:12])
    target = data_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    _copy_atomic(data_dir / str(row.spool_path), target)
    values: dict[str, Any] = {
        "state": state,
        "state_reason": reason,
        "archive_path": str(rel),
        "stored_transfer_syntax_uid": row.received_transfer_syntax_uid,
        "stored_size": target.stat().st_size,
        "stored_sha256": row.received_sha256,
        "engine_version": dicom_wm.__version__,
        "timings": _round(timings),
    }
    kind = EventKind.SKIPPED if state is InstanceState.SKIPPED else EventKind.FAILED
    outcome = Outcome.SKIPPED if state is InstanceState.SKIPPED else Outcome.FAILED
    details = {"reason": reason, "archive_path": str(rel), "stored": "as received"}
    log.log(logging.INFO if outcome is Outcome.SKIPPED else logging.WARNING,
            "instance %d (%s) %s: %s", row.id, row.sop_instance_uid, state.value, reason)
    return _finish(ctx, row, token, values, kind, details, target, outcome)


def _fail(ctx: WorkerContext, row: Instance, token: str, reason: str, timings: dict[str, float]) -> TaskResult:
    """FAILED; archives the received bytes when the spool still has them."""
    spool = ctx.settings.data_dir / row.spool_path if row.spool_path else None
    if spool is not None and spool.exists():
        try:
            return _store_as_received(ctx, row, token, InstanceState.FAILED, reason, timings)
        except (OSError, SQLAlchemyError) as exc:
            log.error("instance %d: could not archive the received file: %s", row.id, exc)
    values = {"state": InstanceState.FAILED, "state_reason": reason, "engine_version": dicom_wm.__version__}
    return _finish(ctx, row, token, values, EventKind.FAILED, {"reason": reason}, None, Outcome.FAILED)


def _finish(
    ctx: WorkerContext,
    row: Instance,
    token: str,
    values: dict[str, Any],
    kind: EventKind,
    details: dict[str, Any],
    written: Path | None,
    outcome: Outcome,
) -> TaskResult:
    now = utcnow()
    values = {**values, "finished_at": now, "updated_at": now, "spool_path": None, "last_error": None,
              "worker_host": ctx.host}
    with ctx.sessions() as session:
        res = session.execute(
            update(Instance)
            .where(
                Instance.id == row.id,
                Instance.claim_token == token,
                Instance.state == InstanceState.WATERMARKING,
            )
            .values(**values),
            execution_options={"synchronize_session": False},  # no ORM object of the row in this session
        )
        if res.rowcount != 1:
            session.rollback()
            if written is not None:
                unlink_quietly(written)
            log.info("instance %d: attempt superseded by another worker; result discarded", row.id)
            return TaskResult(row.id, Outcome.SUPERSEDED)
        add_event(
            session, kind, actor=ctx.actor, instance_id=row.id, sop_instance_uid=row.sop_instance_uid,
            details={**details, "worker_host": ctx.host, "attempt": row.attempts},
        )
        session.commit()
    if row.spool_path:
        unlink_quietly(ctx.settings.data_dir / row.spool_path)
    return TaskResult(row.id, outcome, values.get("state_reason"))


def _transient(ctx: WorkerContext, instance_id: int, token: str | None, reason: str, final_attempt: bool) -> TaskResult:
    if final_attempt and token is not None:
        with ctx.sessions() as session:
            row = session.get(Instance, instance_id)
        if row is not None:
            return _fail(ctx, row, token, f"gave up after retries: {reason}", {})
    log.warning("instance %d: transient failure, will retry: %s", instance_id, reason)
    if token is not None:
        try:
            with ctx.sessions() as session:
                session.execute(
                    update(Instance)
                    .where(Instance.id == instance_id, Instance.claim_token == token,
                           Instance.state == InstanceState.WATERMARKING)
                    .values(state=InstanceState.QUEUED, last_error=reason, updated_at=utcnow())
                )
                session.commit()
        except SQLAlchemyError as exc:
            log.warning("instance %d: could not record the transient error: %s", instance_id, _short(exc))
    return TaskResult(instance_id, Outcome.RETRY, reason)


# -- helpers ---------------------------------------------------------------------------


def _copy_atomic(src: Path, dst: Path) -> None:
    with open(src, "rb") as fh:
        data = fh.read()
    atomic_write_bytes(data, dst)



def _round(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in timings.items()}


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]
