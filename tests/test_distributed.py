"""Distributed mode against the PostgreSQL and Redis on localhost:
``dicom-wm serve --broker --db`` plus separate ``dicom-wm worker`` processes.

In CI (CI=true) these tests must run: absent services fail them. Locally
they skip, saying which service is missing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from ingest_support import (
    FULL_STUDY,
    FreshPostgres,
    ServiceProcess,
    StudyFile,
    build_study,
    check_ingest,
    dcmtk_storescu,
    dicom_wm_command,
    free_port,
    killer_of_embedding_attempts,
    require_services,
    rows_by_sop,
    send_with_dcmtk,
    source_file,
    send_with_pynetdicom,
    wait_all_final,
    wait_for_echo,
    wait_until,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture
def services():
    require_services()
    # a Redis database of its own, so parallel runs do not share queues
    broker = f"redis://127.0.0.1:6379/{random.randint(1, 15)}"
    with FreshPostgres() as url:
        yield url, broker
    import redis

    client = redis.Redis.from_url(broker)
    for key in ("embed", "gpu", "unacked", "unacked_index", "unacked_mutex"):
        client.delete(key)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(dicom_wm_command() + list(args), capture_output=True, text=True, timeout=120)


def _storescu() -> str:
    path = dcmtk_storescu()
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI must run the DCMTK tests, but DCMTK's storescu is not installed")
        pytest.skip("DCMTK storescu not installed (Debian package dcmtk)")
    return path


def _start(tmp_path: Path, url: str, broker: str, port: int, workers: int, env: dict[str, str] | None = None,
           serve_args: tuple[str, ...] = (), worker_args: tuple[str, ...] = ()):
    data = tmp_path / "data"
    upgrade = _cli("db", "upgrade", "--db", url, "--data-dir", str(data))
    assert upgrade.returncode == 0, upgrade.stderr
    serve = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data), "--db", url, "--broker", broker,
         *serve_args],
        tmp_path / "serve.log", env,
    )
    wait_for_echo(port, timeout=60, proc=serve.proc)  # serve has created the key store by now
    started = [_worker(tmp_path, url, broker, f"worker{i}", env, worker_args) for i in range(workers)]
    return data, serve, started


def _worker(tmp_path: Path, url: str, broker: str, name: str, env: dict[str, str] | None = None,
            extra: tuple[str, ...] = ()) -> ServiceProcess:
    queues = () if "--queues" in extra else ("--queues", "embed,gpu")
    return ServiceProcess(
        ["worker", "--data-dir", str(tmp_path / "data"), "--db", url, "--broker", broker, *queues,
         "--concurrency", "1", *extra],
        tmp_path / f"{name}.log", env,
    )


@pytest.mark.dcmtk
def test_study_of_200_instances_distributed(tmp_path: Path, services) -> None:
    url, broker = services
    storescu = _storescu()
    files = build_study(tmp_path / "study", FULL_STUDY)
    port = free_port()
    data, serve, workers = _start(tmp_path, url, broker, port, workers=2)
    procs = [serve, *workers]
    try:
        by_dcmtk = [f for f in files if f.series in ("ct-axial", "cr", "sr", "us-mono-cine")]
        by_pynetdicom = [f for f in files if f not in by_dcmtk]
        done = send_with_dcmtk(storescu, port, [f.path for f in by_dcmtk])
        assert done.returncode == 0, done.stderr[-2000:]
        assert send_with_pynetdicom(port, [f.path for f in by_pynetdicom]) == [0] * len(by_pynetdicom)
        wait_all_final(url, len(files), timeout=600, procs=procs)
        counts = check_ingest(url, data, files, data / "keys.json")
        assert counts["WATERMARKED"] + counts["SKIPPED"] == len(files)
        actors = {r.worker_host for rows in rows_by_sop(url).values() for r in rows}
        assert all(actors)
        status = _cli("status", "--json", "--db", url, "--broker", broker, "--data-dir", str(data))
        assert status.returncode == 0, status.stderr
        summary = json.loads(status.stdout)
        assert summary["states"]["WATERMARKED"] == counts["WATERMARKED"]
        assert summary["queue_depth"]["waiting_rows"] == 0 and summary["queue_depth"]["broker"]["embed"] == 0
        shown = _cli("show", files[0].sop_instance_uid, "--json", "--db", url, "--data-dir", str(data))
        report = json.loads(shown.stdout)
        assert [e["kind"] for e in report["events"]] == ["received", "queued", "watermarked"]
    finally:
        for p in procs:
            p.stop()


def test_kill_9_worker_mid_study(tmp_path: Path, services) -> None:
    """kill -9 the only worker while it works through a series, start a new
    one: every instance is watermarked exactly once, none lost, none stuck."""
    url, broker = services
    layout = (("ct", "CT", (("693_UNCR.dcm", 40),)),)
    files = build_study(tmp_path / "study", layout)
    port = free_port()
    env = {"DICOM_WM_VISIBILITY_TIMEOUT_S": "5", "DICOM_WM_STALE_AFTER_S": "5", "DICOM_WM_RECONCILE_INTERVAL_S": "1"}
    data, serve, (first,) = _start(tmp_path, url, broker, port, workers=1, env=env)
    second = None
    try:
        assert send_with_pynetdicom(port, [f.path for f in files]) == [0] * len(files)

        def watermarked() -> int:
            return sum(1 for rows in rows_by_sop(url).values() for r in rows if r.state.value == "WATERMARKED")

        wait_until(lambda: watermarked() >= 3, 120, interval=0.05, what="the first instances watermarked")
        first.kill9()
        assert watermarked() < len(files), "the worker finished before it could be killed"
        second = _worker(tmp_path, url, broker, "worker-b", env)
        wait_all_final(url, len(files), timeout=300, procs=[serve, second])
        counts = check_ingest(url, data, files, data / "keys.json", worker_killed=True)
        assert counts["WATERMARKED"] == len(files)
    finally:
        for p in (serve, first, second):
            if p is not None:
                p.stop()


def test_lost_queued_message_is_requeued(tmp_path: Path, services) -> None:
    """A row QUEUED whose broker message is gone (taken by a worker killed
    before it claimed the row) is queued again once nothing waits on the
    broker, without waiting for Redis' visibility timeout."""
    import redis

    url, broker = services
    files = build_study(tmp_path / "study", (("ct", "CT", (("693_UNCR.dcm", 2),)),))
    port = free_port()
    env = {"DICOM_WM_STALE_AFTER_S": "3", "DICOM_WM_RECONCILE_INTERVAL_S": "1"}  # visibility timeout: 1 h default
    data, serve, _none = _start(tmp_path, url, broker, port, workers=0, env=env)
    worker = None
    try:
        assert send_with_pynetdicom(port, [f.path for f in files]) == [0] * len(files)
        client = redis.Redis.from_url(broker)
        wait_until(lambda: client.llen("embed") == len(files), 30, what="the messages on the broker")
        client.delete("embed")  # lost
        worker = _worker(tmp_path, url, broker, "worker", env)
        wait_all_final(url, len(files), timeout=60, procs=[serve, worker])
        counts = check_ingest(url, data, files, data / "keys.json")
        assert counts["WATERMARKED"] == len(files)
        shown = json.loads(_cli("show", files[0].sop_instance_uid, "--json", "--db", url, "--data-dir", str(data)).stdout)
        queued = [e for e in shown["events"] if e["kind"] == "queued"]
        assert [e["details"].get("requeue") for e in queued] == [None, "stuck"]
        assert "stuck instance(s)" in serve.log_text()
    finally:
        for p in (serve, worker):
            if p is not None:
                p.stop()


