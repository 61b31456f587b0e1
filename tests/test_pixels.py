"""Pixel I/O: read_samples / write_samples over the corpus and hand-built
datasets (every bit depth, sign, layout and byte order the contract names),
and every refusal."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from corpus import TABLE, CorpusEntry, corpus_params, image_corpus, pydicom_data_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

import dicom_wm.pixels.reader as reader_module
from dicom_wm.errors import UnsupportedInput
from dicom_wm.pixels import PixelPlanes, read_samples, sample_dtype, write_samples

IMAGE_PIXEL_KEYWORDS = (
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PlanarConfiguration",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)
# What write_samples may change (PhotometricInterpretation only as `like` says),
# and the retired group lengths pydicom's writer drops for groups > 6.
ALLOWED_TO_CHANGE = {0x7FE00010, 0x7FE00001, 0x7FE00002, 0x00280004}


@pytest.fixture(autouse=True)
def _quiet_pydicom() -> Iterator[None]:
    # pydicom warns about odd files (excess padding, JFIF markers ...); the
    # assertions below are what matters here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds)
    buf.seek(0)
    return pydicom.dcmread(buf, force=True)  # hand-built datasets have no preamble


def load(name: str) -> Dataset:
    entry = next(e for e in image_corpus() if e.name == name)
    return entry.load()


# --- the corpus -----------------------------------------------------------------


def test_table_lists_every_corpus_file_and_nothing_else() -> None:
    found = {e.name for e in image_corpus()}
    unlisted = sorted(e.name for e in image_corpus() if e.expected == "unlisted")
    assert not unlisted, f"add these files to tests/corpus.py TABLE: {unlisted}"
    sources = ("pydicom/", "pydicom-data/") if pydicom_data_files() else ("pydicom/",)
    missing = sorted(n for n in TABLE if n.startswith(sources) and n not in found)
    assert not missing, f"TABLE names files that are not there: {missing}"
    assert pydicom_data_files() is not None, "the test extras install pydicom-data"
    assert sum(e.ok for e in image_corpus()) >= 140


def _word_vrs_swapped(value: bytes, vr: str) -> bytes:
    size = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}[vr]
    return np.frombuffer(value, dtype=f">u{size}").astype(f"<u{size}").tobytes()


def assert_elements_equal(
    before: Dataset, after: Dataset, *, big_endian: bool, skip: set[int]
) -> None:
    tags = (set(before.keys()) | set(after.keys())) - skip
    tags = {t for t in tags if not (t.element == 0 and t.group > 6)}  # dropped by pydicom
    for tag in sorted(tags):
        assert tag in before and tag in after, f"{tag} only in {'after' if tag in after else 'before'}"
        a, b = before[tag], after[tag]
        if a.VR == "SQ":
            assert len(a.value) == len(b.value), tag
            for ia, ib in zip(a.value, b.value, strict=True):
                assert_elements_equal(ia, ib, big_endian=big_endian, skip=set())
        elif big_endian and a.VR in ("OW", "OL", "OF", "OD", "OV") and a.value:
            assert _word_vrs_swapped(a.value, a.VR) == b.value, tag
        else:
            assert a.value == b.value, f"{tag} {a.value!r} != {b.value!r}"


@pytest.mark.parametrize("entry", corpus_params(ok_only=True))
def test_corpus_roundtrip_is_sample_and_element_exact(entry: CorpusEntry) -> None:
    ds = entry.load()
    source_ts = ds.file_meta.TransferSyntaxUID
    pixel_bytes = ds.PixelData

    planes = read_samples(ds)
    assert ds.PixelData is pixel_bytes, "read_samples must not modify the dataset"
    s = planes.samples
    assert s.dtype == sample_dtype(ds.BitsStored, ds.PixelRepresentation == 1) and s.ndim == 4
    assert s.shape == (
        int(ds.get("NumberOfFrames") or 1),
        ds.Rows,
        ds.Columns,
        ds.SamplesPerPixel,
    )
    assert (planes.bits_allocated, planes.bits_stored, planes.signed) == (
        ds.BitsAllocated,
        ds.BitsStored,
        ds.PixelRepresentation == 1,
    )
    assert planes.lo <= int(s.min()) and int(s.max()) <= planes.hi
    assert planes.source_transfer_syntax == source_ts

    write_samples(ds, s.copy(), planes)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(read_samples(ds).samples, s)

    again = roundtrip(ds)
    replanes = read_samples(again)
    assert replanes.samples.dtype == s.dtype
    assert np.array_equal(replanes.samples, s), "samples changed in the round trip"
    assert replanes.photometric == planes.photometric
    assert replanes.lossy_source == (str(ds.get("LossyImageCompression", "")).strip() == "01")

    original = entry.load()
    assert again.PhotometricInterpretation == planes.photometric
    if planes.photometric != original.PhotometricInterpretation:
        assert (original.PhotometricInterpretation, planes.photometric) in {
            ("YBR_FULL_422", "YBR_FULL"),
            ("YBR_ICT", "RGB"),
            ("YBR_RCT", "RGB"),
        }
    for keyword in IMAGE_PIXEL_KEYWORDS:
        assert again.get(keyword) == original.get(keyword), keyword
    assert_elements_equal(
        original,
        again,
        big_endian=not source_ts.is_little_endian,
        skip=ALLOWED_TO_CHANGE,
    )
    meta_skip = {0x00020000, 0x00020010}  # group length, transfer syntax
    assert_elements_equal(original.file_meta, again.file_meta, big_endian=False, skip=meta_skip)


@pytest.mark.parametrize(
    "entry", [p for p in corpus_params() if not p.values[0].ok]  # type: ignore[union-attr]
)
def test_corpus_refusals_say_why(entry: CorpusEntry) -> None:
    ds = entry.load()
    with pytest.raises(UnsupportedInput) as raised:
        read_samples(ds)
    message = str(raised.value)
    assert entry.reason and entry.reason in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "lossy", "photometric"),
    [
        ("pydicom/SC_rgb_dcmtk_+eb+cy+s2.dcm", True, "YBR_FULL"),  # JPEG YBR_FULL_422
        ("pydicom/SC_ybr_full_422_uncompressed.dcm", True, "YBR_FULL"),  # native 422, LIC 01
        ("pydicom/JPEGLSNearLossless_16.dcm", True, "MONOCHROME2"),
        ("pydicom/JPGExtended.dcm", True, "MONOCHROME2"),
        ("pydicom-data/US1_J2KI.dcm", True, "RGB"),  # J2K lossy, YBR_ICT
        ("pydicom-data/US1_J2KR.dcm", False, "RGB"),  # J2K lossless, YBR_RCT
        ("pydicom/MR_small_jpeg_ls_lossless.dcm", False, "MONOCHROME2"),
        ("pydicom/SC_rgb_jpeg_gdcm.dcm", False, "RGB"),  # JPEG lossless SV1
        ("pydicom/MR_small_RLE.dcm", False, "MONOCHROME2"),
        ("pydicom/image_dfl.dcm", False, "MONOCHROME2"),  # deflated
    ],
)
def test_lossy_flag_and_decoded_photometric(name: str, lossy: bool, photometric: str) -> None:
    planes = read_samples(load(name))
    assert planes.lossy_source is lossy
    assert planes.photometric == photometric


def test_ycbcr_is_not_converted_to_rgb() -> None:
    # Same picture: the JPEG YBR_FULL file decodes to YCbCr, not to the RGB
    # of the uncompressed file (pydicom's default would convert it).
    ybr = read_samples(load("pydicom/SC_rgb_jpeg_dcmtk.dcm")).samples
    rgb = read_samples(load("pydicom-data/SC_rgb.dcm")).samples
    assert np.abs(ybr - rgb).mean() > 50


def test_codecs_agree_with_uncompressed_twins() -> None:
    for compressed, native in [
        ("pydicom/MR_small_RLE.dcm", "pydicom/MR_small.dcm"),
        ("pydicom/MR_small_jp2klossless.dcm", "pydicom/MR_small.dcm"),
        ("pydicom/MR_small_jpeg_ls_lossless.dcm", "pydicom/MR_small.dcm"),
        ("pydicom/MR_small_bigendian.dcm", "pydicom/MR_small.dcm"),
        ("pydicom-data/emri_small_jpeg_2k_lossless.dcm", "pydicom-data/emri_small.dcm"),
        ("pydicom-data/RG3_J2KR.dcm", "pydicom-data/RG3_UNCR.dcm"),
        ("pydicom-data/US1_J2KR.dcm", "pydicom-data/US1_UNCR.dcm"),
        ("pydicom-data/color-pl.dcm", "pydicom-data/color-px.dcm"),  # planar 1 vs 0
    ]:
        a, b = read_samples(load(compressed)).samples, read_samples(load(native)).samples
        assert np.array_equal(a, b), (compressed, native)


# --- hand-built datasets ------------------------------------------------------


def make_ds(
    stored: np.ndarray,
    *,
    bits_allocated: int,
    bits_stored: int,
    signed: bool,
    photometric: str = "MONOCHROME2",
    planar: int = 0,
    junk_high_bits: int | None = None,
    big_endian: bool = False,
) -> Dataset:
    """A Secondary Capture dataset whose native pixel data holds `stored`
    ((frames, rows, cols, channels), values in the Bits Stored range). The
    bits above Bits Stored hold the sign extension (zero when unsigned), or
    `junk_high_bits` where given."""
    frames, rows, cols, spp = stored.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian if big_endian else ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "Test^Pixels"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, spp
    ds.PhotometricInterpretation = photometric
    if spp > 1:
        ds.PlanarConfiguration = planar
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    container = np.dtype(f"{'>' if big_endian else '<'}u{bits_allocated // 8}")
    if junk_high_bits is None:
        raw = stored.astype(np.int64) & ((1 << bits_allocated) - 1)  # two's complement
    else:
        raw = (stored.astype(np.int64) & ((1 << bits_stored) - 1)) | (junk_high_bits << bits_stored)
    if spp > 1 and planar == 1:
        raw = raw.transpose(0, 3, 1, 2)
    data = np.ascontiguousarray(raw).astype(container).tobytes()
    ds.PixelData = data + b"\x00" * (len(data) % 2)
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
    return ds


def random_stored(shape: tuple[int, ...], bits_stored: int, signed: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo = -(1 << (bits_stored - 1)) if signed else 0
    hi = (1 << (bits_stored - 1)) - 1 if signed else (1 << bits_stored) - 1
    arr = rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64)
    flat = arr.reshape(-1)
    flat[:2] = (lo, hi)  # always include both ends of the range
    return arr


CASES = {
    # name: (shape, bits_allocated, bits_stored, signed, photometric, planar, junk)
    "u8": ((1, 5, 7, 1), 8, 8, False, "MONOCHROME2", 0, None),
    "s8": ((1, 4, 4, 1), 8, 8, True, "MONOCHROME2", 0, None),
    "u16_bs16": ((1, 8, 6, 1), 16, 16, False, "MONOCHROME2", 0, None),
    "s16_bs16": ((1, 8, 6, 1), 16, 16, True, "MONOCHROME2", 0, None),
    "s12_in_16": ((1, 8, 8, 1), 16, 12, True, "MONOCHROME2", 0, None),
    "s12_in_16_not_sign_extended": ((1, 8, 8, 1), 16, 12, True, "MONOCHROME2", 0, 0b0000),
    "u12_in_16_overlay_bits": ((1, 8, 8, 1), 16, 12, False, "MONOCHROME2", 0, 0b1010),
    "u10_hb9": ((1, 6, 10, 1), 16, 10, False, "MONOCHROME1", 0, None),
    "u7_in_8_junk": ((1, 6, 10, 1), 8, 7, False, "MONOCHROME2", 0, 1),
    "u32": ((1, 4, 5, 1), 32, 32, False, "MONOCHROME2", 0, None),
    "s32": ((1, 4, 5, 1), 32, 32, True, "MONOCHROME2", 0, None),
    "s24_in_32": ((1, 4, 5, 1), 32, 24, True, "MONOCHROME2", 0, None),
    "rgb_planar0": ((1, 3, 5, 3), 8, 8, False, "RGB", 0, None),
    "rgb_planar1": ((1, 3, 5, 3), 8, 8, False, "RGB", 1, None),
    "rgb16_planar1_multiframe": ((3, 4, 6, 3), 16, 16, False, "RGB", 1, None),
    "ybr_full": ((1, 4, 6, 3), 8, 8, False, "YBR_FULL", 0, None),
    "mono_multiframe": ((4, 5, 3, 1), 16, 12, True, "MONOCHROME2", 0, None),
    "odd_length": ((1, 3, 3, 1), 8, 8, False, "MONOCHROME2", 0, None),
}


@pytest.mark.parametrize("big_endian", [False, True], ids=["LE", "BE"])
@pytest.mark.parametrize("case", list(CASES))
def test_hand_built_roundtrip(case: str, big_endian: bool) -> None:
    shape, ba, bs, signed, photometric, planar, junk = CASES[case]
    stored = random_stored(shape, bs, signed, seed=len(case))
    ds = make_ds(
        stored,
        bits_allocated=ba,
        bits_stored=bs,
        signed=signed,
        photometric=photometric,
        planar=planar,
        junk_high_bits=junk,
        big_endian=big_endian,
    )
    ds = roundtrip(ds)  # as read from a file, in its own byte order
    original_bytes = ds.PixelData

    planes = read_samples(ds)
    assert planes.samples.dtype == (np.int32 if bs <= 16 else np.int64) and planes.samples.shape == shape
    assert np.array_equal(planes.samples, stored)
    assert (planes.lo, planes.hi) == (
        (-(1 << (bs - 1)), (1 << (bs - 1)) - 1) if signed else (0, (1 << bs) - 1)
    )
    assert planes.photometric == photometric and not planes.lossy_source

    write_samples(ds, planes.samples, planes)
    again = roundtrip(ds)
    assert again.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(read_samples(again).samples, stored)
    for keyword in (*IMAGE_PIXEL_KEYWORDS, "PhotometricInterpretation", "PatientName"):
        assert again.get(keyword) == ds.get(keyword), keyword
    if not big_endian and junk is None:
        # nothing to normalise: the stored bytes come back unchanged
        assert again.PixelData == original_bytes


def test_bits_above_bits_stored_are_normalised() -> None:
    # 12-bit signed stored without sign extension, and overlay bits above 12:
    # the samples are what Bits Stored says; the unused bits are rewritten.
    stored = np.array([[-2048, -1, 0, 2047]]).reshape(1, 1, 4, 1)
    ds = make_ds(stored, bits_allocated=16, bits_stored=12, signed=True, junk_high_bits=0)
    assert np.frombuffer(ds.PixelData, "<u2").tolist() == [0x800, 0xFFF, 0, 0x7FF]
    planes = read_samples(ds)
    assert planes.samples.ravel().tolist() == [-2048, -1, 0, 2047]
    write_samples(ds, planes.samples, planes)
    assert np.frombuffer(ds.PixelData, "<i2").tolist() == [-2048, -1, 0, 2047]

    ds = make_ds(stored + 2048, bits_allocated=16, bits_stored=12, signed=False, junk_high_bits=0xF)
    assert read_samples(ds).samples.ravel().tolist() == [0, 2047, 2048, 4095]


def test_planar_configuration_1_is_read_and_written_planar() -> None:
    stored = np.zeros((2, 2, 3, 3), dtype=np.int64)
    stored[..., 0], stored[..., 1], stored[..., 2] = 10, 20, 30
    stored[1] += 1
    ds = make_ds(stored, bits_allocated=8, bits_stored=8, signed=False, photometric="RGB", planar=1)
    planes = read_samples(ds)
    assert np.array_equal(planes.samples, stored)
    write_samples(ds, planes.samples, planes)
    assert ds.PlanarConfiguration == 1
    assert list(ds.PixelData) == [10] * 6 + [20] * 6 + [30] * 6 + [11] * 6 + [21] * 6 + [31] * 6


def test_native_ybr_full_422_comes_out_as_ybr_full() -> None:
    ds = make_ds(
        np.zeros((1, 2, 4, 1), dtype=np.int64), bits_allocated=8, bits_stored=8, signed=False
    )
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    # Y1 Y2 Cb Cr per pixel pair (PS3.3 C.7.6.3.1.2)
    ds.PixelData = bytes([1, 2, 100, 200, 3, 4, 101, 201, 5, 6, 102, 202, 7, 8, 103, 203])
    planes = read_samples(ds)
    assert planes.photometric == "YBR_FULL"
    assert planes.samples[0, 0].tolist() == [[1, 100, 200], [2, 100, 200], [3, 101, 201], [4, 101, 201]]
    write_samples(ds, planes.samples, planes)
    assert ds.PhotometricInterpretation == "YBR_FULL" and len(ds.PixelData) == 2 * 4 * 3
    assert np.array_equal(read_samples(roundtrip(ds)).samples, planes.samples)


def test_big_endian_words_of_other_elements_keep_their_numbers() -> None:
    stored = random_stored((1, 4, 4, 1), 16, False)
    ds = make_ds(stored, bits_allocated=16, bits_stored=16, signed=False, big_endian=True)
    words = np.array([1, 2, 0x1234, 0xFFFE], dtype=">u2")
    ds.add_new(0x60003000, "OW", words.tobytes())  # Overlay Data
    ds = roundtrip(ds)
    planes = read_samples(ds)
    write_samples(ds, planes.samples, planes)
    again = roundtrip(ds)
    assert np.frombuffer(again[0x60003000].value, "<u2").tolist() == words.tolist()
    assert np.array_equal(read_samples(again).samples, stored)


def test_implicit_vr_source_and_missing_file_meta() -> None:
    stored = random_stored((1, 4, 4, 1), 16, True)
    ds = make_ds(stored, bits_allocated=16, bits_stored=16, signed=True)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = roundtrip(ds)
    assert ds.original_encoding == (True, True)
    planes = read_samples(ds)
    del ds.file_meta
    write_samples(ds, planes.samples, planes)  # creates the file meta
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(read_samples(roundtrip(ds)).samples, stored)


def test_write_samples_stores_changed_samples() -> None:
    stored = random_stored((2, 6, 6, 1), 12, True)
    ds = make_ds(stored, bits_allocated=16, bits_stored=12, signed=True)
    planes = read_samples(ds)
    changed = planes.samples.copy()
    changed[changed < planes.hi] += 1
    write_samples(ds, changed, planes)
    assert np.array_equal(read_samples(roundtrip(ds)).samples, changed)


def test_write_samples_rejects_bad_samples() -> None:
    stored = random_stored((1, 4, 4, 1), 10, False)
    ds = make_ds(stored, bits_allocated=16, bits_stored=10, signed=False)
    planes = read_samples(ds)
    too_big = planes.samples.copy()
    too_big[0, 2, 3, 0] = 1024
    with pytest.raises(ValueError, match=r"sample 1024 at .* \(0, 2, 3, 0\) is outside \[0, 1023\]"):
        write_samples(ds, too_big, planes)
    negative = planes.samples.copy()
    negative[0, 0, 0, 0] = -1
    with pytest.raises(ValueError, match="outside"):
        write_samples(ds, negative, planes)
    with pytest.raises(ValueError, match="shape"):
        write_samples(ds, planes.samples[:, :2], planes)
    with pytest.raises(TypeError, match="integer"):
        write_samples(ds, planes.samples.astype(np.float64), planes)
    with pytest.raises(ValueError, match="bits_stored"):
        other = PixelPlanes(**{**planes.__dict__, "bits_stored": 12})
        write_samples(ds, planes.samples, other)
    assert ds.PixelData == make_ds(stored, bits_allocated=16, bits_stored=10, signed=False).PixelData


# --- refusals -------------------------------------------------------------------


def _mono16() -> Dataset:
    return make_ds(random_stored((1, 32, 32, 1), 16, False), bits_allocated=16, bits_stored=16, signed=False)


def _refusal(ds: Dataset) -> str:
    with pytest.raises(UnsupportedInput) as raised:
        read_samples(ds)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_refuses_missing_pixel_data() -> None:
    ds = _mono16()
    del ds.PixelData
    assert _refusal(ds) == "no Pixel Data element"


@pytest.mark.parametrize(
    ("keyword", "tag", "vr"),
    [("FloatPixelData", "(7FE0,0008)", "OF"), ("DoubleFloatPixelData", "(7FE0,0009)", "OD")],
)
def test_refuses_float_pixel_data(keyword: str, tag: str, vr: str) -> None:
    ds = _mono16()
    del ds.PixelData
    ds.BitsAllocated = 32 if vr == "OF" else 64
    setattr(ds, keyword, b"\x00" * (32 * 32 * ds.BitsAllocated // 8))
    message = _refusal(ds)
    assert "float pixel data" in message and tag in message


def test_refuses_one_bit_pixel_data() -> None:
    ds = _mono16()
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    assert _refusal(ds) == "1-bit pixel data (BitsAllocated 1) is not supported"


def test_refuses_truncated_pixel_data() -> None:
    ds = _mono16()
    ds.PixelData = ds.PixelData[:1000]
    assert _refusal(ds) == (
        "pixel data is 1000 bytes but Rows x Columns x SamplesPerPixel x Frames x "
        "BitsAllocated/8 = 32 x 32 x 1 x 1 x 2 needs 2048"
    )


def test_refuses_more_frames_than_the_pixel_data_holds() -> None:
    ds = _mono16()
    ds.NumberOfFrames = 2
    assert "needs 4096" in _refusal(ds)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"BitsAllocated": 8, "BitsStored": 12}, "(0028,0100) Bits Allocated 8 is not consistent with Bits Stored 12"),
        ({"BitsAllocated": 64, "BitsStored": 64}, "(0028,0100) Bits Allocated 64 is not supported"),
        ({"HighBit": 15, "BitsStored": 12}, "(0028,0102) High Bit 15 is not consistent with Bits Stored 12"),
        ({"PixelRepresentation": 2}, "(0028,0103) Pixel Representation 2 is not 0 or 1"),
        ({"SamplesPerPixel": 3}, "(0028,0002) Samples per Pixel 3 is not consistent with"),
        ({"PhotometricInterpretation": "CMYK"}, "Photometric Interpretation CMYK is not supported"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "an index ±1 can be a large colour change"),
        ({"Rows": None}, "(0028,0010) Rows is missing"),
    ],
)
def test_refuses_inconsistent_headers(change: dict[str, object], expected: str) -> None:
    ds = _mono16()
    for keyword, value in change.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    assert expected in _refusal(ds)


@pytest.mark.parametrize(
    ("uid", "expected"),
    [
        ("1.2.3", "transfer syntax 1.2.3 is not supported"),
        ("1.2.840.10008.1.2.4.100", "transfer syntax 1.2.840.10008.1.2.4.100 (MPEG2"),
    ],
)
def test_refuses_unknown_transfer_syntax(uid: str, expected: str) -> None:
    ds = _mono16()
    ds.file_meta.TransferSyntaxUID = uid
    assert expected in _refusal(ds)


def test_names_the_missing_codec_package(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unavailable:
        is_available = False

    monkeypatch.setattr(reader_module, "get_decoder", lambda uid: Unavailable())
    ds = load("pydicom/MR_small_jp2klossless.dcm")
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert _refusal(ds) == f"needs pylibjpeg-openjpeg for {JPEG2000Lossless.name}"


def test_refuses_samples_outside_bits_stored_after_decoding() -> None:
    # A JPEG 2000 codestream of precision 16 under a header that says 10 bits.
    ds = load("pydicom/MR_small_jp2klossless.dcm")
    ds.BitsStored, ds.HighBit = 10, 9
    message = _refusal(ds)
    assert "outside the (0028,0101) Bits Stored 10 range [-512, 511]" in message


def test_palette_color_is_refused_with_the_policy_reason() -> None:
    message = _refusal(load("pydicom/examples_palette.dcm"))
    assert message.startswith("PALETTE COLOR is not watermarked: an index ±1 can be a large colour change")

