"""Channel code: a keyed 32-bit check and a rate-1/3, K=7 convolutional code
with soft-decision Viterbi decoding.

The check is HMAC-SHA256(secret, message) truncated to 32 bits, so a random
soft-bit vector passes it with probability 2**-32 per decode attempt, and a
mark made with another key fails it like noise.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

__all__ = ["CHECK_BITS", "encode_bits", "viterbi_decode", "viterbi_list_decode", "check_bytes", "bits_of", "bytes_of", "CODED_BITS"]

CHECK_BITS = 32
_K = 7
_POLYS = (0o133, 0o171, 0o165)  # the standard K=7 rate-1/3 generators
_RATE = len(_POLYS)
_INFO_BITS = 64 + CHECK_BITS
CODED_BITS = (_INFO_BITS + _K - 1) * _RATE  # 306, zero-tail terminated


def check_bytes(message: bytes, secret: bytes) -> bytes:
    return hmac.new(secret, b"dicom-wm robust check\0" + message, hashlib.sha256).digest()[:4]


def checked_message(info_bits: np.ndarray, secret: bytes) -> bytes | None:
    """The 64-bit message of decoded information bits (message, then its
    32-bit keyed check), or None when the check does not match."""
    message = bytes_of(info_bits[:64])
    return message if bytes_of(info_bits[64:96]) == check_bytes(message, secret) else None


def bits_of(data: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(np.int64)


def bytes_of(bits: np.ndarray) -> bytes:
    return np.packbits(bits.astype(np.uint8)).tobytes()


def _parity(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    out = np.zeros_like(x)
    while np.any(x):
        out ^= x & 1
        x >>= 1
    return out


# state = the last K-1 input bits (newest in the high bit); output for input b
# from state s uses the register (b << (K-1)) | s
_STATES = 1 << (_K - 1)
_REG = np.array([[(b << (_K - 1)) | s for s in range(_STATES)] for b in (0, 1)])  # (2, states)
_OUT = np.stack([_parity(_REG & p) for p in _POLYS], axis=-1)  # (2, states, rate) in {0,1}
_NEXT = _REG >> 1  # (2, states)


def encode_bits(info: np.ndarray) -> np.ndarray:
    """Coded bits (0/1) of ``info`` (0/1), terminated with K-1 zeros."""
    bits = np.concatenate([info.astype(np.int64), np.zeros(_K - 1, np.int64)])
    state = 0
    out = np.empty((bits.size, _RATE), np.int64)
    for i, b in enumerate(bits):
        out[i] = _OUT[b, state]
        state = int(_NEXT[b, state])
    return out.reshape(-1)


def viterbi_decode(soft: np.ndarray) -> np.ndarray:
    """Most likely info bits for soft values ``soft`` (positive = bit 0)."""
    n = soft.size // _RATE
    llr = soft.reshape(n, _RATE)
    sign = 1.0 - 2.0 * _OUT  # (2, states, rate): +1 for bit 0
    metric = np.full(_STATES, -np.inf)
    metric[0] = 0.0
    back = np.empty((n, _STATES), np.int64)
    # predecessor structure: next state t is reached from states s with _NEXT[b, s] == t
    nxt = _NEXT.reshape(-1)
    src = np.tile(np.arange(_STATES), 2)
    inp = np.repeat([0, 1], _STATES)
    order = np.argsort(nxt, kind="stable")  # each next state has exactly two predecessors
    src2, inp2 = src[order].reshape(_STATES, 2), inp[order].reshape(_STATES, 2)
    for i in range(n):
        branch = (sign * llr[i]).sum(axis=-1)  # (2, states)
        cand = metric[src2] + branch[inp2, src2]  # (states, 2)
        pick = np.argmax(cand, axis=1)
        metric = cand[np.arange(_STATES), pick]
        back[i] = pick
    state = 0  # terminated
    bits = np.empty(n, np.int64)
    for i in range(n - 1, -1, -1):
        p = back[i, state]
        bits[i] = inp2[state, p]
        state = int(src2[state, p])
    return bits[: n - (_K - 1)]


def viterbi_list_decode(soft: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` most likely info-bit sequences for ``soft`` (positive = bit
    0), best first, as a ``(size, info bits)`` array: a parallel list Viterbi
    keeping the ``size`` best paths into every state. Row 0 is
    :func:`viterbi_decode`'s answer. A keyed check over the list (each row one
    check attempt) recovers frames whose best path is wrong but whose right
    path is close behind it."""
    if size < 1:
        raise ValueError(f"list size must be >= 1, got {size}")
    n = soft.size // _RATE
    llr = soft.reshape(n, _RATE)
    sign = 1.0 - 2.0 * _OUT
    nxt = _NEXT.reshape(-1)
    src = np.tile(np.arange(_STATES), 2)
    inp = np.repeat([0, 1], _STATES)
    order = np.argsort(nxt, kind="stable")
    src2, inp2 = src[order].reshape(_STATES, 2), inp[order].reshape(_STATES, 2)
    metric = np.full((_STATES, size), -np.inf)
    metric[0, 0] = 0.0
    back_pred = np.empty((n, _STATES, size), np.int64)  # which of the 2 predecessors
    back_rank = np.empty((n, _STATES, size), np.int64)  # which of its ranked paths
    for i in range(n):
        branch = (sign * llr[i]).sum(axis=-1)  # (2, states)
        cand = metric[src2] + branch[inp2, src2][..., None]  # (states, 2, size)
        flat = cand.reshape(_STATES, 2 * size)
        pick = np.argsort(-flat, axis=1, kind="stable")[:, :size]
        metric = np.take_along_axis(flat, pick, axis=1)
        back_pred[i], back_rank[i] = np.divmod(pick, size)
    out = np.empty((size, n), np.int64)
    for r in range(size):
        state, rank = 0, r
        for i in range(n - 1, -1, -1):
            p = back_pred[i, state, rank]
            out[r, i] = inp2[state, p]
            rank = back_rank[i, state, rank]
            state = int(src2[state, p])
    keep = np.isfinite(metric[0])
    return out[keep, : n - (_K - 1)]
