"""Train the robust layer's deep pair (dicom_wm/robust/deep.py) and write its weights.

Three networks are trained together on 128x128 patches of 8-bit windowed
renderings of training images (pydicom-data files that the evaluation in
docs/robust-results.md does not use):

* the encoder (``MapNet``) sets a strength per 16x16 block; the keyed
  pattern (random +-1 chips of the real chip shape) times that map is scaled
  so its rms change on the rendering is the layer's target (1.36 levels,
  45.5 dB), chips that would clip are left out as the embedder does, and
  the result is rounded (straight-through);
* a differentiable attack, drawn per batch: JPEG Q30..90 (8x8 DCT,
  quantisation with the standard luminance table, straight-through rounding,
  random grid offset), Gaussian noise (variance 0.001..0.01 on [0, 1]),
  Gaussian blur, median 3x3, resize x0.5..x2 (decoded at that scale, as
  detect does), rotation by 1..10 degrees and back, or JPEG Q50 after noise;
* the decoder (``DecoderNet``) estimates the pattern; the loss is minus the
  soft-chip SNR ``d`` (mean over std of the de-signed matched-filter value of
  each chip), the quantity the channel decoder's error rate follows;
* the critic, a small CNN, learns to tell marked renderings from clean ones;
  the encoder is also penalised by ``--critic-weight`` times the critic's
  log-odds of spotting its output (the source design's adversarial term).

Usage::

    python tools/train_robust_deep.py              # ~8 min on 2 CPU cores; prints the SHA-256 to pin
    python tools/train_robust_deep.py --steps 50   # a smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dicom_wm.models import corpus
from dicom_wm.robust.deep import _PATH, _networks, rendering
from dicom_wm.robust.pattern import CHIP, SHAPE

# training images: none of them is (a copy of) a held-out family (RG3, 693,
# MR2, US1 / examples_jpeg2k are what the benchmark attacks)
TRAIN = [
    "RG1_UNCR.dcm", "JPEG2000_UNC.dcm", "vlut_04.dcm", "mlut_18.dcm", "bad_sequence.dcm",
    "eCT_Supplemental.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "CT_small.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm", "color-pl.dcm", "examples_rgb_color.dcm",
    "examples_ybr_color.dcm", "color3d_jpeg_baseline.dcm",
]
PATCH = 128
TARGET_RMS = 1.36  # the embedder's TARGET_RMS_8BIT

_Q50 = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=torch.float32)


def _dct_matrix() -> torch.Tensor:
    d = torch.zeros(8, 8)
    for k in range(8):
        for n in range(8):
            d[k, n] = math.cos(math.pi * (2 * n + 1) * k / 16) * (math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8))
    return d


_DCT = _dct_matrix()


def _st_round(x: torch.Tensor) -> torch.Tensor:
    """Rounding whose gradient is the identity (straight-through)."""
    return x + (torch.round(x) - x).detach()


def jpeg(x: torch.Tensor, quality: int, offset: tuple[int, int]) -> torch.Tensor:
    """Differentiable baseline-JPEG luminance round trip of ``x`` (N, 1, H, W) in [0, 255]."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = torch.clamp(torch.floor((_Q50 * scale + 50) / 100), 1, 255)
    x = torch.roll(x, offset, dims=(2, 3))
    n, _, h, w = x.shape
    b = (x - 128).view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    c = _DCT @ b @ _DCT.T
    c = _st_round(c / table) * table
    b = _DCT.T @ c @ _DCT
    y = b.permute(0, 1, 3, 2, 4).reshape(n, 1, h, w) + 128
    return torch.roll(_st_round(y.clamp(0, 255)), (-offset[0], -offset[1]), dims=(2, 3))


