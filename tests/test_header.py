"""Private block + Contributing Equipment: apply, read back, remove exactly."""

from __future__ import annotations

import copy
import io
import struct
import uuid

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_wm.errors import UnsupportedInput
from dicom_wm.header import (
    CONTRIBUTION_DESCRIPTION,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    WatermarkHeader,
    apply_watermark_header,
    changed_elements,
    read_watermark_header,
    remove_watermark_header,
)

CE = Tag(0x0018, 0xA001)


def _info(ds: Dataset, **kw: object) -> WatermarkHeader:
    fields = dict(
        format_version=1,
        key_id="k0123abcd",
        record_uuid=str(uuid.uuid4()),
        predictor="classic",
        model_sha256=None,
        lossy_source=False,
        original_transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
    )
    fields.update(kw)
    return WatermarkHeader(**fields)  # type: ignore[arg-type]


def _element_diff(a: Dataset, b: Dataset) -> list[str]:
    out = [f"{e.tag} changed or missing" for e in a if e.tag not in b or b[e.tag] != e]
    out += [f"{t} added" for t in b.keys() if t not in a]
    return out


def _roundtrip(ds: Dataset, ts: str) -> Dataset:
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def _with_equipment(name: str) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file(name))
    item = Dataset()
    item.Manufacturer = "ACME Anonymiser"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "109104", "DCM", "De-identifying Equipment"
    item.PurposeOfReferenceCodeSequence = Sequence([code])
    ds.ContributingEquipmentSequence = Sequence([item])
    return ds


def _embed_like(ds: Dataset, info: WatermarkHeader) -> Dataset:
    """What an embed does to the header: change a few elements, add one,
    delete one, then apply the header with changed_elements()."""
    out = copy.deepcopy(ds)
    out.PhotometricInterpretation = "MONOCHROME1" if out.PhotometricInterpretation != "MONOCHROME1" else "MONOCHROME2"
    out.LossyImageCompression = "00"  # added (none of the corpus files has it)
    if "ImageType" in out:
        del out.ImageType
    original, added = changed_elements(ds, out)
    apply_watermark_header(out, info, original, added_tags=added)
    return out


CORPUS = [
    pytest.param(lambda: pydicom.dcmread(get_testdata_file("CT_small.dcm")), id="CT_small"),
    pytest.param(lambda: pydicom.dcmread(get_testdata_file("MR_small.dcm")), id="MR_small"),
    pytest.param(lambda: _with_equipment("CT_small.dcm"), id="CT_small+equipment"),
]


@pytest.mark.parametrize("load", CORPUS)
@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_apply_write_read_remove_is_element_exact(load, ts):
    original = load()
    assert "LossyImageCompression" not in original
    info = _info(original)
    marked = _embed_like(original, info)

    reread = _roundtrip(marked, ts)
    assert read_watermark_header(reread) == info
    items = reread.ContributingEquipmentSequence
    ours = items[-1]
    assert ours.Manufacturer == "dicom-wm"
    assert ours.ContributionDescription == CONTRIBUTION_DESCRIPTION
    assert ours.ContributionDateTime
    purpose = ours.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "109103",
        "DCM",
        "Modifying Equipment",
    )
    assert len(items) == len(original.get("ContributingEquipmentSequence", [])) + 1

    remove_watermark_header(reread)
    assert _element_diff(original, reread) == []
    assert read_watermark_header(reread) is None


@pytest.mark.parametrize("load", CORPUS)
def test_remove_in_memory_restores_original(load):
    original = load()
    marked = _embed_like(original, _info(original, model_sha256="ab" * 32, predictor="learned", lossy_source=True))
    assert read_watermark_header(marked).model_sha256 == "ab" * 32
    assert read_watermark_header(marked).lossy_source is True
    remove_watermark_header(marked)
    assert _element_diff(original, marked) == []
    assert marked == original


def test_empty_original_elements_and_no_added_tags():
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds = copy.deepcopy(original)
    apply_watermark_header(ds, _info(ds), Dataset())
    assert Tag(PRIVATE_GROUP, 0x1009) not in ds  # no added-elements list
    remove_watermark_header(ds)
    assert _element_diff(original, ds) == []


def test_non_ascii_original_values_survive():
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    original.SpecificCharacterSet = "ISO_IR 100"
    original.PatientName = "Müller^Jürgen"
    original = _roundtrip(original, ExplicitVRLittleEndian)
    changed = copy.deepcopy(original)
    changed.PatientName = "Anon"
    old, added = changed_elements(original, changed)
    apply_watermark_header(changed, _info(original), old, added_tags=added)
    reread = _roundtrip(changed, ImplicitVRLittleEndian)
    remove_watermark_header(reread)
    assert reread.PatientName == "Müller^Jürgen"
    assert _element_diff(original, reread) == []


