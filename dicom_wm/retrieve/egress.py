"""Verify before send: what one archived instance may leave as.

:func:`prepare` reads one archived file and decides, by the destination's
:class:`~dicom_wm.db.destinations.EgressPolicy`:

WATERMARKED rows (the archive holds the watermarked instance)
    The watermark is verified with the key store. It must be authentic *and*
    belong to this row: the same record UUID, SOP Instance UID and original
    sample SHA-256 as the provenance record (an authentic instance copied
    over another one's file is caught here). The file's SHA-256 must also
    still be the one recorded: the watermark protects the samples and the
    identifying attributes, and this catches an edit anywhere else (another
    element, or the private block's original values, which restore writes
    back). Then

    * ``watermarked``: the file's bytes are sent as stored;
    * ``original``: the instance is restored (same verification pass), the
      restored samples' SHA-256 is checked against provenance, and the
      restored dataset is sent.

FAILED / SKIPPED rows (the archive holds the instance as received)
    There is no watermark to verify; the file's SHA-256 must equal the one
    recorded when it was archived. It is sent as stored under either policy
    (it *is* the original).

Anything else is a refusal: that instance is not sent. The verdict says why
(tampered tiles, invalid, not watermarked, provenance mismatch, file hash
mismatch, unreadable). :attr:`Prepared.tamper` marks the verdicts that mean
the archived bytes were changed.

:func:`read_archived` reads the file; :func:`prepare` is a pure function of
its bytes, the row and the keys, so it runs in the association thread or in
a verification process (:mod:`dicom_wm.retrieve.pool`) alike.
"""

from __future__ import annotations

import enum
import hashlib
import io
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicom_wm.db.destinations import EgressPolicy
from dicom_wm.db.models import InstanceState
from dicom_wm.errors import NotAuthentic, UnsupportedInput
from dicom_wm.fileio import NotARegularFile, read_regular_bytes
from dicom_wm.keys import KeyStore
from dicom_wm.query.find import RetrieveItem
from dicom_wm.watermark import VerifyResult, VerifyStatus, restore_dataset, verify_dataset

__all__ = ["Verdict", "Prepared", "prepare", "read_archived", "encode_part10", "TAMPER_VERDICTS"]


class Verdict(str, enum.Enum):
    AUTHENTIC = "authentic"  # watermark verified, matches provenance
    HASH_VERIFIED = "hash_verified"  # not watermarked (FAILED/SKIPPED); file SHA-256 matches provenance
    TAMPERED = "tampered"  # watermark localises changed tiles
    INVALID = "invalid"  # watermark present but does not authenticate (identity changed, unknown key ...)
    NOT_WATERMARKED = "not_watermarked"  # a WATERMARKED row whose file carries no watermark
    PROVENANCE_MISMATCH = "provenance_mismatch"  # authentic, but not this row's instance / samples
    HASH_MISMATCH = "hash_mismatch"  # file changed since it was archived (its watermark, if any, still verifies)
    UNREADABLE = "unreadable"  # missing, unreadable or undecodable file


#: verdicts that mean the archived bytes were changed
TAMPER_VERDICTS = frozenset(
    {Verdict.TAMPERED, Verdict.INVALID, Verdict.NOT_WATERMARKED, Verdict.PROVENANCE_MISMATCH, Verdict.HASH_MISMATCH}
)


@dataclass
class Prepared:
    """One instance, verified: what to send, or why not."""

    item: RetrieveItem
    policy: EgressPolicy
    verdict: Verdict
    payload: bytes | None = None  # the Part 10 file to send (None: refused)
    restored: bool = False  # payload is the restored original
    reason: str | None = None
    tampered_tiles: list[list[int]] = field(default_factory=list)
    file_changed: bool | None = None  # file SHA-256 differs from provenance (None: unknown)
    cached: bool = False  # these exact bytes were verified authentic earlier by this process
    seconds: float = 0.0
    note: str | None = None  # sent, but not as the policy's usual copy: why (goes into the sent event)

    @property
    def ok(self) -> bool:
        return self.payload is not None

    @property
    def tamper(self) -> bool:
        """The archived file was changed (an unreadable file counts when its
        hash no longer matches)."""
        return self.verdict in TAMPER_VERDICTS or (self.verdict is Verdict.UNREADABLE and bool(self.file_changed))


def encode_part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


_STATUS_VERDICT = {
    VerifyStatus.TAMPERED: Verdict.TAMPERED,
    VerifyStatus.INVALID: Verdict.INVALID,
    VerifyStatus.NOT_WATERMARKED: Verdict.NOT_WATERMARKED,
    VerifyStatus.UNSUPPORTED: Verdict.UNREADABLE,
}


def _provenance_problem(item: RetrieveItem, ds: Dataset, check: VerifyResult) -> str | None:
    if item.record_uuid and check.record_uuid != item.record_uuid:
        return f"watermark record {check.record_uuid} is not this instance's record {item.record_uuid}"
    if str(ds.get("SOPInstanceUID", "")) != item.sop_instance_uid:
        return f"file holds SOP Instance {str(ds.get('SOPInstanceUID', ''))[:64]}, not {item.sop_instance_uid}"
    if item.original_sample_sha256 and check.original_sample_sha256 != item.original_sample_sha256:
        return "restored samples' SHA-256 differs from the provenance record"
    return None


