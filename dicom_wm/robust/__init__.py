"""The robust leak-tracing layer: a keyed, periodic spread-spectrum pattern
carrying a 64-bit message (record + recipient) that survives export,
compression, noise, filtering, cropping, resizing and small rotations, and
that the reversible payload can undo exactly. docs/robust.md describes it.
"""

from dicom_wm.robust.detect import MAX_DECODES, decode_robust
from dicom_wm.robust.mark import RobustMark, embed_robust, undo_robust
from dicom_wm.robust.message import MESSAGE_BITS, message_for, parse_message, recipient_tag, record_prefix
from dicom_wm.robust.metrics import robust_distortion

__all__ = [
    "MAX_DECODES",
    "MESSAGE_BITS",
    "RobustMark",
    "decode_robust",
    "embed_robust",
    "message_for",
    "parse_message",
    "recipient_tag",
    "record_prefix",
    "robust_distortion",
    "undo_robust",
]
