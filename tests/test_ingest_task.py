"""The watermark task, called directly: final states, provenance, events,
idempotency, superseded attempts, transient failures."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select, update

from dicom_wm.db import Event, Instance, InstanceState, migrate
from dicom_wm.errors import InsufficientCapacity, KeyStoreError
from dicom_wm.ingest.receive import StoreRequest, receive_instance
from dicom_wm.ingest.runtime import ensure_keys, prepare_data_dir
from dicom_wm.ingest.task import Outcome, WorkerContext, process_instance
from dicom_wm.keys import KeyStore
from dicom_wm.pixels import read_samples
from dicom_wm.settings import load_settings
from dicom_wm.watermark import VerifyStatus, restore_dataset, verify_dataset
from ingest_support import small_ct, source_file


@pytest.fixture
def ctx(tmp_path: Path) -> WorkerContext:
    settings = load_settings(data_dir=tmp_path, max_retries=2)
    prepare_data_dir(settings)
    ensure_keys(settings, create=True)
    migrate.upgrade(settings.db_url)
    return WorkerContext(settings)


def _receive(ctx: WorkerContext, ds: pydicom.Dataset) -> int:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    req = StoreRequest("CT1", "DICOMWM", str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                       str(ds.file_meta.TransferSyntaxUID))
    return receive_instance(ctx.sessions, ctx.settings.data_dir, data, header, req).instance_id


def _row(ctx: WorkerContext, instance_id: int) -> Instance:
    with ctx.sessions() as s:
        return s.get(Instance, instance_id)


def _kinds(ctx: WorkerContext, instance_id: int) -> list[str]:
    with ctx.sessions() as s:
        return list(s.scalars(select(Event.kind).where(Event.instance_id == instance_id).order_by(Event.id)))


def test_watermarked_with_provenance_verifies_and_restores(ctx: WorkerContext) -> None:
    original = small_ct()
    iid = _receive(ctx, original)
    result = process_instance(ctx, iid)
    assert result.outcome is Outcome.WATERMARKED
    row = _row(ctx, iid)
    assert row.state is InstanceState.WATERMARKED and row.spool_path is None and row.attempts == 1
    assert not list((ctx.settings.data_dir / "spool").iterdir())
    stored = ctx.settings.data_dir / row.archive_path
    assert row.archive_path.startswith(f"archive/{original.StudyInstanceUID}/{original.SeriesInstanceUID}/")
    from dicom_wm.fileio import sha256_file

    assert row.stored_sha256 == sha256_file(stored) and row.stored_size == stored.stat().st_size
    assert row.key_id == KeyStore.load(ctx.settings.keys_path).active_id
    assert row.record_uuid and row.engine_version and row.predictor and row.predictor_version
    assert row.max_abs_delta == 1 and row.worker_host and row.timings["total"] > 0
    assert row.stored_transfer_syntax_uid == "1.2.840.10008.1.2.1"
    keys = KeyStore.load(ctx.settings.keys_path)
    ds = pydicom.dcmread(stored)
    verdict = verify_dataset(ds, keys)
    assert verdict.status is VerifyStatus.AUTHENTIC and verdict.record_uuid == row.record_uuid
    restored = restore_dataset(ds, keys).dataset
    assert np.array_equal(read_samples(restored).samples, read_samples(original).samples)
    assert verdict.original_sample_sha256 in (None, row.original_sample_sha256)
    assert _kinds(ctx, iid) == ["received", "watermarked"]


def test_second_delivery_is_a_no_op(ctx: WorkerContext) -> None:
    iid = _receive(ctx, small_ct())
    assert process_instance(ctx, iid).outcome is Outcome.WATERMARKED
    assert process_instance(ctx, iid).outcome is Outcome.ALREADY_FINAL
    assert _kinds(ctx, iid).count("watermarked") == 1
    assert process_instance(ctx, 999_999).outcome is Outcome.MISSING


def test_no_pixel_data_is_skipped_and_stored_as_received(ctx: WorkerContext) -> None:
    sr = pydicom.dcmread(source_file("reportsi.dcm"))
    iid = _receive(ctx, sr)
    assert process_instance(ctx, iid).outcome is Outcome.SKIPPED
    row = _row(ctx, iid)
    assert row.state is InstanceState.SKIPPED and "no pixel or waveform data" in row.state_reason
    assert (ctx.settings.data_dir / row.archive_path).stat().st_size == row.received_size
    assert row.stored_sha256 == row.received_sha256
    assert _kinds(ctx, iid) == ["received", "skipped"]


def test_waveform_is_watermarked_like_an_image(ctx: WorkerContext) -> None:
    """Issue #7 item 4: ECG storage goes through the same task."""
    from dicom_wm.fileio import read_dataset
    from dicom_wm.watermark import VerifyStatus, restore_dataset, verify_dataset

    ecg = pydicom.dcmread(pydicom.data.get_testdata_file("waveform_ecg.dcm"))
    iid = _receive(ctx, ecg)
    assert process_instance(ctx, iid).outcome is Outcome.WATERMARKED
    row = _row(ctx, iid)
    stored = read_dataset(ctx.settings.data_dir / row.archive_path)
    assert verify_dataset(stored, ctx.keys()).status is VerifyStatus.AUTHENTIC
    restored = restore_dataset(stored, ctx.keys()).dataset
    assert restored.WaveformSequence[0].WaveformData == ecg.WaveformSequence[0].WaveformData


