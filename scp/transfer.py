"""Presentation contexts for retrieve sub-operations.

C-MOVE proposes, on its sub-association, for the SOP classes of the
matched instances (at most 128 contexts in all):

1. one context per SOP class with Explicit and Implicit VR Little Endian,
   so every instance can go uncompressed if need be;
2. then, while room remains, one context per (SOP class, stored transfer
   syntax) for each syntax that is not native little endian (JPEG, JPEG-LS,
   JPEG 2000, RLE, big endian, ...).

C-GET uses the storage contexts the requester proposed with SCP/SCU role
selection on its own association.

Each instance goes in the syntax it is in when the peer accepted it; if not,
native little endian instances go on any accepted native little endian
context (pynetdicom re-encodes Explicit <-> Implicit VR), and the others
are decoded to native Explicit VR Little Endian with dicom_wm's pixel I/O
(the decoded samples, photometric as decoded). An instance whose SOP class
no accepted context carries is a failed sub-operation.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext, build_context

from dicom_wm.errors import UnsupportedInput
from dicom_wm.pixels import read_samples, write_samples

__all__ = ["MAX_CONTEXTS", "NATIVE", "Route", "propose_contexts", "route", "to_native"]

MAX_CONTEXTS = 128
NATIVE = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def _native_le(ts: UID) -> bool:
    return not ts.is_compressed and ts.is_little_endian


def propose_contexts(items: Iterable[tuple[str, str]]) -> tuple[list[PresentationContext], set[str]]:
    """Contexts for ``(SOP Class UID, transfer syntax)`` pairs, and the SOP
    classes that did not fit in :data:`MAX_CONTEXTS`."""
    classes: dict[str, None] = {}
    extra: dict[tuple[str, str], None] = {}
    for sop_class, ts in items:
        classes.setdefault(sop_class, None)
        if not _native_le(UID(ts)):
            extra.setdefault((sop_class, ts), None)
    contexts = [build_context(c, NATIVE) for c in list(classes)[:MAX_CONTEXTS]]
    left_out = set(list(classes)[MAX_CONTEXTS:])
    for sop_class, ts in extra:
        if len(contexts) >= MAX_CONTEXTS:
            break
        if sop_class not in left_out:
            contexts.append(build_context(sop_class, [ts]))
    return contexts, left_out


class Route(enum.Enum):
    AS_IS = "as_is"  # an accepted context has its transfer syntax: its bytes go as they are
    REENCODE = "reencode"  # native little endian on a context with the other VR encoding
    NATIVE = "native"  # decode to Explicit VR Little Endian first
    NONE = "none"  # no accepted context for its SOP class


def route(accepted: Sequence[PresentationContext], sop_class: str, ts: str) -> Route:
    """How an instance of ``sop_class`` in ``ts`` can go over an association
    whose ``accepted`` contexts (where we are the storage SCU) are given."""
    syntax = UID(ts)
    ours = [cx for cx in accepted if cx.abstract_syntax == sop_class and cx.as_scu]
    offered = [UID(cx.transfer_syntax[0]) for cx in ours]
    if syntax in offered:
        return Route.AS_IS
    if any(_native_le(s) for s in offered):
        return Route.REENCODE if _native_le(syntax) else Route.NATIVE
    return Route.NONE


def to_native(ds: Dataset) -> None:
    """Re-encode ``ds`` in place as native Explicit VR Little Endian.

    Raises :class:`~dicom_wm.errors.UnsupportedInput` when it has no pixel
    data to decode or the pixel data cannot be decoded."""
    if "PixelData" not in ds:
        raise UnsupportedInput(
            f"no pixel data to decode, and the peer did not accept {UID(ds.file_meta.TransferSyntaxUID).name}"
        )
    px = read_samples(ds)
    write_samples(ds, px.samples, px)
