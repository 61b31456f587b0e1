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
from pathlib import Path

import pytest

from ingest_support import (
    FULL_STUDY,
    FreshPostgres,
    ServiceProcess,
    build_study,
    check_ingest,
    dcmtk_storescu,
    dicom_wm_command,
    free_port,
    require_services,
    rows_by_sop,
    send_with_dcmtk,
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


def _start(tmp_path: Path, url: str, broker: str, port: int, workers: int, env: dict[str, str] | None = None):
    data = tmp_path / "data"
    upgrade = _cli("db", "upgrade", "--db", url, "--data-dir", str(data))
    assert upgrade.returncode == 0, upgrade.stderr
    serve = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data), "--db", url, "--broker", broker],
        tmp_path / "serve.log", env,
    )
    wait_for_echo(port, timeout=60, proc=serve.proc)  # serve has created the key store by now
    started = [_worker(tmp_path, url, broker, f"worker{i}", env) for i in range(workers)]
    return data, serve, started


def _worker(tmp_path: Path, url: str, broker: str, name: str, env: dict[str, str] | None = None) -> ServiceProcess:
    return ServiceProcess(
        ["worker", "--data-dir", str(tmp_path / "data"), "--db", url, "--broker", broker, "--queues", "embed,gpu",
         "--concurrency", "1"],
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
        counts = check_ingest(url, data, files, data / "keys.json")
        assert counts["WATERMARKED"] == len(files)
    finally:
        for p in (serve, first, second):
            if p is not None:
                p.stop()
