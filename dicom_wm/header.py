"""The DICOM header side of a watermark: a private block and a Contributing
Equipment item, both removed exactly by restore.

Private block, group 0x0077, creator ``"DICOM-WM 1"`` (``xx`` is the block byte
pydicom reserves, normally ``10``):

=============  ==  ======  =====================================================
Element        VR  VM      Meaning
=============  ==  ======  =====================================================
(0077,xx01)    US  1       payload format version
(0077,xx02)    LO  1       key id (never the secret)
(0077,xx03)    LO  1       record UUID (canonical 36-character form)
(0077,xx04)    LO  1       predictor name ("classic", "learned", ...)
(0077,xx05)    LO  1       SHA-256 of the learned model's weights; absent if none
(0077,xx06)    CS  1       YES if the source pixel data was lossy-compressed
(0077,xx07)    UI  1       transfer syntax the instance was received in
(0077,xx08)    OB  1       original values of elements embed changed, as an
                           Explicit VR Little Endian dataset (may be empty)
(0077,xx09)    AT  1-n     elements embed added; absent when none
(0077,xx0A)    CS  1       YES if embed created the Contributing Equipment
                           Sequence, NO if it appended to an existing one
(0077,xx0B)    US  1       index of the item embed added to that sequence
(0077,xx0C)    OB  1       adaptive predictors only: the per-plane rows
                           (flags, bias, 24 weights), int16 little endian,
                           planes x 26 in plane order (frame-major, then
                           channel); absent otherwise
=============  ==  ======  =====================================================

The block layout is versioned by the creator string: a different layout gets
a new creator ("DICOM-WM 2"), so old archives stay readable.
"""

from __future__ import annotations

import copy
import datetime as _dt
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO

from pydicom.datadict import add_private_dict_entries, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, PrivateBlock
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import correct_ambiguous_vr_element, write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from dicom_wm import __version__
from dicom_wm.errors import NotAuthentic, UnsupportedInput

__all__ = [
    "PRIVATE_GROUP",
    "PRIVATE_CREATOR",
    "MANUFACTURER",
    "CONTRIBUTION_DESCRIPTION",
    "WatermarkHeader",
    "apply_watermark_header",
    "read_watermark_header",
    "remove_watermark_header",
    "changed_elements",
]

PRIVATE_GROUP = 0x0077
PRIVATE_CREATOR = "DICOM-WM 1"
MANUFACTURER = "dicom-wm"
# ASCII on purpose: "±" is not in the default character repertoire, and an
# instance without (0008,0005) could not carry it validly.
CONTRIBUTION_DESCRIPTION = "Reversible watermark (+/-1 LSB) embedded; removable exactly"
PURPOSE_CODE = ("109103", "DCM", "Modifying Equipment")

_CONTRIBUTING_EQUIPMENT = Tag(0x0018, 0xA001)
_PIXEL_TAGS = frozenset({Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009), Tag(0x7FE0, 0x0010)})

# element offset -> (VR, VM, name)
_FORMAT_VERSION = 0x01
_KEY_ID = 0x02
_RECORD_UUID = 0x03
_PREDICTOR = 0x04
_MODEL_SHA256 = 0x05
_LOSSY_SOURCE = 0x06
_ORIGINAL_TS = 0x07
_ORIGINAL_ELEMENTS = 0x08
_ADDED_TAGS = 0x09
_CE_CREATED = 0x0A
_CE_INDEX = 0x0B
_ADAPTIVE_WEIGHTS = 0x0C
_LAYOUT: dict[int, tuple[str, str, str]] = {
    _FORMAT_VERSION: ("US", "1", "Watermark Format Version"),
    _KEY_ID: ("LO", "1", "Watermark Key ID"),
    _RECORD_UUID: ("LO", "1", "Watermark Record UUID"),
    _PREDICTOR: ("LO", "1", "Watermark Predictor"),
    _MODEL_SHA256: ("LO", "1", "Watermark Model SHA-256"),
    _LOSSY_SOURCE: ("CS", "1", "Watermark Lossy Source"),
    _ORIGINAL_TS: ("UI", "1", "Original Transfer Syntax UID"),
    _ORIGINAL_ELEMENTS: ("OB", "1", "Original Elements"),
    _ADDED_TAGS: ("AT", "1-n", "Added Elements"),
    _CE_CREATED: ("CS", "1", "Contributing Equipment Sequence Created"),
    _CE_INDEX: ("US", "1", "Contributing Equipment Item Index"),
    _ADAPTIVE_WEIGHTS: ("OB", "1", "Adaptive Predictor Weights"),
}
# So that an Implicit VR file's block is read with the right VRs.
add_private_dict_entries(
    PRIVATE_CREATOR,
    {(PRIVATE_GROUP << 16) | offset: (vr, vm, name, "") for offset, (vr, vm, name) in _LAYOUT.items()},
)


