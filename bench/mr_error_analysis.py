"""Why the learned predictor does not gain on MR2: prediction-error statistics.

    python bench/mr_error_analysis.py [--files MR2_UNCR.dcm 693_UNCR.dcm]

For each file, on the A-lattice positions the classic walk can use
(prediction walkable under the engine's rule), and separately on the
foreground (|classic prediction error| context not flat: the four rhombus
neighbours not all equal):

* carriers (e in {0, -1}), the empirical entropy H(e) and std of e for the
  classic predictor, the learned predictor, and two *oracle* predictors that
  no decoder could use: a least-squares linear predictor on the 12 nearest
  B-lattice neighbours (5x5 window) and on the 24 of a 7x7 window, both fitted
  on the very image they predict (rounded so the carrier window {pred-1, pred}
  is centred on the estimate);
* the same 24-neighbour least-squares predictor fitted on the MR training
  files instead (a fixed linear predictor a decoder could use);
* a noise estimate: Immerkaer's (1996) Laplacian-difference estimator of a
  white-noise sigma, and the carrier rate a predictor would reach if its
  error were only that white noise (Gaussian: P(e in {0,-1}) with the window
  centred on 0, i.e. P(|n| < 1)). If the oracles come close to that and the
  classic predictor too, the image is noise-limited; if the oracles beat the
  classic predictor by far, it is not, and a better predictor can gain.

The oracles are upper references for *linear* prediction from the B lattice,
not bounds in the strict sense (a non-linear predictor can do better).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_wm.engine.histogram_shift import walk_order  # noqa: E402
from dicom_wm.engine.learned import load_learned_predictor  # noqa: E402
from dicom_wm.engine.predictors import ClassicRhombus  # noqa: E402
from dicom_wm.models.corpus import load_image  # noqa: E402


def b_offsets(radius: int) -> list[tuple[int, int]]:
    """B-lattice offsets (odd |dr| + |dc|) within a (2r+1)^2 window, nearest first."""
    offs = [(dr, dc) for dr in range(-radius, radius + 1) for dc in range(-radius, radius + 1) if (dr + dc) % 2]
    return sorted(offs, key=lambda o: (o[0] ** 2 + o[1] ** 2, o))


def _design(plane: np.ndarray, idx: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (B-lattice neighbours of each position in ``idx``, as
    differences from their mean, plus that mean) and targets."""
    rows, cols = plane.shape
    p = np.pad(plane.astype(np.float64), radius, mode="reflect")
    r, c = np.divmod(idx, cols)
    feats = np.stack([p[r + radius + dr, c + radius + dc] for dr, dc in b_offsets(radius)], axis=1)
    return feats, plane.reshape(-1)[idx].astype(np.float64)


