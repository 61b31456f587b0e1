"""Where instance files live under the data dir.

``spool/<SOP Instance UID>.<token>.dcm``
    a received instance waiting for a worker (token: random, so concurrent
    receptions never share a file)
``archive/<Study UID>/<Series UID>/<SOP UID>.v<version>.<token>.dcm``
    the stored instance once final (token: the worker attempt that wrote it,
    so a duplicated delivery can never overwrite the committed file)

Every UID is checked against the UID grammar before it gets here; paths in
the database are relative to the data dir so the archive can be moved.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from dicom_wm.ingest.uids import check_uid

__all__ = ["spool_relpath", "archive_relpath", "new_token"]


def new_token() -> str:
    return secrets.token_hex(6)


def spool_relpath(sop_instance_uid: str, token: str) -> Path:
    return Path("spool") / f"{check_uid(sop_instance_uid, 'SOP Instance UID')}.{token}.dcm"


def archive_relpath(study_uid: str, series_uid: str, sop_uid: str, version: int, token: str) -> Path:
    return (
        Path("archive")
        / check_uid(study_uid, "Study Instance UID")
        / check_uid(series_uid, "Series Instance UID")
        / f"{check_uid(sop_uid, 'SOP Instance UID')}.v{int(version)}.{token}.dcm"
    )
