"""Forward-adaptive prediction: a per-plane linear stage on top of a base
predictor (the exact lattice CNN, or the classic rhombus mean).

For an A-lattice sample with base prediction ``b`` (an integer) and the 24
B-lattice samples ``B_k`` of its 7x7 window (:data:`OFFSETS`, mirror padded
like the rest of the engine), the adapted prediction is

    d_k  = B_k - b                                 (int64)
    pred = b + floor((bias + sum_k w_k * d_k) / 2**FRAC_BITS)

with integer weights ``w_k`` and ``bias`` (|w| < 2**15, stored as int16),
then ``pred = v`` where the four rhombus neighbours all equal ``v`` (a flat
neighbourhood keeps the base behaviour, so black padding at the range
minimum stays walkable), and clipped to ``[lo, hi]`` of the plane's range.
Each plane's row of carried int16 values is ``flags, bias, w_1 .. w_24``
(:data:`N_WEIGHTS` = 26). Flag bit 0 (:data:`FLAG_CLASSIC_BASE`) makes the
classic rhombus prediction (and its complexity) the base of that plane
instead of the predictor's own: the learned-adaptive embedder picks, per
plane, whichever base carries more after its fit (the CNN loses on
piecewise-constant, lossy-decoded planes). Other flag bits must be 0.
Every operation is an int64 operation whose values stay below 2**40, so the
result is the same on every device and in any order: torch (``int64`` on
CPU or CUDA, :func:`adapt_torch`, used when the base predictor runs on an
accelerator) and the pure numpy reference (:func:`adapt_reference`, the
host path) agree bit for bit. Complexity (walk order) is the
base predictor's.

The weights are fitted on the plane itself by least squares at embed time
(the original A samples are known there), rounded to multiples of
2**-FRAC_BITS, and kept only when they give the plane more carriers than
the base predictor alone (else all zeros: ``pred == b``). They travel to the
reader outside the pixel payload, in the private header (docs/format.md),
and are bound to the instance MAC (``weights_identity``), so an edited
weight makes verify fail. The fit itself is floating point and embed-only:
the reader never refits, it uses the carried integers.
"""

from __future__ import annotations

import hashlib
import numpy as np

from dicom_wm.engine.histogram_shift import carrier_mask, walk_order
from dicom_wm.engine.predictors import ClassicRhombus, PrecomputedPredictor, Predictor

__all__ = [
    "ADAPTIVE_PREFIX",
    "FLAG_CLASSIC_BASE",
    "FRAC_BITS",
    "N_COEF",
    "N_WEIGHTS",
    "OFFSETS",
    "AdaptiveFitter",
    "AdaptedPredictor",
    "adapt_reference",
    "adapt_torch",
    "fit_plane_weights",
    "weights_identity",
]

#: Name prefix recorded in provenance: ``"adaptive-" + base.name``.
ADAPTIVE_PREFIX = "adaptive-"
FRAC_BITS = 10
RADIUS = 3
#: B-lattice offsets (odd |dr| + |dc|) of the 7x7 window, nearest first.
OFFSETS: tuple[tuple[int, int], ...] = tuple(
    sorted(
        ((dr, dc) for dr in range(-RADIUS, RADIUS + 1) for dc in range(-RADIUS, RADIUS + 1) if (dr + dc) % 2),
        key=lambda o: (o[0] ** 2 + o[1] ** 2, o),
    )
)
#: Coefficients per plane: bias, then one per offset.
N_COEF = 1 + len(OFFSETS)
#: int16 values carried per plane: flags, then the coefficients.
N_WEIGHTS = 1 + N_COEF
#: Flag bit: this plane's base is the classic rhombus predictor.
FLAG_CLASSIC_BASE = 1
_WEIGHT_LIMIT = 1 << 15
# Samples used for the least-squares fit of one plane (a regular subsample).
_FIT_SAMPLES = 1 << 17