def fit_ls(pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Least squares, weights summing to one (level-free, so it transfers
    across images and bit depths): y - f0 = sum_k w_k (f_k - f0)."""
    x = np.concatenate([f[:, 1:] - f[:, :1] for f, _ in pairs])
    y = np.concatenate([t - f[:, 0] for f, t in pairs])
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    return w


def apply_ls(feats: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Rounded as floor(estimate + 1) so that the carrier window
    {pred - 1, pred} is centred on the estimate."""
    est = feats[:, 0] + (feats[:, 1:] - feats[:, :1]) @ w
    return np.floor(est + 1.0).astype(np.int64)


def oracle_prediction(plane: np.ndarray, idx: np.ndarray, radius: int) -> np.ndarray:
    """Least-squares linear prediction of the samples at flat indices
    ``idx`` from their B-lattice neighbours, fitted on those same samples
    (an oracle: a decoder cannot fit it)."""
    feats, y = _design(plane, idx, radius)
    return apply_ls(feats, fit_ls([(feats, y)]))


def transfer_weights(names: list[str], radius: int) -> np.ndarray:
    """The same least-squares predictor fitted on other images (training
    files), on their foreground A positions: what a fixed linear predictor
    learned offline could reach."""
    pairs = []
    for name in names:
        im = load_image(name, max_frames=4)
        for plane in im.planes:
            rows, cols = plane.shape
            a = np.flatnonzero((np.add.outer(np.arange(rows), np.arange(cols)) % 2 == 0).reshape(-1))
            feats, y = _design(plane, a, radius)
            keep = feats.min(axis=1) != feats.max(axis=1)
            pairs.append((feats[keep], y[keep]))
    return fit_ls(pairs)


def immerkaer_sigma(plane: np.ndarray) -> float:
    """White-noise sigma estimate (Immerkaer 1996)."""
    a = plane.astype(np.float64)
    lap = (a[:-2, :-2] - 2 * a[:-2, 1:-1] + a[:-2, 2:] - 2 * a[1:-1, :-2] + 4 * a[1:-1, 1:-1]
           - 2 * a[1:-1, 2:] + a[2:, :-2] - 2 * a[2:, 1:-1] + a[2:, 2:])
    h, w = lap.shape
    return math.sqrt(math.pi / 2) * float(np.abs(lap).sum()) / (6.0 * h * w)


def stats(e: np.ndarray) -> tuple[int, float, float]:
    """(carriers, entropy bits/sample, std)."""
    _, counts = np.unique(e, return_counts=True)
    q = counts / counts.sum()
    return int(np.count_nonzero((e == 0) | (e == -1))), float(-(q * np.log2(q)).sum()), float(e.std())


def gaussian_carrier_rate(sigma: float) -> float:
    """P(|n| < 1) for n ~ N(0, sigma^2): a white-noise-only error in a
    width-2 window centred on the estimate."""
    return math.erf(1.0 / (sigma * math.sqrt(2.0))) if sigma > 0 else 1.0


def _quantised_oracle(plane: np.ndarray, idx: np.ndarray, radius: int) -> np.ndarray:
    """The image-fitted weights rounded to multiples of 1/1024: what an
    embedder could carry in the payload for the extractor (forward-adaptive
    prediction)."""
    feats, y = _design(plane, idx, radius)
    w = np.round(fit_ls([(feats, y)]) * 1024) / 1024
    return apply_ls(feats, w)


MR_TRAIN = ["MR-SIEMENS-DICOM-WithOverlays.dcm", "emri_small.dcm", "MR_small.dcm"]


def analyse(name: str, learned) -> None:
    im = load_image(name)
    classic = ClassicRhombus()
    plane = im.planes[0]
    pc, cc = classic.predict_and_complexity(im.planes[:1])
    pl, cl = learned.predict_and_complexity(im.planes[:1])
    walk = walk_order(pc[0], cc[0], im.lo, im.hi)
    idx = np.sort(walk.index)
    flat = plane.reshape(-1)
    x = flat[idx]
    # foreground: the four rhombus neighbours are not all equal
    rows, cols = plane.shape
    padded = np.pad(plane, 1, mode="reflect")
    r, c = np.divmod(idx, cols)
    nb = np.stack([padded[r, c + 1], padded[r + 2, c + 1], padded[r + 1, c], padded[r + 1, c + 2]])
    fg = nb.min(axis=0) != nb.max(axis=0)
    preds = {
        "classic": pc[0].reshape(-1)[idx],
        "learned": pl[0].reshape(-1)[idx],
        "oracle LS 12 B (5x5)": oracle_prediction(plane, idx, 2),
        "oracle LS 24 B (7x7)": oracle_prediction(plane, idx, 3),
        "oracle LS 24 B, weights rounded to 1/1024 (side information: 24 x 16 bits)": _quantised_oracle(plane, idx, 3),
        "LS 24 B fitted on the MR training files": apply_ls(_design(plane, idx, 3)[0], transfer_weights(MR_TRAIN, 3)),
    }
    sigma = immerkaer_sigma(plane)
    sigma_fg = immerkaer_sigma(plane) if fg.all() else None
    print(f"\n### {name} ({im.modality}, {im.bits_stored}{'s' if im.signed else 'u'}, {rows}x{cols}): "
          f"{len(idx)} walkable A positions, {int(fg.sum())} foreground\n")
    print("| predictor | carriers (all) | vs classic | carriers (foreground) | vs classic | H(e) fg, bits | std(e) fg |")
    print("|---|---|---|---|---|---|---|")
    base_all = base_fg = None
    for label, pred in preds.items():
        e = x - pred
        n_all, _, _ = stats(e)
        n_fg, h_fg, s_fg = stats(e[fg])
        base_all = base_all or n_all
        base_fg = base_fg or n_fg
        print(f"| {label} | {n_all} | {100 * (n_all / base_all - 1):+.1f}% | {n_fg} | "
              f"{100 * (n_fg / base_fg - 1):+.1f}% | {h_fg:.2f} | {s_fg:.2f} |")
    rate = gaussian_carrier_rate(sigma)
    print(f"\nImmerkaer white-noise sigma (whole plane): {sigma:.2f} grey levels"
          + (f" (foreground {sigma_fg:.2f})" if sigma_fg is not None else "")
          + f"; a white-noise-only error would give carriers on {100 * rate:.1f}% of positions "
          f"= {int(rate * int(fg.sum()))} foreground carriers")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", nargs="*", default=["MR2_UNCR.dcm", "693_UNCR.dcm"])
    args = ap.parse_args(argv)
    learned = load_learned_predictor(device="cpu")
    for name in args.files:
        analyse(name, learned)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
