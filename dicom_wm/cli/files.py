"""File-level commands: embed, verify, restore.

Each file gets one line (``--json``: one JSON object) and its own status; a
bad file never stops a directory run, and output files are written
atomically (:mod:`dicom_wm.fileio`), so a failed file leaves nothing behind.
"""

from __future__ import annotations

import enum
import math
import os
from pathlib import Path
from typing import Annotated

import typer
from pydicom.dataset import Dataset

from dicom_wm.cli.common import (
    EXIT_CONFIG,
    DataDirOpt,
    FileRecord,
    Job,
    JsonOpt,
    KeysOpt,
    fail,
    load_keystore,
    plan_inputs,
    plan_pairs,
    run_jobs,
)
from dicom_wm.errors import InsufficientCapacity, KeyStoreError, NotAuthentic, SelfCheckFailed, UnsupportedInput
from dicom_wm.fileio import atomic_write_dataset, read_dataset
from dicom_wm.watermark import EmbedOptions, VerifyResult, VerifyStatus, embed_dataset, restore_dataset, verify_dataset

__all__ = ["register", "embed", "verify", "restore"]


class PredictorName(str, enum.Enum):
    classic = "classic"
    learned = "learned"
    classic_adaptive = "classic-adaptive"  # per-plane fitted linear stage on the classic one (weights in the header)
    learned_adaptive = "learned-adaptive"  # the same on the learned CNN


def _failure(record: FileRecord, exc: BaseException) -> FileRecord:
    """Fill ``record`` for an exception while reading or processing: expected
    ones get their message, anything else is reported as an internal error
    (never a traceback)."""
    if isinstance(exc, UnsupportedInput):
        record.status, record.error = "unsupported", str(exc)
    elif isinstance(exc, InsufficientCapacity):
        message = str(exc)
        record.status = "error"
        record.error = message if "capacity" in message.lower() else f"insufficient capacity: {message}"
    elif isinstance(exc, (SelfCheckFailed, KeyStoreError)):
        record.status, record.error = "error", str(exc)
    elif isinstance(exc, OSError):
        record.status, record.error = "error", f"cannot read: {exc.strerror or exc}"
    else:
        record.status, record.error = "error", f"internal error: {type(exc).__name__}: {exc}"
    return record


