"""The test corpus: every DICOM file bundled with pydicom and every file of
the ``pydicom-data`` package, with what ``read_samples`` is expected to do.

``TABLE`` is a reference table built by reading each file and checking the
result by hand (docs/pixels.md lists why each refused file is refused):

* ``"ok"``: ``read_samples`` decodes it;
* ``"unsupported:<reason>"``: ``read_samples`` raises ``UnsupportedInput``
  and ``<reason>`` is part of its message.

Use::

    from tests.corpus import image_corpus, corpus_params
    @pytest.mark.parametrize("entry", corpus_params(ok_only=True))
    def test_x(entry): ds = entry.load(); ...

Nothing here downloads: pydicom's own test files are found next to
``get_testdata_file("CT_small.dcm")`` (a bundled file) and pydicom-data's under
``data_store/data``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest

__all__ = [
    "CorpusEntry",
    "TABLE",
    "SLOW",
    "image_corpus",
    "ok_corpus",
    "corpus_ids",
    "corpus_params",
    "pydicom_test_files",
    "pydicom_data_files",
]

OK = "ok"
NO_PIXELS = "unsupported:no Pixel Data element"
PALETTE = "unsupported:PALETTE COLOR is not watermarked"
ONE_BIT = "unsupported:1-bit pixel data"
NO_BITS_ALLOCATED = "unsupported:(0028,0100) Bits Allocated is missing"

# Files in the source folders that are not DICOM (notes, JSON models, ICC
# profile, dumps, a gzip); everything else there is in the corpus.
_NOT_DICOM_SUFFIXES = {".txt", ".json", ".icc", ".dump", ".gz"}

_P = "pydicom/"
_D = "pydicom-data/"
_TINY_ALPHA = "pydicom/dicomdirtests/TINY_ALPHA/PT000000/ST000000/SE000000/IM0000"

TABLE: dict[str, str] = {
    # --- pydicom/data/test_files: images -------------------------------------
    **{
        _P + name: OK
        for name in (
            "693_J2KI.dcm",  # J2K lossy, BS 14 signed
            "CT_small.dcm",
            "ExplVR_BigEnd.dcm",  # big endian RGB, planar 1
            "GDCMJ2K_TextGBR.dcm",  # J2K lossless YBR_RCT (JP2 header) -> RGB
            "J2K_pixelrep_mismatch.dcm",  # J2K unsigned, PR 1, BS 13
            "JPEG2000.dcm",
            "JPEGLSNearLossless_08.dcm",
            "JPEGLSNearLossless_16.dcm",
            "JPGExtended.dcm",  # JPEG 12-bit
            "MR_small.dcm",
            "MR_small_RLE.dcm",
            "MR_small_bigendian.dcm",
            "MR_small_expb.dcm",
            "MR_small_implicit.dcm",
            "MR_small_jp2klossless.dcm",
            "MR_small_jpeg_ls_lossless.dcm",
            "SC_jpeg_no_color_transform.dcm",
            "SC_jpeg_no_color_transform_2.dcm",
            "SC_rgb_dcmtk_+eb+cr.dcm",
            "SC_rgb_dcmtk_+eb+cy+n1.dcm",
            "SC_rgb_dcmtk_+eb+cy+n2.dcm",
            "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG YBR_FULL_422 -> YBR_FULL
            "SC_rgb_dcmtk_+eb+cy+s2.dcm",  # JPEG YBR_FULL_422 -> YBR_FULL
            "SC_rgb_dcmtk_+eb+cy+s4.dcm",
            "SC_rgb_gdcm_KY.dcm",
            "SC_rgb_jls_lossy_line.dcm",
            "SC_rgb_jls_lossy_sample.dcm",
            "SC_rgb_jpeg.dcm",
            "SC_rgb_jpeg_app14_dcmd.dcm",
            "SC_rgb_jpeg_dcmd.dcm",
            "SC_rgb_jpeg_dcmtk.dcm",
            "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1 RGB
            "SC_rgb_jpeg_lossy_gdcm.dcm",
            "SC_rgb_rle.dcm",
            "SC_rgb_rle_16bit.dcm",
            "SC_rgb_rle_16bit_2frame.dcm",
            "SC_rgb_rle_2frame.dcm",
            "SC_rgb_rle_32bit.dcm",
            "SC_rgb_rle_32bit_2frame.dcm",
            "SC_rgb_small_odd.dcm",  # 3x3, odd-length pixel data
            "SC_rgb_small_odd_big_endian.dcm",
            "SC_rgb_small_odd_jpeg.dcm",
            "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422 -> YBR_FULL
            "examples_jpeg2k.dcm",
            "examples_overlay.dcm",
            "examples_rgb_color.dcm",
            "examples_ybr_color.dcm",  # 30 frames JPEG YBR_FULL_422
            "image_dfl.dcm",  # deflated
            "rtdose.dcm",  # 32-bit, 15 frames
            "rtdose_1frame.dcm",
            "rtdose_expb.dcm",
            "rtdose_expb_1frame.dcm",
            "rtdose_rle.dcm",
            "rtdose_rle_1frame.dcm",
        )
    },
    **{
        _P + "dicomdirtests/" + name: OK  # 16x16 MONOCHROME1/2 images of a DICOMDIR tree
        for name in (
            "77654033/CR1/6154",
            "77654033/CR2/6247",
            "77654033/CR3/6278",
            "77654033/CT2/17106",
            "77654033/CT2/17136",
            "77654033/CT2/17166",
            "77654033/CT2/17196",
            "98892001/CT2N/6293",
            "98892001/CT2N/6924",
            "98892001/CT5N/2062",
            "98892001/CT5N/2392",
            "98892001/CT5N/2693",
            "98892001/CT5N/3023",
            "98892001/CT5N/3353",
            "98892003/MR1/15820",
            "98892003/MR1/4919",
            "98892003/MR1/5641",
            "98892003/MR2/15970",
            "98892003/MR2/4950",
            "98892003/MR2/4981",
            "98892003/MR2/5011",
            "98892003/MR2/6273",
            "98892003/MR2/6605",
            "98892003/MR2/6935",
            "98892003/MR700/4467",
            "98892003/MR700/4528",
            "98892003/MR700/4558",
            "98892003/MR700/4588",
            "98892003/MR700/4618",
            "98892003/MR700/4648",
            "98892003/MR700/4678",
        )
    },
    # --- pydicom/data/test_files: refused ------------------------------------
    _P + "JPEG-lossy.dcm": (
        # libjpeg rejects the scan header (pydicom decodes it only with GDCM)
        "unsupported:cannot decode JPEG Extended (Process 2 and 4) pixel data"
    ),
    _P + "JPEG2000-embedded-sequence-delimiter.dcm": (
        # the codestream is cut by an embedded (FFFE,E0DD)
        "unsupported:cannot decode JPEG 2000 Image Compression pixel data"
    ),
    _P + "MR_truncated.dcm": "unsupported:pixel data is 8130 bytes",
    # 128 bytes after the last frame: not written back, so restore could not be exact
    _P + "MR_small_padded.dcm": "unsupported:pixel data is 8320 bytes, 128 more than",
    _P + "badVR.dcm": "unsupported:(0028,0008) Number of Frames '1A' is not a single integer",
    _P + "examples_palette.dcm": PALETTE,
    _P + "liver_1frame.dcm": ONE_BIT,
    _P + "liver_expb_1frame.dcm": ONE_BIT,
    _P + "meta_missing_tsyntax.dcm": NO_BITS_ALLOCATED,  # 2-byte Pixel Data, no Image Pixel module
    _P + "nested_priv_SQ.dcm": NO_BITS_ALLOCATED,  # same
    # not images: no Pixel Data (SR, RT plan/struct, waveform, DICOMDIR, stubs)
    **{
        _P + name: NO_PIXELS
        for name in (
            "ExplVR_BigEndNoMeta.dcm",
            "ExplVR_LitEndNoMeta.dcm",
            "UN_sequence.dcm",
            "empty_charset_LEI.dcm",
            "no_meta.dcm",
            "no_meta_group_length.dcm",
            "priv_SQ.dcm",
            "reportsi.dcm",
            "reportsi_with_empty_number_tags.dcm",
            "rtplan.dcm",
            "rtplan_truncated.dcm",
            "rtstruct.dcm",
            "test-SR.dcm",
            "waveform_ecg.dcm",
            "dicomdirtests/DICOMDIR",
            "dicomdirtests/DICOMDIR-bigEnd",
            "dicomdirtests/DICOMDIR-empty.dcm",
            "dicomdirtests/DICOMDIR-implicit",
            "dicomdirtests/DICOMDIR-nooffset",
            "dicomdirtests/DICOMDIR-nopatient",
            "dicomdirtests/DICOMDIR-reordered",
            "dicomdirtests/TINY_ALPHA/DICOMDIR",
        )
    },
    # TINY_ALPHA's IM000000 .. IM00001D are header-only stubs
    **{_TINY_ALPHA + f"{i:02d}": NO_PIXELS for i in range(10)},
    **{_TINY_ALPHA + f"0{c}": NO_PIXELS for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
    **{_TINY_ALPHA + f"{i}": NO_PIXELS for i in range(10, 20)},
    **{_TINY_ALPHA + f"1{c}": NO_PIXELS for c in "ABCD"},
    # --- pydicom-data ----------------------------------------------------------
    **{
        _D + name: OK
        for name in (
            "693_J2KR.dcm",
            "693_UNCI.dcm",
            "693_UNCR.dcm",  # BS 14 signed in 16
            "JPEG-LL.dcm",
            "JPEG2000_UNC.dcm",
            "JPGLosslessP14SV1_1s_1f_8b.dcm",
            "MR-SIEMENS-DICOM-WithOverlays.dcm",
            "MR2_J2KI.dcm",
            "MR2_J2KR.dcm",
            "MR2_UNCI.dcm",
            "MR2_UNCR.dcm",
            "RG1_J2KI.dcm",
            "RG1_J2KR.dcm",
            "RG1_UNCI.dcm",
            "RG1_UNCR.dcm",  # MONOCHROME1, BS 15
            "RG3_J2KI.dcm",
            "RG3_J2KR.dcm",
            "RG3_UNCI.dcm",
            "RG3_UNCR.dcm",  # BS 10, HB 9
            "SC_rgb.dcm",
            "SC_rgb_16bit.dcm",
            "SC_rgb_16bit_2frame.dcm",
            "SC_rgb_2frame.dcm",
            "SC_rgb_32bit.dcm",
            "SC_rgb_32bit_2frame.dcm",
            "SC_rgb_dcmtk_ebcr_dcmd.dcm",
            "SC_rgb_dcmtk_ebcyn1_dcmd.dcm",
            "SC_rgb_dcmtk_ebcyn2_dcmd.dcm",
            "SC_rgb_dcmtk_ebcynp_dcmd.dcm",
            "SC_rgb_dcmtk_ebcys2_dcmd.dcm",
            "SC_rgb_dcmtk_ebcys4_dcmd.dcm",
            "SC_rgb_expb.dcm",
            "SC_rgb_expb_16bit.dcm",
            "SC_rgb_expb_16bit_2frame.dcm",
            "SC_rgb_expb_2frame.dcm",
            "SC_rgb_expb_32bit.dcm",
            "SC_rgb_expb_32bit_2frame.dcm",
            "SC_rgb_gdcm2k_uncompressed.dcm",
            "SC_ybr_full_uncompressed.dcm",
            "US1_J2KI.dcm",  # J2K lossy YBR_ICT -> RGB
            "US1_J2KR.dcm",  # J2K lossless YBR_RCT -> RGB
            "US1_UNCI.dcm",
            "US1_UNCR.dcm",
            "bad_sequence.dcm",
            "color-pl.dcm",  # planar configuration 1
            "color-px.dcm",
            "color3d_jpeg_baseline.dcm",  # 120 frames 480x640 RGB (see SLOW)
            "eCT_Supplemental.dcm",
            "emri_small.dcm",
            "emri_small_RLE.dcm",
            "emri_small_big_endian.dcm",
            "emri_small_jpeg_2k_lossless.dcm",
            "emri_small_jpeg_ls_lossless.dcm",
            "explicit_VR-UN.dcm",
            "mlut_18.dcm",  # BS 12 signed
            "vlut_04.dcm",
        )
    },
    **{
        _D + name: PALETTE
        for name in (
            "OBXXXX1A.dcm",
            "OBXXXX1A_2frame.dcm",
            "OBXXXX1A_expb.dcm",
            "OBXXXX1A_expb_2frame.dcm",
            "OBXXXX1A_rle.dcm",
            "OBXXXX1A_rle_2frame.dcm",
            "OT-PAL-8-face.dcm",
            "gdcm-US-ALOKA-16.dcm",
            "gdcm-US-ALOKA-16_big.dcm",
        )
    },
    _D + "liver.dcm": ONE_BIT,
    _D + "liver_expb.dcm": ONE_BIT,
    # cut short inside the pixel data: pydicom reads no element at all
    _D + "emri_small_jpeg_2k_lossless_too_short.dcm": NO_PIXELS,
}

#: Entries that decode to more than 50 M samples (the int32 planes alone are
#: 442 MB): marked ``slow`` by :func:`corpus_params`.
SLOW = frozenset({_D + "color3d_jpeg_baseline.dcm"})


@dataclass(frozen=True)
class CorpusEntry:
    """One corpus file.

    Attributes
    ----------
    path : Path
    name : str
        ``pydicom/<path under test_files>`` or ``pydicom-data/<file name>``;
        unique, used as the pytest id.
    expected : str
        ``"ok"`` or ``"unsupported:<reason>"`` (from `TABLE`; ``"unlisted"``
        for a file the table does not know yet).
    force : bool
        The file has no DICOM preamble/``DICM`` prefix, so ``dcmread`` needs
        ``force=True``; :meth:`load` does that.
    slow : bool
        Large; see `SLOW`.
    """

    path: Path
    name: str
    expected: str
    force: bool = False
    slow: bool = False

    @property
    def ok(self) -> bool:
        return self.expected == OK

    @property
    def reason(self) -> str:
        """The ``<reason>`` of an ``unsupported:<reason>`` entry, else ``""``."""
        return self.expected.partition("unsupported:")[2]

    def load(self) -> pydicom.Dataset:
        """Read the file (with ``force`` where it needs it)."""
        return pydicom.dcmread(self.path, force=self.force)


def pydicom_test_files() -> Path:
    """pydicom's bundled test_files folder (no download involved)."""
    return Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent


