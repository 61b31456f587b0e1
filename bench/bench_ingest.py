"""Ingest benchmark: C-STORE cost of dicom-wm's durable reception, and how
soon everything is watermarked, against a bare SCP measured in the same run.

One run:

(a) a bare pynetdicom Storage SCP (separate process) that only writes the
    received bytes to a file - no fsync, no database, no queue;
(b) ``dicom-wm serve`` in the embedded mode (SQLite, in-process worker pool).

DCMTK's storescu (TCP_NODELAY=1) sends the same 200-slice 512x512 CT series
(pydicom-data 693_UNCR with new UIDs) to each, alternating a/b for
``--rounds`` rounds. Reported: the C-STORE wall time of (b) over (a), and the
time until the last instance is WATERMARKED (from the start of the send) over
(a). Targets: C-STORE ratio <= 1.3; all watermarked within 3x (a).

    python bench/bench_ingest.py [--slices 200] [--rounds 3] [--workers N]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ingest_support import (  # noqa: E402
    dcmtk_storescu,
    dicom_wm_command,
    echo_ok,
    free_port,
    source_file,
    wait_for_echo,
    wait_until,
)


def bare_scp(port: int, out_dir: str, durable: bool) -> None:
    """(a): write each received instance's bytes, nothing else; with
    ``durable`` (the reference row), temp file + fsync + rename + dir fsync."""
    from pynetdicom import AE, _config, evt
    from pynetdicom.sop_class import Verification

    from dicom_wm.fileio import atomic_write_bytes

    _config.UNRESTRICTED_STORAGE_SERVICE = True
    out = Path(out_dir)

    def handle_store(event: evt.Event) -> int:
        target = out / f"{event.request.AffectedSOPInstanceUID}.dcm"
        if durable:
            atomic_write_bytes(event.encoded_dataset(), target)
        else:
            with open(target, "wb") as fh:
                fh.write(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="DICOMWM")
    ae.add_supported_context(Verification)
    ae.maximum_pdu_size = 0  # as dicom-wm's default
    ae.maximum_associations = 32
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.shutdown()


def build_series(folder: Path, slices: int) -> list[Path]:
    template = pydicom.dcmread(source_file("693_UNCR.dcm"))
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(slices):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(storescu: str, port: int, folder: Path) -> float:
    start = time.perf_counter()
    run = subprocess.run(
        [storescu, "-aec", "DICOMWM", "+sd", "127.0.0.1", str(port), str(folder)],
        capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=900,
    )
    elapsed = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"storescu failed: {run.stderr[-1000:]}")
    return elapsed


def round_bare(storescu: str, series: Path, work: Path, slices: int, durable: bool = False) -> float:
    out = work / "bare-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--bare-scp", str(port), str(out), str(int(durable))])
    try:
        wait_until(lambda: echo_ok(port), 60, 0.1, "the bare SCP")
        elapsed = send(storescu, port, series)
        if len(list(out.iterdir())) != slices:
            raise RuntimeError("the bare SCP did not store every slice")
        return elapsed
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(out, ignore_errors=True)


def round_dicom_wm(
    storescu: str, series: Path, work: Path, slices: int, workers: int | None, n: int
) -> tuple[float, float, dict[str, float]]:
    from sqlalchemy import func, select

    from dicom_wm.db import Instance, InstanceState, dispose_engines, get_sessionmaker

    data = work / f"wm-data-{n}"
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)]
    if workers:
        args += ["--workers", str(workers)]
    log = open(work / "serve.log", "ab")
    proc = subprocess.Popen(dicom_wm_command() + args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_echo(port, 120, proc)
        sessions = get_sessionmaker(f"sqlite:///{(data / 'dicom-wm.sqlite3').resolve()}")
        t0 = time.time()
        elapsed = send(storescu, port, series)

        def done() -> bool:
            with sessions() as s:
                counts = dict(s.execute(select(Instance.state, func.count()).group_by(Instance.state)).all())
                if counts.get(InstanceState.FAILED):
                    reason = s.scalar(select(Instance.state_reason).where(Instance.state == InstanceState.FAILED))
                    raise RuntimeError(f"{counts[InstanceState.FAILED]} instance(s) FAILED, e.g.: {reason}")
            return counts.get(InstanceState.WATERMARKED, 0) == slices

        wait_until(done, 900, 0.05, "every slice WATERMARKED")
        with sessions() as s:
            last = s.scalar(select(func.max(Instance.finished_at)))
            stages: dict[str, list[float]] = {}
            for timings in s.scalars(select(Instance.timings)):
                for stage, seconds in (timings or {}).items():
                    stages.setdefault(stage, []).append(seconds)
        return elapsed, last.timestamp() - t0, {k: statistics.median(v) for k, v in stages.items()}
    finally:
        dispose_engines()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="embedded pool size (default: CPU count)")
    parser.add_argument("--bare-scp", nargs=3, metavar=("PORT", "DIR", "DURABLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_scp:
        bare_scp(int(args.bare_scp[0]), args.bare_scp[1], args.bare_scp[2] == "1")
        return
    storescu = dcmtk_storescu()
    if storescu is None:
        sys.exit("DCMTK storescu is needed (Debian package dcmtk)")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        series = work / "series"
        series.mkdir()
        build_series(series, args.slices)
        mb = sum(p.stat().st_size for p in series.iterdir()) / 1e6
        bare, durable, store, total = [], [], [], []
        stages: dict[str, float] = {}
        for r in range(args.rounds):
            bare.append(round_bare(storescu, series, work, args.slices))
            durable.append(round_bare(storescu, series, work, args.slices, durable=True))
            s, t, stages = round_dicom_wm(storescu, series, work, args.slices, args.workers, r)
            store.append(s)
            total.append(t)
            print(f"round {r + 1}: bare {bare[-1]:.2f}s  bare+fsync {durable[-1]:.2f}s  dicom-wm C-STORE {s:.2f}s  all WATERMARKED {t:.2f}s", flush=True)
    a, d = statistics.median(bare), statistics.median(durable)
    b, c = statistics.median(store), statistics.median(total)
    print()
    print(f"{args.slices} slices 512x512 CT, {mb:.0f} MB, DCMTK storescu TCP_NODELAY=1, {os.cpu_count()} CPU(s), "
          f"median of {args.rounds} rounds")
    print(f"| {'measure':<44} | {'seconds':>8} | {'ratio to (a)':>12} | {'target':>7} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 14}|{'-' * 9}|")
    print(f"| {'(a) bare pynetdicom SCP, C-STORE':<44} | {a:8.2f} | {1.0:12.2f} | {'':>7} |")
    print(f"| {'(reference) bare SCP + temp/fsync/rename':<44} | {d:8.2f} | {d / a:12.2f} | {'':>7} |")
    print(f"| {'(b) dicom-wm serve (embedded), C-STORE':<44} | {b:8.2f} | {b / a:12.2f} | {'<= 1.3':>7} |")
    print(f"| {'(b) until the last instance is WATERMARKED':<44} | {c:8.2f} | {c / a:12.2f} | {'<= 3':>7} |")
    print()
    print("watermark task stages, last round (median per instance, ms; engine_* are inside embed):")
    print("  " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
