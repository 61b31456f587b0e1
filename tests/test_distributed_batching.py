"""The distributed gpu queue's batch task, ``dicom_wm.embed_batch``, called
directly (no broker: the messages it sends are captured). The whole path,
serve -> Redis -> a Celery worker -> PostgreSQL, is in tests/test_distributed.py
(``test_gpu_queue_batches_instances_distributed``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select, update

import workers.app as worker_app
import workers.tasks as tasks
from dicom_wm.db import Event, Instance, InstanceState, migrate
from dicom_wm.ingest.pool import retry_delay
from dicom_wm.ingest.receive import StoreRequest, receive_instance
from dicom_wm.ingest.runtime import ensure_keys, prepare_data_dir
from dicom_wm.ingest.task import WorkerContext
from dicom_wm.keys import KeyStore
from dicom_wm.pixels import read_samples
from dicom_wm.settings import load_settings
from dicom_wm.watermark import VerifyStatus, restore_dataset
from ingest_support import small_ct


class Sent:
    """Stands in for ``app.send_task``: records each message, or refuses."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, **options: Any) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.messages.append((name, options))


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_dicom_wm_env: None) -> WorkerContext:
    settings = load_settings(data_dir=tmp_path, broker="redis://127.0.0.1:6379/15", queue="gpu", max_retries=2,
                             retry_backoff_s=3.0, predictor="classic")
    prepare_data_dir(settings)
    ensure_keys(settings, create=True)
    migrate.upgrade(settings.db_url)
    monkeypatch.setattr(worker_app, "_settings", None)
    worker_app.configure(settings)  # no connection is made here
    monkeypatch.setattr(tasks, "_ctx", None)
    return tasks._context()


def _receive(ctx: WorkerContext, ds: pydicom.Dataset) -> int:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    req = StoreRequest("CT1", "DICOMWM", str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID))
    return receive_instance(ctx.sessions, ctx.settings.data_dir, data, header, req).instance_id


def _row(ctx: WorkerContext, instance_id: int) -> Instance:
    with ctx.sessions() as s:
        return s.get(Instance, instance_id)


def _final_events(ctx: WorkerContext, instance_id: int) -> list[Event]:
    with ctx.sessions() as s:
        return list(s.scalars(select(Event).where(Event.instance_id == instance_id,
                                                  Event.kind.in_(["watermarked", "failed", "skipped"]))))


def _check_restorable(ctx: WorkerContext, instance_id: int, original: pydicom.Dataset) -> None:
    row = _row(ctx, instance_id)
    assert row.state is InstanceState.WATERMARKED, row.state_reason
    restored = restore_dataset(pydicom.dcmread(ctx.settings.data_dir / row.archive_path), KeyStore.load(ctx.settings.keys_path))
    assert restored.verify.status is VerifyStatus.AUTHENTIC
    assert (read_samples(restored.dataset).samples == read_samples(original).samples).all()


def test_batch_task_finishes_each_instance_and_resends_a_transient_one_alone(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dicom_wm.watermark as wm

    originals = [small_ct() for _ in range(4)]
    ids = [_receive(ctx, ds) for ds in originals]
    real = wm.embed_dataset
    crash_uid, io_uid = originals[1].SOPInstanceUID, originals[2].SOPInstanceUID

    def flaky(ds, *args, **kwargs):
        if ds.SOPInstanceUID == crash_uid:
            raise RuntimeError("boom")
        if ds.SOPInstanceUID == io_uid:
            raise OSError("disk hiccup")
        return real(ds, *args, **kwargs)

    monkeypatch.setattr(wm, "embed_dataset", flaky)
    sent = Sent()
    monkeypatch.setattr(worker_app.app, "send_task", sent)
    outcomes = tasks.embed_batch(ids + [ids[0]])  # a repeated id is processed once
    assert outcomes == {str(ids[0]): "watermarked", str(ids[1]): "failed", str(ids[2]): "resent",
                        str(ids[3]): "watermarked"}
    # the transient one goes back alone, as an embed task: retry 1, the first backoff, the same queue
    assert sent.messages == [("dicom_wm.embed", {"args": [ids[2]], "countdown": retry_delay(ctx.settings, 0),
                                                 "retries": 1, "queue": "gpu", "routing_key": "gpu"})]
    assert _row(ctx, ids[2]).state is InstanceState.QUEUED
    assert _row(ctx, ids[1]).state_reason.startswith("internal error: RuntimeError")
    # the resent message, run: the embed task at retry 1 watermarks it
    monkeypatch.setattr(wm, "embed_dataset", real)
    assert tasks.embed.apply(args=[ids[2]], retries=1).get() == "watermarked"
    for k in (0, 2, 3):
        _check_restorable(ctx, ids[k], originals[k])
        assert len(_final_events(ctx, ids[k])) == 1
    # batched: the four loaded instances shared the task; the retried one ran alone
    assert [_final_events(ctx, ids[k])[0].details.get("batch_instances") for k in (0, 2, 3)] == [4, None, 4]
    # a redelivery of the same batch message changes nothing and sends nothing
    assert set(tasks.embed_batch(ids).values()) == {"already_final"}
    assert len(sent.messages) == 1


def test_batch_task_on_its_last_attempt_fails_a_transient_instance(ctx: WorkerContext,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import dicom_wm.watermark as wm

    ids = [_receive(ctx, small_ct()) for _ in range(2)]

    def io_error(*_args, **_kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(wm, "embed_dataset", io_error)
    sent = Sent()
    monkeypatch.setattr(worker_app.app, "send_task", sent)
    outcomes = tasks.embed_batch.apply(args=[ids], retries=ctx.settings.max_retries).get()
    assert outcomes == {str(i): "failed" for i in ids} and sent.messages == []
    assert all("gave up after retries" in _row(ctx, i).state_reason for i in ids)


def test_batch_that_raises_sends_every_id_alone_and_a_refused_send_leaves_the_row_received(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [_receive(ctx, small_ct()) for _ in range(3)]
    with ctx.sessions() as s:  # what the dispatcher did before sending the message
        s.execute(update(Instance).values(state=InstanceState.QUEUED))
        s.commit()

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug in the batch path")

    monkeypatch.setattr(tasks, "process_batch", broken)
    sent = Sent()
    monkeypatch.setattr(worker_app.app, "send_task", sent)
    assert tasks.embed_batch(ids) == {str(i): "resent" for i in ids}
    assert [(name, o["args"], o["retries"]) for name, o in sent.messages] == [("dicom_wm.embed", [i], 1) for i in ids]

    monkeypatch.setattr(worker_app.app, "send_task", Sent(fail=True))
    assert tasks.embed_batch(ids) == {str(i): "resent" for i in ids}
    for i in ids:  # the reconciler's business now (RECEIVED rows are queued again)
        row = _row(ctx, i)
        assert row.state is InstanceState.RECEIVED and row.last_error == "could not queue on gpu"
