"""Fit the robust layer's learned extraction filter (dicom_wm/robust/weights/).

The filter is a one-layer linear CNN (one 11x11 kernel) that maps a locally
normalised, attacked 8-bit rendering of a marked image to an estimate of the
embedded pattern. Its training objective (mean squared error against the true
pattern, over renderings attacked by JPEG Q30/50/70, Gaussian noise and a
3x3 median) is quadratic, so it is trained to its exact optimum by solving
the normal equations (ridge-regularised) instead of by gradient descent.

Training images are pydicom-data files that the evaluation in docs/robust.md
does not use. Usage::

    python tools/train_robust.py            # writes weights/extract-v1.pt, prints its SHA-256
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import uuid
from pathlib import Path

import numpy as np
import pydicom
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy import ndimage

from dicom_wm.pixels import read_samples
from dicom_wm.robust import embed_robust, message_for
from dicom_wm.robust.learned import RADIUS, normalise

TRAIN = ["RG1_UNCR", "JPEG2000_UNC", "vlut_04", "mlut_18", "bad_sequence"]
OUT = Path(__file__).resolve().parents[1] / "dicom_wm" / "robust" / "weights" / "extract-v1.pt"


def _to8(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    p1, p99 = np.percentile(ref, [1, 99])
    return np.clip(np.round((a - p1) / (p99 - p1) * 255), 0, 255)


def _jpeg(a8: np.ndarray, q: int) -> np.ndarray:
    b = io.BytesIO()
    Image.fromarray(a8.astype(np.uint8)).save(b, "JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(b.getvalue()))).astype(float)


def main() -> None:
    spec = importlib.util.find_spec("data_store")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs pydicom-data")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    rng = np.random.default_rng(5)
    attacks = [
        lambda a: a,
        lambda a: _jpeg(a, 30),
        lambda a: _jpeg(a, 50),
        lambda a: _jpeg(a, 70),
        lambda a: np.clip(a + rng.normal(0, 25, a.shape), 0, 255),
        lambda a: np.clip(a + rng.normal(0, 12, a.shape), 0, 255),
        lambda a: ndimage.median_filter(a, 3),
    ]
    k = 2 * RADIUS + 1
    xtx = np.zeros((k * k, k * k))
    xty = np.zeros(k * k)
    for name in TRAIN:
        planes = read_samples(pydicom.dcmread(data / f"{name}.dcm"))
        plane = planes.samples[0, :1024, :1024, 0]
        marked, _ = embed_robust(plane, planes.lo, planes.hi, message_for(uuid.uuid4()), b"train-" + name.encode())
        m8 = _to8(marked, plane)
        target = m8 - _to8(plane, plane)
        for attack in attacks:
            x = normalise(attack(m8))
            win = sliding_window_view(x, (k, k))[::3, ::3]
            h, w = win.shape[:2]
            win = win.reshape(-1, k * k)
            t = target[RADIUS : RADIUS + 3 * h : 3, RADIUS : RADIUS + 3 * w : 3].reshape(-1)
            xtx += win.T @ win
            xty += win.T @ t
    ridge = 1e-3 * np.trace(xtx) / (k * k)
    kernel = np.linalg.solve(xtx + ridge * np.eye(k * k), xty).reshape(k, k)
    kernel /= np.abs(kernel).max()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kernel": torch.tensor(kernel, dtype=torch.float64)}, OUT)
    print(OUT, hashlib.sha256(OUT.read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
