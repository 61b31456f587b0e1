"""C-MOVE throughput: dicom-wm (each policy) against DCMTK's dcmqrscp.

One run, one machine, one study: a 200-slice 512x512 CT (pydicom-data
693_UNCR.dcm with fresh UIDs), moved to a DCMTK storescp (TCP_NODELAY=1)

* from DCMTK's dcmqrscp holding the same study (the baseline),
* from ``dicom-wm serve`` with the destination's policy ``watermarked``
  (every instance verified, sent as stored),
* from ``dicom-wm serve`` with policy ``original`` (verified, restored,
  sample hash checked, sent).

Each C-MOVE is started with DCMTK's movescu and timed from its start to its
exit; the three sources take turns for ``--rounds`` rounds and the median
of each is reported, with throughput ratios against dcmqrscp. Every round
checks that storescp received all instances.

    python bench/bench_retrieve.py [--slices 200] [--rounds 3] [--egress-workers N]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dcmtk(tool: str) -> str:
    path = f"/usr/bin/{tool}"
    if not os.access(path, os.X_OK):
        sys.exit(f"DCMTK {tool} not found at {path} (apt-get install dcmtk)")
    return path


def _dicom_wm() -> list[str]:
    script = Path(sys.executable).parent / "dicom-wm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dicom_wm.cli.app"]


ENV = {**os.environ, "TCP_NODELAY": "1"}


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            sys.exit(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.2)


def _echo(port: int, aet: str) -> bool:
    r = subprocess.run([_dcmtk("echoscu"), "-aec", aet, "127.0.0.1", str(port)], capture_output=True, env=ENV)
    return r.returncode == 0


def _build_study(folder: Path, slices: int) -> int:
    import data_store  # pydicom-data

    template = pydicom.dcmread(Path(data_store.__file__).parent / "data" / "693_UNCR.dcm")
    study, series = generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    total = 0
    for i in range(slices):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName, ds.AccessionNumber = "BENCH-1", "Bench^Retrieve", "BENCH"
        ds.InstanceNumber = i + 1
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def _movescu(port: int, aec: str, dest: str, study_uid: str) -> float:
    cmd = [_dcmtk("movescu"), "-aet", "BENCHSCU", "-aec", aec, "-aem", dest, "-S",
           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(port)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=1800)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"movescu from {aec} failed: {r.stderr or r.stdout}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--egress-workers", type=int, default=None, help="dicom-wm verification processes (default: its own)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-retrieve-"))
    procs: list[subprocess.Popen] = []
    serve: subprocess.Popen | None = None
    try:
        study_dir = tmp / "study"
        size = _build_study(study_dir, args.slices)
        study_uid = str(pydicom.dcmread(next(study_dir.iterdir()), stop_before_pixels=True).StudyInstanceUID)
        files = sorted(study_dir.iterdir())

        # destination: DCMTK storescp
        out = tmp / "received"
        out.mkdir()
        dest_port = _free_port()
        procs.append(subprocess.Popen([_dcmtk("storescp"), "-aet", "BENCHDEST", "-od", str(out), str(dest_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV))
        _wait(lambda: _echo(dest_port, "BENCHDEST"), 30, "storescp", procs[-1])

        # baseline: dcmqrscp holding the study
        qr_port, qr_store = _free_port(), tmp / "dcmqrscp"
        qr_store.mkdir()
        cfg = tmp / "dcmqrscp.cfg"
        cfg.write_text(
            f"NetworkTCPPort = {qr_port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\n"
            "HostTable BEGIN\n"
            f"benchdest = (BENCHDEST, 127.0.0.1, {dest_port})\n"
            "HostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\nDCMQR {qr_store} RW (100000, 4096mb) ANY\nAETable END\n"
        )
        procs.append(subprocess.Popen([_dcmtk("dcmqrscp"), "-c", str(cfg), "--disable-host-lookup", str(qr_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV))
        _wait(lambda: _echo(qr_port, "DCMQR"), 30, "dcmqrscp", procs[-1])
        r = subprocess.run([_dcmtk("storescu"), "-aec", "DCMQR", "127.0.0.1", str(qr_port), *map(str, files)],
                           capture_output=True, text=True, env=ENV)
        if r.returncode != 0:
            sys.exit(f"loading dcmqrscp failed: {r.stderr}")

        # dicom-wm holding the same study
        wm_port, data_dir = _free_port(), tmp / "dicom-wm"
        env = {**ENV, "DICOM_WM_LOG_LEVEL": "INFO"}
        if args.egress_workers is not None:
            env["DICOM_WM_EGRESS_WORKERS"] = str(args.egress_workers)
        log = open(tmp / "serve.log", "wb")
        serve = subprocess.Popen(_dicom_wm() + ["serve", "--host", "127.0.0.1", "--port", str(wm_port),
                                                "--data-dir", str(data_dir)],
                                 stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs.append(serve)
        _wait(lambda: _echo(wm_port, "DICOMWM"), 120, "dicom-wm serve", procs[-1])
        t = time.perf_counter()
        r = subprocess.run([_dcmtk("storescu"), "-aec", "DICOMWM", "127.0.0.1", str(wm_port), *map(str, files)],
                           capture_output=True, text=True, env=ENV)
        if r.returncode != 0:
            sys.exit(f"loading dicom-wm failed: {r.stderr}")
        status = lambda: subprocess.run(_dicom_wm() + ["status", "--json", "--data-dir", str(data_dir)],  # noqa: E731
                                        capture_output=True, text=True).stdout
        import json

        _wait(lambda: json.loads(status())["current_states"]["WATERMARKED"] == args.slices, 3600, "watermarking")
        ingest_s = time.perf_counter() - t
        for ae, policy in (("BENCHDEST", "watermarked"), ("BENCHORIG", "original")):
            subprocess.run(_dicom_wm() + ["destinations", "add", ae, "127.0.0.1", str(dest_port), "--policy", policy,
                                          "--data-dir", str(data_dir)], check=True, capture_output=True)

        sources = {
            "dcmqrscp": (qr_port, "DCMQR", "BENCHDEST"),
            "dicom-wm watermarked": (wm_port, "DICOMWM", "BENCHDEST"),
            "dicom-wm original": (wm_port, "DICOMWM", "BENCHORIG"),
        }
        # dicom-wm's verification processes start with serve; wait until they are up
        _wait(lambda: b"verification process(es) ready" in (tmp / "serve.log").read_bytes(), 120,
              "verification processes")
        # First retrieve of each: for dicom-wm watermarked this is the one that
        # verifies every watermark (later ones find the same bytes in the
        # verified-bytes cache); original restores, and so verifies, every time.
        first: dict[str, float] = {}
        for name, (port, aec, dest) in sources.items():
            shutil.rmtree(out)
            out.mkdir()
            first[name] = _movescu(port, aec, dest, study_uid)
        times: dict[str, list[float]] = {name: [] for name in sources}
        for _ in range(args.rounds):
            for name, (port, aec, dest) in sources.items():
                shutil.rmtree(out)
                out.mkdir()
                times[name].append(_movescu(port, aec, dest, study_uid))
                got = len(list(out.iterdir()))
                if got != args.slices:
                    sys.exit(f"{name}: storescp received {got} of {args.slices} instances")
        mb = size / 1e6
        base = statistics.median(times["dcmqrscp"])
        print(f"C-MOVE of a {args.slices}-slice 512x512 CT study ({mb:.1f} MB) to DCMTK storescp, "
              f"median of {args.rounds} rounds, {os.cpu_count()} CPU(s)")
        print(f"(dicom-wm ingest + watermark of the study: {ingest_s:.1f} s)")
        print()
        rows = [
            ("dcmqrscp", statistics.median(times["dcmqrscp"]), ""),
            ("dicom-wm watermarked, 1st", first["dicom-wm watermarked"], ">= 0.5"),
            ("dicom-wm watermarked", statistics.median(times["dicom-wm watermarked"]), ">= 0.5"),
            ("dicom-wm original", statistics.median(times["dicom-wm original"]), ">= 0.3"),
        ]
        print(f"| {'source':<26} | {'seconds':>8} | {'images/s':>8} | {'MB/s':>7} | {'vs dcmqrscp':>11} | target |")
        print(f"|{'-' * 28}|{'-' * 10}|{'-' * 10}|{'-' * 9}|{'-' * 13}|--------|")
        for name, seconds, target in rows:
            print(f"| {name:<26} | {seconds:8.2f} | {args.slices / seconds:8.1f} | {mb / seconds:7.1f} | "
                  f"{base / seconds:10.2f}x | {target:>6} |")
        print()
        print("'1st': the first C-MOVE after serve started, every watermark verified; the other dicom-wm rows are")
        print("medians of the later rounds (watermarked: verified-bytes cache; original: restored every time).")
        print("first retrieves (s): " + ", ".join(f"{k} {v:.2f}" for k, v in first.items()))
        print("rounds (s): " + "; ".join(f"{k}: {', '.join(f'{v:.2f}' for v in vs)}" for k, vs in times.items()))
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM) if p is serve else p.terminate()
                    p.wait(30)
                except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
                    p.kill()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