@dataclass
class WatermarkHeader:
    """What the private block says about the watermark (no secrets)."""

    format_version: int
    key_id: str
    record_uuid: str
    predictor: str
    model_sha256: str | None
    lossy_source: bool
    original_transfer_syntax: str
    adaptive_weights: bytes | None = None  # int16 LE, planes x 26 (adaptive predictors only)


def _find_block(ds: Dataset) -> PrivateBlock | None:
    try:
        return ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None


def _block_tags(ds: Dataset, block: PrivateBlock) -> list[BaseTag]:
    creator = Tag(PRIVATE_GROUP, block.block_start >> 8)
    return [creator] + [t for t in ds.keys() if t.group == PRIVATE_GROUP and (t.element >> 8) == (block.block_start >> 8)]


def _serialise_elements(ds: Dataset, original_elements: Dataset) -> bytes:
    blob = Dataset()
    # Text values are encoded with the character set they were written under:
    # the instance's, unless the originals carry their own.
    if "SpecificCharacterSet" in ds:
        blob.SpecificCharacterSet = ds.SpecificCharacterSet
    context = Dataset(dict(ds.items()))
    for elem in original_elements:
        context[elem.tag] = elem
    for elem in original_elements:
        elem = copy.deepcopy(elem)
        if " or " in elem.VR:
            elem = correct_ambiguous_vr_element(elem, context, True)
        blob[elem.tag] = elem
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, blob)
    return fp.getvalue()


def _deserialise_elements(data: bytes) -> Dataset:
    return read_dataset(BytesIO(data), is_implicit_VR=False, is_little_endian=True)


def _now_dt() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().strftime("%Y%m%d%H%M%S.%f%z")


def _equipment_item() -> Dataset:
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = PURPOSE_CODE
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = MANUFACTURER
    item.SoftwareVersions = __version__
    item.ContributionDateTime = _now_dt()
    item.ContributionDescription = CONTRIBUTION_DESCRIPTION
    item.PurposeOfReferenceCodeSequence = Sequence([purpose])
    return item


def _is_our_item(item: Dataset) -> bool:
    if item.get("Manufacturer") != MANUFACTURER or item.get("ContributionDescription") != CONTRIBUTION_DESCRIPTION:
        return False
    codes = item.get("PurposeOfReferenceCodeSequence") or []
    return any((c.get("CodeValue"), c.get("CodingSchemeDesignator")) == PURPOSE_CODE[:2] for c in codes)


def changed_elements(before: Dataset, after: Dataset) -> tuple[Dataset, list[BaseTag]]:
    """Compare two versions of an instance's top-level elements.

    Returns ``(original_elements, added_tags)`` for
    :func:`apply_watermark_header`: the ``before`` values of elements that
    differ or that ``after`` lacks, and the tags ``after`` has that ``before``
    lacks. Pixel data elements are ignored (the engine restores samples).
    Call it before :func:`apply_watermark_header` adds its own elements.
    """
    original = Dataset()
    after_raw = after._dict
    for tag, raw in list(before._dict.items()):
        if tag in _PIXEL_TAGS or after_raw.get(tag) is raw:
            # the same element object (a shallow copy shares what it did not
            # rewrite): equal without decoding either (the costly part)
            continue
        elem = before[tag]
        if tag not in after or after[tag] != elem:
            original[tag] = copy.deepcopy(elem)
    added = [t for t in after.keys() if t not in before and t not in _PIXEL_TAGS]
    return original, added


