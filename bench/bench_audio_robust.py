"""Benchmark of the audio robust leak-tracing layer (docs/audio-robust.md).

For each stored format (µ-law MB, A-law AB, 16-bit linear SS) and each trial
(a different speech-like signal, record UUID and recipient, i.e. a different
message), a Basic Voice Audio instance is watermarked with ``robust=True``
through :func:`dicom_wm.watermark.embed_dataset`, its linear samples are
attacked, and :func:`dicom_wm.robust.audio.decode_audio_robust` must return
the exact message. Prints a markdown table: per attack, exact-message
recovery k/N and the coded-bit accuracy at the decoder's best sync peak;
then the robust layer's SNR and the false-positive check (unmarked signals
under several keys, and marked ones under a wrong key).

    nice python bench/bench_audio_robust.py [--trials N] [--seconds S] [--formats MB,AB,SS]
        [--linear-snr DB] [--companded-snr DB]
    nice python bench/bench_audio_robust.py --whitening   # the whitening table
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from waveform_support import speech_like, voice_dataset  # noqa: E402

from dicom_wm.keys import KeyStore  # noqa: E402
from dicom_wm.robust import audio as ra  # noqa: E402
from dicom_wm.robust.audio import decode_audio_robust, robust_snr_db  # noqa: E402
from dicom_wm.waveform import alaw_decode, alaw_encode, linear_samples, snr_db, ulaw_decode, ulaw_encode  # noqa: E402
from dicom_wm.waveform.samples import read_groups  # noqa: E402
from dicom_wm.watermark import EmbedOptions, embed_dataset  # noqa: E402

SECRET = bytes(range(32))
KEYS = KeyStore.in_memory({"kbench001": SECRET}, "kbench001")


def _noise(x: np.ndarray, snr_db_: float, rng: np.random.Generator) -> np.ndarray:
    power = float(np.mean(x.astype(np.float64) ** 2))
    return x + rng.normal(0.0, np.sqrt(power / 10 ** (snr_db_ / 10)), x.size)


def _crop(x: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    n = int(x.size * frac)
    s = int(rng.integers(0, x.size - n + 1))
    return x[s : s + n]


def attacks(rng: np.random.Generator):
    """(name, function of 8 kHz linear samples -> (samples, rate))."""
    return [
        ("none", lambda x: (x, 8000)),
        ("time shift (drop 0..1 s at the start)", lambda x: (x[int(rng.integers(1, 8000)) :], 8000)),
        ("crop to 80 % (random offset)", lambda x: (_crop(x, 0.8, rng), 8000)),
        ("crop to 60 % (random offset)", lambda x: (_crop(x, 0.6, rng), 8000)),
        ("8k -> 16k -> 8k", lambda x: (resample_poly(resample_poly(x, 2, 1), 1, 2), 8000)),
        ("8k -> 11025 -> 8k", lambda x: (resample_poly(resample_poly(x, 441, 320), 320, 441), 8000)),
        ("handed over at 16 kHz, odd crop", lambda x: (resample_poly(x, 2, 1)[1 + 2 * int(rng.integers(0, 4000)) :], 16000)),
        ("handed over at 44.1 kHz, crop", lambda x: (resample_poly(x, 441, 80)[int(rng.integers(0, 40000)) :], 44100)),
        ("white noise 20 dB SNR", lambda x: (_noise(x, 20.0, rng), 8000)),
        ("µ-law re-encode", lambda x: (ulaw_decode(ulaw_encode(np.clip(np.round(x), -32768, 32767))), 8000)),
        ("A-law re-encode", lambda x: (alaw_decode(alaw_encode(np.clip(np.round(x), -32768, 32767))), 8000)),
        ("crop 80 % + noise 20 dB", lambda x: (_noise(_crop(x, 0.8, rng), 20.0, rng), 8000)),
        ("11025 round trip + noise 20 dB + µ-law", lambda x: (
            ulaw_decode(ulaw_encode(np.clip(np.round(_noise(resample_poly(resample_poly(x, 441, 320), 320, 441), 20.0, rng)), -32768, 32767))), 8000)),
    ]


def _coded_bits(message: bytes) -> np.ndarray:
    return ra.encode_bits(np.concatenate([ra.bits_of(message), ra.bits_of(ra.check_bytes(message, SECRET))]))


def bit_accuracy(samples: np.ndarray, rate: int, message: bytes) -> float:
    """Coded-bit accuracy of the hard decisions at the best sync peak of the
    decoder's envelope-weighted analysis."""
    key = ra._AudioKey(SECRET)
    folded = ra._fold(ra._analyses(samples, rate)[1])
    soft = ra._soft_bits(folded, ra._sync_peaks(folded, key, 1)[0][1], key)
    return float(np.mean((soft < 0) == (_coded_bits(message) == 1)))