def test_roi_lossless_setting_is_used_and_recorded(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, roi_lossless=True)
    prepare_data_dir(settings)
    ensure_keys(settings, create=True)
    migrate.upgrade(settings.db_url)
    ctx = WorkerContext(settings)
    iid = _receive(ctx, small_ct())
    assert process_instance(ctx, iid).outcome is Outcome.WATERMARKED
    with ctx.sessions() as s:
        details = s.scalars(
            select(Event.details).where(Event.instance_id == iid, Event.kind == "watermarked")
        ).one()
    assert details["walk_mode"] == "roi-lossless" and details["body_unchanged"] in (True, False)


def test_robust_layer_left_out_when_it_does_not_fit(tmp_path: Path) -> None:
    """With the robust setting on, an image too small to carry the robust
    layer's undo information still gets the reversible watermark; the row
    and the event say the robust layer is missing."""
    settings = load_settings(data_dir=tmp_path, robust=True)
    prepare_data_dir(settings)
    ensure_keys(settings, create=True)
    migrate.upgrade(settings.db_url)
    ctx = WorkerContext(settings)
    small = small_ct()
    crop = read_samples(small).samples[0, :128, :128, 0]
    small.Rows = small.Columns = 128
    small.PixelData = crop.astype("<i2" if small.PixelRepresentation else "<u2").tobytes()
    iid = _receive(ctx, small)
    assert process_instance(ctx, iid).outcome is Outcome.WATERMARKED
    row = _row(ctx, iid)
    assert row.state_reason.startswith("robust layer left out: insufficient capacity")
    with ctx.sessions() as s:
        details = s.scalars(select(Event.details).where(Event.instance_id == iid, Event.kind == "watermarked")).one()
    assert details["robust_message"] is None and details["robust_left_out"] == row.state_reason
    stored = pydicom.dcmread(ctx.settings.data_dir / row.archive_path)
    assert verify_dataset(stored, ctx.keys()).status is VerifyStatus.AUTHENTIC
    assert np.array_equal(read_samples(restore_dataset(stored, ctx.keys()).dataset).samples[0, :, :, 0], crop)

    iid = _receive(ctx, small_ct())  # a full slice carries both layers
    assert process_instance(ctx, iid).outcome is Outcome.WATERMARKED
    assert _row(ctx, iid).state_reason is None


def test_engine_refusal_fails_and_keeps_the_original(ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch) -> None:
    import dicom_wm.watermark as wm

    def no_room(*_a: object, **_k: object) -> None:
        raise InsufficientCapacity("insufficient capacity in frame 1 of 1: needs 900 bits, carries 10")

    monkeypatch.setattr(wm, "embed_dataset", no_room)
    iid = _receive(ctx, small_ct())
    result = process_instance(ctx, iid)
    assert result.outcome is Outcome.FAILED and "InsufficientCapacity" in result.reason
    row = _row(ctx, iid)
    assert row.state is InstanceState.FAILED and "needs 900 bits" in row.state_reason
    assert row.stored_sha256 == row.received_sha256 and (ctx.settings.data_dir / row.archive_path).exists()
    assert _kinds(ctx, iid) == ["received", "failed"]