def mirror_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Mirror ``idx`` into ``0..n-1`` (index -1 -> 1, repeated reflection for
    any overhang; parity kept): the engine's padding rule, as in
    ``dicom_wm.models.geometry`` (not imported: this module needs no torch)."""
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m < n, m, period - m)


def _check_weights(weights: np.ndarray, n: int) -> np.ndarray:
    w = np.asarray(weights)
    if w.ndim != 2 or w.shape[1] != N_WEIGHTS or w.shape[0] not in (1, n):
        raise ValueError(f"weights of shape {w.shape} do not fit {n} plane(s) x {N_WEIGHTS}")
    if not np.issubdtype(w.dtype, np.integer) or (w.size and int(np.abs(w.astype(np.int64)).max()) >= _WEIGHT_LIMIT):
        raise ValueError("adaptive weights must be integers with |w| < 2**15")
    if w.size and (w[:, 0].min() < 0 or w[:, 0].max() > FLAG_CLASSIC_BASE):
        raise ValueError(f"adaptive flags {sorted(set(w[:, 0].tolist()))} must be 0 or {FLAG_CLASSIC_BASE}")
    return np.broadcast_to(w.astype(np.int64), (n, N_WEIGHTS))


def _padded_index(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Source rows / columns of the plane mirror-padded by RADIUS."""
    return (
        mirror_index(np.arange(-RADIUS, rows + RADIUS), rows),
        mirror_index(np.arange(-RADIUS, cols + RADIUS), cols),
    )


_FOUR = tuple(OFFSETS.index(o) for o in ((-1, 0), (1, 0), (0, -1), (0, 1)))


def adapt_reference(
    planes: np.ndarray, base: np.ndarray, weights: np.ndarray, lo: int, hi: int
) -> np.ndarray:
    """The adapted predictions in pure numpy int64 (the reference).

    ``planes``, ``base``: int64 (n, rows, cols); ``weights``: integer
    (n or 1, N_WEIGHTS) rows (the flags column is not read here: ``base``
    is already the chosen base). Returns int64 (n, rows, cols); B-lattice
    entries are ``base``'s."""
    n, rows, cols = planes.shape
    w = _check_weights(weights, n)
    planes = np.asarray(planes, dtype=np.int64)
    base = np.asarray(base, dtype=np.int64)
    ri, ci = _padded_index(rows, cols)
    xp = planes[:, ri][:, :, ci]
    acc = np.broadcast_to(w[:, 1, None, None], (n, rows, cols)).copy()
    nbs = []
    for k, (dr, dc) in enumerate(OFFSETS):
        nb = xp[:, RADIUS + dr : RADIUS + dr + rows, RADIUS + dc : RADIUS + dc + cols]
        if k in _FOUR:
            nbs.append(nb)
        acc += w[:, k + 2, None, None] * (nb - base)
    pred = np.clip(base + (acc >> FRAC_BITS), lo, hi)
    flat = (nbs[0] == nbs[1]) & (nbs[1] == nbs[2]) & (nbs[2] == nbs[3])
    pred = np.where(flat, nbs[0], pred)
    a = ((np.arange(rows)[:, None] + np.arange(cols)[None, :]) & 1) == 0
    return np.where(a, pred, base)


def adapt_torch(planes, base, weights: np.ndarray, lo: int, hi: int):
    """The same arithmetic on torch int64 tensors, on their device.

    ``planes``, ``base``: torch int64 (n, rows, cols) on one device."""
    import torch

    n, rows, cols = planes.shape
    dev = planes.device
    w = torch.from_numpy(np.array(_check_weights(weights, n))).to(dev)
    ri_np, ci_np = _padded_index(rows, cols)
    xp = planes[:, torch.from_numpy(ri_np).to(dev)][:, :, torch.from_numpy(ci_np).to(dev)]
    acc = w[:, 1].view(n, 1, 1).expand(n, rows, cols).clone()
    nbs = []
    for k, (dr, dc) in enumerate(OFFSETS):
        nb = xp[:, RADIUS + dr : RADIUS + dr + rows, RADIUS + dc : RADIUS + dc + cols]
        if k in _FOUR:
            nbs.append(nb)
        acc += w[:, k + 2].view(n, 1, 1) * (nb - base)
    pred = (base + torch.div(acc, 1 << FRAC_BITS, rounding_mode="floor")).clamp(lo, hi)
    a, b, c, d = nbs
    flat = (a == b) & (b == c) & (c == d)
    pred = torch.where(flat, a, pred)
    r = torch.arange(rows, device=dev).view(-1, 1)
    col = torch.arange(cols, device=dev).view(1, -1)
    return torch.where(((r + col) & 1) == 0, pred, base)


