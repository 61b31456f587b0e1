"""Train the learned predictor and write its integer checkpoint.

    python tools/train_predictor.py --steps 2500 --out dicom_wm/models/weights/lattice-cnn-v1.pt

Float training of a mirror of :class:`dicom_wm.models.LatticeNet` on random
crops of the *training* families of :mod:`dicom_wm.models.corpus` (held-out
families are never read), then post-training quantisation to integer weights
with power-of-two scales. Prints the SHA-256 to pin in the model card.

The float mirror computes ``corr = s * f(g / s) + b`` where ``s`` is a
per-crop scale: the bias-free ReLU part ``f`` is positively homogeneous, so
this is the same function as ``f(g) + b`` (what the integer net computes);
the scale only conditions the optimisation across bit depths.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_wm.models.config import LatticeNetConfig  # noqa: E402
from dicom_wm.models.corpus import TRAIN_FILES, load_image  # noqa: E402
from dicom_wm.models.geometry import padded_indices  # noqa: E402
from dicom_wm.models.lattice_net import lattice_differences, validate_weights  # noqa: E402
from dicom_wm.models.checkpoint import CHECKPOINT_FORMAT  # noqa: E402

CROP = 64


class FloatLatticeNet(nn.Module):
    """Float mirror of LatticeNet (no floors, no clips of activations)."""

    def __init__(self, cfg: LatticeNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.convs = nn.ModuleList(
            [nn.Conv2d(4 if k == 0 else c, c, 3, bias=False) for k in range(cfg.conv_layers)]
        )
        self.out = nn.Conv2d(c, 4, 1, bias=True)
        self.skip = nn.Conv2d(4, 2, cfg.skip_kernel, bias=False)
        nn.init.zeros_(self.skip.weight)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0]))

    def forward(self, xp: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
        """xp: float64 (n, R+2P, C+2P) padded crops (R, C even). Returns
        d = mu' - x - 1 on A0/A1, the rank head, validity of the classic
        prediction under the walk rule, minus the classic error and the scale."""
        cfg = self.cfg
        p = cfg.pad
        g = lattice_differences(xp).clamp(-(1 << cfg.diff_clip_bits), 1 << cfg.diff_clip_bits)
        scale = g.abs().mean(dim=(1, 2, 3), keepdim=True) + 1.0
        a0 = (g / scale).float()
        a = a0
        for conv in self.convs:
            a = F.relu(conv(a))
        out = F.conv2d(a, self.out.weight)  # bias added after rescaling
        skip = self.skip(a0)
        rows, cols = xp.shape[1] - 2 * p, xp.shape[2] - 2 * p
        hb, wb = rows // 2, cols // 2
        r0 = p // 2 - cfg.conv_layers
        out = out[:, :, r0 : r0 + hb, r0 - 1 : r0 - 1 + wb].double() * scale + self.out.bias.double().view(1, 4, 1, 1)
        k = cfg.skip_kernel // 2
        rs = p // 2 - k
        skip = skip[:, :, rs : rs + hb, rs - 1 : rs - 1 + wb].double() * scale
        corr = out[:, :2] + skip
        rank = out[:, 2:]
        x = xp[:, p : p + rows, p : p + cols]
        nb = torch.stack(
            (
                xp[:, p - 1 : p - 1 + rows, p : p + cols],
                xp[:, p + 1 : p + 1 + rows, p : p + cols],
                xp[:, p : p + rows, p - 1 : p - 1 + cols],
                xp[:, p : p + rows, p + 1 : p + 1 + cols],
            )
        )
        s4, lo4, hi4 = nb.sum(0), nb.min(0).values, nb.max(0).values

        def a_lattice(t: torch.Tensor) -> torch.Tensor:
            return torch.stack((t[:, 0::2, 0::2], t[:, 1::2, 1::2]), 1)

        xa, sa, la, ha = a_lattice(x), a_lattice(s4), a_lattice(lo4), a_lattice(hi4)
        classic = torch.floor((sa + 2) / 4)
        valid = (classic >= lo.view(-1, 1, 1, 1) + 3) & (classic <= hi.view(-1, 1, 1, 1) - 2)
        # the integer net clips floor(mu) to [min4, max4 + 1] ([v, v] if flat)
        mu = torch.clamp(sa / 4 + corr, la, ha + torch.where(ha > la, 1.999, 0.999))
        d = mu - xa - 1.0
        dc = classic - xa  # minus the classic error
        return d, rank, valid, dc, scale


def zero_fill_upsample(plane: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """2x Fourier (zero-fill) interpolation along ``axes``, as MR scanners
    reconstruct 256 -> 512 or 512 -> 1024; rounded to integers."""
    out = plane.astype(np.float64)
    for ax in axes:
        n = out.shape[ax]
        spec = np.fft.fftshift(np.fft.fft(out, axis=ax), axes=ax)
        pad = [(0, 0), (0, 0)]
        pad[ax] = (n // 2, n - n // 2)
        out = np.real(np.fft.ifft(np.fft.ifftshift(np.pad(spec, pad), axes=ax), axis=ax)) * 2.0
    return np.rint(out).astype(np.int64)


def lossy_j2k(plane: np.ndarray, bits: int, signed: bool, ratio: float) -> np.ndarray:
    """Decode of an irreversible JPEG 2000 encode (pylibjpeg-openjpeg), the
    kind of lossy input the service watermarks on its decoded samples."""
    import openjpeg

    dtype = (np.int8 if signed else np.uint8) if bits <= 8 else (np.int16 if signed else np.uint16)
    data = openjpeg.encode(np.ascontiguousarray(plane.astype(dtype)), bits_stored=bits, compression_ratios=[ratio])
    return openjpeg.decode(data).astype(np.int64)


def load_corpus(exclude: set[str], augment: bool, seed: int) -> list[tuple[str, np.ndarray, int, int]]:
    """Training planes as (modality, plane, lo, hi). With ``augment``, each
    greyscale plane also yields a lossy JPEG 2000 decode (ratio 8..150) and,
    for CT/MR, a 2x zero-fill interpolated copy along one or both axes."""
    rng = np.random.default_rng(seed)
    items = []
    for name, (modality, frames) in TRAIN_FILES.items():
        if name in exclude:
            continue
        im = load_image(name, frames)
        for plane in im.planes:
            if plane.shape[0] < CROP or plane.shape[1] < CROP:
                continue
            items.append((modality, plane, im.lo, im.hi))
            if not augment:
                continue
            ratio = float(rng.choice([8.0, 20.0, 50.0, 150.0]))
            lossy = np.clip(lossy_j2k(plane, im.bits_stored, im.signed, ratio), im.lo, im.hi)
            items.append((modality, lossy, im.lo, im.hi))
            if modality in ("CT", "MR") and plane.size <= 512 * 512:
                axes = [(0,), (1,), (0, 1)][rng.integers(3)]
                items.append((modality, np.clip(zero_fill_upsample(plane, axes), im.lo, im.hi), im.lo, im.hi))
    return items


def sample_batch(items, cfg: LatticeNetConfig, rng: np.random.Generator, batch: int):
    by_mod: dict[str, list[int]] = {}
    for i, (m, *_rest) in enumerate(items):
        by_mod.setdefault(m, []).append(i)
    mods = sorted(by_mod)
    p = cfg.pad
    crops, los, his = [], [], []
    for _ in range(batch):
        idxs = by_mod[mods[rng.integers(len(mods))]]
        sizes = np.array([items[i][1].size for i in idxs], dtype=np.float64)
        _m, plane, lo, hi = items[idxs[rng.choice(len(idxs), p=sizes / sizes.sum())]]
        r = rng.integers(0, plane.shape[0] - CROP + 1)
        c = rng.integers(0, plane.shape[1] - CROP + 1)
        # context from the mirror-padded full plane, so crop borders see real pixels
        ri = padded_indices(plane.shape[0], p)[r : r + CROP + 2 * p]
        ci = padded_indices(plane.shape[1], p)[c : c + CROP + 2 * p]
        crop = plane[np.ix_(ri, ci)]
        if rng.integers(2):
            crop = crop[::-1]
        if rng.integers(2):
            crop = crop[:, ::-1]
        if rng.integers(2):
            crop = crop.T
        crops.append(np.ascontiguousarray(crop))
        los.append(lo)
        his.append(hi)
    return (
        torch.from_numpy(np.stack(crops).astype(np.float64)),
        torch.tensor(los, dtype=torch.float64),
        torch.tensor(his, dtype=torch.float64),
    )


def loss_fn(d, rank, valid, scale, tau: float, rng: torch.Generator, pairs: int = 256):
    """Prediction: soft count of carriers (d in [-1, 1)) plus scale-free L1.
    Ranking: pairwise logistic loss asking carriers to rank below
    non-carriers of the same crop (the engine walks low values first)."""
    v = valid.double()
    nv = v.sum().clamp(min=1.0)
    window = torch.sigmoid((1.0 - d.abs()) / tau)
    l_win = ((1.0 - window) * v).sum() / nv
    l_l1 = ((d.abs() / scale) * v).sum() / nv
    fd = torch.floor(d.detach() + 1.0)
    carrier = ((fd == 0) | (fd == 1)) & valid
    other = (~carrier) & valid
    r = (rank / scale).flatten(1)
    cw, ow = carrier.flatten(1).double(), other.flatten(1).double()
    ok = (cw.sum(1) > 0) & (ow.sum(1) > 0)
    l_rank = d.new_zeros(())
    if bool(ok.any()):
        ic = torch.multinomial(cw[ok], pairs, replacement=True, generator=rng)
        io = torch.multinomial(ow[ok], pairs, replacement=True, generator=rng)
        rk = r[ok]
        l_rank = F.softplus(torch.gather(rk, 1, ic) - torch.gather(rk, 1, io)).mean()
    return l_win + l_l1 + 0.5 * l_rank


def quantise(net: FloatLatticeNet, cfg: LatticeNetConfig) -> dict[str, np.ndarray]:
    """Power-of-two post-training quantisation. Integer activations are the
    float ones times 2**frac_bits; layer k computes floor(conv / 2**q_k) with
    weights round(w * 2**q_k), q_k as large as |w| < 2**weight_bits allows."""
    limit = (1 << cfg.weight_bits) - 1
    weights: dict[str, np.ndarray] = {}
    shifts = []

    def q_of(w: np.ndarray) -> int:
        m = float(np.abs(w).max())
        return 30 if m == 0 else min(30, int(np.floor(np.log2(limit / m))))

    tensors = [c.weight for c in net.convs] + [net.out.weight, net.skip.weight]
    names = [f"conv{k}.weight" for k in range(cfg.conv_layers)] + ["out.weight", "skip.weight"]
    for name, t in zip(names, tensors):
        w = t.detach().double().numpy()
        q = q_of(w)
        if q < 0:
            raise ValueError(f"{name}: |w| = {np.abs(w).max():.3g} needs a negative shift")
        weights[name] = np.round(w * 2.0**q).astype(np.int64)
        shifts.append(q)
    weights["out.bias"] = np.round(net.out.bias.detach().double().numpy() * 2.0**cfg.frac_bits).astype(np.int64)
    weights["shifts"] = np.array(shifts, dtype=np.int64)
    validate_weights(cfg, weights)
    return weights


def save_checkpoint(weights: dict[str, np.ndarray], cfg: LatticeNetConfig, meta: dict, out: Path) -> str:
    obj = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(cfg),
        "weights": {k: torch.from_numpy(v.astype(np.int32)) for k, v in weights.items()},
        "meta": meta,
    }
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--tau", type=float, default=0.15)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-augment", action="store_true", help="train on the files as they are")
    ap.add_argument("--exclude", nargs="*", default=[], help="training files to leave out (validation runs)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    cfg = LatticeNetConfig(channels=args.channels, conv_layers=args.layers, weight_bits=12)
    items = load_corpus(set(args.exclude), not args.no_augment, args.seed)
    print(f"training planes: {len(items)} from {len(TRAIN_FILES)} files", flush=True)
    net = FloatLatticeNet(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    t0 = time.perf_counter()
    run_win = run_cls = 0.0
    for step in range(1, args.steps + 1):
        xp, lo, hi = sample_batch(items, cfg, rng, args.batch)
        d, rank, valid, dc, scale = net(xp, lo, hi)
        loss = loss_fn(d, rank, valid, scale, args.tau, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            v = valid.double()
            nv = v.sum().clamp(min=1.0)
            fd = torch.floor(d + 1.0)  # carrier <=> mu' in [x, x + 2) <=> floor(d + 1) in {0, 1}
            hit = (((fd == 0) | (fd == 1)).double() * v).sum() / nv
            chit = ((((dc == 0) | (dc == 1)).double()) * v).sum() / nv  # x - classic in {0,-1}
            run_win = 0.98 * run_win + 0.02 * float(hit)
            run_cls = 0.98 * run_cls + 0.02 * float(chit)
        if step % 100 == 0 or step == args.steps:
            print(
                f"step {step:5d} loss {loss.item():.4f} carriers learned {run_win:.4f} classic {run_cls:.4f}"
                f"  {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
    weights = quantise(net, cfg)
    meta = {
        "train_files": ",".join(f for f in TRAIN_FILES if f not in args.exclude),
        "steps": str(args.steps),
        "augment": "none" if args.no_augment else "lossy JPEG 2000 decode; 2x zero-fill interpolation (CT, MR)",
        "seed": str(args.seed),
        "trainer": "tools/train_predictor.py",
    }
    sha = save_checkpoint(weights, cfg, meta, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) sha256 {sha}")
    print(f"shifts {weights['shifts'].tolist()} bias {weights['out.bias'].tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