def test_transient_errors_retry_then_fail_on_the_last_attempt(ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable() -> KeyStore:
        raise KeyStoreError("cannot read key store: Permission denied")

    monkeypatch.setattr(ctx, "keys", unreadable)
    iid = _receive(ctx, small_ct())
    first = process_instance(ctx, iid)
    assert first.outcome is Outcome.RETRY and "key store" in first.reason
    row = _row(ctx, iid)
    assert row.state is InstanceState.QUEUED and "Permission denied" in row.last_error and row.spool_path
    last = process_instance(ctx, iid, final_attempt=True)
    assert last.outcome is Outcome.FAILED and "gave up after retries" in last.reason
    assert _row(ctx, iid).attempts == 2


def test_superseded_attempt_discards_its_file(ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """A duplicate delivery took the row over while this attempt was embedding:
    this attempt must not finish it, and must remove the file it wrote."""
    import dicom_wm.watermark as wm

    real = wm.embed_dataset
    iid = _receive(ctx, small_ct())

    def embed_then_lose_the_claim(*a: object, **k: object):
        result = real(*a, **k)
        with ctx.sessions() as s:
            s.execute(update(Instance).where(Instance.id == iid).values(claim_token="someone-else"))
            s.commit()
        return result

    monkeypatch.setattr(wm, "embed_dataset", embed_then_lose_the_claim)
    assert process_instance(ctx, iid).outcome is Outcome.SUPERSEDED
    row = _row(ctx, iid)
    assert row.state is InstanceState.WATERMARKING and row.archive_path is None
    assert not [p for p in (ctx.settings.data_dir / "archive").rglob("*") if p.is_file()]
    assert "watermarked" not in _kinds(ctx, iid)


def test_missing_spool_file_fails_with_reason(ctx: WorkerContext) -> None:
    iid = _receive(ctx, small_ct())
    (ctx.settings.data_dir / _row(ctx, iid).spool_path).unlink()
    result = process_instance(ctx, iid)
    assert result.outcome is Outcome.FAILED and "missing" in result.reason


def test_instance_that_keeps_killing_its_worker_is_failed_not_claimed_forever(ctx: WorkerContext) -> None:
    """A worker killed mid-embed (out of memory, a crashing decoder) leaves the
    row WATERMARKING; the pool or broker hands it out again. Once its claims
    exceed the retry budget (max_retries 2: 3 attempts) plus 2 for benign
    interruptions, the next claim fails it and keeps the received bytes."""
    iid = _receive(ctx, small_ct())
    with ctx.sessions() as s:  # five claims that ended with the worker's death
        s.execute(update(Instance).where(Instance.id == iid).values(state=InstanceState.WATERMARKING, attempts=4))
        s.commit()
    assert process_instance(ctx, iid).outcome is Outcome.WATERMARKED  # the fifth claim is still allowed

    iid = _receive(ctx, small_ct())
    with ctx.sessions() as s:
        s.execute(update(Instance).where(Instance.id == iid).values(state=InstanceState.WATERMARKING, attempts=5))
        s.commit()
    result = process_instance(ctx, iid)
    assert result.outcome is Outcome.FAILED
    row = _row(ctx, iid)
    assert row.state is InstanceState.FAILED and row.attempts == 6
    assert row.state_reason.startswith("gave up after 5 attempts without a final result")
    assert row.stored_sha256 == row.received_sha256 and (ctx.settings.data_dir / row.archive_path).exists()
    assert row.spool_path is None and _kinds(ctx, iid) == ["received", "failed"]


def test_image_too_large_for_the_memory_limit_fails_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image whose watermarking would need more than max_embed_memory_mb
    is FAILED with the reason and stored as received, without being decoded
    (an out-of-memory kill would take the worker with it)."""
    import dicom_wm.watermark as wm

    settings = load_settings(data_dir=tmp_path, max_embed_memory_mb=4)  # a 512x512 slice needs ~8 MiB
    prepare_data_dir(settings)
    ensure_keys(settings, create=True)
    migrate.upgrade(settings.db_url)
    ctx = WorkerContext(settings)
    monkeypatch.setattr(wm, "embed_dataset", lambda *a, **k: pytest.fail("embed_dataset was called"))
    iid = _receive(ctx, small_ct())
    result = process_instance(ctx, iid)
    assert result.outcome is Outcome.FAILED
    row = _row(ctx, iid)
    assert row.state is InstanceState.FAILED
    assert row.state_reason == ("too large to watermark here: 262144 samples need about 8 MiB, more than the 4 MiB "
                                "a worker may use (max_embed_memory_mb; fewer workers give each more)")
    assert row.stored_sha256 == row.received_sha256 and (ctx.settings.data_dir / row.archive_path).exists()


def test_default_memory_limit_is_the_machines_share_per_worker(tmp_path: Path) -> None:
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert load_settings(data_dir=tmp_path, workers=2).embed_memory_limit_mb == total_mb // 2
    assert load_settings(data_dir=tmp_path, workers=2, max_embed_memory_mb=100).embed_memory_limit_mb == 100
