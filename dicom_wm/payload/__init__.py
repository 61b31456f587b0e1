"""Payload format (versioned, docs/format.md) and its MACs."""

from dicom_wm.payload.block import FORMAT_VERSION, TILE, BlockError, PlaneBlock, decode_block, encode_block
from dicom_wm.payload.mac import (
    canonical_dtype,
    canonical_samples,
    identity_bytes,
    instance_mac,
    samples_sha256,
    tile_digests,
    tile_grid,
)

__all__ = [
    "FORMAT_VERSION",
    "TILE",
    "BlockError",
    "PlaneBlock",
    "decode_block",
    "encode_block",
    "canonical_dtype",
    "canonical_samples",
    "identity_bytes",
    "instance_mac",
    "samples_sha256",
    "tile_grid",
    "tile_digests",
]
