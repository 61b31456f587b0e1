"""Engine benchmark (issue #2): speed ratio against plain pydicom, and the
per-file distortion / capacity table.

    python bench/bench_engine.py [--repeat 30] [--table docs/engine-results.md]

Speed: for 512x512 CT slices (pydicom-data 693_UNCR), time
    ours     = dcmread + embed (incl. self-check) + dcmwrite
    baseline = dcmread + decode + encode + dcmwrite          (plain pydicom)
interleaved in one run, and print the ratio of medians (target <= 3).
Table: every corpus image that carries a watermark: PSNR (peak 2^BitsStored-1),
max |delta|, payload bits, capacity bits, bpp (payload bits per plane /
samples of one frame-channel).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from corpus import ok_corpus, pydicom_data_files  # noqa: E402

from dicom_wm.errors import InsufficientCapacity  # noqa: E402
from dicom_wm.keys import KeyStore  # noqa: E402
from dicom_wm.watermark import embed_dataset  # noqa: E402

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


def speed(path: Path, repeat: int) -> None:
    base_t: list[float] = []
    our_t: list[float] = []
    for fn in (baseline, ours):  # warm up caches and imports
        fn(path)
    for _ in range(repeat):
        for fn, sink in ((baseline, base_t), (ours, our_t)):
            t = time.perf_counter()
            fn(path)
            sink.append(time.perf_counter() - t)
    b, o = statistics.median(base_t), statistics.median(our_t)
    print(f"## Speed: {path.name}, {repeat} interleaved runs, medians")
    print()
    print("| pipeline | median ms |")
    print("|---|---|")
    print(f"| pydicom read + decode + encode + write (baseline) | {b * 1000:.2f} |")
    print(f"| read + embed + self-check + write (dicom-wm) | {o * 1000:.2f} |")
    print()
    print(f"**ratio dicom-wm / baseline = {o / b:.1f}** (target <= 3)")
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
    args = ap.parse_args()
    data = pydicom_data_files()
    if data is None:
        raise SystemExit("pydicom-data is not installed (pip install -e '.[test]')")
    speed(data / "693_UNCR.dcm", args.repeat)
    if args.no_table:
        return
    lines = table()
    print("## Distortion and capacity per corpus file (classic predictor)\n")
    print("\n".join(lines))
    if args.table:
        args.table.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
