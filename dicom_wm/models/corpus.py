"""The training / held-out split of the learned predictor.

Images come from pydicom's bundled test files and the ``pydicom-data``
package, located offline with ``pydicom.data.get_testdata_file(...,
download=False)`` (nothing is ever downloaded). The split is by image
family: every encoding of one acquisition (``*_UNCR``, ``*_UNCI``,
``*_J2KR`` ...) and every file copied from it stays on one side. Training
never reads a held-out family; the benchmark reads only held-out families.

Held out (one family per modality):

* ``693_*``  CT, CQ500 head, 512x512, 14-bit signed
* ``MR2_*``  MR, 1024x1024, 12-bit
* ``RG1_*``  CR, 1955x1841, 15-bit
* ``US1_*``  US, 480x640 RGB, 8-bit (``examples_jpeg2k.dcm`` in pydicom's
  test files is the same image and is held out with it)

``*_UNCR`` is the reversible (lossless) decode, ``*_UNCI`` the decode of an
irreversible JPEG 2000, i.e. a lossy input as the service also sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicom_wm.pixels.planes import stored_range

__all__ = ["CorpusImage", "TRAIN_FILES", "HELD_OUT_FILES", "HELD_OUT_FAMILIES", "load_image", "is_available"]


@dataclass(frozen=True)
class CorpusImage:
    """Stored samples of one file as predictor planes."""

    name: str
    modality: str
    planes: np.ndarray  # int64 (n, rows, cols)
    bits_stored: int
    signed: bool
    lossy_source: bool

    @property
    def lo(self) -> int:
        return stored_range(self.bits_stored, self.signed)[0]

    @property
    def hi(self) -> int:
        return stored_range(self.bits_stored, self.signed)[1]


#: file -> (modality, at most this many frames). Palette-colour files are
#: left out (indices are not intensities), as are 1-bit segmentations,
#: 32-bit dose grids and the 16x16 DICOMDIR thumbnails.
TRAIN_FILES: dict[str, tuple[str, int]] = {
    # CT
    "eCT_Supplemental.dcm": ("CT", 2),
    "bad_sequence.dcm": ("CT", 1),
    "explicit_VR-UN.dcm": ("CT", 1),
    "J2K_pixelrep_mismatch.dcm": ("CT", 1),
    "CT_small.dcm": ("CT", 1),
    # MR
    "MR-SIEMENS-DICOM-WithOverlays.dcm": ("MR", 1),
    "emri_small.dcm": ("MR", 10),
    "MR_small.dcm": ("MR", 1),
    # CR
    "RG3_UNCR.dcm": ("CR", 1),
    "RG3_UNCI.dcm": ("CR", 1),
    # US
    "JPGLosslessP14SV1_1s_1f_8b.dcm": ("US", 1),
    "color-pl.dcm": ("US", 1),
    "examples_rgb_color.dcm": ("US", 1),
    "examples_ybr_color.dcm": ("US", 6),
    "color3d_jpeg_baseline.dcm": ("US", 6),
}

HELD_OUT_FAMILIES = ("693_", "MR2_", "RG1_", "US1_", "examples_jpeg2k")

#: Held-out files used by the benchmark (``*_J2KR`` decodes equal ``*_UNCR``).
HELD_OUT_FILES: dict[str, str] = {
    "693_UNCR.dcm": "CT",
    "693_UNCI.dcm": "CT",
    "MR2_UNCR.dcm": "MR",
    "MR2_UNCI.dcm": "MR",
    "RG1_UNCR.dcm": "CR",
    "RG1_UNCI.dcm": "CR",
    "US1_UNCR.dcm": "US",
}

if any(f.startswith(HELD_OUT_FAMILIES) for f in TRAIN_FILES):  # pragma: no cover - guards edits
    raise RuntimeError("a held-out family is listed for training")


def _path(name: str) -> str | None:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    return found if isinstance(found, str) else None


def is_available(name: str) -> bool:
    """Whether ``name`` is installed locally (pydicom or pydicom-data)."""
    return _path(name) is not None


def load_image(name: str, max_frames: int | None = None) -> CorpusImage:
    """Planes (frame x channel) of one corpus file; raises
    ``FileNotFoundError`` if it is not installed."""
    import pydicom

    from dicom_wm.pixels import read_samples

    path = _path(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (needs pydicom-data); nothing is downloaded")
    ds = pydicom.dcmread(path)
    px = read_samples(ds)
    samples = px.samples if max_frames is None else px.samples[:max_frames]
    f, r, c, ch = samples.shape
    planes = np.ascontiguousarray(samples.transpose(0, 3, 1, 2)).reshape(f * ch, r, c).astype(np.int64)
    modality = TRAIN_FILES.get(name, (HELD_OUT_FILES.get(name, str(ds.get("Modality", "OT"))), 0))[0]
    return CorpusImage(name, modality, planes, px.bits_stored, px.signed, px.lossy_source)
