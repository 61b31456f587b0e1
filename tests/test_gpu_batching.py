"""Batched prediction and the batching worker (issue #5, item 4), on the CPU.

``device="cpu"`` stands in for CUDA: the batched code path is the one a GPU
worker runs (the device only changes where the float64 forward passes
execute, and those are exact on every device, invariant 7).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

import dicom_wm.engine.learned as learned_mod
from dicom_wm.db import Event, Instance, InstanceState, migrate
from dicom_wm.engine.learned import LearnedPredictor, load_learned_predictor
from dicom_wm.engine.predictors import ClassicRhombus, PrecomputedPredictor, predict_many
from dicom_wm.ingest.dispatch import Dispatcher
from dicom_wm.ingest.pool import EmbeddedPool
from dicom_wm.ingest.receive import StoreRequest, receive_instance
from dicom_wm.ingest.runtime import ensure_keys, prepare_data_dir
from dicom_wm.ingest.task import Outcome, WorkerContext, check_predictor, process_batch, process_instance, resolve_predictor
from dicom_wm.keys import KeyStore
from dicom_wm.pixels import read_samples
from dicom_wm.settings import Device, Predictor, load_settings
from dicom_wm.watermark import EmbedOptions, VerifyStatus, _to_planes, embed_dataset, restore_dataset
from ingest_support import source_file, wait_until

CUDA = pytest.mark.skipif(not learned_mod.torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def learned() -> LearnedPredictor:
    return load_learned_predictor(device="cpu")


def _crop(name: str, corners: list[tuple[int, int]], size: int = 128) -> pydicom.Dataset:
    """A ``size``² crop of a real image per corner, as one (multi-frame when
    several corners) instance with fresh UIDs: real texture, small enough
    for the learned predictor on one CPU core."""
    ds = pydicom.dcmread(source_file(name))
    arr = ds.pixel_array
    frames = np.stack([arr[r : r + size, c : c + size] for r, c in corners])
    ds.Rows = ds.Columns = size
    if len(corners) > 1:
        ds.NumberOfFrames = len(corners)
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def ct(frames: int = 1) -> pydicom.Dataset:  # 14-bit signed CT (held-out 693)
    return _crop("693_UNCR.dcm", [(160 + 40 * k, 150 + 30 * k) for k in range(frames)])


def mr() -> pydicom.Dataset:  # 12-bit unsigned MR (held-out MR2), another shape
    return _crop("MR2_UNCR.dcm", [(500, 300)], size=144)


def _random_planes(rng: np.random.Generator, n: int, rows: int, cols: int, bits: int, signed: bool) -> np.ndarray:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    base = rng.integers(lo, hi + 1, size=(n, 1, 1))
    ramp = (np.arange(rows)[:, None] * 3 + np.arange(cols)[None, :] * 5) % (1 << min(bits, 10))
    noise = rng.integers(-40, 41, size=(n, rows, cols))
    return np.clip(base + ramp + noise, lo, hi).astype(np.int64)


# -- batched prediction ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["learned", "classic"])
def test_predict_many_equals_one_plane_at_a_time(which: str, learned: LearnedPredictor,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Stacks of mixed shapes and bit depths, grouped and predicted together,
    give every plane exactly what a call with that plane alone gives. A small
    forward-pass budget makes the learned groups span several passes too."""
    predictor = learned if which == "learned" else ClassicRhombus()
    monkeypatch.setitem(learned_mod._BATCH_SAMPLES, "cpu", 3 * 24 * 32)
    rng = np.random.default_rng(5)
    stacks = [
        _random_planes(rng, 2, 24, 32, 16, True),
        _random_planes(rng, 3, 17, 33, 8, False),
        _random_planes(rng, 1, 24, 32, 12, False),
        _random_planes(rng, 4, 24, 32, 8, False),
        _random_planes(rng, 1, 2, 2, 10, False),
        _random_planes(rng, 2, 17, 33, 15, True),
        _random_planes(rng, 1, 40, 9, 14, True),
    ]
    maps = predict_many(predictor, stacks)
    assert len(maps) == len(stacks)
    for stack, (pred, cost) in zip(stacks, maps):
        assert pred.shape == cost.shape == stack.shape and pred.dtype == cost.dtype == np.int64
        for k in range(len(stack)):
            p1, c1 = predictor.predict_and_complexity(stack[k : k + 1])
            assert np.array_equal(pred[k], p1[0]) and np.array_equal(cost[k], c1[0])