def _fingerprinted(
    item: RetrieveItem, policy: EgressPolicy, original: Dataset, keys: KeyStore, recipient: str | None, changed: bool
) -> Prepared:
    """The verified original, watermarked again (same record) with a robust
    mark whose message names the recipient: a leaked copy traces to it. An
    image too small to carry the mark goes as the verified original, as
    unwatermarked instances do; the note says so."""
    from dicom_wm.errors import DicomWmError, InsufficientCapacity
    from dicom_wm.watermark import EmbedOptions, embed_dataset

    record = uuid.UUID(item.record_uuid) if item.record_uuid else None
    try:
        marked = embed_dataset(original, keys, record_uuid=record, options=EmbedOptions(robust=True, recipient=recipient))
    except InsufficientCapacity as exc:
        return Prepared(item, policy, Verdict.AUTHENTIC, payload=encode_part10(original), restored=True,
                        file_changed=changed, note=f"not fingerprinted: {exc}")
    except DicomWmError as exc:
        return Prepared(item, policy, Verdict.UNREADABLE, reason=f"cannot fingerprint: {exc}", file_changed=changed)
    return Prepared(item, policy, Verdict.AUTHENTIC, payload=encode_part10(marked.dataset), restored=True,
                    file_changed=changed)


def read_archived(item: RetrieveItem, policy: EgressPolicy, data_dir: Path) -> bytes | Prepared:
    """The archived file's bytes, or the refusal saying why there are none."""
    if not item.archive_path:
        return Prepared(item, policy, Verdict.UNREADABLE, reason="no archived file is recorded for this instance")
    try:
        return read_regular_bytes(data_dir / item.archive_path)
    except FileNotFoundError:
        return Prepared(item, policy, Verdict.UNREADABLE, reason=f"archived file {item.archive_path} is missing")
    except NotARegularFile:  # archived as a regular file: something was put in its place
        return Prepared(item, policy, Verdict.UNREADABLE, file_changed=True,
                        reason=f"archived file {item.archive_path} is no longer a regular file")
    except OSError as exc:
        return Prepared(item, policy, Verdict.UNREADABLE,
                        reason=f"archived file {item.archive_path} cannot be read: {exc.strerror or exc}")


def prepare(
    item: RetrieveItem,
    policy: EgressPolicy,
    keys: KeyStore,
    data: bytes,
    sha256: str | None = None,
    recipient: str | None = None,
) -> Prepared:
    """Verify one instance's archived bytes ``data`` and produce what may be
    sent (module docstring). ``sha256`` is their SHA-256 if already known;
    ``recipient`` is the AE title a ``fingerprint`` copy names."""
    started = time.perf_counter()
    digest = sha256 or hashlib.sha256(data).hexdigest()
    out = _prepare(item, policy, keys, data, digest, recipient)
    out.seconds = time.perf_counter() - started
    return out


def _prepare(
    item: RetrieveItem, policy: EgressPolicy, keys: KeyStore, data: bytes, digest: str, recipient: str | None
) -> Prepared:
    def refuse(verdict: Verdict, reason: str, **kw: object) -> Prepared:
        return Prepared(item, policy, verdict, reason=reason, **kw)  # type: ignore[arg-type]

    changed = item.stored_sha256 is not None and digest != item.stored_sha256
    if item.state is not InstanceState.WATERMARKED:
        if item.stored_sha256 is None:
            return refuse(Verdict.UNREADABLE, "no SHA-256 is recorded for this unwatermarked instance")
        if changed:
            return refuse(Verdict.HASH_MISMATCH, "archived file differs from the one recorded (SHA-256)", file_changed=True)
        note = "not fingerprinted: not watermarked (sent as received)" if policy is EgressPolicy.FINGERPRINT else None
        return Prepared(item, policy, Verdict.HASH_VERIFIED, payload=data, file_changed=False, note=note)

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many types for a damaged file
        return refuse(Verdict.UNREADABLE, f"archived file cannot be parsed: {type(exc).__name__}: {str(exc)[:200]}",
                      file_changed=changed)

    restored: Dataset | None = None
    if policy in (EgressPolicy.ORIGINAL, EgressPolicy.FINGERPRINT):
        try:
            # force: one verification pass gives the verdict and the samples;
            # nothing but an authentic result is ever sent.
            result = restore_dataset(ds, keys, force=True)
            check, restored = result.verify, result.dataset
        except (NotAuthentic, UnsupportedInput):
            check = verify_dataset(ds, keys)
    else:
        check = verify_dataset(ds, keys)

    if check.status is not VerifyStatus.AUTHENTIC:
        verdict = _STATUS_VERDICT[check.status]
        reason = f"watermark {check.status.value}" + (f": {check.error}" if check.error else "")
        return refuse(verdict, reason, tampered_tiles=[list(t) for t in check.tampered_tiles], file_changed=changed)
    problem = _provenance_problem(item, ds, check)
    if problem is not None:
        return refuse(Verdict.PROVENANCE_MISMATCH, problem, file_changed=changed)
    if changed:
        return refuse(Verdict.HASH_MISMATCH, "archived file differs from the one recorded (SHA-256) although its "
                      "watermark verifies: elements outside the watermark's protection were changed", file_changed=True)
    if policy in (EgressPolicy.ORIGINAL, EgressPolicy.FINGERPRINT):
        if restored is None:  # pragma: no cover - an authentic result always restores
            return refuse(Verdict.UNREADABLE, "restore produced no dataset")
        if policy is EgressPolicy.FINGERPRINT:
            return _fingerprinted(item, policy, restored, keys, recipient, changed)
        return Prepared(item, policy, Verdict.AUTHENTIC, payload=encode_part10(restored), restored=True,
                        file_changed=changed)
    return Prepared(item, policy, Verdict.AUTHENTIC, payload=data, file_changed=changed)