def _write(record: FileRecord, ds: Dataset, dst: Path) -> bool:
    """Write ``ds`` atomically; on failure fill ``record`` and return False."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_dataset(ds, dst)
    except OSError as exc:
        record.status, record.error = "error", f"cannot write {dst}: {exc.strerror or exc}"
        return False
    except Exception as exc:  # pydicom cannot encode the dataset
        record.status, record.error = "error", f"cannot write {dst}: {type(exc).__name__}: {exc}"
        return False
    return True


def _tiles_text(tiles: list[list[int]], limit: int = 4) -> str:
    shown = " ".join("[" + ",".join(str(v) for v in t) + "]" for t in tiles[:limit])
    more = f" and {len(tiles) - limit} more" if len(tiles) > limit else ""
    return f"{len(tiles)} tile(s) [frame,row0,col0,row1,col1]: {shown}{more}"


def _failed_line(r: FileRecord) -> str:
    return f"{r.status}  {r.path}: {r.error}" if r.error else f"{r.status}  {r.path}"


def _psnr_text(psnr: float | None) -> str:
    if psnr is None:
        return "-"
    return "inf" if math.isinf(psnr) else f"{psnr:.2f}"


# -- embed ---------------------------------------------------------------------------


def _render_embed(r: FileRecord) -> str:
    if not r.ok:
        return _failed_line(r)
    return (
        f"watermarked  {r.path} -> {r.output}  key {r.key_id}  PSNR {_psnr_text(r.psnr_db)} dB  "
        f"max |delta| {r.max_abs_delta}  payload {r.payload_bits}/{r.capacity_bits} bits"
        + ("  (lossy source: watermarked on its decoded samples)" if r.extra.get("lossy_source") else "")
    )


def embed(
    inp: Annotated[Path, typer.Argument(metavar="IN", help="DICOM file or directory", show_default=False)],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="output file or directory", show_default=False)],
    keys: KeysOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
    predictor: Annotated[PredictorName, typer.Option("--predictor", help="sample predictor")] = PredictorName.classic,
    roi_lossless: Annotated[
        bool,
        typer.Option("--roi-lossless/--no-roi-lossless", help="leave the detected body unchanged when the rest suffices"),
    ] = False,
    robust: Annotated[
        bool,
        typer.Option("--robust/--no-robust", help="add the robust leak-tracing layer (see docs/robust.md)"),
    ] = False,
) -> None:
    """Watermark IN into OUT (files, or directories mirrored recursively).

    Signs with the key store's active key. Exits 0 only if every file was
    watermarked.
    """
    store = load_keystore(keys, data_dir)
    from dicom_wm.engine import get_predictor

    try:
        get_predictor(predictor.value)
    except Exception as exc:  # a missing model or optional dependency
        fail(f"predictor {predictor.value!r} is not available: {exc}", EXIT_CONFIG)
    jobs = plan_pairs(inp, out)
    # run_jobs takes the files one at a time: the robust layer may use every core for one file's planes
    options = EmbedOptions(predictor=predictor.value, roi_lossless=roi_lossless, robust=robust, threads=os.cpu_count() or 1)

    def work(job: Job) -> FileRecord:
        assert job.dst is not None
        record = FileRecord(
            path=str(job.src),
            status="error",
            output=str(job.dst),
            extra={
                "predictor": None, "model_sha256": None, "lossy_source": None, "walk_mode": None,
                "body_unchanged": None, "robust_message": None,
            },
        )
        try:
            result = embed_dataset(read_dataset(job.src), store, options=options)
        except Exception as exc:
            return _failure(record, exc)
        if not _write(record, result.dataset, job.dst):
            return record
        record.status, record.ok = "watermarked", True
        record.psnr_db, record.max_abs_delta = result.psnr_db, result.max_abs_delta
        record.payload_bits, record.capacity_bits = result.payload_bits, result.capacity_bits
        record.record_uuid, record.key_id = result.record_uuid, result.key_id
        record.extra = {
            "predictor": result.predictor,
            "model_sha256": result.model_sha256,
            "lossy_source": result.lossy_source,
            "walk_mode": result.walk_mode,
            "body_unchanged": result.body_unchanged,
            "robust_message": result.robust_message,
        }
        return record

    raise typer.Exit(run_jobs(jobs, work, as_json=as_json, render=_render_embed, progress=inp.is_dir()))


# -- verify --------------------------------------------------------------------------


def _fill_from_verify(record: FileRecord, result: VerifyResult) -> None:
    record.record_uuid, record.key_id = result.record_uuid, result.key_id
    record.payload_bits, record.capacity_bits = result.payload_bits, result.capacity_bits
    record.tampered_tiles = [list(t) for t in result.tampered_tiles]
    if result.frames is not None:
        record.extra["frames"] = result.frames


def _render_verify(r: FileRecord) -> str:
    if r.status == "authentic":
        return f"authentic  {r.path}  key {r.key_id}  record {r.record_uuid}"
    if r.status == "tampered":
        return f"tampered  {r.path}  {_tiles_text(r.tampered_tiles)}" + (f"  ({r.error})" if r.error else "")
    if r.status == "not_watermarked" and not r.error:
        return f"not_watermarked  {r.path}: no dicom-wm watermark"
    return _failed_line(r)


def verify(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="DICOM files or directories", show_default=False)],
    keys: KeysOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
    series: Annotated[
        bool,
        typer.Option(
            "--series",
            help="treat the PATHs as one series (or give a Series Instance UID with a database): "
            "also report instances missing from it or added to it",
        ),
    ] = False,
    db: Annotated[
        str | None,
        typer.Option("--db", envvar="DICOM_WM_DB", help="database URL for --series provenance", show_default=False),
    ] = None,
) -> None:
    """Check watermarks and report each file's status.

    Status is one of authentic, tampered (with the tiles that no longer
    match), not_watermarked, invalid (MAC mismatch that cannot be localised,
    or unknown key) or unsupported. Exits 0 only if every file is authentic.
    """
    store = load_keystore(keys, data_dir)
    if series:
        raise typer.Exit(_verify_series(paths, store, data_dir, db, as_json))
    jobs = plan_inputs(paths)

    def work(job: Job) -> FileRecord:
        record = FileRecord(path=str(job.src), status="error")
        try:
            result = verify_dataset(read_dataset(job.src), store)
        except Exception as exc:
            return _failure(record, exc)
        _fill_from_verify(record, result)
        record.status, record.error = result.status.value, result.error
        record.ok = result.status is VerifyStatus.AUTHENTIC
        return record

    progress = any(p.is_dir() for p in paths)
    raise typer.Exit(run_jobs(jobs, work, as_json=as_json, render=_render_verify, progress=progress))


def _verify_series(paths: list[Path], store, data_dir: Path | None, db: str | None, as_json: bool) -> int:
    """``verify --series``: one report for the whole series."""
    import json

    from dicom_wm.keys import default_data_dir
    from dicom_wm.series import archived_series_paths, verify_series
    from dicom_wm.settings import SQLITE_FILE

    base = default_data_dir(data_dir)
    url = db or (f"sqlite:///{(base / SQLITE_FILE).resolve()}" if (base / SQLITE_FILE).exists() else None)
    items: list = [p for p in paths]
    uid = None
    if len(paths) == 1 and not paths[0].exists():
        uid = str(paths[0])
        if url is None:
            fail(f"{uid} is not a path, and no database is configured to look up that series", EXIT_CONFIG)
    if url is None:
        report = verify_series(items, store)
    else:
        from dicom_wm.db import session_scope

        with session_scope(url) as session:
            if uid is not None:
                items = archived_series_paths(session, uid, base)
            report = verify_series(items, store, series_uid=uid, session=session)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        for inst in report.instances:
            tail = f"  {_tiles_text(inst.tampered_tiles)}" if inst.tampered_tiles else ""
            tail += f"  ({inst.error})" if inst.error else ""
            typer.echo(f"{inst.status.value}  {inst.source}{tail}")
        for m in report.missing:
            typer.echo(f"missing  instance {m.instance_number or '?'} {m.sop_instance_uid or ''} ({m.reason})")
        for a in report.added:
            typer.echo(f"added  {a.source} ({a.added_reason})")
        typer.echo(f"series {report.series_instance_uid or '?'}: {'ok' if report.ok else 'NOT ok'}")
    return 0 if report.ok else 1


# -- restore -------------------------------------------------------------------------


def _render_restore(r: FileRecord) -> str:
    if not r.ok:
        return _failed_line(r)
    forced = r.extra.get("verify_status")
    note = f"  (forced: instance was {forced})" if forced and forced != "authentic" else ""
    return f"restored  {r.path} -> {r.output}  key {r.key_id}  record {r.record_uuid}{note}"


def restore(
    inp: Annotated[Path, typer.Argument(metavar="IN", help="watermarked file or directory", show_default=False)],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="output file or directory", show_default=False)],
    keys: KeysOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
    force: Annotated[
        bool, typer.Option("--force", help="restore what can be restored even if the instance does not verify")
    ] = False,
) -> None:
    """Give back the original instance, sample- and element-exact.

    Refuses an instance that does not verify as authentic unless --force.
    Exits 0 only if every file was restored.
    """
    store = load_keystore(keys, data_dir)
    jobs = plan_pairs(inp, out)

    def work(job: Job) -> FileRecord:
        assert job.dst is not None
        record = FileRecord(path=str(job.src), status="error", output=str(job.dst), extra={"verify_status": None})
        try:
            result = restore_dataset(read_dataset(job.src), store, force=force)
        except NotAuthentic as exc:
            record.status = "error" if force else "refused"
            record.error = str(exc) if force else f"{exc} (--force overrides)"
            return record
        except Exception as exc:
            return _failure(record, exc)
        if not _write(record, result.dataset, job.dst):
            return record
        _fill_from_verify(record, result.verify)
        record.status, record.ok = "restored", True
        record.extra["verify_status"] = result.verify.status.value
        return record

    raise typer.Exit(run_jobs(jobs, work, as_json=as_json, render=_render_restore, progress=inp.is_dir()))


def register(app: typer.Typer) -> None:
    """Add embed, verify and restore to ``app``."""
    app.command("embed")(embed)
    app.command("verify")(verify)
    app.command("restore")(restore)
