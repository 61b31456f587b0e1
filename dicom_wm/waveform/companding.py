"""G.711 µ-law and A-law codes: monotonic rank and linear decoding.

A companded sample's stored code is not ordered by amplitude (µ-law stores
the bits inverted, A-law with every other bit inverted, and the sign in the
top bit). The watermark works on the **rank** of a code instead: the
position of the code's amplitude among all 256 codes, 0 = most negative,
255 = most positive. Rank is a bijection on 0..255, so embedding ±1 in rank
and mapping back is exactly reversible on the stored codes, and a ±1 rank
change is one quantisation step of the companding law.

Both laws have their two smallest magnitudes at ranks 127 and 128 (µ-law:
-0 and +0, both decoding to 0; A-law: -8 and +8 on the 16-bit scale).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ULAW_TO_RANK",
    "RANK_TO_ULAW",
    "ALAW_TO_RANK",
    "RANK_TO_ALAW",
    "ulaw_decode",
    "alaw_decode",
    "ulaw_encode",
    "alaw_encode",
]


def _ulaw_rank(code: int) -> int:
    # Positive codes have the top bit set; 0xFF is +0, 0x80 the largest.
    return 255 - (code & 0x7F) if code & 0x80 else code


def _alaw_rank(code: int) -> int:
    v = code ^ 0x55
    return 128 + (v & 0x7F) if v & 0x80 else 127 - v


def _ulaw_linear(code: int) -> int:
    """ITU-T G.711 µ-law expansion to the 16-bit linear scale."""
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


def _alaw_linear(code: int) -> int:
    """ITU-T G.711 A-law expansion to the 16-bit linear scale."""
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = t + 8 if seg == 0 else (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def _table(fn) -> np.ndarray:
    out = np.array([fn(c) for c in range(256)], dtype=np.int64)
    out.setflags(write=False)
    return out


def _inverse(table: np.ndarray) -> np.ndarray:
    inv = np.empty(256, dtype=np.int64)
    inv[table] = np.arange(256)
    inv.setflags(write=False)
    return inv


ULAW_TO_RANK = _table(_ulaw_rank)
RANK_TO_ULAW = _inverse(ULAW_TO_RANK)
ALAW_TO_RANK = _table(_alaw_rank)
RANK_TO_ALAW = _inverse(ALAW_TO_RANK)
_ULAW_LINEAR = _table(_ulaw_linear)
_ALAW_LINEAR = _table(_alaw_linear)


def ulaw_decode(codes: np.ndarray) -> np.ndarray:
    """µ-law codes (0..255) to 16-bit linear samples (int64)."""
    return _ULAW_LINEAR[np.asarray(codes, dtype=np.int64)]


def alaw_decode(codes: np.ndarray) -> np.ndarray:
    """A-law codes (0..255) to 16-bit linear samples (int64)."""
    return _ALAW_LINEAR[np.asarray(codes, dtype=np.int64)]


def _encode(linear: np.ndarray, decoded_by_rank: np.ndarray, rank_to_code: np.ndarray) -> np.ndarray:
    """Nearest code by amplitude; ties go to the higher rank, so 0 encodes
    as µ-law 0xFF (+0) and A-law 0xD5 (+8), as G.711 encoders do."""
    x = np.asarray(linear, dtype=np.int64)
    hi = np.clip(np.searchsorted(decoded_by_rank, x, side="right"), 1, 255)
    lo = hi - 1
    rank = np.where(x - decoded_by_rank[lo] < decoded_by_rank[hi] - x, lo, hi)
    return rank_to_code[rank]


def ulaw_encode(linear: np.ndarray) -> np.ndarray:
    """16-bit linear samples to the nearest µ-law codes (int64 0..255)."""
    return _encode(linear, _ULAW_LINEAR[RANK_TO_ULAW], RANK_TO_ULAW)


def alaw_encode(linear: np.ndarray) -> np.ndarray:
    """16-bit linear samples to the nearest A-law codes (int64 0..255)."""
    return _encode(linear, _ALAW_LINEAR[RANK_TO_ALAW], RANK_TO_ALAW)