def _crops(out_dir: Path, count: int) -> list[StudyFile]:
    """``count`` small instances of one series with real texture (128² CT and
    144² MR crops of held-out images, two shapes and bit depths): the learned
    predictor on the CPU handles them in well under a second each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    sources = [("693_UNCR.dcm", 128), ("MR2_UNCR.dcm", 144)]
    files = []
    for k in range(count):
        name, size = sources[k % 2]
        ds = pydicom.dcmread(source_file(name))
        r, c = (160 + 20 * k, 150 + 10 * k) if size == 128 else (500, 300 - 8 * k)
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[r : r + size, c : c + size]).tobytes()
        ds.Rows = ds.Columns = size
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = out_dir / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(StudyFile(path, name, "crops", str(ds.SOPInstanceUID), True))
    return files


def test_gpu_queue_batches_instances_distributed(tmp_path: Path, services) -> None:
    """serve --batch-size 4 sends the gpu queue's ids in groups, one
    embed_batch message each; a learned-predictor worker on the gpu queue
    (device cpu stands in for cuda) predicts each group's planes in shared
    passes. Every instance ends watermarked (the SR skipped) exactly once and
    restores; the events show the batches."""
    from dicom_wm.db import Event, get_sessionmaker

    url, broker = services
    files = _crops(tmp_path / "study", 8) + build_study(tmp_path / "sr", (("sr", "SR", (("reportsi.dcm", 1),)),))
    port = free_port()
    data, serve, (worker,) = _start(
        tmp_path, url, broker, port, workers=1, env={"DICOM_WM_QUEUE": "gpu"},
        serve_args=("--batch-size", "4", "--batch-wait-ms", "3000"),
        worker_args=("--queues", "gpu", "--predictor", "learned", "--device", "cpu"),
    )
    try:
        assert send_with_pynetdicom(port, [f.path for f in files]) == [0] * len(files)
        wait_all_final(url, len(files), timeout=120, procs=[serve, worker])
        counts = check_ingest(url, data, files, data / "keys.json")
        assert (counts["WATERMARKED"], counts["SKIPPED"]) == (8, 1)
        with get_sessionmaker(url)() as s:
            events = list(s.scalars(select(Event).order_by(Event.id)))
        queued = [e for e in events if e.kind == "queued"]
        assert len(queued) == len(files) and {e.details["queue"] for e in queued} == {"gpu"}
        done = [e.details for e in events if e.kind == "watermarked"]
        assert len(done) == 8 and {d["device"] for d in done} == {"cpu"}
        batched = [d for d in done if "batch_instances" in d]
        sizes = Counter(d["batch_instances"] for d in batched)
        # groups of at most 4 ids; at least one full group of 4 image instances
        assert max(sizes) == 4 and all(1 <= n <= 4 for n in sizes), sizes
        assert all(d["batched_planes"] >= 1 for d in batched if d["batch_instances"] > 1)
        assert "dicom_wm.embed_batch" in worker.log_text()
    finally:
        for p in (serve, worker):
            p.stop()


def test_instance_that_kills_its_worker_every_time_is_failed_distributed(tmp_path: Path, services) -> None:
    """The Celery worker's pool process dies on every attempt at one instance
    (as an out-of-memory kill would): the message comes back each time
    (acks_late, reject_on_worker_lost), and once the instance has used up its
    attempts the next claim fails it, instead of a redelivery loop; the
    worker then watermarks the next instance."""
    url, broker = services
    poison = source_file("color3d_jpeg_baseline.dcm")  # seconds per attempt
    port = free_port()
    env = {"DICOM_WM_MAX_RETRIES": "0", "DICOM_WM_VISIBILITY_TIMEOUT_S": "5", "DICOM_WM_STALE_AFTER_S": "5",
           "DICOM_WM_RECONCILE_INTERVAL_S": "1"}
    data, serve, (worker,) = _start(tmp_path, url, broker, port, workers=1, env=env)
    kills: list[int] = []

    def pool_children() -> list[int]:
        return [int(p) for p in subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True).stdout.split()]

    # attempts 1-3 embed (and die); the 4th must not get that far: it is
    # failed at its claim, which reads and copies but never decodes
    kill_while_embedding = killer_of_embedding_attempts(url, pool_children, kills, 3)

    try:
        assert send_with_pynetdicom(port, [poison]) == [0]
        wait_until(kill_while_embedding, 240, interval=0.05, what="the poison instance final")
        ct = build_study(tmp_path / "study", (("ct", "CT", (("693_UNCR.dcm", 1),)),))
        assert send_with_pynetdicom(port, [f.path for f in ct]) == [0]
        wait_all_final(url, 2, timeout=120, procs=[serve, worker])
    finally:
        for p in (serve, worker):
            p.stop()
    assert kills == [1, 2, 3]
    rows = sorted((r for rs in rows_by_sop(url).values() for r in rs), key=lambda r: r.id)
    assert [r.state.value for r in rows] == ["FAILED", "WATERMARKED"]
    assert rows[0].state_reason.startswith("gave up after 3 attempts without a final result")
    assert rows[0].stored_sha256 == rows[0].received_sha256 and (data / rows[0].archive_path).is_file()
