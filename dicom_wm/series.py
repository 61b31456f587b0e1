"""Series-level verification: every instance's status, plus the instances
missing from or added to the series.

An instance's payload knows only its own identity (its UIDs are bound into
its instance MAC), so completeness is a property of the set:

* **without a database** an instance is *added* when its Series Instance UID
  is not the series' (the one asked for, else the most common among the
  watermarked instances), or when it carries no watermark while other
  instances of the series do; instances are *missing* where the Instance
  Numbers of the series' instances leave a gap. A gap at either end of the
  range cannot be seen this way.
* **with a database session** the provenance rows of the series (current
  versions, any state) are the truth: an instance is *added* when its SOP
  Instance UID has no row, *missing* when a row has no instance, and its
  ``provenance`` is ``record_mismatch`` when its payload names another
  record than its row (or none where the row says it was watermarked).
"""

from __future__ import annotations

import enum
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from dicom_wm.errors import UnsupportedInput
from dicom_wm.fileio import read_dataset
from dicom_wm.keys import KeyStore
from dicom_wm.waveform import is_waveform, verify_waveform
from dicom_wm.watermark import VerifyResult, VerifyStatus, verify_dataset

__all__ = [
    "Provenance",
    "InstanceReport",
    "MissingInstance",
    "SeriesReport",
    "verify_series",
    "archived_series_paths",
]

# Files in a series directory that are not instances.
_SKIP_NAMES = frozenset({"DICOMDIR"})
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_WATERMARKED = frozenset({VerifyStatus.AUTHENTIC, VerifyStatus.TAMPERED})


class Provenance(str, enum.Enum):
    """How an instance compares with its provenance row."""

    MATCH = "match"  # a row exists and the payload's record is the row's
    NOT_IN_PROVENANCE = "not_in_provenance"  # no row for its SOP Instance UID in this series
    RECORD_MISMATCH = "record_mismatch"  # the payload names another record, or none where one was embedded


@dataclass
class InstanceReport:
    """One instance (file or dataset) of the input."""

    source: str  # file path, or "dataset <n>" for an in-memory dataset
    status: VerifyStatus
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None
    instance_number: int | None = None
    record_uuid: str | None = None
    tampered_tiles: list[list[int]] = field(default_factory=list)
    frames: dict[str, list[int]] | None = None  # multi-frame evidence, as VerifyResult.frames
    error: str | None = None
    provenance: Provenance | None = None  # None without a database
    added_reason: str | None = None  # why it does not belong (set for ``SeriesReport.added``)


@dataclass
class MissingInstance:
    """An instance the series should have and the input lacks."""

    reason: str  # "instance_number_gap" | "in_provenance"
    instance_number: int | None = None
    sop_instance_uid: str | None = None


