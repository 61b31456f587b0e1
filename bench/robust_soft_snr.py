"""Diagnostic: the robust decoder's soft-bit SNR at the true geometry.

For each image, message and attack it prints d = mean / std of the de-signed
soft value of every coded bit (what the list Viterbi decoder's success
follows: it decodes reliably from d of about 1), with the tile shift known,
for each whitening the decoder has (Gaussian high-pass at several widths,
inverse-variance, the learned linear filter, the deep decoder). A "!" marks
a whitening whose sync search would have missed the true shift. Use it to
tell a mark that is gone (every d low) from one the decoder fails to read.
A "+" marks a whitening whose list decode at the true shift returns the
message.

``--genie`` adds a non-blind row no decoder can have: the attacked image
minus the unmarked, unattacked image in the attack's domain (the host
removed; what is left is the mark as the attack left it plus the attack's
own change), high-passed at sigma 3 to take out clipping's local bias. Its
d is what a decoder that cancelled the host perfectly would see at this
mark energy.

    python bench/robust_soft_snr.py [--images US1_UNCR.dcm] [--attacks "export JPEG 2000 10:1" ...] [--trials 3] [--genie]
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.attacks import Domain, attack_by_name, to_uint8  # noqa: E402
from bench_robust import load_images  # noqa: E402

from dicom_wm.robust import detect as D  # noqa: E402
from dicom_wm.robust import embed_robust, message_for  # noqa: E402
from dicom_wm.robust.code import bits_of, check_bytes, encode_bits  # noqa: E402
from dicom_wm.robust.deep import deep_whiten  # noqa: E402
from dicom_wm.robust.learned import learned_whiten, load_kernel  # noqa: E402

SIGMAS = (1.5, 2.1, 3.0, 4.2, 6.0)


def soft_snr(white: np.ndarray, key: D._Key, coded: np.ndarray, message: bytes) -> tuple[float, bool, bool]:
    """d at shift (0, 0) (the tile is anchored there), whether sync finds
    that shift, and whether the list decode there returns ``message``."""
    w, valid = D._resample(white, 1.0, 0.0, D._MAX_SIDE)
    folded = D._fold(w, valid)
    s = D._soft_bits(folded, (0, 0), key) * (1 - 2 * coded)
    decoded = D._decode_list(folded, (0, 0), key) == message
    return float(s.mean() / s.std()), D._sync(folded, key)[1] == (0, 0), decoded


def attacked(img, plane: np.ndarray, attack, g: np.random.Generator) -> np.ndarray:
    """``plane`` after ``attack``, in the attack's own domain (8-bit rendering or stored units)."""
    if attack.domain is Domain.RENDER8:
        return to_uint8(attack(img.render8(plane).astype(np.float64) / 255.0, g)).astype(np.float64)
    return img.denormalise(attack(img.normalise(plane), g)).astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", nargs="*", default=["US1_UNCR.dcm"])
    ap.add_argument("--attacks", nargs="*", default=["export 8-bit PNG", "export JPEG 2000 10:1", "JPEG Q30"])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--genie", action="store_true", help="add the non-blind bound (see above)")
    args = ap.parse_args()
    attacks = [attack_by_name(a) for a in args.attacks]
    kernel = load_kernel()
    for img in load_images(tuple(args.images)):
        for t in range(args.trials):
            rng = np.random.default_rng([7, t])
            message = message_for(uuid.UUID(bytes=rng.bytes(16), version=4), None)
            secret = rng.bytes(32)
            marked, _ = embed_robust(img.plane, img.lo, img.hi, message, secret)
            coded = encode_bits(np.concatenate([bits_of(message), bits_of(check_bytes(message, secret))]))
            key = D._Key(secret)
            for attack in attacks:
                g = np.random.default_rng([7, t, 1])
                x = attacked(img, marked, attack, g)
                host = img.render8(img.plane).astype(np.float64) if attack.domain is Domain.RENDER8 else img.plane
                x = D._reject_impulses(x)
                whitenings = [(f"hp{s:g}", D._whiten(x, s)) for s in SIGMAS] + [("ivar", D._whiten_ivar(x))]
                if kernel is not None:
                    whitenings.append(("linear", learned_whiten(x, kernel)))
                deep = deep_whiten(x)
                if deep is not None:
                    whitenings.append(("deep", deep))
                if args.genie:
                    bare = x - host
                    whitenings.append(("genie", bare - ndimage.gaussian_filter(bare, 3.0)))
                    whitenings.append(("genie-ivar", D._whiten_ivar(bare)))
                cells = []
                for name, white in whitenings:
                    d, synced, decoded = soft_snr(white, key, coded, message)
                    cells.append(f"{name}={d:.2f}{'' if synced else '!'}{'+' if decoded else ''}")
                print(f"{img.name} trial {t} {attack.name}: " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
