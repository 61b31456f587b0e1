"""Benchmark: learned (and forward-adaptive) vs classic predictor on the held-out images.

    python bench/bench_predictor.py                # held-out split, markdown tables
    python bench/bench_predictor.py --threads 2 --speed-slices 8
    python bench/bench_predictor.py --device cuda  # the same, plus batched throughput on the GPU
    python bench/bench_predictor.py --speed-only   # throughput tables only

For every held-out file of dicom_wm.models.corpus and four predictors
(classic, learned, learned-adaptive, classic-adaptive: the adaptive ones fit
their per-plane weights on the image, as embed does), in one run: single-layer capacity (A-lattice carriers e in {0, -1} on the positions
the engine's walk_order makes walkable; the *ceiling* column counts the
A-lattice samples: one bit each is the most any predictor can carry in one
layer), and PSNR (peak 2**BitsStored - 1) and
max |delta| after embedding a random payload of 0.01, 0.05, 0.1, 0.2 bpp and
of the full capacity, with the engine's own walk and embed
(dicom_wm.engine.histogram_shift). Beside them: the Kalker-Willems
rate-distortion bound for the classic predictor's prediction-error
histogram (the largest H(Y) - H(X) at a given squared-error distortion,
computed numerically). Last, predict speed on 512x512 slices, learned
against classic in the same run, and batched throughput: slices/s of the
learned predictor over batches of 1, 8, 32 one-slice instances predicted
together (``predict_many``, what the gpu queue's ``process_batch`` does, host
<-> device copies included) on ``--device``, the classic predictor on the
CPU one instance at a time alongside; then whole embeds (predict, embed,
self-check, encode) of a batch, learned-batched against classic.

bpp = payload bits / samples of one frame-channel; the payload of an image
is split evenly over its planes (frames x channels).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_wm.allocator import tune_allocator  # noqa: E402
from dicom_wm.engine.adaptive import AdaptiveFitter  # noqa: E402
from dicom_wm.engine.histogram_shift import carrier_mask, embed_walk, walk_order  # noqa: E402
from dicom_wm.engine.learned import LearnedPredictor, load_learned_predictor  # noqa: E402
from dicom_wm.engine.predictors import ClassicRhombus, PrecomputedPredictor, Predictor, predict_many  # noqa: E402
from dicom_wm.models.corpus import HELD_OUT_FILES, CorpusImage, is_available, load_image  # noqa: E402

PAYLOADS_BPP = (0.01, 0.05, 0.1, 0.2)


@dataclass
class Result:
    capacity_bits: int
    walkable: int
    psnr: dict[str, float | None]  # payload label -> PSNR (None: beyond capacity)
    max_abs: dict[str, int | None]
    errors: np.ndarray  # prediction errors on walkable positions (all planes)


def _psnr(sq_err: float, n: int, bits: int) -> float:
    peak = float((1 << bits) - 1)
    mse = sq_err / n
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def _walk_length(carriers: np.ndarray, bits: int) -> int:
    """Walk positions needed to carry ``bits`` bits (caller checked capacity)."""
    if bits == 0:
        return 0
    return int(np.searchsorted(np.cumsum(carriers, dtype=np.int64), bits)) + 1


def evaluate(im: CorpusImage, predictor: Predictor, rng_seed: int = 0) -> Result:
    planes = im.planes
    n, rows, cols = planes.shape
    if isinstance(predictor, AdaptiveFitter):  # per-plane weights fitted on the image (what embed does)
        predictor = predictor.fit(planes, im.lo, im.hi)
    pred, cost = predictor.predict_and_complexity(planes)
    walks = [walk_order(pred[i], cost[i], im.lo, im.hi) for i in range(n)]
    flats = [planes[i].reshape(-1) for i in range(n)]
    carriers = [carrier_mask(f[w.index] - w.pred) for f, w in zip(flats, walks)]
    caps = [int(c.sum()) for c in carriers]
    errors = np.concatenate([f[w.index] - w.pred for f, w in zip(flats, walks)])
    labels = [f"{b:g} bpp" for b in PAYLOADS_BPP] + ["max"]
    psnr: dict[str, float | None] = {}
    max_abs: dict[str, int | None] = {}
    for label, bpp in zip(labels, list(PAYLOADS_BPP) + [None]):
        rng = np.random.default_rng(rng_seed)
        sq = 0.0
        worst = 0
        ok = True
        for f, w, c, cap in zip(flats, walks, carriers, caps):
            bits = cap if bpp is None else int(round(bpp * rows * cols))
            if bits > cap:
                ok = False
                break
            used = _walk_length(c, bits)
            stream = np.zeros(int(c[:used].sum()), dtype=np.int64)
            stream[:bits] = rng.integers(0, 2, bits)
            out = embed_walk(f, w, stream, used, im.lo, im.hi)
            d = out - f
            sq += float(np.dot(d, d))
            worst = max(worst, int(np.abs(d).max(initial=0)))
        psnr[label] = _psnr(sq, planes.size, im.bits_stored) if ok else None
        max_abs[label] = worst if ok else None
    return Result(sum(caps), sum(len(w.index) for w in walks), psnr, max_abs, errors)


def kalker_willems(errors: np.ndarray, max_shift: int = 3, iters: int = 400) -> list[tuple[float, float]]:
    """Points (D, R) of the reversible rate-distortion bound for i.i.d. host
    errors with the histogram of ``errors``: R = max H(Y) - H(X) [bits per
    sample] subject to E (Y - X)**2 <= D, by exponentiated-gradient ascent
    on the Lagrangian H(Y) - lam * E d for a grid of lam (transitions
    restricted to |Y - X| <= max_shift, which is where the optimum lives at
    these distortions). A numerical estimate from below; rates beyond the
    curve (a very wide histogram needs |Y - X| > max_shift) print as "—"."""
    lo, hi = int(errors.min()), int(errors.max())
    hist = np.bincount(errors - lo, minlength=hi - lo + 1).astype(np.float64)
    keep = hist > 0
    xs = np.arange(lo, hi + 1)[keep]
    p = hist[keep] / hist.sum()
    hx = float(-(p * np.log2(p)).sum())
    shifts = np.arange(-max_shift, max_shift + 1)
    y_index = (xs[:, None] + shifts[None, :]) - (lo - max_shift)
    ny = hi - lo + 1 + 2 * max_shift
    d = (shifts**2).astype(np.float64)[None, :]
    points = []
    for lam in np.geomspace(1e-4, 200.0, 48):
        pi = p[:, None] * np.exp(-lam * d)
        pi *= p[:, None] / pi.sum(axis=1, keepdims=True)
        for _ in range(iters):
            q = np.bincount(y_index.ravel(), weights=pi.ravel(), minlength=ny)
            g = -np.log(np.maximum(q[y_index], 1e-300)) - lam * d
            g -= g.max(axis=1, keepdims=True)
            pi = pi * np.exp(0.5 * g)
            pi *= p[:, None] / pi.sum(axis=1, keepdims=True)
        q = np.bincount(y_index.ravel(), weights=pi.ravel(), minlength=ny)
        q = q[q > 0]
        points.append((float((pi * d).sum()), float(-(q * np.log2(q)).sum()) - hx))
    return sorted(points)


def bound_psnr(points: list[tuple[float, float]], rate: float, share: float, bits: int) -> float | None:
    """PSNR of the bound at ``rate`` bits per walkable sample; ``share`` =
    walkable samples / all samples."""
    ds = np.array([pt[0] for pt in points])
    rs = np.maximum.accumulate(np.array([pt[1] for pt in points]))
    if rate > rs[-1]:
        return None
    dist = float(np.interp(rate, rs, ds))
    mse = dist * share
    peak = float((1 << bits) - 1)
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def ideal_psnr(bits: int, n_samples: int, bits_stored: int) -> float:
    """PSNR if every walked position were a carrier: a random payload of
    ``bits`` bits then moves bits / 2 samples by 1 (the best any placement
    can do with this embedding rule)."""
    return _psnr(bits / 2, n_samples, bits_stored)


def fmt(v: float | int | None, spec: str = ".2f") -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def speed(learned: LearnedPredictor, slices: int, repeats: int) -> tuple[float, float, float]:
    """Slices/s of prediction + complexity (what the engine asks for) on
    512x512 slices, best of ``repeats``: classic, learned, and
    classic-adaptive (its per-plane fit included, as on embed)."""
    im = load_image("693_UNCR.dcm")
    planes = np.repeat(im.planes[:1], slices, axis=0)
    classic = ClassicRhombus()
    adaptive = AdaptiveFitter(classic)

    def run_classic(x: np.ndarray) -> None:
        classic.predict_and_complexity(x)

    def run_learned(x: np.ndarray) -> None:
        learned.predict_and_complexity(x)

    def run_classic_adaptive(x: np.ndarray) -> None:  # fit (embed side) + predict
        adaptive.fit(x, im.lo, im.hi).predict_and_complexity(x)

    out = []
    for fn in (run_classic, run_learned, run_classic_adaptive):
        fn(planes[:1])
        best = math.inf
        for _ in range(repeats):
            t = time.perf_counter()
            fn(planes)
            best = min(best, time.perf_counter() - t)
        out.append(slices / best)
    return out[0], out[1], out[2]


def _slices(count: int) -> np.ndarray:
    """``count`` distinct 512x512 CT slices (rolled copies of 693_UNCR)."""
    base = load_image("693_UNCR.dcm").planes[0]
    return np.stack([np.roll(base, (7 * k, 13 * k), axis=(0, 1)) for k in range(count)])


def _best(fn, repeats: int) -> float:
    fn()  # warm-up (cuDNN / allocator / caches)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def batched_speed(learned: LearnedPredictor, sizes: list[int], repeats: int) -> list[tuple[int, float, float]]:
    """(batch size, learned slices/s batched on its device, classic slices/s
    one instance at a time on the CPU) per batch size."""
    classic = ClassicRhombus()
    rows = []
    for b in sizes:
        stacks = [s[None] for s in _slices(b)]
        t_learned = _best(lambda: predict_many(learned, stacks), repeats)
        t_classic = _best(lambda: [classic.predict_and_complexity(x) for x in stacks], repeats)
        rows.append((b, b / t_learned, b / t_classic))
    return rows


def embed_speed(learned: LearnedPredictor, batch: int, repeats: int) -> tuple[float, float, float, float]:
    """Slices/s of whole embeds (decode, predict, embed, self-check, encode)
    of ``batch`` one-slice CT instances: learned with the batch predicted in
    one ``predict_many`` (the gpu queue's path), classic one by one, and the
    adaptive predictors one by one (each instance fits its own weights)."""
    import copy
    import tempfile

    import pydicom

    from dicom_wm.keys import KeyStore
    from dicom_wm.models.corpus import _path
    from dicom_wm.pixels import read_samples
    from dicom_wm.watermark import EmbedOptions, _to_planes, embed_dataset

    keys = KeyStore.init(Path(tempfile.mkdtemp()) / "keys.json")
    ds0 = pydicom.dcmread(_path("693_UNCR.dcm"))
    datasets = []
    for plane in _slices(batch):
        ds = copy.deepcopy(ds0)
        ds.PixelData = plane.astype(np.int16).tobytes()
        datasets.append(ds)
    classic = ClassicRhombus()

    def run_learned() -> None:
        planes = [_to_planes(read_samples(ds).samples) for ds in datasets]
        maps = predict_many(learned, planes)
        for ds, p, (pred, cost) in zip(datasets, planes, maps):
            embed_dataset(ds, keys, options=EmbedOptions(), engine_predictor=PrecomputedPredictor(learned, p, pred, cost))

    def run_classic() -> None:
        for ds in datasets:
            embed_dataset(ds, keys, options=EmbedOptions(), engine_predictor=classic)

    def run_named(name: str):
        def run() -> None:
            for ds in datasets:
                embed_dataset(ds, keys, options=EmbedOptions(predictor=name))

        return run

    return (
        batch / _best(run_learned, repeats),
        batch / _best(run_classic, repeats),
        batch / _best(run_named("classic-adaptive"), repeats),
        batch / _best(run_named("learned-adaptive"), repeats),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="learned vs classic predictor on the held-out split")
    ap.add_argument("--files", nargs="*", default=list(HELD_OUT_FILES))
    ap.add_argument("--model", default=None, help="model card name (default card if omitted)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--speed-slices", type=int, default=4)
    ap.add_argument("--no-bound", action="store_true")
    ap.add_argument("--batch-sizes", default="1,8,32", help="batched throughput: instances per batch ('' to skip)")
    ap.add_argument("--embed-batch", type=int, default=8, help="whole-embed throughput batch (0 to skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--speed-only", action="store_true", help="skip capacity and PSNR, print the speed tables")
    args = ap.parse_args(argv)
    tuned = tune_allocator()  # as every dicom-wm process (off with DICOM_WM_MALLOC_TUNING=0)
    torch.set_num_threads(args.threads)
    learned = load_learned_predictor(args.model, args.device)
    classic = ClassicRhombus()
    print(f"learned: {learned.name} sha256 {learned.model_sha256} on {learned.device}; baseline: {classic.name}; "
          f"allocator {'tuned' if tuned else 'glibc defaults'}\n")

    cap_rows = []
    psnr_rows = []
    for name in [] if args.speed_only else args.files:
        if not is_available(name):
            print(f"skip {name}: not installed")
            continue
        im = load_image(name)
        rc = evaluate(im, classic)
        rl = evaluate(im, learned)
        ra = evaluate(im, AdaptiveFitter(learned))
        rca = evaluate(im, AdaptiveFitter(classic))
        n_samples = im.planes.size
        nplanes = im.planes.shape[0]
        a_samples = nplanes * -(-im.planes.shape[1] * im.planes.shape[2] // 2)  # the A lattice, (r + c) even

        def gain(r: Result) -> str:
            return f"{100 * (r.capacity_bits / max(rc.capacity_bits, 1) - 1):+.1f}%"

        cap_rows.append(
            f"| {name} | {im.modality} | {im.bits_stored}{'s' if im.signed else 'u'} | "
            f"{'x'.join(map(str, im.planes.shape))} | {rc.capacity_bits} | {rl.capacity_bits} | {gain(rl)} | "
            f"{ra.capacity_bits} | {gain(ra)} | {rca.capacity_bits} | {gain(rca)} | "
            f"{rc.capacity_bits / n_samples:.4f} | {ra.capacity_bits / n_samples:.4f} | "
            f"{a_samples} ({100 * (a_samples / max(rc.capacity_bits, 1) - 1):+.1f}%) |"
        )
        points = None if args.no_bound else kalker_willems(rc.errors)
        share = rc.walkable / n_samples
        for label in rc.psnr:
            if label == "max":
                bpp = rc.capacity_bits / n_samples
                lab = f"max (each at its own capacity; classic {bpp:.4f} bpp)"
            else:
                bpp = float(label.split()[0])
                lab = label
            kw = None
            if points is not None and share > 0:
                kw = bound_psnr(points, bpp / share, share, im.bits_stored)
            ideal = ideal_psnr(int(round(bpp * im.planes.shape[1] * im.planes.shape[2])) * nplanes, n_samples, im.bits_stored)
            pc, pl, pa, pca = rc.psnr[label], rl.psnr[label], ra.psnr[label], rca.psnr[label]

            def delta(v: float | None) -> float | None:
                return None if pc is None or v is None or math.isinf(pc) or math.isinf(v) else v - pc

            worst = [r.max_abs[label] for r in (rc, rl, ra, rca)]
            psnr_rows.append(
                f"| {name} | {lab} | {fmt(pc)} | {fmt(pl)} | {fmt(pa)} | {fmt(pca)} | {fmt(delta(pl), '+.2f')} | "
                f"{fmt(delta(pa), '+.2f')} | {fmt(delta(pca), '+.2f')} | "
                f"{' / '.join(fmt(w, 'd') for w in worst)} | {fmt(ideal)} | {fmt(kw)} |"
            )
        print(f"done {name} ({nplanes} planes)", file=sys.stderr, flush=True)

    if cap_rows:
        print("### Single-layer capacity (bits)\n")
        print("| file | modality | bits | planes | classic | learned | gain | learned-adaptive | gain | "
              "classic-adaptive | gain | classic bpp | learned-adaptive bpp | ceiling (vs classic) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(cap_rows))
        print("\n### PSNR (dB, peak 2^BitsStored-1) and max |Δ|\n")
        print("| file | payload | classic | learned | learned-adaptive | classic-adaptive | Δ dB learned | "
              "Δ dB learned-adaptive | Δ dB classic-adaptive | max abs Δ c / l / la / ca | ideal placement | "
              "KW bound (classic errors) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(psnr_rows))
    if args.speed_slices:
        c, lr, ca = speed(learned, args.speed_slices, args.repeats)
        print(f"\n### predict speed, 512x512 slices, {args.threads} thread(s), {learned.device}\n")
        print("| classic slices/s | learned slices/s | learned / classic | classic-adaptive (fit + predict) slices/s "
              "| classic-adaptive / classic |")
        print("|---|---|---|---|---|")
        print(f"| {c:.1f} | {lr:.2f} | {lr / c:.4f} | {ca:.2f} | {ca / c:.4f} |")
    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if sizes:
        print(f"\n### batched prediction, 512x512 one-slice instances, learned on {learned.device}, "
              f"classic on the CPU one by one, {args.threads} CPU thread(s)\n")
        print("| batch | learned slices/s (batched) | classic slices/s | learned / classic |")
        print("|---|---|---|---|")
        for b, lr_b, c_b in batched_speed(learned, sizes, args.repeats):
            print(f"| {b} | {lr_b:.2f} | {c_b:.1f} | {lr_b / c_b:.4f} |")
    if args.embed_batch:
        lr_e, c_e, ca_e, la_e = embed_speed(learned, args.embed_batch, args.repeats)
        print(f"\n### whole embed (decode, predict, embed, self-check, encode), batch of {args.embed_batch} "
              f"512x512 CT instances, learned batched on {learned.device}\n")
        print("| classic slices/s | learned slices/s | learned / classic | classic-adaptive slices/s "
              "| classic-adaptive / classic | learned-adaptive slices/s | learned-adaptive / classic |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {c_e:.1f} | {lr_e:.2f} | {lr_e / c_e:.4f} | {ca_e:.2f} | {ca_e / c_e:.4f} | {la_e:.2f} "
              f"| {la_e / c_e:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