def robust_only_snr(ds, message: bytes) -> float:
    """SNR of the robust layer alone (before the reversible layer) on the linear scale."""
    from dicom_wm.waveform.watermark import _mark_group
    from dicom_wm.waveform.quality import _linear

    g = read_groups(ds)[0]
    marked, _ = _mark_group(g, message, SECRET)
    return robust_snr_db(_linear(g)[0], _linear(marked)[0])


def whitening_table(n_signals: int = 6) -> None:
    """Per-coded-bit signal-to-interference (mean / std of the de-signed soft
    coded bits at the shift the decoder picks) for ways of preparing the
    received signal, with the shipped mid-band chip and with a low-pass one."""
    from scipy.ndimage import uniform_filter1d
    from scipy.signal import lfilter

    def local_rms(e: np.ndarray) -> np.ndarray:
        local = np.sqrt(uniform_filter1d(e * e, 160, mode="nearest"))
        return np.clip(e / np.maximum(local, max(float(np.median(local)) * 0.1, 1e-9)), -3, 3)

    def weighted(x: np.ndarray) -> np.ndarray:
        env = np.sqrt(uniform_filter1d((x - x.mean()) ** 2, 400, mode="nearest"))
        return ra._whiten(x) * np.sqrt(env / (float(np.percentile(env, 80)) or 1.0))

    ways = {
        "raw": lambda x: x - x.mean(),
        "local rms only": lambda x: local_rms(x - x.mean()),
        "pre-emphasis (1 - 0.95 z^-1) + local rms": lambda x: local_rms(lfilter([1, -0.95], [1], x)),
        "LPC residual + local rms": ra._whiten,
        "LPC + local rms + sqrt(envelope) weight": weighted,
    }
    message = bytes(range(8))
    coded = _coded_bits(message)

    def quality(w: np.ndarray) -> float:
        key = ra._AudioKey(SECRET)
        folded = ra._fold(resample_poly(w, 2, 1))
        s = ra._soft_bits(folded, ra._sync_peaks(folded, key, 1)[0][1], key) * (1 - 2 * coded)
        return float(s.mean() / s.std())

    shipped = ra._window
    print("| chip | received signal as | clean | crop to 4 s + noise 20 dB |")
    print("|---|---|---|---|")
    for chip, window in (("mid-band (448, 960, -960, -448)", shipped), ("low-pass (448, 960, 960, 448)", lambda x: x * (64 - x))):
        ra._window = window
        try:
            rng = np.random.default_rng(0)
            res = {k: ([], []) for k in ways}
            for seed in range(n_signals):
                x = speech_like(5.0, seed=100 + seed)
                y, _ = ra.embed_audio_robust(x, -32768, 32767, message, SECRET, sample_rate=8000)
                noisy = _noise(y.astype(np.float64), 20.0, rng)[4000:36000]
                for k, f in ways.items():
                    res[k][0].append(quality(f(y.astype(np.float64))))
                    res[k][1].append(quality(f(noisy)))
            for k in ways:
                print(f"| {chip} | {k} | {np.mean(res[k][0]):.2f} | {np.mean(res[k][1]):.2f} |")
        finally:
            ra._window = shipped
    print(f"\n({n_signals} speech-like signals of 5 s, 16-bit linear, mark at {ra.TARGET_SNR_DB:g} dB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30, help="trials per stored format")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--formats", default="MB,AB,SS")
    ap.add_argument("--linear-snr", type=float, default=ra.TARGET_SNR_DB, help="mark SNR of linear (SS) audio, dB")
    ap.add_argument("--companded-snr", type=float, default=ra.COMPANDED_SNR_DB, help="mark SNR of µ-law / A-law audio, dB")
    ap.add_argument("--whitening", action="store_true", help="only measure the whitening table")
    args = ap.parse_args()
    ra.TARGET_SNR_DB, ra.COMPANDED_SNR_DB = args.linear_snr, args.companded_snr
    if args.whitening:
        whitening_table()
        return
    t0 = time.perf_counter()
    rng = np.random.default_rng(2026)
    formats = args.formats.split(",")
    names = [n for n, _ in attacks(rng)]
    ok = {(f, n): 0 for f in formats for n in names}
    acc = {(f, n): [] for f in formats for n in names}
    wrong = 0
    snr_robust: dict[str, list[float]] = {f: [] for f in formats}
    snr_total: dict[str, list[float]] = {f: [] for f in formats}
    mark_bytes: dict[str, list[int]] = {f: [] for f in formats}
    fp_trials = fp_hits = 0
    for f in formats:
        for trial in range(args.trials):
            seed = 1000 * formats.index(f) + trial
            x = speech_like(args.seconds, seed=seed, peak=float(rng.uniform(0.2, 0.9)))
            ds = voice_dataset(x, f)
            res = embed_dataset(ds, KEYS, record_uuid=uuid.UUID(int=int(rng.integers(0, 2**62)) << 64 | trial),
                                options=EmbedOptions(robust=True, recipient=f"AE{trial}"))
            message = bytes.fromhex(res.robust_message)
            snr_total[f].append(snr_db(ds, res.dataset))
            snr_robust[f].append(robust_only_snr(ds, message))
            marked = linear_samples(res.dataset)[0][0].astype(np.float64)
            for name, attack in attacks(rng):
                y, rate = attack(marked)
                got = decode_audio_robust(y, rate, SECRET)
                ok[f, name] += got == message
                wrong += got is not None and got != message
                acc[f, name].append(bit_accuracy(y, rate, message))
            # false positives: the unmarked original under three keys, the marked one under a wrong key
            original = linear_samples(ds)[0][0].astype(np.float64)
            for k in range(3):
                fp_trials += 1
                fp_hits += decode_audio_robust(original, 8000, bytes([k + 1]) * 32) is not None
            fp_trials += 1
            fp_hits += decode_audio_robust(marked, 8000, b"\xee" * 32) is not None
    n = args.trials
    print(f"# audio robust layer: {n} trials per format, {args.seconds:g} s speech-like signals, 8 kHz; "
          f"target SNR {args.linear_snr:g} dB (linear), {args.companded_snr:g} dB (µ-law / A-law)\n")
    print("| attack | " + " | ".join(f"{f} exact | {f} coded-bit acc." for f in formats) + " |")
    print("|---|" + "---|---|" * len(formats))
    for name in names:
        cells = [f"{ok[f, name]}/{n} | {100 * np.mean(acc[f, name]):.1f} %" for f in formats]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print("| format | robust-layer SNR (dB), min / median | whole embed SNR (dB), min / median |")
    print("|---|---|---|")
    for f in formats:
        print(f"| {f} | {min(snr_robust[f]):.1f} / {np.median(snr_robust[f]):.1f} | {min(snr_total[f]):.1f} / {np.median(snr_total[f]):.1f} |")
    print()
    print(f"false positives: {fp_hits}/{fp_trials} (unmarked x 3 keys, marked x wrong key); "
          f"wrong message returned: {wrong}; bound by construction {ra.MAX_AUDIO_DECODES} * 2**-32 = "
          f"{ra.MAX_AUDIO_DECODES * 2.0**-32:.1e} per key")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