def _design(plane: np.ndarray, base: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Feature rows (1, B_k - base) at flat indices ``idx``, float64."""
    rows, cols = plane.shape
    r, c = np.divmod(idx, cols)
    b = base.reshape(-1)[idx]
    feats = [np.ones(len(idx))]
    for dr, dc in OFFSETS:
        nb = plane[mirror_index(r + dr, rows), mirror_index(c + dc, cols)]
        feats.append((nb - b).astype(np.float64))
    return np.stack(feats, axis=1)


def fit_plane_weights(
    plane: np.ndarray, base: np.ndarray, cost: np.ndarray, lo: int, hi: int
) -> tuple[np.ndarray, int]:
    """Least-squares row (int16, N_WEIGHTS, flags 0) for one plane, or zeros
    when the fit does not beat the base predictor's carrier count; and the
    single-layer capacity (carriers) of the row returned.

    Fitted on the A positions the base walk can use whose four rhombus
    neighbours are not all equal (flat ones keep the base prediction), with
    the residual target ``x - b + 1`` (so that ``floor`` puts the carrier
    window {pred - 1, pred} around the estimate), then trimmed once: rows
    whose residual exceeds 3 x its median absolute value are dropped and the
    fit repeated (edges would otherwise dominate)."""
    zero = np.zeros(N_WEIGHTS, dtype=np.int16)
    plane = np.asarray(plane, dtype=np.int64)
    walk = walk_order(base, cost, lo, hi)
    cap_base = int(carrier_mask(plane.reshape(-1)[walk.index] - walk.pred).sum())
    idx = np.sort(walk.index)
    if len(idx) < 4 * N_COEF:
        return zero, cap_base
    rows, cols = plane.shape
    r, c = np.divmod(idx, cols)
    four = [plane[mirror_index(r + dr, rows), mirror_index(c + dc, cols)] for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    keep = ~((four[0] == four[1]) & (four[1] == four[2]) & (four[2] == four[3]))
    idx = idx[keep]
    if len(idx) < 4 * N_COEF:
        return zero, cap_base
    if len(idx) > _FIT_SAMPLES:
        idx = idx[:: -(-len(idx) // _FIT_SAMPLES)]
    x = _design(plane, base, idx)
    y = (plane.reshape(-1)[idx] - base.reshape(-1)[idx]).astype(np.float64) + 1.0
    rows_ok = np.ones(len(idx), dtype=bool)
    w = np.zeros(N_COEF)
    for _ in range(2):
        xs = x[rows_ok]
        # normal equations (25 x 25): much cheaper than an SVD of the rows;
        # lstsq on the small system copes with a singular one (flat images)
        w, *_ = np.linalg.lstsq(xs.T @ xs, xs.T @ y[rows_ok], rcond=None)
        res = np.abs(y - x @ w)
        rows_ok = res <= 3.0 * max(float(np.median(res)), 0.5)
        if rows_ok.sum() < 4 * N_COEF:
            break
    q = np.zeros(N_WEIGHTS, dtype=np.int16)
    q[1:] = np.clip(np.round(w * (1 << FRAC_BITS)), -_WEIGHT_LIMIT + 1, _WEIGHT_LIMIT - 1)
    adapted = adapt_reference(plane[None], base[None], q[None], lo, hi)[0]
    cap = _capacity(plane, adapted, cost, lo, hi)
    return (q, cap) if cap > cap_base else (zero, cap_base)


def _capacity(plane: np.ndarray, pred: np.ndarray, cost: np.ndarray, lo: int, hi: int) -> int:
    walk = walk_order(pred, cost, lo, hi)
    return int(carrier_mask(plane.reshape(-1)[walk.index] - walk.pred).sum())


def weights_identity(name: str, weights: np.ndarray) -> bytes:
    """Bytes bound into the instance MAC's identity for an adaptive
    instance: predictor name and the carried weights (int16 LE, plane order)."""
    w = np.ascontiguousarray(np.asarray(weights, dtype="<i2"))
    return b"DICOM-WM adaptive\x00" + name.encode() + b"\x00" + hashlib.sha256(w.tobytes()).digest()


class AdaptedPredictor:
    """Base predictor + carried per-plane weights (the Predictor contract).

    ``predict_and_complexity(planes)`` takes exactly ``len(weights)`` planes
    (or any number when one weight row is given); :meth:`plane` and
    :meth:`sub` give the predictor of one plane / a run of planes."""

    def __init__(self, base: Predictor, weights: np.ndarray, lo: int, hi: int) -> None:
        self.base = base
        self.weights = np.asarray(weights, dtype=np.int16).reshape(-1, N_WEIGHTS)
        self.lo, self.hi = lo, hi
        self.name = ADAPTIVE_PREFIX + base.name
        self.version = base.version
        self.model_sha256 = base.model_sha256

    def __repr__(self) -> str:
        return f"AdaptedPredictor({self.base!r}, {len(self.weights)} plane(s))"

    def plane(self, p: int) -> "AdaptedPredictor":
        return self.sub(p, p + 1)

    def sub(self, start: int, stop: int) -> "AdaptedPredictor":
        return AdaptedPredictor(self.base, self.weights[start:stop], self.lo, self.hi)

    def predict_and_complexity(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = self.weights if len(self.weights) in (1, len(planes)) else None
        if w is None:
            raise ValueError(f"{len(planes)} plane(s) given to a predictor adapted to {len(self.weights)}")
        _check_weights(w, len(planes))
        base, cost = self.base.predict_and_complexity(planes)
        classic = np.flatnonzero(np.broadcast_to(w[:, 0] & FLAG_CLASSIC_BASE, (len(planes),)))
        if len(classic):  # planes whose base is the classic rhombus predictor
            cb, cc = ClassicRhombus().predict_and_complexity(np.asarray(planes, dtype=np.int64)[classic])
            base, cost = base.copy(), cost.copy()
            base[classic], cost[classic] = cb, cc
        device = _device_of(self.base)
        if device is None or device.type == "cpu":
            return adapt_reference(np.asarray(planes, dtype=np.int64), base, w, self.lo, self.hi), cost
        import torch  # the base runs on an accelerator: the same integer stage there

        x = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.int64)).to(device)
        pred = adapt_torch(x, torch.from_numpy(np.ascontiguousarray(base)).to(device), w, self.lo, self.hi)
        return pred.cpu().numpy(), cost


def _device_of(predictor: object):
    """The torch device of a (possibly wrapped) learned base, else None."""
    while predictor is not None:
        device = getattr(predictor, "device", None)
        if device is not None:
            return device
        predictor = getattr(predictor, "base", None)
    return None


class AdaptiveFitter:
    """What ``get_predictor("learned-adaptive" | "classic-adaptive")`` returns
    for embedding: :meth:`fit` gives the :class:`AdaptedPredictor` of a stack
    of planes. Readers build the AdaptedPredictor from carried weights."""

    def __init__(self, base: Predictor) -> None:
        self.base = base
        self.name = ADAPTIVE_PREFIX + base.name
        self.version = base.version
        self.model_sha256 = base.model_sha256

    def __repr__(self) -> str:
        return f"AdaptiveFitter({self.base!r})"

    def fit(self, planes: np.ndarray, lo: int, hi: int) -> AdaptedPredictor:
        planes = np.asarray(planes, dtype=np.int64)
        base, cost = self.base.predict_and_complexity(planes)
        classic = None if self.base.name == ClassicRhombus.name else ClassicRhombus()
        rows = []
        for i in range(len(planes)):
            row, cap = fit_plane_weights(planes[i], base[i], cost[i], lo, hi)
            if classic is not None:  # the classic base, when it carries more on this plane
                cb, cc = classic.predict_and_complexity(planes[i : i + 1])
                row_c, cap_c = fit_plane_weights(planes[i], cb[0], cc[0], lo, hi)
                if cap_c > cap:
                    row = row_c
                    row[0] = FLAG_CLASSIC_BASE
            rows.append(row)
        weights = np.stack(rows)
        # The base maps of these planes are reused by the embed's walks and
        # self-check (a CNN forward pass is the expensive part).
        return AdaptedPredictor(PrecomputedPredictor(self.base, planes, base, cost), weights, lo, hi)

    def predict_and_complexity(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise TypeError("an adaptive predictor must be fitted to the planes first (AdaptiveFitter.fit)")

