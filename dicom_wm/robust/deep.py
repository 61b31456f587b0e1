"""The robust layer's deep pair: a strength-map encoder and an extraction decoder.

Both are small CNNs trained together by ``tools/train_robust_deep.py``
through differentiable attack layers (JPEG, noise, blur, resize, median,
rotation) with an adversarial critic that tries to tell marked renderings
from clean ones (the critic is used in training only and does not ship).

* :class:`MapNet` (the encoder) reads the plane's 8-bit windowed rendering
  and gives one strength per 16x16 block: where the keyed pattern goes and
  how strongly. Its output is quantised to the mark's 4-bit strength map
  (``RobustMark.smap``), which the reversible payload carries, so the undo
  regenerates the exact change from the record and never runs the network:
  reversibility does not depend on the model or the device.
* :class:`DecoderNet` maps an attacked image (any scale, any intensity
  range) to an estimate of the embedded pattern; the blind decoder
  (:mod:`dicom_wm.robust.detect`) folds, syncs and channel-decodes it like
  its classical whitenings. Detection only: a wrong estimate costs a miss,
  never a false positive (the keyed check still decides).

The weights (``weights/deep-v1.pt``) are checked against
:data:`MODEL_SHA256` before ``torch.load(weights_only=True)``. Without torch
both parts are unavailable and the layer runs its classical rules.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MODEL_NAME", "MODEL_SHA256", "BLOCK", "load_models", "deep_map", "deep_whiten", "rendering"]

MODEL_NAME = "robust-deep-v1"
MODEL_SHA256 = "24aa3a4b56bc0710a7eb3de304f6be3f7969f37789a66c2ace0c0a0ee55d964b"
BLOCK = 16  # one strength per BLOCK x BLOCK samples (the mark's MAP_BLOCK)
_PATH = Path(__file__).with_name("weights") / "deep-v1.pt"


def rendering(plane: np.ndarray) -> np.ndarray:
    """The 8-bit windowed rendering (1st..99th percentile window), unrounded, as float64 in [0, 255]."""
    p1, p99 = (float(v) for v in np.percentile(plane, [1, 99]))
    return np.clip((np.asarray(plane, np.float64) - p1) * (255.0 / max(p99 - p1, 1.0)), 0.0, 255.0)


def _networks() -> Any:
    """The torch module classes, built on first use so importing this file needs no torch."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
        r = int(3 * sigma + 0.5)
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))

    def prep(x: torch.Tensor) -> torch.Tensor:
        """Local mean removed, divided by the local contrast (floored at a
        quarter of the image's median): any intensity scale reads alike."""
        hp = x - gaussian(x, 4.0)
        local = torch.sqrt(gaussian(hp * hp, 4.0) + 1e-12)
        floor = 0.25 * local.flatten(1).median(dim=1).values.clamp_min(1e-9)
        return (hp / torch.maximum(local, floor.view(-1, 1, 1, 1))).clamp(-5.0, 5.0)

    class DecoderNet(nn.Module):
        """Image -> pattern estimate, same size (receptive field 11x11)."""

        def __init__(self, width: int = 24) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, width, 5, padding=2), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, 1, 3, padding=1),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(prep(x))

    class MapNet(nn.Module):
        """8-bit rendering (N, 1, H, W), H and W multiples of BLOCK -> positive
        strength per block (N, 1, H/BLOCK, W/BLOCK), normalised to rms 1."""

        def __init__(self, width: int = 16) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4),
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4),
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, 1, 1),
            )

        def forward(self, r: torch.Tensor) -> torch.Tensor:
            lo = r.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
            hi = r.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
            extreme = ((r == lo) | (r == hi)).to(r.dtype)
            s = F.softplus(self.body(torch.cat([r / 255.0, prep(r), extreme], dim=1))) + 0.05
            return s / torch.sqrt((s * s).mean(dim=(1, 2, 3), keepdim=True))

    return prep, DecoderNet, MapNet


@lru_cache(maxsize=1)
def load_models() -> tuple[Any, Any] | None:
    """(map_net, decoder_net) in eval mode on the CPU, or None without torch.

    Raises
    ------
    ValueError
        When the weights file does not match :data:`MODEL_SHA256`.
    """
    if importlib.util.find_spec("torch") is None:
        return None
    from dicom_wm.robust.learned import load_pinned_state

    state = load_pinned_state(_PATH, MODEL_SHA256)
    _, decoder_cls, map_cls = _networks()
    enc, dec = map_cls(), decoder_cls()
    enc.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("map.")})
    dec.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("dec.")})
    return enc.eval(), dec.eval()


def deep_map(plane: np.ndarray, unit: int, levels: int = 15) -> np.ndarray | None:
    """The encoder's strength per BLOCK x BLOCK block of ``plane`` (grid at (0, 0)),
    quantised to integers 1..``levels`` in 1/``unit``, rms about ``unit``; None without the model."""
    models = load_models()
    if models is None:
        return None
    import torch

    r = rendering(plane)
    rows, cols = r.shape
    pr, pc = -(-rows // BLOCK) * BLOCK, -(-cols // BLOCK) * BLOCK
    r = np.pad(r, ((0, pr - rows), (0, pc - cols)), mode="edge")
    with torch.no_grad():
        s = models[0](torch.from_numpy(r).float()[None, None])[0, 0].double().numpy()
    return np.clip(np.rint(unit * s), 1, levels).astype(np.uint8)


def deep_whiten(x: np.ndarray) -> np.ndarray | None:
    """The decoder's pattern estimate of ``x``, contrast-normalised and clipped
    like the classical whitening; None without the model."""
    models = load_models()
    if models is None:
        return None
    import torch

    with torch.no_grad():
        y = models[1](torch.from_numpy(np.asarray(x, np.float32))[None, None])[0, 0].double().numpy()
    from dicom_wm.robust.learned import _local_normalise

    return np.clip(_local_normalise(y), -3.0, 3.0)