def apply_watermark_header(
    ds: Dataset,
    info: WatermarkHeader,
    original_elements: Dataset,
    *,
    added_tags: Iterable[int] = (),
) -> None:
    """Add the private block and a Contributing Equipment item to ``ds``.

    Parameters
    ----------
    ds : Dataset
        The watermarked instance, modified in place.
    info : WatermarkHeader
        What to record.
    original_elements : Dataset
        Original values of top-level elements that embedding changed or
        removed (e.g. Photometric Interpretation); may be empty. Restore puts
        them back.
    added_tags : iterable of int
        Top-level elements embedding added that the original did not have;
        restore deletes them. :func:`changed_elements` computes both.

    Raises
    ------
    UnsupportedInput
        If ``ds`` already carries a dicom-wm block, or group 0x0077 has no
        free private block.
    """
    if _find_block(ds) is not None:
        raise UnsupportedInput(f"instance already carries a {PRIVATE_CREATOR!r} private block (0077,xx10)")
    str(uuid.UUID(info.record_uuid))  # validates
    added = sorted({Tag(t) for t in added_tags})
    blob = _serialise_elements(ds, original_elements)
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    except ValueError as exc:
        raise UnsupportedInput(f"cannot reserve a private block in group (0077): {exc}") from None

    block.add_new(_FORMAT_VERSION, "US", int(info.format_version))
    block.add_new(_KEY_ID, "LO", info.key_id)
    block.add_new(_RECORD_UUID, "LO", str(uuid.UUID(info.record_uuid)))
    block.add_new(_PREDICTOR, "LO", info.predictor)
    if info.model_sha256 is not None:
        block.add_new(_MODEL_SHA256, "LO", info.model_sha256)
    block.add_new(_LOSSY_SOURCE, "CS", "YES" if info.lossy_source else "NO")
    block.add_new(_ORIGINAL_TS, "UI", info.original_transfer_syntax)
    block.add_new(_ORIGINAL_ELEMENTS, "OB", blob)
    if added:
        block.add_new(_ADDED_TAGS, "AT", added if len(added) > 1 else added[0])
    if info.adaptive_weights is not None:
        block.add_new(_ADAPTIVE_WEIGHTS, "OB", bytes(info.adaptive_weights))

    existing = ds.get(_CONTRIBUTING_EQUIPMENT)
    if existing is None:
        ds.ContributingEquipmentSequence = Sequence([_equipment_item()])
        index = 0
    else:
        index = len(existing.value)
        existing.value.append(_equipment_item())
    block.add_new(_CE_CREATED, "CS", "YES" if existing is None else "NO")
    block.add_new(_CE_INDEX, "US", index)


