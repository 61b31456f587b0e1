"""Benchmark: the robust layer on cine loops, aggregated over frames vs one frame at a time.

    nice python bench/bench_cine_robust.py                 # ~5 min on a shared 2-core VM
    nice python bench/bench_cine_robust.py --trials 1 --curve-trials 2   # quicker

Cines (pydicom-data when installed, else synthetic only):

* ``US color3d``: color3d_jpeg_baseline.dcm, 120 frames of 480 x 640, YBR
  (8-bit; every Y, Cb and Cr plane carries the message, as ``--robust`` marks
  every plane); exported as 8-bit RGB.
* ``MR emri``: emri_small.dcm, 10 frames of 64 x 64, 12-bit; exported as the
  8-bit rendering of the cine's 1st..99th percentile window.
* ``synthetic``: 32 frames of 128 x 128, 12-bit, a moving pattern (the
  ``tests/test_frames.py`` cine), rendered like MR.

Per trial: a fresh random 8-byte message and 32-byte secret; every plane is
marked with ``embed_robust`` (the robust layer alone: the reversible payload
``embed_dataset`` puts on top changes a sample by at most 1 and is left out to
keep the run short). Attacks on the list of exported frames:

* ``drop 50%``: a random half of the frames is kept;
* ``insert 50%``: as many foreign frames as half the cine are inserted at
  random places, half of them unmarked originals, half marked with another
  message under the same key;
* ``shuffle``: random order;
* ``JPEG Qxx``: every frame re-encoded (Pillow) at quality xx;
* ``combo``: drop 50%, insert 50%, shuffle, then per-frame JPEG.

Recovery = the exact message; when the frames of another message were
inserted and their message is returned instead, that is counted apart (it
is in the frames: the trace names the record those frames came from).
``aggregate``: ``decode_robust_frames`` on the
attacked frame list. ``single``: ``decode_robust`` (the single-image decoder,
its geometry search included) on ``--singles`` random marked frames of the
attacked list, each counted. False positives: ``decode_robust_frames`` on
every unmarked cine under ``--fp-keys`` random keys.

Then recovery vs number of frames: the first n frames of the synthetic cine
under per-frame JPEG Q20 (n = 1, 2, 4, ...), ``--curve-trials`` messages, and
8 random frames of each decoded alone.

``--budget-s`` bounds the run: no new trial starts after it; the tables give
the trials done. Times are wall seconds on this machine (shared, noisy):
compare them with each other, not with other runs.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom_wm.robust import decode_robust, embed_robust  # noqa: E402
from dicom_wm.robust.frames import MAX_FRAME_DECODES, decode_frames_detail  # noqa: E402


@dataclass
class Cine:
    name: str
    planes: np.ndarray  # (frames, rows, cols, channels) stored integers
    lo: int
    hi: int
    ybr: bool

    def export(self, planes: np.ndarray) -> list[np.ndarray]:
        """8-bit frames as a viewer would export them."""
        if self.ybr:
            from pydicom.pixels import convert_color_space

            rgb = convert_color_space(np.clip(planes, 0, 255).astype(np.uint8), "YBR_FULL", "RGB")
            return list(rgb)
        ref = self.planes[..., 0]
        p1, p99 = np.percentile(ref, [1, 99])
        return [np.clip(np.round((f - p1) / max(p99 - p1, 1) * 255), 0, 255).astype(np.uint8) for f in planes[..., 0]]


def synthetic(frames: int = 32, size: int = 128) -> Cine:
    from tests.test_frames import cine

    from dicom_wm.pixels import read_samples

    px = read_samples(cine(frames=frames, size=size))
    return Cine(f"synthetic {frames}x{size}²", px.samples, px.lo, px.hi, False)


def real_cines() -> list[Cine]:
    from tests.corpus import pydicom_data_files

    data = pydicom_data_files()
    if data is None:
        return []
    import pydicom

    from dicom_wm.pixels import read_samples

    out = []
    for name, label in (("color3d_jpeg_baseline.dcm", "US color3d"), ("emri_small.dcm", "MR emri")):
        px = read_samples(pydicom.dcmread(data / name))
        f, r, c, _ = px.samples.shape
        out.append(Cine(f"{label} {f}x{r}x{c}", px.samples, px.lo, px.hi, px.photometric.startswith("YBR")))
    return out


def mark(cine: Cine, message: bytes, secret: bytes, frames: list[int] | None = None) -> np.ndarray:
    idx = range(len(cine.planes)) if frames is None else frames
    src = cine.planes[list(idx)]
    out = np.empty_like(src)
    for i in range(len(src)):
        for ch in range(src.shape[-1]):
            out[i, :, :, ch] = embed_robust(src[i, :, :, ch], cine.lo, cine.hi, message, secret)[0]
    return out


def jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


ATTACKS = ["none", "drop 50%", "insert 50%", "shuffle", "JPEG Q50", "JPEG Q30", "combo Q50", "combo Q30"]


def attack(
    name: str, cine: Cine, marked: list[np.ndarray], secret: bytes, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[int], bytes | None]:
    """The attacked frame list, the positions in it of frames carrying the
    message, and the other message inserted frames carry (None if none)."""
    other_msg = None
    frames = list(marked)
    carrying = list(range(len(frames)))
    n = len(frames)
    if name.startswith("drop") or name.startswith("combo"):
        keep = sorted(rng.choice(n, size=max(n // 2, 1), replace=False).tolist())
        frames, carrying = [frames[i] for i in keep], list(range(len(keep)))
    if name.startswith("insert") or name.startswith("combo"):
        k = max(n // 2, 1)
        pick = rng.choice(n, size=k, replace=False).tolist()
        unmarked = cine.export(cine.planes[pick[: k - k // 2]])
        other_msg = rng.bytes(8)
        other = cine.export(mark(cine, other_msg, secret, pick[k - k // 2 :])) if k // 2 else []
        labels = [True] * len(frames) + [False] * (len(unmarked) + len(other))
        pool = frames + unmarked + other
        order = rng.permutation(len(pool))
        frames = [pool[i] for i in order]
        carrying = [j for j, i in enumerate(order) if labels[i]]
    if name == "shuffle" or name.startswith("combo"):
        order = rng.permutation(len(frames))
        inv = np.argsort(order)
        frames = [frames[i] for i in order]
        carrying = sorted(int(inv[i]) for i in carrying)
    if "Q" in name:
        q = int(name.rsplit("Q", 1)[1])
        frames = [jpeg(f, q) for f in frames]
    return frames, carrying, other_msg


def bounds(k: int, n: int) -> str:
    return f"{k}/{n}" if n else "–"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=2, help="messages per cine and attack (default 2)")
    ap.add_argument("--singles", type=int, default=2, help="marked frames decoded alone per trial (default 2)")
    ap.add_argument("--curve-trials", type=int, default=4, help="messages per point of the frames curve (default 4)")
    ap.add_argument("--fp-keys", type=int, default=2, help="random keys per unmarked cine (default 2)")
    ap.add_argument("--budget-s", type=float, default=280.0, help="no new trial starts after this (default 280)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)

    cines = real_cines() + [synthetic()]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip() or "unknown: not a git checkout"
    print(f"# bench_cine_robust (commit {head}, seed {args.seed}, MAX_FRAME_DECODES {MAX_FRAME_DECODES})\n")

    agg: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    single: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    secs: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    hows: dict[tuple[str, str], list[str]] = defaultdict(list)
    foreign: dict[tuple[str, str], int] = defaultdict(int)  # returned the inserted frames' message
    wrong = 0  # returned a message no frame carries
    for trial in range(args.trials):
        for cine in cines:
            if time.perf_counter() - t_start > args.budget_s:
                break
            msg, secret = rng.bytes(8), rng.bytes(32)
            marked = cine.export(mark(cine, msg, secret))
            for name in ATTACKS:
                frames, carrying, other_msg = attack(name, cine, marked, secret, rng)
                t = time.perf_counter()
                found = decode_frames_detail(frames, secret)
                dt = time.perf_counter() - t
                key = (cine.name, name)
                ok = found is not None and found.message == msg
                agg[key][0] += ok
                agg[key][1] += 1
                secs[key][0] += dt
                secs[key][1] += len(frames)
                hows[key].append(found.how if ok and found else "–")
                if found is not None and not ok:
                    if found.message == other_msg:
                        foreign[key] += 1
                    else:
                        wrong += 1
                for j in rng.choice(carrying, size=min(args.singles, len(carrying)), replace=False):
                    single[key][0] += decode_robust(frames[int(j)], secret) == msg
                    single[key][1] += 1
                verdict = "ok" if ok else "MISS" if found is None else "OTHER"
                print(f"  {cine.name:24s} {name:10s} trial {trial}: {verdict} "
                      f"({found.how if found else None}) {dt:.1f}s", file=sys.stderr, flush=True)

    print("| cine | attack | aggregate | inserted frames' message instead | single frame | ms / frame (aggregate) | found by |")
    print("|---|---|---|---|---|---|---|")
    for cine in cines:
        for name in ATTACKS:
            key = (cine.name, name)
            if not agg[key][1]:
                continue
            ms = 1000 * secs[key][0] / max(secs[key][1], 1)
            print(f"| {cine.name} | {name} | {bounds(*agg[key])} | {foreign[key] if 'insert' in name or 'combo' in name else '–'} "
                  f"| {bounds(*single[key])} | {ms:.0f} | "
                  f"{', '.join(sorted(set(hows[key])))} |")

    print(f"\nmessages returned that no frame carries: {wrong}")
    fp = [0, 0]
    for cine in cines:
        unmarked = cine.export(cine.planes)
        for _ in range(args.fp_keys):
            fp[0] += decode_frames_detail(unmarked, rng.bytes(32)) is not None
            fp[1] += 1
    print(f"\nfalse positives (unmarked cines x random keys): {fp[0]}/{fp[1]}; bound "
          f"{MAX_FRAME_DECODES} x 2^-32 = {MAX_FRAME_DECODES * 2.0**-32:.1e} per key")

    # recovery vs number of frames: synthetic cine, per-frame JPEG Q20
    curve = synthetic()
    sizes = [n for n in (1, 2, 4, 8, 16, 32) if n <= len(curve.planes)]
    ok = dict.fromkeys(sizes, 0)
    one = tried = single_n = 0
    for _ in range(args.curve_trials):
        if time.perf_counter() - t_start > args.budget_s:
            break
        msg, secret = rng.bytes(8), rng.bytes(32)
        frames = [jpeg(f, 20) for f in curve.export(mark(curve, msg, secret))]
        for n in sizes:
            found = decode_frames_detail(frames[:n], secret)
            ok[n] += found is not None and found.message == msg
        for j in rng.choice(len(frames), size=min(8, len(frames)), replace=False):
            one += decode_robust(frames[int(j)], secret) == msg
            single_n += 1
        tried += 1
    print(f"\n| frames summed | exact message ({curve.name}, per-frame JPEG Q20) |")
    print("|---|---|")
    for n in sizes:
        print(f"| {n} | {ok[n]}/{tried} |")
    print(f"\nsingle frames of that cine decoded alone (decode_robust): {one}/{single_n}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
