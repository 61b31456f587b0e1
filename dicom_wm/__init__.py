"""dicom-wm: reversible, authenticated watermarks for DICOM pixel data."""

__version__ = "0.1.0"
