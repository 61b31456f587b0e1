"""How many bits a waveform can carry at ±1 step, per channel.

The measure is the engine's own: carriers (prediction error 0 or -1) of
the A-lattice walk, plus those of the B-lattice walk once every A carrier
holds a bit (a pseudo-random one), so the B count is what a full two-pass
embedding really gets.

The loaded samples come back too: with a given rate, the walks' prefixes
(smooth samples first, A pass then B pass, as the embedder fills them) carry
that many pseudo-random bits; without one, every carrier is used (the most
distortion the embedder can cause). They give the rate-distortion curve.
"""

from __future__ import annotations

import copy

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicom_wm.engine.histogram_shift import WalkOrder, carrier_mask, embed_walk, positions_needed
from dicom_wm.engine.plane_codec import from_view, lattice_view, lattice_walk
from dicom_wm.waveform.predictor import Linear1D
from dicom_wm.waveform.samples import read_groups, to_domain, write_group
from dicom_wm.waveform.watermark import auto_step, step_candidates

__all__ = ["GroupCapacity", "waveform_capacity", "with_loaded"]


@dataclass(frozen=True)
class GroupCapacity:
    """Capacity of one multiplex group."""

    group: int
    step_bits: int  # the watermark step: samples change by at most 2**step_bits
    sampling_frequency: float | None
    n_samples: int
    bits_a: np.ndarray  # int64 (channels,): A-pass carriers
    bits_b: np.ndarray  # int64 (channels,): B-pass carriers after a full A pass
    loaded: np.ndarray  # stored samples (channels, samples) carrying loaded_bits
    loaded_bits: int  # pseudo-random bits in ``loaded`` (whole group)

    @property
    def bits(self) -> np.ndarray:
        """Two-pass capacity per channel (bits)."""
        return self.bits_a + self.bits_b

    @property
    def seconds(self) -> float | None:
        f = self.sampling_frequency
        return self.n_samples / f if f else None

    def bits_per_second(self) -> np.ndarray:
        """Two-pass capacity per channel in bits per second (needs the
        group's Sampling Frequency)."""
        if not self.seconds:
            raise ValueError(f"group {self.group} has no Sampling Frequency")
        return self.bits / self.seconds


def _load(
    flat: np.ndarray, walk: WalkOrder, n_bits: int | None, lo: int, hi: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """Embed ``n_bits`` (all carriers when None or more) pseudo-random bits
    on the walk's prefix; returns the result, the flat indices of all the
    walk's carriers and the bits embedded."""
    carriers = carrier_mask(flat[walk.index] - walk.pred)
    total = int(carriers.sum())
    n = total if n_bits is None else min(n_bits, total)
    n_used = positions_needed(np.flatnonzero(carriers), n) if n < total else len(walk.index)
    bits = rng.integers(0, 2, total, dtype=flat.dtype)
    bits[n:] = 0
    return embed_walk(flat, walk, bits, int(n_used or 0), lo, hi), walk.index[carriers], n


def waveform_capacity(
    ds: Dataset, *, bits_per_second: float | None = None, step_bits: int | None = None, seed: int = 0
) -> list[GroupCapacity]:
    """Per-group, per-channel two-pass capacity of ``ds``'s Waveform Data.

    Parameters
    ----------
    ds : Dataset
        Not modified.
    bits_per_second : float, optional
        Load per channel for ``loaded`` (needs Sampling Frequency); every
        carrier when omitted.
    step_bits : int, optional
        Watermark step of 16-bit linear groups (0..4); by default the one
        :func:`~dicom_wm.waveform.embed_waveform` would choose.
    seed : int
        Seed of the pseudo-random bits.

    Raises UnsupportedInput when the waveform cannot be read, ValueError
    when a rate is given for a group without Sampling Frequency.
    """
    rng = np.random.default_rng(seed)
    out: list[GroupCapacity] = []
    for g in read_groups(ds):
        if step_bits is None:
            g = g.with_step(auto_step(ds, g))
        elif step_bits in step_candidates(g):
            g = g.with_step(step_bits)
        predictor = Linear1D(g.frozen)
        channels, n = g.domain.shape
        target: int | None = None
        if bits_per_second is not None:
            if not g.sampling_frequency:
                raise ValueError(f"group {g.index} has no Sampling Frequency: cannot load it at a rate")
            target = int(round(bits_per_second * n / g.sampling_frequency * channels))
        walk_a = lattice_walk(g.domain, predictor, 0, g.lo, g.hi)
        flat = g.domain.reshape(-1)
        full_a, used_a, cap_a = _load(flat, walk_a, None, g.lo, g.hi, rng)
        view = lattice_view(full_a.reshape(g.domain.shape), 1)
        walk_b = lattice_walk(view, predictor, 1, g.lo, g.hi)
        full_b, used_b, cap_b = _load(view.reshape(-1), walk_b, None, g.lo, g.hi, rng)
        if target is None:
            loaded, n_loaded = from_view(full_b.reshape(view.shape), 1), cap_a + cap_b
        elif target <= cap_a:
            part, _, n_loaded = _load(flat, walk_a, target, g.lo, g.hi, rng)
            loaded = part.reshape(g.domain.shape)
        else:
            part, _, extra = _load(view.reshape(-1), walk_b, target - cap_a, g.lo, g.hi, rng)
            loaded, n_loaded = from_view(part.reshape(view.shape), 1), cap_a + extra
        out.append(
            GroupCapacity(
                group=g.index,
                step_bits=g.step_bits,
                sampling_frequency=g.sampling_frequency,
                n_samples=n,
                bits_a=np.bincount(used_a // n, minlength=channels),
                bits_b=np.bincount(used_b // (n + 1), minlength=channels),
                loaded=g.to_stored(np.ascontiguousarray(loaded)),
                loaded_bits=n_loaded,
            )
        )
    return out


def with_loaded(ds: Dataset, capacities: list[GroupCapacity]) -> Dataset:
    """A copy of ``ds`` whose groups hold the ``loaded`` samples of
    ``capacities`` (groups not listed stay as they are); for measuring the
    distortion of a load, e.g. with :func:`~dicom_wm.waveform.snr_db`."""
    out = copy.deepcopy(ds)
    groups = read_groups(ds)
    for c in capacities:
        g = groups[c.group]
        write_group(out, g, to_domain(c.loaded, g.interpretation))
    return out