def test_block_uses_next_free_slot_when_group_is_taken():
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    original.private_block(PRIVATE_GROUP, "OTHER VENDOR", create=True).add_new(0x01, "LO", "theirs")
    original = _roundtrip(original, ImplicitVRLittleEndian)  # their element now reads as UN
    ds = copy.deepcopy(original)
    apply_watermark_header(ds, _info(ds), Dataset())
    assert ds[PRIVATE_GROUP, 0x0011].value == PRIVATE_CREATOR
    reread = _roundtrip(ds, ImplicitVRLittleEndian)
    assert read_watermark_header(reread) is not None
    remove_watermark_header(reread)
    assert reread[PRIVATE_GROUP, 0x1001].value == b"theirs"
    assert _element_diff(original, reread) == []


def test_no_block_reads_none_and_remove_refuses():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert read_watermark_header(ds) is None
    with pytest.raises(UnsupportedInput, match="no 'DICOM-WM 1' private block"):
        remove_watermark_header(ds)


def test_apply_twice_refused():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    apply_watermark_header(ds, _info(ds), Dataset())
    before = copy.deepcopy(ds)
    with pytest.raises(UnsupportedInput, match="already carries"):
        apply_watermark_header(ds, _info(ds), Dataset())
    assert ds == before


@pytest.mark.parametrize(
    "offset, value, message",
    [
        (0x02, None, "Key ID"),
        (0x03, "not-a-uuid", "not a UUID"),
        (0x06, "MAYBE", "expected YES or NO"),
        (0x01, None, "Format Version"),
    ],
)
def test_malformed_block_is_unsupported_and_untouched(offset, value, message):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    apply_watermark_header(ds, _info(ds), Dataset())
    tag = Tag(PRIVATE_GROUP, 0x1000 | offset)
    if value is None:
        del ds[tag]
    else:
        ds[tag].value = value
    before = copy.deepcopy(ds)
    with pytest.raises(UnsupportedInput, match=message):
        read_watermark_header(ds)
    with pytest.raises(UnsupportedInput, match=message):
        remove_watermark_header(ds)
    assert ds == before


def test_block_read_as_UN_is_decoded():
    """A tool that lost our VRs (UN) must not hide the block."""
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds = copy.deepcopy(original)
    info = _info(ds)
    old = Dataset()
    old.PhotometricInterpretation = ds.PhotometricInterpretation
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.LossyImageCompression = "00"
    apply_watermark_header(ds, info, old, added_tags=[Tag(0x0028, 0x2110)])
    for offset in (0x01, 0x02, 0x03, 0x09, 0x0A, 0x0B):
        tag = Tag(PRIVATE_GROUP, 0x1000 | offset)
        elem = ds[tag]
        if elem.VR == "US":
            raw = struct.pack("<H", elem.value)
        elif elem.VR == "AT":
            raw = struct.pack("<HH", elem.value.group, elem.value.element)
        else:
            raw = elem.value.encode("ascii")
            raw += b" " * (len(raw) % 2)
        ds[tag] = DataElement(tag, "UN", raw)
    assert read_watermark_header(ds) == info
    remove_watermark_header(ds)
    assert _element_diff(original, ds) == []


def test_block_holds_only_the_documented_elements():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    apply_watermark_header(ds, _info(ds), Dataset())
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    block = [e for e in ds if e.tag.group == PRIVATE_GROUP]
    assert {e.tag.element & 0xFF for e in block if e.tag.element > 0xFF} == {1, 2, 3, 4, 6, 7, 8, 10, 11}


def test_changed_elements_ignores_pixel_data():
    before = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    after = copy.deepcopy(before)
    after.PixelData = bytes(len(before.PixelData))
    after.BurnedInAnnotation = "NO"
    after.PatientName = "Anon"
    del after.ImageType
    original, added = changed_elements(before, after)
    assert [e.keyword for e in original] == ["ImageType", "PatientName"]
    assert original.PatientName == before.PatientName
    assert added == [Tag(0x0028, 0x0301)]


@pytest.mark.parametrize("attack", ["blob", "added"])
def test_original_elements_may_not_change_identifying_attributes(attack):
    """The recorded original elements are outside the MACs: an edited block
    that would rewrite (or delete) an attribute the instance MAC covers is
    refused, and with keep_identity those attributes stay as they are."""
    from dicom_wm.errors import NotAuthentic

    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    evil = copy.deepcopy(original)
    if attack == "blob":
        evil.SOPInstanceUID, evil.Rows = "1.2.3.4.5.6.7.8.9", 64
        originals, added = changed_elements(evil, original)  # "restore" evil's values
    else:
        originals, added = Dataset(), [Tag(0x0008, 0x0018)]  # "restore" by deleting SOP Instance UID
    marked = copy.deepcopy(original)
    apply_watermark_header(marked, _info(original), originals, added_tags=added)
    before = copy.deepcopy(marked)
    with pytest.raises(NotAuthentic, match="SOPInstanceUID"):
        remove_watermark_header(marked)
    assert marked == before  # untouched
    remove_watermark_header(marked, keep_identity=True)
    assert marked.SOPInstanceUID == original.SOPInstanceUID and marked.Rows == original.Rows
    assert read_watermark_header(marked) is None
