"""Benchmark: waveform watermark capacity and distortion, ECG and voice.

    python bench/bench_waveform.py               # markdown tables
    python bench/bench_waveform.py --edits 100   # more tamper trials

In one run, for pydicom's 12-lead ECG (waveform_ecg.dcm: a 10 s rhythm
group and a 1.2 s median beat, 1000 Hz, SS) and for Basic Voice Audio at
8 kHz in µ-law (MB), A-law (AB) and 16-bit linear (SS) built from

* a generated speech-like signal (tests/waveform_support.py), and
* real synthetic speech from espeak-ng when it is installed (Debian package
  ``espeak-ng``; skipped otherwise), resampled to 8 kHz:

capacity in bits per second per lead / channel (the A-lattice single pass at
±1 LSB as the baseline; then at the embedder's step, which is ±1 except for
16-bit linear audio: A pass and two-pass), what ``embed_waveform`` actually
embeds (payload bits per second, copies, passes), max |delta| (in stored
steps; code ranks for µ-law / A-law) and SNR on the decoded linear signal
against the original at that payload, at fixed loads of 100-800 bits/s and
at full capacity; then, over random one-sample edits, how often verify
localises the edit to its own time window only. Last, embed and verify time
as a ratio of a plain DICOM write + read of the same object, measured in the
same run.
"""

from __future__ import annotations

import argparse
import copy
import io
import math
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from dicom_wm.engine import plane_codec  # noqa: E402
from dicom_wm.keys import KeyStore  # noqa: E402
from dicom_wm.waveform import (  # noqa: E402
    embed_waveform,
    read_groups,
    snr_db,
    verify_waveform,
    write_group,
)
from dicom_wm.waveform import watermark as waveform_watermark  # noqa: E402
from dicom_wm.waveform.capacity import waveform_capacity, with_loaded  # noqa: E402
from dicom_wm.watermark import VerifyStatus  # noqa: E402
from waveform_support import VOICE_RATE, ecg_dataset, speech_like, voice_dataset  # noqa: E402

KEYS = KeyStore.in_memory({"kbench001": b"\x5a" * 32}, "kbench001")
RATES = (100, 200, 400, 800)
ESPEAK_TEXT = (
    "The patient was seen in clinic today. Blood pressure one hundred and thirty over eighty. "
    "Heart sounds normal, no murmurs. Chest clear. Continue current medication and review in six weeks."
)


def espeak_speech() -> np.ndarray | None:
    """espeak-ng speech at 8 kHz (16-bit scale), or None without espeak-ng."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-w", str(path), ESPEAK_TEXT], check=True, capture_output=True)
        with wave.open(str(path)) as w:
            rate, raw = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(raw, "<i2").astype(np.float64)
    # FFT resampling to 8 kHz (band-limits to 4 kHz).
    n_out = int(round(len(x) * VOICE_RATE / rate))
    spec = np.fft.rfft(x)[: n_out // 2 + 1]
    y = np.fft.irfft(spec, n_out) * (n_out / len(x))
    return np.clip(np.round(y), -32768, 32767).astype(np.int64)


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.1f}"


class _Spy:
    """Records passes and copies per group from the engine's answer."""

    def __init__(self) -> None:
        self.plans: list[tuple[int, int]] = []

    def __call__(self, *args, **kwargs):
        emb = plane_codec.embed_plane(*args, **kwargs)
        self.plans.append((emb.passes, emb.copies))
        return emb


