"""The transfer syntaxes we read, which decoder package each needs, and
which of them may have lost information before we saw the data."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import uid

__all__ = ["SyntaxInfo", "SUPPORTED", "WRITE_SYNTAX", "syntax_info"]

#: What write_samples always produces: native, uncompressed, lossless.
WRITE_SYNTAX = uid.ExplicitVRLittleEndian


@dataclass(frozen=True)
class SyntaxInfo:
    """How one transfer syntax is read.

    Attributes
    ----------
    uid : pydicom.uid.UID
    lossy : bool
        The transfer syntax permits lossy coding. We flag by syntax, not by
        inspecting the codestream: JPEG 2000 (4.91) written reversibly is still
        flagged, so the flag can over-report, never under-report.
    package : str | None
        The distribution (declared in pyproject.toml) whose decoder we use;
        ``None`` when pydicom decodes it alone.
    plugin : str
        The pydicom decoding plugin we prefer when it is available, so that
        lossy inputs decode to the same samples on every machine; any other
        available plugin is the fallback.
    """

    uid: uid.UID
    lossy: bool
    package: str | None
    plugin: str


_LIBJPEG = "pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg-openjpeg"

# High-Throughput JPEG 2000 (4.201-4.203) is left out until we have a test
# file to prove the decode; such instances are refused as unsupported.
SUPPORTED: dict[str, SyntaxInfo] = {
    s.uid: s
    for s in (
        SyntaxInfo(uid.ImplicitVRLittleEndian, False, None, ""),
        SyntaxInfo(uid.ExplicitVRLittleEndian, False, None, ""),
        SyntaxInfo(uid.ExplicitVRBigEndian, False, None, ""),
        SyntaxInfo(uid.DeflatedExplicitVRLittleEndian, False, None, ""),
        SyntaxInfo(uid.RLELossless, False, None, "pylibjpeg"),
        SyntaxInfo(uid.JPEGBaseline8Bit, True, _LIBJPEG, "pylibjpeg"),
        SyntaxInfo(uid.JPEGExtended12Bit, True, _LIBJPEG, "pylibjpeg"),
        SyntaxInfo(uid.JPEGLossless, False, _LIBJPEG, "pylibjpeg"),
        SyntaxInfo(uid.JPEGLosslessSV1, False, _LIBJPEG, "pylibjpeg"),
        SyntaxInfo(uid.JPEGLSLossless, False, _LIBJPEG, "pylibjpeg"),
        SyntaxInfo(uid.JPEGLSNearLossless, True, _LIBJPEG, "pylibjpeg"),
        SyntaxInfo(uid.JPEG2000Lossless, False, _OPENJPEG, "pylibjpeg"),
        SyntaxInfo(uid.JPEG2000, True, _OPENJPEG, "pylibjpeg"),
    )
}


def syntax_info(tsyntax: str) -> SyntaxInfo | None:
    """Return how `tsyntax` is read, or ``None`` if we do not read it."""
    return SUPPORTED.get(str(tsyntax))