def pydicom_data_files() -> Path | None:
    """The ``pydicom-data`` package's data folder, or ``None`` if it is not installed."""
    spec = importlib.util.find_spec("data_store")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if folder.is_dir() else None


def _has_dicm_prefix(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


@cache
def _corpus() -> tuple[CorpusEntry, ...]:
    found: list[tuple[str, Path]] = []
    base = pydicom_test_files()
    found += [
        (_P + p.relative_to(base).as_posix(), p)
        for p in sorted(base.rglob("*"))
        if p.is_file() and p.suffix not in _NOT_DICOM_SUFFIXES and not p.name.startswith("README")
    ]
    data = pydicom_data_files()
    if data is not None:
        found += [(_D + p.name, p) for p in sorted(data.glob("*.dcm"))]
    return tuple(
        CorpusEntry(
            path=path,
            name=name,
            expected=TABLE.get(name, "unlisted"),
            force=not _has_dicm_prefix(path),
            slow=name in SLOW,
        )
        for name, path in found
    )


def image_corpus() -> list[CorpusEntry]:
    """Every corpus file, in a stable order, with its expected outcome."""
    return list(_corpus())


def ok_corpus() -> list[CorpusEntry]:
    """The entries ``read_samples`` decodes (the image instances to watermark)."""
    return [e for e in _corpus() if e.ok]


def corpus_ids(entries: list[CorpusEntry] | None = None) -> list[str]:
    """pytest ids (the entry names) for `entries` (default: the whole corpus)."""
    return [e.name for e in (image_corpus() if entries is None else entries)]


def corpus_params(*, ok_only: bool = False) -> list:
    """``pytest.param`` per entry, with its id and the ``slow`` mark where due."""
    entries = ok_corpus() if ok_only else image_corpus()
    return [
        pytest.param(e, id=e.name, marks=[pytest.mark.slow] if e.slow else [])
        for e in entries
    ]


def synthetic_image(samples: np.ndarray, bits_allocated: int, bits_stored: int, signed: bool) -> pydicom.Dataset:
    """A little-endian MONOCHROME2 Secondary Capture holding ``samples`` (frames, rows, cols)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    frames, rows, cols = samples.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    dtype = f"<{'i' if signed else 'u'}{bits_allocated // 8}"
    ds.PixelData = samples.astype(dtype).tobytes()
    return ds
