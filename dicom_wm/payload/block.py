"""The per-plane payload block (format version 1; spec: docs/format.md).

Every plane (frame x channel) carries one block, repeated ``copies`` times
back to back in its bit stream, so that a local edit that corrupts one copy
leaves another readable. A block authenticates itself with a keyed MAC, so a
reader can pick any intact copy and trust it.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "WALK_ROI",
    "WALK_ROBUST",
    "TILE",
    "PREDICTOR_CODES",
    "PlaneBlock",
    "BlockError",
    "encode_block",
    "peek_key_id",
    "decode_block",
    "bytes_to_bits",
    "bits_to_bytes",
    "find_sync",
]

FORMAT_VERSION = 1
MAGIC = b"DWM"
TILE = 64  # tile edge: tamper evidence is localised to TILE x TILE samples
BLOCK_MAC_LEN = 8
INSTANCE_MAC_LEN = 16
TILE_MAC_LENGTHS = (4, 2)
# 2 and 3: forward-adaptive (per-plane weights carried in the private header,
# dicom_wm.engine.adaptive) on the classic / learned base predictor.
PREDICTOR_CODES = {"classic-rhombus": 0, "learned": 1, "adaptive-classic-rhombus": 2, "adaptive-learned": 3}

# magic, version, frame, channel, n_frames, n_channels, lattice pass,
# passes on this plane, walk flags, copies, key id length
_HEAD = struct.Struct(">3sBIBIBBBBBB")
WALK_ROI = 0x01  # walk flag: ROI-lossless order (body positions last)
WALK_ROBUST = 0x02  # flag: the block carries a robust-layer mark (what undoes it)
_ROBUST_LEN = struct.Struct(">H")
# record uuid, instance mac, predictor code; then the model sha256 prefix
# (learned predictors only); then n_used, n_ambiguous
_BODY = struct.Struct(">16s16sB")
_MODEL = struct.Struct(">16s")
_WALK = struct.Struct(">II")
_TILES = struct.Struct(">BBII")  # tile edge, tile MAC length, first tile, tile count


class BlockError(ValueError):
    """Bytes that are not a well-formed block (or fail their MAC)."""


@dataclass(frozen=True)
class PlaneBlock:
    frame: int
    channel: int
    n_frames: int
    n_channels: int
    lattice_pass: int  # 0: A lattice (embedded first), 1: B lattice
    passes: int  # lattice passes used on this plane (1 or 2)
    walk_flags: int  # WALK_ROI when the walk put body positions last
    copies: int
    key_id: str
    record_uuid: uuid.UUID
    instance_mac: bytes  # 16 bytes
    predictor_code: int
    model_sha256_prefix: bytes  # 16 bytes, zeros for the classic predictor
    n_used: int  # walk positions consumed on this plane
    moved_flags: np.ndarray  # bool, one per ambiguous boundary sample
    tile: int
    tile_mac_len: int  # 4, or 2 where capacity is short
    first_tile: int  # tile index (raster order) of the first MAC carried here
    tile_macs: bytes  # tile_mac_len bytes per tile
    robust_mark: bytes = b""  # with WALK_ROBUST: dicom_wm.robust.RobustMark bytes of this plane

    def encoded_length(self) -> int:
        return (
            _HEAD.size
            + len(self.key_id.encode("ascii"))
            + _BODY.size
            + (_MODEL.size if self.predictor_code else 0)
            + _WALK.size
            + (len(self.moved_flags) + 7) // 8
            + (_ROBUST_LEN.size + len(self.robust_mark) if self.walk_flags & WALK_ROBUST else 0)
            + _TILES.size
            + len(self.tile_macs)
            + BLOCK_MAC_LEN
        )


def _block_mac(secret: bytes, content: bytes) -> bytes:
    return hmac.new(secret, b"dicom-wm block\0" + content, hashlib.sha256).digest()[:BLOCK_MAC_LEN]


def encode_block(block: PlaneBlock, secret: bytes) -> bytes:
    key_id = block.key_id.encode("ascii")
    if not 0 < len(key_id) < 256:
        raise ValueError(f"key id {block.key_id!r} must be 1..255 ASCII characters")
    flags = np.packbits(block.moved_flags.astype(np.uint8)).tobytes() if len(block.moved_flags) else b""
    content = (
        _HEAD.pack(
            MAGIC, FORMAT_VERSION, block.frame, block.channel, block.n_frames,
            block.n_channels, block.lattice_pass, block.passes, block.walk_flags, block.copies, len(key_id),
        )
        + key_id
        + _BODY.pack(block.record_uuid.bytes, block.instance_mac, block.predictor_code)
        + (_MODEL.pack(block.model_sha256_prefix) if block.predictor_code else b"")
        + _WALK.pack(block.n_used, len(block.moved_flags))
        + flags
        + (_ROBUST_LEN.pack(len(block.robust_mark)) + block.robust_mark if block.walk_flags & WALK_ROBUST else b"")
        + _TILES.pack(block.tile, block.tile_mac_len, block.first_tile, len(block.tile_macs) // block.tile_mac_len)
        + block.tile_macs
    )
    return content + _block_mac(secret, content)


def _parse(data: bytes) -> tuple[PlaneBlock, int]:
    """Parse without checking the MAC; returns the block and its length."""
    try:
        magic, version, frame, channel, n_frames, n_channels, lpass, passes, wflags, copies, klen = _HEAD.unpack_from(
            data, 0
        )
        if magic != MAGIC or version != FORMAT_VERSION:
            raise BlockError("no block here")
        off = _HEAD.size
        key_id = data[off : off + klen].decode("ascii")
        off += klen
        ruuid, imac, pcode = _BODY.unpack_from(data, off)
        off += _BODY.size
        msha = bytes(16)
        if pcode:
            (msha,) = _MODEL.unpack_from(data, off)
            off += _MODEL.size
        n_used, n_amb = _WALK.unpack_from(data, off)
        off += _WALK.size
        nflag_bytes = (n_amb + 7) // 8
        if off + nflag_bytes > len(data):
            raise BlockError("truncated block")
        flags = np.unpackbits(np.frombuffer(data, np.uint8, nflag_bytes, off))[:n_amb].astype(bool)
        off += nflag_bytes
        robust_mark = b""
        if wflags & WALK_ROBUST:
            (rlen,) = _ROBUST_LEN.unpack_from(data, off)
            off += _ROBUST_LEN.size
            robust_mark = data[off : off + rlen]
            off += rlen
        tile, mac_len, first_tile, n_tiles = _TILES.unpack_from(data, off)
        off += _TILES.size
        if mac_len not in TILE_MAC_LENGTHS or lpass > 1 or passes not in (1, 2):
            raise BlockError("malformed block")
        tile_macs = data[off : off + n_tiles * mac_len]
        off += n_tiles * mac_len
        if len(tile_macs) != n_tiles * mac_len or off + BLOCK_MAC_LEN > len(data):
            raise BlockError("truncated block")
    except (struct.error, UnicodeDecodeError) as exc:
        raise BlockError(f"malformed block: {exc}") from None
    block = PlaneBlock(
        frame=frame, channel=channel, n_frames=n_frames, n_channels=n_channels,
        lattice_pass=lpass, passes=passes, walk_flags=wflags, copies=copies,
        key_id=key_id, record_uuid=uuid.UUID(bytes=ruuid), instance_mac=imac,
        predictor_code=pcode, model_sha256_prefix=msha, n_used=n_used, moved_flags=flags,
        tile=tile, tile_mac_len=mac_len, first_tile=first_tile, tile_macs=tile_macs, robust_mark=robust_mark,
    )
    return block, off + BLOCK_MAC_LEN


def peek_key_id(data: bytes) -> str:
    """Key id of a well-formed block, before its MAC is checked."""
    return _parse(data)[0].key_id


def decode_block(data: bytes, secret: bytes) -> PlaneBlock:
    """Parse and authenticate a block that starts at data[0]."""
    block, length = _parse(data)
    content, mac = data[: length - BLOCK_MAC_LEN], data[length - BLOCK_MAC_LEN : length]
    if not hmac.compare_digest(mac, _block_mac(secret, content)):
        raise BlockError("block MAC mismatch")
    return block


def bytes_to_bits(data: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, np.uint8))


def bits_to_bytes(bits: np.ndarray) -> bytes:
    n = len(bits) - len(bits) % 8
    return np.packbits(bits[:n]).tobytes()


_SYNC = np.unpackbits(np.frombuffer(MAGIC + bytes([FORMAT_VERSION]), np.uint8))
_SYNC_WEIGHTS = (1 << np.arange(31, -1, -1, dtype=np.int64)).astype(np.int64)
_SYNC_VALUE = int(_SYNC.astype(np.int64) @ _SYNC_WEIGHTS)


def find_sync(bits: np.ndarray, start: int = 0, limit: int | None = None) -> np.ndarray:
    """Bit offsets (ascending, >= start) where a block's 32-bit sync word begins."""
    end = len(bits) if limit is None else min(len(bits), limit)
    if end - start < 32:
        return np.zeros(0, dtype=np.int64)
    window = np.lib.stride_tricks.sliding_window_view(bits[start:end].astype(np.int64), 32)
    return np.flatnonzero(window @ _SYNC_WEIGHTS == _SYNC_VALUE) + start
