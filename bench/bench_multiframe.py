"""Long multi-frame instances: time and peak memory of embed, verify and
restore against plain pydicom, each step in a fresh process.

    python bench/bench_multiframe.py [--file color3d_jpeg_baseline.dcm] [--repeat 2]

For one file (default: the corpus's largest, a 120-frame 480x640 RGB cine,
110 M samples), every step runs ``--repeat`` times, each time in a new
process with the allocator tuning the service applies, and reports the
median wall time and the peak resident memory above what the process held
after its imports (``ru_maxrss`` minus the RSS before the step):

    baseline = dcmread + decompress (decode, native) + dcmwrite   (plain pydicom)
    embed    = dcmread + embed (incl. self-check) + dcmwrite
    verify   = dcmread of the watermarked file + verify
    restore  = dcmread of the watermarked file + restore + dcmwrite
    verify-unmarked = dcmread of the source (never watermarked) + verify
    embed-robust = dcmread + embed with the robust layer + dcmwrite   (--robust)

and each step's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

KEY_ID, SECRET = "kbench001", b"\x5a" * 32
STEPS = ("baseline", "embed", "verify", "restore", "verify-unmarked")
ROBUST_STEP = "embed-robust"  # --robust: embed with the robust layer too (minutes on a long cine)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _job(step: str, source: Path, marked: Path) -> dict[str, float]:
    """One step in this (fresh) process."""
    import pydicom

    from dicom_wm.allocator import tune_allocator
    from dicom_wm.keys import KeyStore
    from dicom_wm.watermark import EmbedOptions, embed_dataset, restore_dataset, verify_dataset

    tune_allocator()
    keys = KeyStore.in_memory({KEY_ID: SECRET}, KEY_ID)
    before = _rss_mb()
    t = time.perf_counter()
    if step == "baseline":
        ds = pydicom.dcmread(source)
        ds.decompress()  # decode, native little endian in place
        pydicom.dcmwrite(io.BytesIO(), ds, enforce_file_format=True)
    elif step == "embed":
        result = embed_dataset(pydicom.dcmread(source), keys)
        pydicom.dcmwrite(io.BytesIO(), result.dataset, enforce_file_format=True)
    elif step == ROBUST_STEP:
        result = embed_dataset(pydicom.dcmread(source), keys, options=EmbedOptions(robust=True))
        pydicom.dcmwrite(io.BytesIO(), result.dataset, enforce_file_format=True)
    elif step == "verify":
        status = verify_dataset(pydicom.dcmread(marked), keys).status.value
        if status != "authentic":
            raise SystemExit(f"verify said {status}")
    elif step == "verify-unmarked":
        status = verify_dataset(pydicom.dcmread(source), keys).status.value
        if status != "not_watermarked":
            raise SystemExit(f"verify of the source said {status}")
    elif step == "restore":
        pydicom.dcmwrite(io.BytesIO(), restore_dataset(pydicom.dcmread(marked), keys).dataset, enforce_file_format=True)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak - before}


def _mark(source: Path, marked: Path) -> None:
    import pydicom

    from dicom_wm.keys import KeyStore
    from dicom_wm.watermark import embed_dataset

    keys = KeyStore.in_memory({KEY_ID: SECRET}, KEY_ID)
    pydicom.dcmwrite(marked, embed_dataset(pydicom.dcmread(source), keys).dataset, enforce_file_format=True)


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", default="color3d_jpeg_baseline.dcm", help="a corpus file name")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--robust", action="store_true", help=f"also time {ROBUST_STEP!r}: embed with the robust layer")
    ap.add_argument("--job", choices=STEPS + (ROBUST_STEP,), help=argparse.SUPPRESS)
    ap.add_argument("--mark", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--marked", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mark:
        _mark(args.source, args.marked)
        return
    if args.job:
        print(json.dumps(_job(args.job, args.source, args.marked)))
        return

    import pydicom
    from corpus import pydicom_data_files, pydicom_test_files

    found = [d / args.file for d in (pydicom_test_files(), pydicom_data_files()) if d and (d / args.file).is_file()]
    if not found:
        raise SystemExit(f"{args.file} is neither in pydicom's test files nor in pydicom-data")
    source = found[0]
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = frames * ds.Rows * ds.Columns * ds.SamplesPerPixel
    with tempfile.TemporaryDirectory() as tmp:
        marked = Path(tmp) / "marked.dcm"
        _run("--mark", "--source", str(source), "--marked", str(marked))
        steps = STEPS + ((ROBUST_STEP,) if args.robust else ())
        runs: dict[str, list[dict[str, float]]] = {s: [] for s in steps}
        for _ in range(args.repeat):  # interleaved, so drift hits every step alike
            for step in steps:
                runs[step].append(json.loads(_run("--job", step, "--source", str(source), "--marked", str(marked))))
    print(f"## {args.file}: {frames} frames x {ds.Rows}x{ds.Columns} x {ds.SamplesPerPixel}, "
          f"{samples / 1e6:.1f} M samples, BitsStored {ds.BitsStored}; {args.repeat} runs each, medians")
    print()
    print("| step | seconds | / baseline | peak MB above imports | / baseline | bytes per sample |")
    print("|---|---|---|---|---|---|")
    base_s = statistics.median(r["seconds"] for r in runs["baseline"])
    base_mb = statistics.median(r["peak_mb"] for r in runs["baseline"])
    for step in steps:
        s = statistics.median(r["seconds"] for r in runs[step])
        mb = statistics.median(r["peak_mb"] for r in runs[step])
        print(f"| {step} | {s:.2f} | {s / base_s:.1f} | {mb:.0f} | {mb / base_mb:.1f} | {mb * 2**20 / samples:.1f} |")


if __name__ == "__main__":
    main()