def test_predict_many_groups_by_shape(learned: LearnedPredictor) -> None:
    calls: list[tuple[int, ...]] = []

    class Spy:
        name, version, model_sha256 = learned.name, learned.version, learned.model_sha256

        def predict_and_complexity(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            calls.append(planes.shape)
            return learned.predict_and_complexity(planes)

    rng = np.random.default_rng(1)
    stacks = [_random_planes(rng, n, r, c, 12, False) for n, r, c in ((10, 16, 16), (1, 16, 16), (2, 8, 20), (3, 16, 16))]
    predict_many(Spy(), stacks)
    assert sorted(calls) == [(2, 8, 20), (14, 16, 16)]


def test_real_images_batched_equal_single(learned: LearnedPredictor) -> None:
    """Planes of real instances (3-frame 14-bit signed CT, 12-bit MR, a
    10-frame 12-bit MR): one batch equals each instance predicted alone."""
    stacks = [_to_planes(read_samples(ds).samples) for ds in (ct(3), mr(), ct(1), pydicom.dcmread(source_file("emri_small.dcm")))]
    for stack, (pred, cost) in zip(stacks, predict_many(learned, stacks)):
        p1, c1 = learned.predict_and_complexity(stack)
        assert np.array_equal(pred, p1) and np.array_equal(cost, c1)


def test_precomputed_serves_only_equal_planes(learned: LearnedPredictor) -> None:
    rng = np.random.default_rng(2)
    planes = _random_planes(rng, 3, 16, 20, 12, False)
    fake = np.full_like(planes, 7)  # not what the net predicts: shows which answer was served
    pre = PrecomputedPredictor(learned, planes, fake, fake)
    assert (pre.name, pre.version, pre.model_sha256) == (learned.name, learned.version, learned.model_sha256)
    pred, _ = pre.predict_and_complexity(planes[1:3].copy())
    assert np.array_equal(pred, fake[1:3]) and pre.hits == 2
    edited = planes.copy()
    edited[0, 3, 4] += 1
    pred, cost = pre.predict_and_complexity(edited[:1])
    ref = learned.predict_and_complexity(edited[:1])
    assert np.array_equal(pred, ref[0]) and np.array_equal(cost, ref[1]) and pre.misses == 1
    wider = np.pad(planes, ((0, 0), (0, 0), (1, 0)), mode="reflect")  # a B-pass view: another shape
    assert np.array_equal(pre.predict_and_complexity(wider)[0], learned.predict_and_complexity(wider)[0])
    assert pre.hits == 2 and pre.misses == 4


def test_embed_with_batch_predictions_is_identical(learned: LearnedPredictor, tmp_path: Path) -> None:
    """A multi-frame instance embedded with maps from a shared batch gives
    the same bytes as one predicted inside embed, and restores."""
    keys = KeyStore.init(tmp_path / "keys.json")
    ds = ct(3)
    other = _to_planes(read_samples(ct(1)).samples)
    planes = _to_planes(read_samples(ds).samples)
    (pred, cost), _ = predict_many(learned, [planes, other])
    pre = PrecomputedPredictor(learned, planes, pred, cost)
    import uuid

    record = uuid.uuid4()
    batched = embed_dataset(ds, keys, record_uuid=record, options=EmbedOptions(predictor="learned"), engine_predictor=pre)
    alone = embed_dataset(ds, keys, record_uuid=record, options=EmbedOptions(predictor="learned"), engine_predictor=learned)
    assert pre.hits >= len(planes)  # every A-pass prediction came from the batch
    assert batched.dataset.PixelData == alone.dataset.PixelData
    assert batched.predictor == learned.name and batched.model_sha256 == learned.model_sha256
    restored = restore_dataset(batched.dataset, keys)
    assert restored.verify.status is VerifyStatus.AUTHENTIC
    assert np.array_equal(read_samples(restored.dataset).samples, read_samples(ds).samples)


# -- settings and predictor choice ---------------------------------------------------------


def test_settings_flags_over_env_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_dicom_wm_env: None) -> None:
    s = load_settings(data_dir=tmp_path)
    assert (s.predictor, s.device, s.batch_size, s.batch_wait_ms) == (Predictor.CLASSIC, Device.AUTO, 1, 50.0)
    cfg = tmp_path / "c.toml"
    cfg.write_text('predictor = "auto"\ndevice = "cpu"\nbatch-size = 8\nbatch_wait_ms = 20\n', encoding="utf-8")
    s = load_settings(cfg)
    assert (s.predictor, s.device, s.batch_size, s.batch_wait_ms) == (Predictor.AUTO, Device.CPU, 8, 20.0)
    monkeypatch.setenv("DICOM_WM_BATCH_SIZE", "16")
    monkeypatch.setenv("DICOM_WM_DEVICE", "cuda")
    s = load_settings(cfg)
    assert (s.batch_size, s.device) == (16, Device.CUDA)
    s = load_settings(cfg, batch_size=4, device="cpu")
    assert (s.batch_size, s.device) == (4, Device.CPU)
    with pytest.raises(ValueError):
        load_settings(batch_size=0)
    with pytest.raises(ValueError):
        load_settings(device="tpu")