def _raw(ds: Dataset, block: PrivateBlock, offset: int) -> object | None:
    """The element's value in its dictionary VR, even when read as UN."""
    tag = block.get_tag(offset)
    if tag not in ds:
        return None
    elem: DataElement = ds[tag]
    vr = _LAYOUT[offset][0]
    if elem.VR != "UN" or vr == "OB":
        return elem.value
    data = elem.value or b""
    if vr == "US":
        return struct.unpack("<H", data[:2])[0] if len(data) >= 2 else None
    if vr == "AT":
        words = struct.unpack(f"<{len(data) // 2}H", data[: len(data) // 4 * 4])
        return [Tag(words[i], words[i + 1]) for i in range(0, len(words), 2)]
    return data.decode("ascii", "replace").rstrip("\x00 ")


def _require(ds: Dataset, block: PrivateBlock, offset: int) -> object:
    value = _raw(ds, block, offset)
    if value is None or value == "":
        name = _LAYOUT[offset][2]
        raise UnsupportedInput(
            f"malformed {PRIVATE_CREATOR!r} private block: {name} ({block.get_tag(offset)}) is missing or empty"
        )
    return value


def _yes_no(ds: Dataset, block: PrivateBlock, offset: int) -> bool:
    value = _require(ds, block, offset)
    if value not in ("YES", "NO"):
        raise UnsupportedInput(
            f"malformed {PRIVATE_CREATOR!r} private block: {_LAYOUT[offset][2]} "
            f"({block.get_tag(offset)}) is {value!r}, expected YES or NO"
        )
    return value == "YES"


def read_watermark_header(ds: Dataset) -> WatermarkHeader | None:
    """The block's contents, or ``None`` when ``ds`` has no dicom-wm block.

    Raises :class:`~dicom_wm.errors.UnsupportedInput` naming the element
    when a block is present but malformed.
    """
    block = _find_block(ds)
    if block is None:
        return None
    version = _require(ds, block, _FORMAT_VERSION)
    record = str(_require(ds, block, _RECORD_UUID))
    try:
        record = str(uuid.UUID(record))
    except ValueError:
        raise UnsupportedInput(
            f"malformed {PRIVATE_CREATOR!r} private block: record UUID {record!r} "
            f"({block.get_tag(_RECORD_UUID)}) is not a UUID"
        ) from None
    model = _raw(ds, block, _MODEL_SHA256)
    weights = _raw(ds, block, _ADAPTIVE_WEIGHTS)
    return WatermarkHeader(
        format_version=int(version),  # type: ignore[call-overload]
        key_id=str(_require(ds, block, _KEY_ID)),
        record_uuid=record,
        predictor=str(_require(ds, block, _PREDICTOR)),
        model_sha256=str(model) if model else None,
        lossy_source=_yes_no(ds, block, _LOSSY_SOURCE),
        original_transfer_syntax=str(_require(ds, block, _ORIGINAL_TS)),
        adaptive_weights=bytes(weights) if weights is not None else None,  # type: ignore[arg-type]
    )


# what restore writes itself (never recorded in the block: refused whatever
# its value), and what says how to read it (refused when it differs)
_SAMPLE_DATA = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData", "WaveformSequence"})
_SAMPLE_LAYOUT = frozenset({"HighBit", "PlanarConfiguration"})


def _protected_changes(ds: Dataset, restored: list[DataElement], added: list[BaseTag]) -> list[str]:
    """Identifying or sample-describing attributes that putting back
    ``restored`` and deleting ``added`` would change (values compared as the
    identity text compares them)."""
    from dicom_wm.payload.mac import IDENTITY_KEYWORDS

    protected = _SAMPLE_DATA | _SAMPLE_LAYOUT | set(IDENTITY_KEYWORDS)

    def text(value: object) -> str:
        return "" if value is None else str(value).strip()

    changed = [e.keyword for e in restored if e.keyword in protected and (
        e.keyword in _SAMPLE_DATA or text(e.value) != text(ds.get(e.keyword, "")))]
    changed += [kw for kw in map(keyword_for_tag, added) if kw in protected and kw in ds]
    return sorted(set(changed))


def remove_watermark_header(ds: Dataset, *, keep_identity: bool = False) -> None:
    """Undo :func:`apply_watermark_header` on ``ds`` in place.

    Removes the private block and the Contributing Equipment item (or the
    whole sequence when apply created it), puts back the recorded original
    elements and deletes the elements embed added.

    The recorded values are not covered by the watermark's MACs, so they may
    not change an identifying attribute (``IDENTITY_KEYWORDS``, which the
    instance MAC covers and embedding never changes) nor the pixel or
    waveform data and how it reads: that raises
    :class:`~dicom_wm.errors.NotAuthentic`, or with ``keep_identity`` those
    values are left as they are. Raises :class:`~dicom_wm.errors.UnsupportedInput`
    when ``ds`` has no dicom-wm block or the block is malformed. Either way
    ``ds`` is then unchanged.
    """
    block = _find_block(ds)
    if block is None:
        raise UnsupportedInput(f"instance has no {PRIVATE_CREATOR!r} private block to remove")
    read_watermark_header(ds)  # validates the block before anything changes
    blob = _raw(ds, block, _ORIGINAL_ELEMENTS)
    try:
        originals = _deserialise_elements(bytes(blob or b""))  # type: ignore[arg-type]
        restored = [elem for elem in originals]  # forces conversion of every value
    except Exception as exc:
        raise UnsupportedInput(
            f"malformed {PRIVATE_CREATOR!r} private block: Original Elements "
            f"({block.get_tag(_ORIGINAL_ELEMENTS)}) cannot be decoded: {exc}"
        ) from None
    added_value = _raw(ds, block, _ADDED_TAGS)
    added = [] if added_value is None else (list(added_value) if isinstance(added_value, list) else [added_value])
    changes = _protected_changes(ds, restored, added)
    if changes and not keep_identity:
        raise NotAuthentic(
            f"the {PRIVATE_CREATOR!r} private block's original elements would change {', '.join(changes)}, "
            "which the watermark authenticates or which describe its samples: the header was edited"
        )
    restored = [elem for elem in restored if elem.keyword not in changes]
    added = [tag for tag in added if keyword_for_tag(tag) not in changes]
    ce_created = _yes_no(ds, block, _CE_CREATED)
    ce_index = int(_require(ds, block, _CE_INDEX) if not ce_created else 0)  # type: ignore[call-overload]
    restore_charset = "SpecificCharacterSet" in originals and (
        ds.get("SpecificCharacterSet") != originals.SpecificCharacterSet
    )

    for tag in _block_tags(ds, block):
        if tag in ds:
            del ds[tag]

    sequence = ds.get(_CONTRIBUTING_EQUIPMENT)
    if sequence is not None:
        if ce_created:
            del ds[_CONTRIBUTING_EQUIPMENT]
        else:
            items = sequence.value
            if ce_index < len(items) and _is_our_item(items[ce_index]):
                del items[ce_index]
            else:
                ours = [i for i, item in enumerate(items) if _is_our_item(item)]
                if ours:
                    del items[ours[-1]]

    for elem in restored:
        if elem.tag == Tag(0x0008, 0x0005) and not restore_charset and elem.tag in ds:
            continue  # only the encoding context of the stored values
        ds[elem.tag] = elem
    for tag in added:
        if tag in ds:
            del ds[tag]