def median3(x: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    p = F.unfold(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3)
    return p.median(dim=1).values.view(n, 1, h, w)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    t = math.radians(degrees)
    theta = torch.tensor([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]])
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class Attack:
    """One differentiable attack drawn at random; ``scale`` is the resize factor
    (the decoder then works at that scale and its estimate is resized back)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        kinds = ["identity", "jpeg", "noise", "blur", "median", "resize", "rotate", "jpeg+noise"]
        self.kind = kinds[rng.choice(len(kinds), p=[0.06, 0.34, 0.2, 0.05, 0.07, 0.12, 0.06, 0.10])]
        self.scale = float(rng.choice([0.5, 0.75, 1.5, 2.0])) if self.kind == "resize" else 1.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rng = self.rng
        off = (int(rng.integers(8)), int(rng.integers(8)))
        if self.kind == "jpeg":
            return jpeg(x, int(rng.integers(30, 91)), off)
        if self.kind == "noise":
            sigma = 255.0 * math.sqrt(rng.uniform(0.001, 0.012))
            return _st_round((x + sigma * torch.randn_like(x)).clamp(0, 255))
        if self.kind == "jpeg+noise":
            sigma = 255.0 * math.sqrt(rng.uniform(0.001, 0.005))
            return jpeg(_st_round((x + sigma * torch.randn_like(x)).clamp(0, 255)), 50, off)
        if self.kind == "blur":
            k = torch.tensor([1.0, 2.0, 1.0]) / 4
            return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), (k[:, None] * k[None, :]).view(1, 1, 3, 3))
        if self.kind == "median":
            return median3(x)
        if self.kind == "resize":
            return _st_round(F.interpolate(x, scale_factor=self.scale, mode="bilinear", antialias=self.scale < 1))
        if self.kind == "rotate":
            a = float(rng.uniform(1, 10)) * (1 if rng.random() < 0.5 else -1)
            return _st_round(rotate(rotate(x, a), -a))
        return x


class Critic(nn.Module):
    """Logit that a rendering carries a mark (sees the rendering and its high-pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(2, 16, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hp = x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
        return self.body(torch.cat([x / 255.0, hp], dim=1))[:, 0]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image on 8-bit renderings (7x7 uniform window, K1 0.01, K2 0.03)."""
    f = lambda v: F.avg_pool2d(F.pad(v, (3, 3, 3, 3), mode="reflect"), 7, stride=1)  # noqa: E731
    ma, mb = f(a), f(b)
    va, vb, cab = f(a * a) - ma * ma, f(b * b) - mb * mb, f(a * b) - ma * mb
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return s.mean(dim=(1, 2, 3))


def load_renderings() -> list[np.ndarray]:
    out = []
    for name in TRAIN:
        if not corpus.is_available(name):
            raise SystemExit(f"{name} is not installed (needs pydicom-data)")
        for plane in corpus.load_image(name, max_frames=6).planes:
            if min(plane.shape) >= PATCH:
                out.append(np.round(rendering(plane)).astype(np.float32))
    return out


def batch(images: list[np.ndarray], n: int, rng: np.random.Generator) -> torch.Tensor:
    out = np.empty((n, 1, PATCH, PATCH), np.float32)
    for i in range(n):
        im = images[int(rng.integers(len(images)))]
        r, c = int(rng.integers(im.shape[0] - PATCH + 1)), int(rng.integers(im.shape[1] - PATCH + 1))
        p = im[r : r + PATCH, c : c + PATCH]
        out[i, 0] = p.T if rng.random() < 0.5 and p.shape[0] == p.shape[1] else p
    return torch.from_numpy(out)


_SHAPE = torch.tensor(SHAPE, dtype=torch.float32)
_SHAPE_TILE = _SHAPE.repeat(PATCH // CHIP, PATCH // CHIP)


def mark(cover: torch.Tensor, smap: torch.Tensor, chips: torch.Tensor) -> torch.Tensor:
    """``cover`` plus the pattern of ``chips`` (N, 1, H/4, W/4) scaled by the
    block map and normalised to the target rms; chips that would clip are left out."""
    strength = F.interpolate(smap, scale_factor=16, mode="nearest")
    pattern = F.interpolate(chips, scale_factor=CHIP, mode="nearest") * _SHAPE_TILE * strength
    keep = torch.ones_like(chips)
    for _ in range(2):
        k = F.interpolate(keep, scale_factor=CHIP, mode="nearest")
        a = TARGET_RMS / torch.sqrt(((pattern * k) ** 2).mean(dim=(1, 2, 3), keepdim=True) + 1e-9)
        moved = (cover + a * pattern).detach()
        out = ((moved < 0) | (moved > 255)).float()
        keep = 1.0 - F.max_pool2d(out, CHIP)
    k = F.interpolate(keep, scale_factor=CHIP, mode="nearest")
    return _st_round(cover + a * pattern * k)


def chip_snr(estimate: torch.Tensor, chips: torch.Tensor) -> torch.Tensor:
    """Per image: mean over std of the de-signed matched-filter value of every chip."""
    soft = F.avg_pool2d(estimate * _SHAPE_TILE, CHIP) * chips
    soft = soft.flatten(1)
    return soft.mean(dim=1) / (soft.std(dim=1) + 1e-6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--critic-weight", type=float, default=0.05)
    ap.add_argument("--ssim-weight", type=float, default=0.0,
                    help="encoder penalty per unit of SSIM lost on the rendering")
    ap.add_argument("--init", type=Path, help="start from these weights (a deep-v1.pt)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=_PATH)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    images = load_renderings()
    _, decoder_cls, map_cls = _networks()
    enc, dec, critic = map_cls(), decoder_cls(), Critic()
    if args.init:
        state = torch.load(args.init, map_location="cpu", weights_only=True)
        enc.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("map.")})
        dec.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("dec.")})
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=2e-3)
    opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    t0, log_d, log_c, log_s = time.monotonic(), [], [], []
    for step in range(1, args.steps + 1):
        cover = batch(images, args.batch, rng)
        chips = torch.randint(0, 2, (args.batch, 1, PATCH // CHIP, PATCH // CHIP)).float() * 2 - 1
        marked = mark(cover, enc(cover), chips)
        # critic step: clean (0) vs marked (1)
        logits = critic(torch.cat([cover, marked.detach()]))
        labels = torch.cat([torch.zeros(args.batch), torch.ones(args.batch)])
        loss_c = F.binary_cross_entropy_with_logits(logits, labels)
        opt_c.zero_grad()
        loss_c.backward()
        opt_c.step()
        # encoder + decoder step
        attack = Attack(rng)
        attacked = attack(marked)
        estimate = dec(attacked)
        if attack.scale != 1.0:
            estimate = F.interpolate(estimate, size=(PATCH, PATCH), mode="bilinear")
        d = chip_snr(estimate, chips).mean()
        fool = F.softplus(critic(marked)).mean()  # the critic's log-odds of "marked"
        lost = 1.0 - ssim(cover, marked).mean()
        loss = -d + args.critic_weight * fool + args.ssim_weight * lost
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        log_d.append(d.item())
        log_c.append(loss_c.item())
        log_s.append(lost.item())
        if step % 100 == 0:
            print(f"step {step:5d}  chip SNR {np.mean(log_d[-100:]):.3f}  critic loss {np.mean(log_c[-100:]):.3f}"
                  f"  SSIM lost {np.mean(log_s[-100:]):.4f}"
                  f"  {time.monotonic() - t0:.0f} s", flush=True)
    if args.steps < 200:
        print("smoke run: nothing written")
        return
    state = {f"map.{k}": v for k, v in enc.state_dict().items()}
    state.update({f"dec.{k}": v for k, v in dec.state_dict().items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    print(args.out, args.out.stat().st_size, "bytes, SHA-256", hashlib.sha256(args.out.read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