def test_auto_keeps_classic_on_cpu_and_learned_is_configurable(tmp_path: Path) -> None:
    auto_cpu = load_settings(data_dir=tmp_path, predictor="auto", device="cpu")
    predictor, device = resolve_predictor(auto_cpu)
    assert isinstance(predictor, ClassicRhombus) and device == "cpu"
    assert check_predictor(auto_cpu) == ("classic-rhombus", "cpu")
    predictor, device = resolve_predictor(load_settings(data_dir=tmp_path, predictor="learned", device="cpu"))
    assert isinstance(predictor, LearnedPredictor) and device == "cpu"
    if not learned_mod.torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_predictor(load_settings(data_dir=tmp_path, predictor="learned", device="cuda"))
        with pytest.raises(ValueError, match="CUDA"):
            check_predictor(load_settings(data_dir=tmp_path, predictor="auto", device="cuda"))


@CUDA
def test_cuda_batch_equals_cpu_one_plane_at_a_time(learned: LearnedPredictor) -> None:
    gpu = load_learned_predictor(device="cuda")
    rng = np.random.default_rng(9)
    stacks = [_random_planes(rng, n, r, c, b, sg) for n, r, c, b, sg in
              ((8, 512, 512, 16, True), (3, 17, 33, 8, False), (5, 512, 512, 12, False), (1, 40, 9, 14, True))]
    stacks.append(_to_planes(read_samples(ct(3)).samples))
    for stack, (pred, cost) in zip(stacks, predict_many(gpu, stacks)):
        for k in range(len(stack)):
            p1, c1 = learned.predict_and_complexity(stack[k : k + 1])
            assert np.array_equal(pred[k], p1[0]) and np.array_equal(cost[k], c1[0])


@CUDA
def test_auto_takes_learned_on_cuda(tmp_path: Path) -> None:
    predictor, device = resolve_predictor(load_settings(data_dir=tmp_path, predictor="auto"))
    assert isinstance(predictor, LearnedPredictor) and device.startswith("cuda")


# -- the batching task ------------------------------------------------------------------


def _ctx(tmp_path: Path, **overrides: object) -> WorkerContext:
    settings = load_settings(**{"data_dir": tmp_path, "max_retries": 2, "predictor": "learned", "device": "cpu", **overrides})
    prepare_data_dir(settings)
    ensure_keys(settings, create=True)
    migrate.upgrade(settings.db_url)
    return WorkerContext(settings)


def _receive(ctx: WorkerContext, ds: pydicom.Dataset) -> int:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    req = StoreRequest("MR1", "DICOMWM", str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID))
    return receive_instance(ctx.sessions, ctx.settings.data_dir, data, header, req).instance_id


def _events(ctx: WorkerContext, instance_id: int) -> list[Event]:
    with ctx.sessions() as s:
        return list(s.scalars(select(Event).where(Event.instance_id == instance_id).order_by(Event.id)))


