"""Engine benchmark (issue #2): speed ratio against plain pydicom, and the
per-file distortion / capacity table.

    python bench/bench_engine.py [--repeat 30] [--table docs/engine-results.md]

Speed: for 512x512 CT slices (pydicom-data 693_UNCR), time
    ours     = dcmread + embed (incl. self-check) + dcmwrite
    baseline = dcmread + decode + encode + dcmwrite          (plain pydicom)
interleaved in one run, and print the ratio of medians (target <= 3); also
verify and restore of the watermarked slice (what a retrieve costs), and,
timed after the others with a quarter of the runs, embed with the robust
layer (--robust).
The speed runs twice, each in its own process: with the allocator tuning the
service applies (dicom_wm.allocator) and with glibc's defaults
(``--allocator tuned|default`` runs one of them here).
Table: every corpus image that carries a watermark: PSNR (peak 2^BitsStored-1),
max |delta|, payload bits, capacity bits, bpp (payload bits per plane /
samples of one frame-channel).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from corpus import ok_corpus, pydicom_data_files  # noqa: E402

from dicom_wm.allocator import tune_allocator  # noqa: E402
from dicom_wm.errors import InsufficientCapacity  # noqa: E402
from dicom_wm.keys import KeyStore  # noqa: E402
from dicom_wm.watermark import EmbedOptions, embed_dataset, restore_dataset, verify_dataset  # noqa: E402

KEYS = KeyStore.in_memory({"kbench001": b"\x5a" * 32}, "kbench001")


def baseline(path: Path) -> None:
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    ds.PixelData = arr.tobytes()
    pydicom.dcmwrite(io.BytesIO(), ds, enforce_file_format=True)


def ours(path: Path) -> None:
    ds = pydicom.dcmread(path)
    result = embed_dataset(ds, KEYS)
    pydicom.dcmwrite(io.BytesIO(), result.dataset, enforce_file_format=True)


def ours_robust(path: Path) -> None:
    ds = pydicom.dcmread(path)
    result = embed_dataset(ds, KEYS, options=EmbedOptions(robust=True))
    pydicom.dcmwrite(io.BytesIO(), result.dataset, enforce_file_format=True)


def speed(path: Path, repeat: int) -> None:
    tuned = tune_allocator()  # as the service does (off with DICOM_WM_MALLOC_TUNING=0)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, embed_dataset(pydicom.dcmread(path), KEYS).dataset, enforce_file_format=True)
    marked = buf.getvalue()

    def verify(_: Path) -> None:
        verify_dataset(pydicom.dcmread(io.BytesIO(marked)), KEYS)

    def restore(_: Path) -> None:
        restore_dataset(pydicom.dcmread(io.BytesIO(marked)), KEYS)

    rows = (
        ("pydicom read + decode + encode + write (baseline)", baseline),
        ("read + embed + self-check + write (dicom-wm)", ours),
        ("read + verify a watermarked slice (dicom-wm)", verify),
        ("read + restore a watermarked slice (dicom-wm)", restore),
    )
    times: list[list[float]] = [[] for _ in rows]
    for _, fn in rows:  # warm up caches and imports
        fn(path)
    for _ in range(repeat):
        for (_, fn), sink in zip(rows, times):
            t = time.perf_counter()
            fn(path)
            sink.append(time.perf_counter() - t)
    # The robust layer costs ~100x the rest: timed on its own, after the others.
    robust_runs = []
    ours_robust(path)
    for _ in range(max(5, repeat // 4)):
        t = time.perf_counter()
        ours_robust(path)
        robust_runs.append(time.perf_counter() - t)
    rows += (("read + embed with the robust layer + self-check + write (dicom-wm)", ours_robust),)
    times.append(robust_runs)
    med = [statistics.median(t) for t in times]
    print(f"## Speed: {path.name}, {repeat} interleaved runs, medians, allocator {'tuned' if tuned else 'glibc defaults'}")
    print()
    print("| pipeline | median ms | / baseline |")
    print("|---|---|---|")
    for (name, _), m in zip(rows, med):
        print(f"| {name} | {m * 1000:.2f} | {m / med[0]:.1f} |")
    print()
    print(f"**ratio dicom-wm embed / baseline = {med[1] / med[0]:.1f}** (target <= 3)")
    print()


def table() -> list[str]:
    lines = [
        "| file | frames x channels | rows x cols | BitsStored | PSNR dB | max abs delta | payload bits | capacity bits | bpp |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in ok_corpus():
        if entry.slow:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = entry.load()
            try:
                r = embed_dataset(ds, KEYS)
            except InsufficientCapacity:
                lines.append(f"| {entry.name} | | {ds.Rows} x {ds.Columns} | {ds.BitsStored} | insufficient capacity | | | | |")
                continue
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        planes = frames * int(ds.SamplesPerPixel)
        bpp = r.payload_bits / planes / (ds.Rows * ds.Columns)
        psnr = "inf" if r.psnr_db == float("inf") else f"{r.psnr_db:.1f}"
        lines.append(
            f"| {entry.name} | {frames} x {ds.SamplesPerPixel} | {ds.Rows} x {ds.Columns} | {ds.BitsStored} | "
            f"{psnr} | {r.max_abs_delta} | {r.payload_bits} | {r.capacity_bits} | {bpp:.4f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--table", type=Path, help="also write the per-file table (markdown) here")
    ap.add_argument("--no-table", action="store_true")
    ap.add_argument("--allocator", choices=("tuned", "default"), help="one speed run, here (default: both, each in a process)")
    args = ap.parse_args()
    data = pydicom_data_files()
    if data is None:
        raise SystemExit("pydicom-data is not installed (pip install -e '.[test]')")
    if args.allocator:
        os.environ["DICOM_WM_MALLOC_TUNING"] = "1" if args.allocator == "tuned" else "0"
        speed(data / "693_UNCR.dcm", args.repeat)
        return
    for kind in ("tuned", "default"):  # a process each: the tuning cannot be undone in one
        sys.stdout.flush()
        cmd = [sys.executable, __file__, "--allocator", kind, "--repeat", str(args.repeat)]
        subprocess.run(cmd, check=True)
    if args.no_table:
        return
    lines = table()
    print("## Distortion and capacity per corpus file (classic predictor)\n")
    print("\n".join(lines))
    if args.table:
        args.table.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