@dataclass
class SeriesReport:
    series_instance_uid: str | None
    instances: list[InstanceReport]  # every input instance, in input order
    missing: list[MissingInstance]
    added: list[InstanceReport]  # the instances of ``instances`` that do not belong
    duplicates: list[InstanceReport]  # second and later copies of a SOP Instance UID
    provenance_checked: bool  # True when a database session was consulted

    @property
    def ok(self) -> bool:
        """Every instance authentic and matching, nothing missing or added."""
        return (
            not self.missing
            and not self.added
            and not self.duplicates
            and all(
                i.status is VerifyStatus.AUTHENTIC and i.provenance in (None, Provenance.MATCH)
                for i in self.instances
            )
        )

    def counts(self) -> dict[str, int]:
        """Instances per verify status."""
        return dict(Counter(i.status.value for i in self.instances))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (enums as their values)."""

        def plain(obj: Any) -> Any:
            if isinstance(obj, enum.Enum):
                return obj.value
            if isinstance(obj, dict):
                return {k: plain(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [plain(v) for v in obj]
            return obj

        return {
            "series_instance_uid": self.series_instance_uid,
            "ok": self.ok,
            "counts": self.counts(),
            "instances": [plain(asdict(i)) for i in self.instances],
            "missing": [plain(asdict(m)) for m in self.missing],
            "added": [i.source for i in self.added],
            "duplicates": [i.source for i in self.duplicates],
            "provenance_checked": self.provenance_checked,
        }


def _expand(items: Iterable[str | os.PathLike[str] | Dataset]) -> list[tuple[str, Dataset | Path]]:
    """(source name, dataset or file path); directories are walked, sorted."""
    out: list[tuple[str, Dataset | Path]] = []
    n = 0
    for item in items:
        if isinstance(item, Dataset):
            out.append((f"dataset {n}", item))
            n += 1
            continue
        p = Path(item)
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                if f.name in _SKIP_NAMES or any(part.startswith(".") for part in f.relative_to(p).parts):
                    continue
                out.append((str(f), f))
        else:
            out.append((str(p), p))
    return out


def _instance_number(ds: Dataset) -> int | None:
    try:
        value = ds.get("InstanceNumber")
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _uid(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value).strip() or None if value is not None else None


def _verify_one(ds: Dataset, keys: KeyStore) -> VerifyResult:
    if is_waveform(ds) and "PixelData" not in ds:
        return verify_waveform(ds, keys)
    return verify_dataset(ds, keys)


def _report(source: str, item: Dataset | Path, keys: KeyStore) -> InstanceReport | None:
    """Verify one input; None for files that are not instances (DICOMDIR)."""
    if isinstance(item, Path):
        try:
            ds = read_dataset(item)
        except (UnsupportedInput, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return InstanceReport(source=source, status=VerifyStatus.UNSUPPORTED, error=reason)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
            return None
    else:
        ds = item
    result = _verify_one(ds, keys)
    return InstanceReport(
        source=source,
        status=result.status,
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        instance_number=_instance_number(ds),
        record_uuid=result.record_uuid,
        tampered_tiles=result.tampered_tiles,
        frames=result.frames,
        error=result.error,
    )


def _target_series(reports: list[InstanceReport]) -> str | None:
    """The most common Series Instance UID among watermarked instances (else
    among all); ties go to the one seen first."""
    for pool in ([r for r in reports if r.status in _WATERMARKED], reports):
        uids = [r.series_instance_uid for r in pool if r.series_instance_uid]
        if uids:
            counts = Counter(uids)
            best = max(counts.values())
            return next(u for u in uids if counts[u] == best)
    return None


def _provenance_rows(session: Any, series_uid: str) -> list[Any]:
    from sqlalchemy import select

    from dicom_wm.db.models import Instance

    stmt = (
        select(Instance)
        .where(Instance.series_instance_uid == series_uid, Instance.is_current.is_(True))
        .order_by(Instance.instance_number, Instance.sop_instance_uid)
    )
    return list(session.scalars(stmt))


def verify_series(
    items: Iterable[str | os.PathLike[str] | Dataset],
    keys: KeyStore,
    *,
    series_uid: str | None = None,
    session: Any | None = None,
) -> SeriesReport:
    """Verify a series and report what is missing from it or added to it.

    Parameters
    ----------
    items : iterable of path or Dataset
        Files, directories (walked recursively; hidden entries and DICOMDIR
        skipped) and in-memory datasets, in any mix.
    keys : KeyStore
        Verifies the payloads.
    series_uid : str, optional
        The series to check; by default the most common Series Instance UID
        among the watermarked instances.
    session : sqlalchemy.orm.Session, optional
        Provenance database session: with it the series' rows decide what is
        missing and added (module docstring).

    Returns
    -------
    SeriesReport
        Never raises for bad files: an unreadable one is an instance with
        status ``unsupported`` and its reason.
    """
    reports = [r for source, item in _expand(items) if (r := _report(source, item, keys)) is not None]
    target = series_uid or _target_series(reports)

    added: list[InstanceReport] = []
    duplicates: list[InstanceReport] = []
    members: list[InstanceReport] = []
    seen: set[str] = set()
    for r in reports:
        if r.sop_instance_uid is None:
            continue  # unreadable: reported with its status only
        if r.series_instance_uid != target:
            r.added_reason = f"Series Instance UID {r.series_instance_uid} is not the series' ({target})"
            added.append(r)
            continue
        if r.sop_instance_uid in seen:
            duplicates.append(r)
            continue
        seen.add(r.sop_instance_uid)
        members.append(r)

    missing: list[MissingInstance] = []
    if session is not None and target is not None:
        rows = _provenance_rows(session, target)
        by_uid = {row.sop_instance_uid: row for row in rows}
        for r in members:
            row = by_uid.get(r.sop_instance_uid)
            if row is None:
                r.provenance = Provenance.NOT_IN_PROVENANCE
                r.added_reason = "no provenance row for its SOP Instance UID in this series"
                added.append(r)
            elif row.record_uuid and r.record_uuid != row.record_uuid:
                r.provenance = Provenance.RECORD_MISMATCH
            elif not row.record_uuid and r.record_uuid:
                r.provenance = Provenance.RECORD_MISMATCH
            else:
                r.provenance = Provenance.MATCH
        present = {r.sop_instance_uid for r in members}
        missing = [
            MissingInstance("in_provenance", row.instance_number, row.sop_instance_uid)
            for row in rows
            if row.sop_instance_uid not in present
        ]
    else:
        if any(r.status in _WATERMARKED for r in members):
            for r in members:
                if r.status is VerifyStatus.NOT_WATERMARKED:
                    r.added_reason = "not watermarked, while the series' other instances are"
                    added.append(r)
        extra = {id(r) for r in added}
        numbers = {r.instance_number for r in members if r.instance_number is not None and id(r) not in extra}
        if numbers:
            missing = [
                MissingInstance("instance_number_gap", k)
                for k in range(min(numbers), max(numbers) + 1)
                if k not in numbers
            ]
    order = {id(r): i for i, r in enumerate(reports)}
    added.sort(key=lambda r: order[id(r)])
    return SeriesReport(
        series_instance_uid=target,
        instances=reports,
        missing=missing,
        added=added,
        duplicates=duplicates,
        provenance_checked=session is not None,
    )


def archived_series_paths(session: Any, series_uid: str, data_dir: str | os.PathLike[str]) -> list[Path]:
    """Archive files of a series' current provenance rows (those that have
    one), for ``verify_series`` by Series Instance UID."""
    base = Path(data_dir)
    return [base / row.archive_path for row in _provenance_rows(session, series_uid) if row.archive_path]