def _check_watermarked_once(ctx: WorkerContext, instance_id: int, original: pydicom.Dataset) -> dict:
    with ctx.sessions() as s:
        row = s.get(Instance, instance_id)
    assert row.state is InstanceState.WATERMARKED, row.state_reason
    learned = load_learned_predictor(device="cpu")
    assert (row.predictor, row.model_sha256, row.predictor_version) == (learned.name, learned.model_sha256, learned.version)
    done = [e for e in _events(ctx, instance_id) if e.kind == "watermarked"]
    assert len(done) == 1 and done[0].details["device"] == "cpu" and done[0].details["predictor"] == learned.name
    stored = pydicom.dcmread(ctx.settings.data_dir / row.archive_path)
    restored = restore_dataset(stored, ctx.keys())
    assert restored.verify.status is VerifyStatus.AUTHENTIC
    assert np.array_equal(read_samples(restored.dataset).samples, read_samples(original).samples)
    return done[0].details


def test_batch_watermarks_each_once_and_a_corrupt_one_fails_alone(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    originals = [ct(3), mr(), ct(1), mr()]
    corrupt = mr()
    corrupt.PixelData = corrupt.PixelData[:100]  # truncated pixel data: cannot be decoded
    ids = [_receive(ctx, ds) for ds in originals]
    bad = _receive(ctx, corrupt)
    batch = ids[:2] + [bad] + ids[2:] + [ids[0]]  # a repeated id is processed once
    results = process_batch(ctx, batch)
    assert set(results) == set(ids) | {bad}
    assert [results[i].outcome for i in ids] == [Outcome.WATERMARKED] * 4
    assert results[bad].outcome is Outcome.FAILED
    with ctx.sessions() as s:
        assert s.get(Instance, bad).state is InstanceState.FAILED
    assert [e.kind for e in _events(ctx, bad)].count("failed") == 1
    planes = {0: 3, 1: 1, 2: 1, 3: 1}
    for k, (iid, ds) in enumerate(zip(ids, originals)):
        details = _check_watermarked_once(ctx, iid, ds)
        assert details["batch_instances"] == 5
        assert details["batched_planes"] >= planes[k]  # every A-pass plane came from the shared pass
    # a second delivery of the same batch changes nothing
    again = process_batch(ctx, batch)
    assert {r.outcome for r in again.values()} == {Outcome.ALREADY_FINAL}
    assert sum(e.kind == "watermarked" for i in ids for e in _events(ctx, i)) == 4


def test_a_crashing_or_transient_instance_does_not_take_the_batch_down(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import dicom_wm.watermark as wm

    ctx = _ctx(tmp_path)
    originals = [ct(1) for _ in range(4)]
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
    results = process_batch(ctx, ids)
    assert [results[i].outcome for i in ids] == [Outcome.WATERMARKED, Outcome.FAILED, Outcome.RETRY, Outcome.WATERMARKED]
    with ctx.sessions() as s:
        assert s.get(Instance, ids[1]).state_reason.startswith("internal error: RuntimeError")
        assert s.get(Instance, ids[2]).state is InstanceState.QUEUED
    monkeypatch.setattr(wm, "embed_dataset", real)
    assert process_batch(ctx, [ids[2]])[ids[2]].outcome is Outcome.WATERMARKED  # the retry
    for k in (0, 2, 3):
        _check_watermarked_once(ctx, ids[k], originals[k])


def test_failed_shared_pass_falls_back_to_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dicom_wm.engine.predictors as predictors

    def broken(*_args, **_kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    ctx = _ctx(tmp_path)
    originals = [ct(1), mr()]
    ids = [_receive(ctx, ds) for ds in originals]
    monkeypatch.setattr(predictors, "predict_many", broken)
    results = process_batch(ctx, ids)
    assert all(results[i].outcome is Outcome.WATERMARKED for i in ids)
    for iid, ds in zip(ids, originals):
        assert "batched_planes" not in _check_watermarked_once(ctx, iid, ds)


def test_single_instance_task_records_the_device(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    ds = mr()
    iid = _receive(ctx, ds)
    assert process_instance(ctx, iid).outcome is Outcome.WATERMARKED
    details = _check_watermarked_once(ctx, iid, ds)
    assert "batch_instances" not in details


def test_embedded_pool_batches_queued_instances(tmp_path: Path) -> None:
    """Dispatcher -> embedded pool with batch_size 3: every instance ends
    watermarked once, in batches of at most 3, the predictor and device
    recorded."""
    ctx = _ctx(tmp_path, pool="thread", workers=1, batch_size=3, batch_wait_ms=200)
    originals = [ct(1), mr(), ct(2), mr(), ct(1)]
    ids = [_receive(ctx, ds) for ds in originals]
    pool = EmbeddedPool(ctx.settings)
    dispatcher = Dispatcher(ctx.sessions, pool, queue_name="gpu", quiet_s=0.0)
    try:
        dispatcher.start(requeue_pending=True)

        def all_final() -> bool:
            with ctx.sessions() as s:
                states = s.scalars(select(Instance.state).where(Instance.id.in_(ids))).all()
            return all(state is InstanceState.WATERMARKED for state in states)

        wait_until(all_final, 120, what="every instance watermarked")
        assert pool.wait_idle(30)
    finally:
        dispatcher.stop()
        pool.close()
    sizes = []
    for iid, ds in zip(ids, originals):
        details = _check_watermarked_once(ctx, iid, ds)
        sizes.append(details["batch_instances"])
    assert max(sizes) == 3 and sum(1 / s for s in sizes) == pytest.approx(2)  # batches of 3 and 2


def test_predictor_that_cannot_load_fails_rows_not_the_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dicom_wm.ingest.task as task

    def no_gpu(_settings):
        raise ValueError("device 'cuda' requested but CUDA is not available")

    ctx = _ctx(tmp_path)
    ids = [_receive(ctx, ct(1)) for _ in range(2)]
    monkeypatch.setattr(task, "resolve_predictor", no_gpu)
    results = process_batch(ctx, ids)
    assert [results[i].outcome for i in ids] == [Outcome.FAILED, Outcome.FAILED]
    with ctx.sessions() as s:
        rows = [s.get(Instance, i) for i in ids]
    assert all(r.state is InstanceState.FAILED and "CUDA is not available" in r.state_reason for r in rows)


@pytest.mark.skipif(learned_mod.torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_serve_refuses_a_cuda_device_it_cannot_see(tmp_path: Path, no_dicom_wm_env: None) -> None:
    from typer.testing import CliRunner

    from dicom_wm.cli.app import app

    result = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path), "--port", "1",
                                      "--predictor", "learned", "--device", "cuda", "--batch-size", "8"])
    assert result.exit_code == 2
    assert "CUDA is not available" in result.output


@pytest.mark.parametrize("kind", ["learned-adaptive", "classic-adaptive"])
def test_adaptive_predictors_run_in_the_service_and_batch(kind: str, tmp_path: Path) -> None:
    """The service setting takes the per-plane adaptive predictors; a batch
    shares the base's forward passes and each instance fits its own weights."""
    ctx = _ctx(tmp_path, predictor=kind)
    base = load_learned_predictor(device="cpu") if kind == "learned-adaptive" else ClassicRhombus()
    assert check_predictor(ctx.settings) == ("adaptive-" + base.name, "cpu")
    originals = [ct(1), mr()]
    ids = [_receive(ctx, ds) for ds in originals]
    results = process_batch(ctx, ids)
    assert [results[i].outcome for i in ids] == [Outcome.WATERMARKED] * 2
    for iid, ds in zip(ids, originals):
        with ctx.sessions() as s:
            row = s.get(Instance, iid)
        assert row.predictor == "adaptive-" + base.name
        details = [e for e in _events(ctx, iid) if e.kind == "watermarked"][0].details
        if kind == "learned-adaptive":
            assert details["batched_planes"] >= 1  # the CNN maps came from the shared pass
        stored = pydicom.dcmread(ctx.settings.data_dir / row.archive_path)
        restored = restore_dataset(stored, ctx.keys())
        assert restored.verify.status is VerifyStatus.AUTHENTIC
        assert np.array_equal(read_samples(restored.dataset).samples, read_samples(ds).samples)
