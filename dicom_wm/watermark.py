"""Instance-level embed / verify / restore: the library's public contract.

(Contract first; bodies land with the engine.)
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from dicom_wm.keys import KeyStore

__all__ = [
    "EmbedOptions",
    "EmbedResult",
    "VerifyStatus",
    "VerifyResult",
    "RestoreResult",
    "embed_dataset",
    "verify_dataset",
    "restore_dataset",
]


class VerifyStatus(str, enum.Enum):
    AUTHENTIC = "authentic"
    TAMPERED = "tampered"
    NOT_WATERMARKED = "not_watermarked"
    INVALID = "invalid"  # MAC mismatch that cannot be localised, or unknown key
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class EmbedOptions:
    predictor: str = "classic"  # "classic" | "learned"
    max_copies: int = 3  # payload copies per plane (at least 1 must fit)


@dataclass
class EmbedResult:
    dataset: Dataset  # the watermarked dataset (input untouched)
    record_uuid: str
    key_id: str
    payload_bits: int  # bits embedded over all planes (all copies)
    capacity_bits: int  # single-layer capacity over all planes
    psnr_db: float  # peak 2**BitsStored - 1; inf when identical
    max_abs_delta: int
    lossy_source: bool
    original_sample_sha256: str  # SHA-256 of the original samples (canonical int64 LE, (f, r, c, ch))
    predictor: str
    model_sha256: str | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


@dataclass
class VerifyResult:
    status: VerifyStatus
    record_uuid: str | None = None
    key_id: str | None = None
    tampered_tiles: list[list[int]] = field(default_factory=list)  # [frame, row0, col0, row1, col1], end-exclusive
    payload_bits: int | None = None
    capacity_bits: int | None = None
    error: str | None = None
    original_sample_sha256: str | None = None  # of the restored samples (when restorable)


@dataclass
class RestoreResult:
    dataset: Dataset  # the restored original
    verify: VerifyResult


def embed_dataset(
    ds: Dataset,
    keys: KeyStore,
    *,
    record_uuid: uuid.UUID | None = None,
    options: EmbedOptions | None = None,
) -> EmbedResult:
    """Watermark ``ds`` (not modified). Raises UnsupportedInput,
    InsufficientCapacity, SelfCheckFailed, KeyStoreError."""
    raise NotImplementedError


def verify_dataset(ds: Dataset, keys: KeyStore) -> VerifyResult:
    """Never raises for bad input: problems come back as a status + error."""
    raise NotImplementedError


def restore_dataset(ds: Dataset, keys: KeyStore, *, force: bool = False) -> RestoreResult:
    """Give back the original. Raises NotAuthentic unless the instance verifies
    (or ``force``), UnsupportedInput / NotAuthentic when nothing can be restored."""
    raise NotImplementedError