def measure(name: str, ds: pydicom.Dataset, edits: int, rng: np.random.Generator) -> dict:
    seconds = max(g.n_samples / g.sampling_frequency for g in read_groups(ds))
    caps = waveform_capacity(ds)
    spy = _Spy()
    waveform_watermark.embed_plane = spy
    try:
        result = embed_waveform(ds, KEYS)
    finally:
        waveform_watermark.embed_plane = plane_codec.embed_plane
    wm = result.dataset
    row = {
        "name": name,
        "seconds": seconds,
        "groups": [
            {
                "group": c.group,
                "channels": len(c.bits),
                "seconds": c.seconds,
                "a_bps": c.bits_a / c.seconds,
                "ab_bps": c.bits_per_second(),
                "step": c.step_bits,
                "a0_bps": waveform_capacity(ds, step_bits=0)[c.group].bits_a / c.seconds,
                "snr_full": snr_db(ds, with_loaded(ds, [c])),
            }
            for c in caps
        ],
        "plans": spy.plans,
        "payload_bps": result.payload_bits / sum(c.seconds * len(c.bits) for c in caps),
        "payload_bits": result.payload_bits,
        "max_abs": result.max_abs_delta,
        "snr": snr_db(ds, wm),
        "snr_rates": {},
    }
    for rate in RATES:
        loaded = waveform_capacity(ds, bits_per_second=rate)
        row["snr_rates"][rate] = snr_db(ds, with_loaded(ds, loaded))

    # Tamper localisation over random one-sample edits.
    groups = read_groups(wm)
    exact = lost = 0
    for _ in range(edits):
        g = groups[int(rng.integers(0, len(groups)))]
        ch, s = int(rng.integers(0, g.n_channels)), int(rng.integers(0, g.n_samples))
        d = g.domain.copy()
        d[ch, s] += 1 if d[ch, s] < g.hi else -1
        edited = copy.deepcopy(wm)
        write_group(edited, g, d)
        res = verify_waveform(edited, KEYS)
        width = 64 * max(1, min(255, round(g.sampling_frequency / 64)))
        s0 = s // width * width
        if res.status is VerifyStatus.TAMPERED and res.tampered_tiles == [[g.index, ch, s0, min(s0 + width, g.n_samples)]]:
            exact += 1
        elif res.status is VerifyStatus.INVALID or any(t[3] - t[2] == g.n_samples > width for t in res.tampered_tiles):
            lost += 1
    row["edits"] = (edits, exact, lost)

    # Speed against a plain write + read of the same object.
    def io_roundtrip() -> None:
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        buf.seek(0)
        pydicom.dcmread(buf).WaveformSequence[0].WaveformData  # noqa: B018

    def best(fn, repeat: int = 5) -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    base = best(io_roundtrip)
    row["embed_ratio"] = best(lambda: embed_waveform(ds, KEYS)) / base
    row["verify_ratio"] = best(lambda: verify_waveform(wm, KEYS)) / base
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=50, help="random one-sample edits per object")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the generated speech")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    objects: list[tuple[str, pydicom.Dataset]] = [("ECG 12-lead (waveform_ecg.dcm)", ecg_dataset())]
    generated = speech_like(args.seconds, seed=1)
    for interp in ("MB", "AB", "SS"):
        objects.append((f"voice, generated, {interp}", voice_dataset(generated, interp)))
    spoken = espeak_speech()
    if spoken is None:
        print("espeak-ng not installed: real-speech rows skipped\n")
    else:
        for interp in ("MB", "AB", "SS"):
            objects.append((f"voice, espeak-ng, {interp}", voice_dataset(spoken, interp)))
    rows = [measure(name, ds, args.edits, rng) for name, ds in objects]

    print("## Capacity per lead / channel (bits/s)\n")
    print("Baseline: one pass on the A lattice (every other sample) at ±1 LSB (step 2**0). At the embedder's step:")
    print("A pass, and two-pass (A, then the B lattice predicted from the watermarked A samples).")
    print("min / median / max over the group's channels.\n")
    print("| object | group | ch | s | A pass, ±1 (baseline) | step | A pass | two-pass | SNR at full two-pass load (dB) |")
    print("|---|---|---|---|---|---|---|---|---|")

    def mmm(v: np.ndarray) -> str:
        return f"{v.min():.0f} / {np.median(v):.0f} / {v.max():.0f}"

    for r in rows:
        for g in r["groups"]:
            print(
                f"| {r['name']} | {g['group']} | {g['channels']} | {g['seconds']:.1f} | {mmm(g['a0_bps'])} "
                f"| ±{2 ** g['step']} | {mmm(g['a_bps'])} | {mmm(g['ab_bps'])} | {_fmt(g['snr_full'])} |"
            )

    print("\n## What embed_waveform writes, and distortion (SNR on the decoded linear signal)\n")
    print("| object | (passes, copies) per group | payload bits/s per channel | max abs delta | SNR (dB) | "
          + " | ".join(f"SNR @{r} b/s" for r in RATES) + " |")
    print("|---|---|---|---|---|" + "---|" * len(RATES))
    for r in rows:
        print(
            f"| {r['name']} | {r['plans']} | {r['payload_bps']:.0f} | {r['max_abs']} | {_fmt(r['snr'])} | "
            + " | ".join(_fmt(r["snr_rates"][k]) for k in RATES) + " |"
        )

    print("\n## Tamper localisation (random one-sample edits)\n")
    print("| object | edits | only its own window | block lost (whole group / invalid) | embed x | verify x |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        n, exact, lost = r["edits"]
        print(f"| {r['name']} | {n} | {exact} | {lost} | {r['embed_ratio']:.1f} | {r['verify_ratio']:.1f} |")
    print("\nembed x / verify x: time as a multiple of a plain pydicom write + read of the same object (this run).")
    if spoken is not None:
        ref = voice_dataset(spoken, "SS")
        print(f"\nespeak-ng speech: {len(spoken) / VOICE_RATE:.1f} s; G.711 quantisation alone: µ-law "
              f"{snr_db(ref, voice_dataset(spoken, 'MB')):.1f} dB, A-law {snr_db(ref, voice_dataset(spoken, 'AB')):.1f} dB")
    ref = voice_dataset(generated, "SS")
    print(f"generated speech: {len(generated) / VOICE_RATE:.1f} s; G.711 quantisation alone: µ-law "
          f"{snr_db(ref, voice_dataset(generated, 'MB')):.1f} dB, A-law {snr_db(ref, voice_dataset(generated, 'AB')):.1f} dB")


if __name__ == "__main__":
    main()
