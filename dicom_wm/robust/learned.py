"""The learned part of the decoder: an 11x11 linear extraction filter.

A one-layer linear CNN fitted (tools/train_robust.py) to map a locally
normalised, attacked rendering to the embedded pattern: it learns a
whitening matched to the chip structure and to what JPEG, noise and median
filtering leave of it. It is used only to *detect*; embedding and undo do not
depend on it, so exact reversibility never rests on a model.

The weights (``weights/extract-v1.pt``, < 2 KB) are loaded with
``torch.load(weights_only=True)`` after their SHA-256 is checked. Without
torch the decoder runs its classical whitening alone.
"""

from __future__ import annotations

import hashlib
import io
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["MODEL_NAME", "MODEL_SHA256", "RADIUS", "normalise", "load_pinned_state", "load_kernel", "learned_whiten"]

MODEL_NAME = "robust-extract-v1"
MODEL_SHA256 = "7ce21704d2f06aed438040473c829ef123fd427b8ae6356bdbfef90b43fbfa4c"
RADIUS = 5
_PATH = Path(__file__).with_name("weights") / "extract-v1.pt"


def _local_normalise(x: np.ndarray) -> np.ndarray:
    local = np.sqrt(ndimage.gaussian_filter(x * x, 4.0))
    floor = max(float(np.median(local)), 1e-9) * 0.25
    return x / np.maximum(local, floor)


def normalise(x: np.ndarray) -> np.ndarray:
    """The filter's input: local mean removed, local contrast normalised."""
    x = np.asarray(x, dtype=np.float64)
    return _local_normalise(x - ndimage.uniform_filter(x, 2 * RADIUS + 1))


def load_pinned_state(path: Path, sha256: str) -> dict:
    """The tensors saved in ``path``, loaded with ``weights_only=True`` from
    the very bytes whose SHA-256 was checked against ``sha256``.

    Raises
    ------
    ValueError
        When the file does not match ``sha256``.
    """
    import torch

    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise ValueError(f"{path.name}: SHA-256 {digest} is not the pinned {sha256}")
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


@lru_cache(maxsize=1)
def load_kernel() -> np.ndarray | None:
    """The fitted kernel, or None when torch is not installed.

    Raises
    ------
    ValueError
        When the weights file does not match :data:`MODEL_SHA256`.
    """
    if importlib.util.find_spec("torch") is None:
        return None
    return load_pinned_state(_PATH, MODEL_SHA256)["kernel"].numpy().astype(np.float64)


def learned_whiten(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Pattern estimate of ``x``, contrast-normalised and clipped like the classical whitening."""
    y = _local_normalise(ndimage.correlate(normalise(x), kernel))
    return np.clip(y, -3.0, 3.0)
