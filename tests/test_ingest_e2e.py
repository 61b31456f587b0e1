"""End to end, embedded mode: ``dicom-wm serve`` as a subprocess, a
multi-series study of 200+ instances sent by DCMTK storescu and a pynetdicom
SCU; crash and restart (kill -9) lose nothing and watermark exactly once."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from ingest_support import (
    FULL_STUDY,
    ServiceProcess,
    build_study,
    check_ingest,
    count_final,
    dcmtk_storescu,
    free_port,
    rows_by_sop,
    send_with_dcmtk,
    send_with_pynetdicom,
    wait_all_final,
    wait_for_echo,
    wait_until,
)

pytestmark = [pytest.mark.slow]


def _storescu() -> str:
    path = dcmtk_storescu()
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI must run the DCMTK tests, but DCMTK's storescu is not installed")
        pytest.skip("DCMTK storescu not installed (Debian package dcmtk)")
    return path


def _serve(tmp_path: Path, port: int, name: str = "serve", *extra: str) -> ServiceProcess:
    data = tmp_path / "data"
    return ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data), *extra],
        tmp_path / f"{name}.log",
    )


@pytest.mark.dcmtk
def test_study_of_200_instances_embedded(tmp_path: Path) -> None:
    storescu = _storescu()
    files = build_study(tmp_path / "study", FULL_STUDY)
    assert len(files) >= 200
    modalities = {label for label, *_ in FULL_STUDY}
    assert {"ct-axial", "mr", "cr", "us-colour", "us-mono-cine"} <= modalities
    port = free_port()
    serve = _serve(tmp_path, port, "serve", "--workers", "2")
    try:
        wait_for_echo(port, timeout=60, proc=serve.proc)
        by_dcmtk = [f for f in files if f.series in ("ct-axial", "cr", "sr", "us-mono-cine")]
        by_pynetdicom = [f for f in files if f not in by_dcmtk]
        done = send_with_dcmtk(storescu, port, [f.path for f in by_dcmtk])
        assert done.returncode == 0, done.stderr[-2000:]
        statuses = send_with_pynetdicom(port, [f.path for f in by_pynetdicom])
        assert statuses == [0] * len(by_pynetdicom)
        data = tmp_path / "data"
        url = f"sqlite:///{(data / 'dicom-wm.sqlite3').resolve()}"
        wait_all_final(url, len(files), timeout=600, procs=[serve])
        counts = check_ingest(url, data, files, data / "keys.json")
        assert counts["SKIPPED"] == sum(1 for f in files if not f.has_pixels)
        assert counts["WATERMARKED"] + counts["SKIPPED"] == len(files)
    finally:
        assert serve.stop() == 0, serve.log_text()[-3000:]
    log = serve.log_text()
    assert "effective configuration" in log and "created key store" in log


def _running(pid: str) -> bool:
    """Alive and not a zombie (init may be slow to reap an orphan here)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pool_processes(pid: int) -> list[int]:
    """The embedded pool's worker processes: spawned children at nice
    ``pool_nice`` (10), not the resource tracker or the retrieve pool's
    verification processes (nice 0)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    found = []
    for child in map(int, out.split()):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "multiprocessing" in cmdline and "resource_tracker" not in cmdline and _nice(child) == 10:
            found.append(child)
    return found


def _nice(pid: int) -> int | None:
    try:  # field 19 of /proc/PID/stat; the command name (field 2) may hold spaces
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return None


def _watermarked(url: str) -> int:
    return sum(1 for rows in rows_by_sop(url).values() for r in rows if r.state.value == "WATERMARKED")


@pytest.mark.dcmtk
def test_kill_9_worker_and_server_mid_study_loses_nothing(tmp_path: Path) -> None:
    """kill -9 an embedded pool process mid-study, then kill -9 the whole
    server mid-association; after a restart and the sender's retry every
    instance is watermarked exactly once, none lost, none stuck."""
    storescu = _storescu()
    layout = (("ct", "CT", (("693_UNCR.dcm", 60),)),)
    files = build_study(tmp_path / "study", layout)
    data = tmp_path / "data"
    url = f"sqlite:///{(data / 'dicom-wm.sqlite3').resolve()}"
    port = free_port()
    serve = _serve(tmp_path, port, "serve1", "--workers", "1")
    try:
        wait_for_echo(port, timeout=60, proc=serve.proc)
        # 1. a pool process dies while the first half is being watermarked
        assert send_with_pynetdicom(port, [f.path for f in files[:30]]) == [0] * 30
        wait_until(lambda: _watermarked(url) >= 2, 120, interval=0.05, what="the first instances watermarked")
        pool = _pool_processes(serve.pid)
        assert pool, "no pool process found"
        os.kill(pool[0], 9)
        assert _watermarked(url) < 30, "the pool finished before it could be killed"
        # 2. the server dies in the middle of the second half's association
        results: list[list[int]] = []
        sender = threading.Thread(
            target=lambda: results.append(_send_ignoring_abort(port, [f.path for f in files[30:]])), daemon=True
        )
        sender.start()
        wait_until(lambda: count_final(url)[1] >= 40, 120, interval=0.05, what="40 rows received")
        serve.kill9()
        sender.join(60)
    finally:
        serve.stop()
    assert "a worker process died" in serve.log_text()
    acknowledged = set()
    for f, status in zip(files[30:], results[0] if results else []):
        if status == 0:
            acknowledged.add(f.sop_instance_uid)
    assert results and len(results[0]) < 30, "the server was not killed in the middle of the association"
    rows = rows_by_sop(url)
    assert acknowledged <= set(rows), "an acknowledged instance has no row"
    assert {f.sop_instance_uid for f in files[:30]} <= set(rows)

    # restart; the modality sends the whole series again
    serve2 = _serve(tmp_path, port, "serve2", "--workers", "2")
    try:
        wait_for_echo(port, timeout=60, proc=serve2.proc)
        done = send_with_dcmtk(storescu, port, [f.path for f in files])
        assert done.returncode == 0, done.stderr[-2000:]
        wait_all_final(url, len(files), timeout=300, procs=[serve2])
        counts = check_ingest(url, data, files, data / "keys.json")
        assert counts["WATERMARKED"] == len(files)
    finally:
        assert serve2.stop() == 0, serve2.log_text()[-3000:]
    assert "re-queueing" in serve2.log_text()


def test_idle_pools_do_not_outlive_a_killed_serve(tmp_path: Path) -> None:
    """kill -9 of an idle serve: its watermark pool and verification
    processes (waiting on their queues) and the resource tracker end too;
    they used to run on, re-parented to init, across later restarts."""
    port = free_port()
    serve = _serve(tmp_path, port, "serve", "--workers", "1")
    try:
        wait_for_echo(port, timeout=60, proc=serve.proc)
        children = subprocess.run(["pgrep", "-P", str(serve.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) >= 3  # watermark pool, verification process(es), resource tracker
        os.kill(serve.pid, 9)  # serve alone (kill9() kills the whole process group)
        serve.proc.wait(10)
        wait_until(lambda: not any(map(_running, children)), 20, interval=0.2,
                   what="serve's child processes gone after its kill -9")
    finally:
        serve.stop()


def _send_ignoring_abort(port: int, paths: list[Path]) -> list[int]:
    """Like send_with_pynetdicom, but a dropped association ends the list."""
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title="PYNETSCU")
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    datasets = [pydicom.dcmread(p) for p in paths]
    for sop_class, ts in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMWM")
    statuses: list[int] = []
    if not assoc.is_established:
        return statuses
    for ds in datasets:
        if not assoc.is_established:
            break
        rsp = assoc.send_c_store(ds)
        if not rsp or "Status" not in rsp:
            break
        statuses.append(int(rsp.Status))
    if assoc.is_established:
        assoc.release()
    return statuses


def test_instance_that_kills_its_worker_every_time_is_failed_and_the_rest_goes_on(tmp_path: Path) -> None:
    """A pool process dies on every attempt at one instance (as an
    out-of-memory kill or a crashing decoder would do): after its attempts
    are used up the instance is FAILED with the received bytes archived,
    instead of breaking the pool forever, and later instances are watermarked."""
    from ingest_support import killer_of_embedding_attempts, small_ct, source_file

    data = tmp_path / "data"
    url = f"sqlite:///{(data / 'dicom-wm.sqlite3').resolve()}"
    port = free_port()
    serve = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data), "--workers", "1"],
        tmp_path / "serve.log", env={"DICOM_WM_MAX_RETRIES": "0"},  # 1 attempt + 2 allowed interruptions
    )
    poison = source_file("color3d_jpeg_baseline.dcm")  # a 120-frame cine: seconds per attempt
    kills: list[int] = []
    # attempts 1-3 embed (and die); the 4th must not get that far: it is
    # failed at its claim, which reads and copies but never decodes
    kill_while_embedding = killer_of_embedding_attempts(url, lambda: _pool_processes(serve.pid), kills, 3)

    try:
        wait_for_echo(port, timeout=60, proc=serve.proc)
        assert send_with_pynetdicom(port, [poison]) == [0]
        wait_until(kill_while_embedding, 180, interval=0.05, what="the poison instance final")
        ct = tmp_path / "ct.dcm"
        small_ct().save_as(ct, enforce_file_format=True)
        assert send_with_pynetdicom(port, [ct]) == [0]
        wait_all_final(url, 2, timeout=120, procs=[serve])
    finally:
        assert serve.stop() == 0, serve.log_text()[-3000:]
    assert kills == [1, 2, 3]
    rows = sorted((r for rs in rows_by_sop(url).values() for r in rs), key=lambda r: r.id)
    assert [r.state.value for r in rows] == ["FAILED", "WATERMARKED"]
    assert rows[0].state_reason.startswith("gave up after 3 attempts without a final result")
    import hashlib

    import pydicom

    kept = data / rows[0].archive_path  # the bytes as received, which carry the sent pixel data
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == rows[0].received_sha256 == rows[0].stored_sha256
    assert pydicom.dcmread(kept).PixelData == pydicom.dcmread(poison).PixelData
    assert serve.log_text().count("a worker process died") == 3
