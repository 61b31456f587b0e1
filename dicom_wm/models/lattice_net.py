"""The exact lattice CNN: integer arithmetic carried in float64.

The network predicts a correction to the classic rhombus mean for every
A-lattice sample from B-lattice samples only, plus a second head that ranks
positions (predicted error magnitude, used as the engine's complexity).

Exactness by construction (see docs/learned-predictor.md for the proofs):

* inputs are int64 differences of B samples clipped to ``±2**diff_clip_bits``;
* weights and biases are integers with ``|w| < 2**weight_bits``;
* every convolution sums integer products whose partial sums are bounded by
  :func:`accumulation_bounds` below ``2**50`` (asserted when weights load);
  float64 holds all such integers exactly, in any summation order;
* after each convolution the sum is rounded to the nearest integer (a guard
  against convolution algorithms with sub-integer rounding error), then
  rescaled by ``floor(y / 2**shift)`` (an exact power-of-two scaling and
  floor), passed through ReLU and clipped;
* the final fixed-point combination runs in int64: the prediction is
  ``floor(S4 / 4 + corr)`` clipped to ``[min4, max4 + 1]`` of the four
  rhombus neighbours (``S4`` their sum; ``[v, v]`` when all four equal
  ``v``), so a flat neighbourhood is predicted exactly as the classic
  predictor does.

No operation depends on the device, the summation order or TF32, so CPU and
GPU give bit-identical predictions; :mod:`dicom_wm.models.reference` is the
same arithmetic in pure numpy integers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dicom_wm.models.config import FLOAT64_EXACT_LIMIT, LatticeNetConfig
from dicom_wm.models.geometry import padded_indices

__all__ = ["LatticeNet", "build_lattice_net", "weight_names", "accumulation_bounds", "exact_mode", "lattice_differences"]


def weight_names(config: LatticeNetConfig) -> list[str]:
    """Names of the integer tensors of a checkpoint, in layer order."""
    return [f"conv{k}.weight" for k in range(config.conv_layers)] + [
        "out.weight",
        "out.bias",
        "skip.weight",
        "shifts",
    ]


def weight_shapes(config: LatticeNetConfig) -> dict[str, tuple[int, ...]]:
    c = config.channels
    shapes: dict[str, tuple[int, ...]] = {"conv0.weight": (c, 4, 3, 3)}
    for k in range(1, config.conv_layers):
        shapes[f"conv{k}.weight"] = (c, c, 3, 3)
    shapes["out.weight"] = (4, c, 1, 1)
    shapes["out.bias"] = (4,)
    shapes["skip.weight"] = (2, 4, config.skip_kernel, config.skip_kernel)
    shapes["shifts"] = (config.conv_layers + 2,)
    return shapes


def accumulation_bounds(config: LatticeNetConfig, weights: dict[str, np.ndarray]) -> dict[str, int]:
    """Worst-case magnitude of any partial sum of each convolution.

    For a convolution with integer weights ``w`` over inputs bounded by
    ``A``, every partial sum (in any order) of output channel ``o`` is at
    most ``A * sum(|w[o]|)`` (+ ``|bias[o]|``); the bound is the maximum over
    ``o``. Inputs: differences ``<= 2**(diff_clip_bits + frac_bits)``, hidden
    activations ``<= 2**act_clip_bits``. Raises ``ValueError`` if any bound
    reaches :data:`FLOAT64_EXACT_LIMIT`.
    """
    a_in = 1 << (config.diff_clip_bits + config.frac_bits)
    a_hidden = 1 << config.act_clip_bits
    bounds: dict[str, int] = {}

    def row_l1(w: np.ndarray) -> int:
        return int(np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(axis=1).max())

    bounds["conv0"] = a_in * row_l1(weights["conv0.weight"])
    for k in range(1, config.conv_layers):
        bounds[f"conv{k}"] = a_hidden * row_l1(weights[f"conv{k}.weight"])
    bounds["out"] = a_hidden * row_l1(weights["out.weight"]) + int(np.abs(weights["out.bias"]).max())
    bounds["skip"] = a_in * row_l1(weights["skip.weight"])
    for name, b in bounds.items():
        if b >= FLOAT64_EXACT_LIMIT:
            raise ValueError(f"{name}: worst-case accumulation {b} reaches 2**50; float64 would not be exact")
    return bounds


def validate_weights(config: LatticeNetConfig, weights: dict[str, np.ndarray]) -> None:
    """Check names, shapes, integrality and magnitudes of a checkpoint."""
    shapes = weight_shapes(config)
    if set(weights) != set(shapes):
        raise ValueError(f"checkpoint tensors {sorted(weights)} do not match the config's {sorted(shapes)}")
    limit = 1 << config.weight_bits
    for name, shape in shapes.items():
        w = weights[name]
        if tuple(w.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(w.shape)}, the config needs {shape}")
        if not np.issubdtype(w.dtype, np.integer):
            raise ValueError(f"{name} has dtype {w.dtype}; weights must be integers")
        if name != "shifts" and w.size and int(np.abs(w.astype(np.int64)).max()) >= limit:
            raise ValueError(f"{name} has |w| = {int(np.abs(w).max())} >= 2**{config.weight_bits}")
    shifts = weights["shifts"].astype(np.int64)
    if shifts.min() < 0 or shifts.max() > 30:
        raise ValueError(f"shifts {shifts.tolist()} must lie in 0..30")
    accumulation_bounds(config, weights)


@contextlib.contextmanager
def exact_mode() -> Iterator[None]:
    """Deterministic cuDNN without TF32 for the duration of a forward pass.

    float64 convolutions never use TF32 and the arithmetic is exact in any
    summation order, so this is belt and braces; it also keeps cuDNN from
    benchmarking algorithms per call.
    """
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        yield



def lattice_differences(xp: torch.Tensor) -> torch.Tensor:
    """The network's input: the four B-B neighbour differences around each
    2x2 cell of a mirror-padded plane (n, R+2P, C+2P) -> (n, 4, h, w). Only
    B samples enter, which is what keeps A samples out of the prediction."""
    b0 = xp[:, 0::2, 1::2]
    b1 = xp[:, 1::2, 0::2]
    return torch.stack(
        (
            b0[:, :-1, 1:-1] - b1[:, :-1, 1:-1],
            b0[:, :-1, 1:-1] - b1[:, :-1, 2:],
            b1[:, :-1, 1:-1] - b0[:, 1:, 1:-1],
            b1[:, :-1, 1:-1] - b0[:, 1:, :-2],
        ),
        dim=1,
    )

class LatticeNet(nn.Module):
    """Exact integer CNN on the B lattice; pure module, no I/O.

    ``forward(planes)`` takes int64 planes ``(n, rows, cols)`` on the
    module's device and returns ``(pred, cost)``, both int64 of the same
    shape: A-lattice predictions / complexities (B-lattice entries hold the
    classic prediction and 0).
    """

    def __init__(self, config: LatticeNetConfig) -> None:
        super().__init__()
        self.config = config
        for name, shape in weight_shapes(config).items():
            dtype = torch.int64 if name == "shifts" else torch.float64
            self.register_buffer(name.replace(".", "_"), torch.zeros(shape, dtype=dtype))

    def load_integer_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Install validated integer weights (numpy arrays keyed by
        :func:`weight_names`)."""
        validate_weights(self.config, weights)
        for name, w in weights.items():
            buf = getattr(self, name.replace(".", "_"))
            buf.copy_(torch.from_numpy(np.asarray(w, dtype=np.int64)).to(buf.dtype))

    def _conv(self, a: torch.Tensor, w: torch.Tensor, shift: int) -> torch.Tensor:
        y = torch.round(F.conv2d(a, w))  # exact integers; round guards the algorithm
        return torch.floor(y * (2.0**-shift))  # exact power-of-two scaling, then floor

    def forward(self, planes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        n, rows, cols = planes.shape
        p = cfg.pad
        dev = planes.device
        ri = torch.from_numpy(padded_indices(rows, p)).to(dev)
        ci = torch.from_numpy(padded_indices(cols, p)).to(dev)
        xp = planes[:, ri][:, :, ci]  # mirror-padded, even size, int64
        g = lattice_differences(xp)
        clip = 1 << cfg.diff_clip_bits
        a0 = g.clamp(-clip, clip).to(torch.float64) * float(1 << cfg.frac_bits)
        shifts = [int(s) for s in self.shifts.tolist()]
        top = float(1 << cfg.act_clip_bits)
        a = a0
        for k in range(cfg.conv_layers):
            a = self._conv(a, getattr(self, f"conv{k}_weight"), shifts[k]).clamp(0.0, top)
        out = self._conv(a, self.out_weight, shifts[cfg.conv_layers]) + self.out_bias.view(1, 4, 1, 1)
        skip = self._conv(a0, self.skip_weight, shifts[cfg.conv_layers + 1])
        hb, wb = (rows + 1) // 2, (cols + 1) // 2
        r0 = p // 2 - cfg.conv_layers
        c0 = r0 - 1
        out = out[:, :, r0 : r0 + hb, c0 : c0 + wb]
        k = cfg.skip_kernel // 2
        rs = p // 2 - k
        skip = skip[:, :, rs : rs + hb, rs - 1 : rs - 1 + wb]
        corr = (out[:, :2] + skip).to(torch.int64)
        rank = out[:, 2:].to(torch.int64)
        return _assemble(xp, p, rows, cols, corr, rank, cfg)


def _interleave(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(n, 2, hb, wb) A0/A1 values -> (n, rows, cols) on the A lattice, 0 on B."""
    n, _, hb, wb = t.shape
    full = torch.zeros((n, 2 * hb, 2 * wb), dtype=t.dtype, device=t.device)
    full[:, 0::2, 0::2] = t[:, 0]
    full[:, 1::2, 1::2] = t[:, 1]
    return full[:, :rows, :cols]


def _assemble(
    xp: torch.Tensor, p: int, rows: int, cols: int, corr: torch.Tensor, rank: torch.Tensor, cfg: LatticeNetConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 fixed-point tail: pred = clip(floor(S4/4 + corr), min4, top) with
    top = max4 + 1, or max4 when the four neighbours are equal (a flat
    neighbourhood is predicted as its value, exactly like the classic
    predictor, which keeps black padding at the range minimum walkable);
    classic rhombus on B; cost = max(rank + 2**offset, 0) on A (0 on B)."""
    nb = (
        xp[:, p - 1 : p - 1 + rows, p : p + cols],
        xp[:, p + 1 : p + 1 + rows, p : p + cols],
        xp[:, p : p + rows, p - 1 : p - 1 + cols],
        xp[:, p : p + rows, p + 1 : p + 1 + cols],
    )
    s4 = nb[0] + nb[1] + nb[2] + nb[3]
    lo4 = torch.minimum(torch.minimum(nb[0], nb[1]), torch.minimum(nb[2], nb[3]))
    hi4 = torch.maximum(torch.maximum(nb[0], nb[1]), torch.maximum(nb[2], nb[3]))
    s = cfg.frac_bits
    learned = ((s4 << (s - 2)) + _interleave(corr, rows, cols)) >> s
    learned = torch.minimum(torch.maximum(learned, lo4), hi4 + (hi4 > lo4).to(hi4.dtype))
    classic = (s4 + 2) >> 2
    r = torch.arange(rows, device=xp.device).view(-1, 1)
    c = torch.arange(cols, device=xp.device).view(1, -1)
    a_mask = ((r + c) & 1) == 0
    pred = torch.where(a_mask, learned, classic)
    cost = ((rank >> (s - cfg.cost_frac_bits)) + (1 << cfg.cost_offset_bits)).clamp(min=0)
    cost = torch.where(a_mask, _interleave(cost, rows, cols), torch.zeros_like(pred))
    return pred, cost


def build_lattice_net(config: LatticeNetConfig) -> LatticeNet:
    """Builder: an all-zero :class:`LatticeNet` for ``config`` (load weights
    with :meth:`LatticeNet.load_integer_weights`)."""
    return LatticeNet(config)
