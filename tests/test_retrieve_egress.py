"""Verify before send (dicom_wm.retrieve.egress / pool) and the transfer
pieces of the retrieve handlers (scp.transfer, scp.direct_store), without
the network."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom.presentation import PresentationContext

from dicom_wm.db import EgressPolicy, InstanceState
from dicom_wm.keys import KeyStore
from dicom_wm.payload.block import TILE
from dicom_wm.pixels import read_samples
from dicom_wm.query import RetrieveItem
from dicom_wm.retrieve import EgressPool, Verdict, prepare
from dicom_wm.retrieve.egress import read_archived
from dicom_wm.watermark import embed_dataset, verify_dataset
from ingest_support import source_file
from scp.direct_store import _fragments, dataset_offset
from scp.transfer import MAX_CONTEXTS, Route, propose_contexts, route

WM, ORIG = EgressPolicy.WATERMARKED, EgressPolicy.ORIGINAL


def _keys(tmp: Path) -> tuple[KeyStore, Path]:
    path = tmp / "keys.json"
    return KeyStore.init(path), path


def _ct() -> pydicom.Dataset:
    ds = pydicom.dcmread(source_file("693_UNCR.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _archive(data_dir: Path, ds: pydicom.Dataset, keys: KeyStore, *, state: str = "WATERMARKED",
             instance_id: int = 1) -> tuple[RetrieveItem, pydicom.Dataset]:
    """Store ``ds`` as the archive would (watermarked, or as received) and describe its row."""
    rel = Path("archive") / f"{ds.SOPInstanceUID}.dcm"
    (data_dir / "archive").mkdir(parents=True, exist_ok=True)
    if state == "WATERMARKED":
        result = embed_dataset(ds, keys, record_uuid=uuid.uuid4())
        result.dataset.save_as(data_dir / rel, enforce_file_format=True)
        record, sample_sha = result.record_uuid, result.original_sample_sha256
    else:
        ds.save_as(data_dir / rel, enforce_file_format=True)
        record = sample_sha = None
    sha = hashlib.sha256((data_dir / rel).read_bytes()).hexdigest()
    item = RetrieveItem(instance_id, str(ds.SOPInstanceUID), str(ds.SOPClassUID), InstanceState(state), str(rel),
                        str(pydicom.dcmread(data_dir / rel).file_meta.TransferSyntaxUID), sha, sample_sha, record)
    return item, ds


def _prepare(item: RetrieveItem, policy: EgressPolicy, keys: KeyStore, data_dir: Path):
    data = read_archived(item, policy, data_dir)
    return data if not isinstance(data, bytes) else prepare(item, policy, keys, data)


def _tamper(path: Path, row: int, col: int) -> None:
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.copy()
    arr[row, col] += 5
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_watermarked_policy_sends_the_archived_bytes(tmp_path: Path) -> None:
    keys, _ = _keys(tmp_path)
    item, _ = _archive(tmp_path, _ct(), keys)
    out = _prepare(item, WM, keys, tmp_path)
    assert out.verdict is Verdict.AUTHENTIC and out.ok and not out.restored and not out.tamper
    assert out.payload == (tmp_path / item.archive_path).read_bytes() and out.file_changed is False


def test_original_policy_sends_the_restored_original(tmp_path: Path) -> None:
    keys, _ = _keys(tmp_path)
    item, original = _archive(tmp_path, _ct(), keys)
    out = _prepare(item, ORIG, keys, tmp_path)
    assert out.verdict is Verdict.AUTHENTIC and out.restored
    restored = pydicom.dcmread(io.BytesIO(out.payload))
    assert np.array_equal(read_samples(restored).samples, read_samples(original).samples)
    assert {e.tag for e in restored if e.tag.element} == {e.tag for e in original if e.tag.element}


def test_fingerprint_policy_sends_a_copy_that_names_the_recipient(tmp_path: Path) -> None:
    """Issue #6 item 4: verified, restored, watermarked again (same record)
    with a robust mark whose message names the destination."""
    robust = pytest.importorskip("dicom_wm.robust")
    from dicom_wm.watermark import VerifyStatus, restore_dataset, verify_dataset

    keys, _ = _keys(tmp_path)
    item, original = _archive(tmp_path, _ct(), keys)
    data = read_archived(item, EgressPolicy.FINGERPRINT, tmp_path)
    out = prepare(item, EgressPolicy.FINGERPRINT, keys, data, recipient="VIEWER7")
    assert out.verdict is Verdict.AUTHENTIC and out.ok
    sent = pydicom.dcmread(io.BytesIO(out.payload))
    check = verify_dataset(sent, keys)
    assert check.status is VerifyStatus.AUTHENTIC and check.record_uuid == item.record_uuid
    message = robust.decode_robust(read_samples(sent).samples[0, :, :, 0], keys.secret(keys.active_id))
    assert message is not None
    record_tag, recipient = robust.parse_message(message)
    assert recipient == robust.recipient_tag("VIEWER7")
    assert uuid.UUID(item.record_uuid).bytes.startswith(record_tag)
    assert np.array_equal(read_samples(restore_dataset(sent, keys).dataset).samples, read_samples(original).samples)


def test_fingerprint_sends_the_original_with_a_note_where_no_mark_fits(tmp_path: Path) -> None:
    """A watermarked image too small for the robust layer, and an instance
    stored as received, go as under ``original``; the note (recorded in the
    sent event) says the copy carries no fingerprint."""
    pytest.importorskip("dicom_wm.robust")
    keys, _ = _keys(tmp_path)
    small = _ct()
    crop = read_samples(small).samples[0, :128, :128, 0]
    small.Rows = small.Columns = 128
    small.PixelData = crop.astype("<i2" if small.PixelRepresentation else "<u2").tobytes()
    item, _ = _archive(tmp_path, small, keys)
    out = _prepare(item, EgressPolicy.FINGERPRINT, keys, tmp_path)
    assert out.ok and out.restored and out.verdict is Verdict.AUTHENTIC
    assert out.note.startswith("not fingerprinted: insufficient capacity")
    assert np.array_equal(read_samples(pydicom.dcmread(io.BytesIO(out.payload))).samples[0, :, :, 0], crop)
    assert _prepare(item, ORIG, keys, tmp_path).note is None

    received, _ = _archive(tmp_path, _ct(), keys, state="FAILED", instance_id=2)
    out = _prepare(received, EgressPolicy.FINGERPRINT, keys, tmp_path)
    assert out.ok and out.verdict is Verdict.HASH_VERIFIED and out.note.startswith("not fingerprinted")
    assert out.payload == (tmp_path / received.archive_path).read_bytes()


def test_a_changed_sample_is_tampered_with_its_tile(tmp_path: Path) -> None:
    keys, _ = _keys(tmp_path)
    item, _ = _archive(tmp_path, _ct(), keys)
    _tamper(tmp_path / item.archive_path, 130, 400)
    for policy in (WM, ORIG):
        out = _prepare(item, policy, keys, tmp_path)
        assert out.verdict is Verdict.TAMPERED and not out.ok and out.tamper and out.file_changed
        assert [0, 128, 384, 192, 448] in out.tampered_tiles and TILE == 64


def test_an_edit_outside_the_watermark_is_caught_by_the_file_hash(tmp_path: Path) -> None:
    """A header edit leaves the watermark authentic (it covers the samples
    and the identifying attributes); the recorded SHA-256 still refuses it."""
    keys, _ = _keys(tmp_path)
    item, _ = _archive(tmp_path, _ct(), keys)
    path = tmp_path / item.archive_path
    ds = pydicom.dcmread(path)
    ds.PatientID = "SOMEONE-ELSE"
    ds.save_as(path, enforce_file_format=True)
    assert verify_dataset(pydicom.dcmread(path), keys).status.value == "authentic"
    for policy in (WM, ORIG, EgressPolicy.FINGERPRINT):
        out = _prepare(item, policy, keys, tmp_path)
        assert out.verdict is Verdict.HASH_MISMATCH and not out.ok and out.tamper and out.file_changed
        assert "although its watermark verifies" in out.reason


def test_an_authentic_instance_in_the_wrong_place_is_refused(tmp_path: Path) -> None:
    keys, _ = _keys(tmp_path)
    item, _ = _archive(tmp_path, _ct(), keys, instance_id=1)
    other, _ = _archive(tmp_path, _ct(), keys, instance_id=2)
    swapped = RetrieveItem(item.instance_id, item.sop_instance_uid, item.sop_class_uid, item.state, other.archive_path,
                           item.stored_transfer_syntax_uid, item.stored_sha256, item.original_sample_sha256,
                           item.record_uuid)
    out = _prepare(swapped, WM, keys, tmp_path)
    assert out.verdict is Verdict.PROVENANCE_MISMATCH and out.tamper and "record" in out.reason
    wrong_hash = RetrieveItem(*[*item.__dict__.values()][:7], "0" * 64, item.record_uuid)
    out = _prepare(wrong_hash, ORIG, keys, tmp_path)
    assert out.verdict is Verdict.PROVENANCE_MISMATCH and "SHA-256" in out.reason


def test_unknown_key_and_missing_watermark_are_refused(tmp_path: Path) -> None:
    keys, _ = _keys(tmp_path)
    item, original = _archive(tmp_path, _ct(), keys)
    stranger = KeyStore.in_memory({"other": b"k" * 32}, "other")
    assert _prepare(item, WM, stranger, tmp_path).verdict is Verdict.INVALID
    original.save_as(tmp_path / item.archive_path, enforce_file_format=True)  # the watermark stripped
    out = _prepare(item, WM, keys, tmp_path)
    assert out.verdict is Verdict.NOT_WATERMARKED and out.tamper


def test_unwatermarked_instances_go_as_stored_when_their_hash_matches(tmp_path: Path) -> None:
    keys, _ = _keys(tmp_path)
    small = pydicom.dcmread(source_file("MR_small_jp2klossless.dcm"))
    item, _ = _archive(tmp_path, small, keys, state="FAILED")
    for policy in (WM, ORIG):
        out = _prepare(item, policy, keys, tmp_path)
        assert out.verdict is Verdict.HASH_VERIFIED and out.payload == (tmp_path / item.archive_path).read_bytes()
    path = tmp_path / item.archive_path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the JPEG 2000 codestream
    path.write_bytes(bytes(data))
    out = _prepare(item, WM, keys, tmp_path)
    assert out.verdict is Verdict.HASH_MISMATCH and out.tamper


def test_a_fifo_in_an_archived_file_place_is_refused_without_blocking(tmp_path: Path) -> None:
    """Reading it would wait for a writer forever: each retrieve touching it
    hung, and with both reader threads stuck every later retrieve did too."""
    import os

    keys, _ = _keys(tmp_path)
    item, _ = _archive(tmp_path, _ct(), keys)
    path = tmp_path / item.archive_path
    path.unlink()
    os.mkfifo(path)
    out = _prepare(item, WM, keys, tmp_path)
    assert out.verdict is Verdict.UNREADABLE and "no longer a regular file" in out.reason and out.tamper


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    keys, _ = _keys(tmp_path)
    item, _ = _archive(tmp_path, _ct(), keys)
    path = tmp_path / item.archive_path
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"garbage")
    out = _prepare(item, WM, keys, tmp_path)
    assert out.verdict is Verdict.UNREADABLE and out.file_changed and out.tamper
    path.unlink()
    out = _prepare(item, WM, keys, tmp_path)
    assert out.verdict is Verdict.UNREADABLE and "missing" in out.reason and not out.tamper


def test_pool_verifies_once_then_trusts_identical_bytes(tmp_path: Path) -> None:
    keys, keys_path = _keys(tmp_path)
    items = [_archive(tmp_path, _ct(), keys, instance_id=i)[0] for i in range(1, 4)]
    pool = EgressPool(tmp_path, keys_path, workers=0)
    first = list(pool.prepared(items, WM))
    assert [p.item.instance_id for p in first] == [1, 2, 3]
    assert all(p.verdict is Verdict.AUTHENTIC and not p.cached for p in first)
    again = list(pool.prepared(items, WM))
    assert all(p.cached and p.payload == f.payload for p, f in zip(again, first, strict=True))
    assert not any(p.cached for p in pool.prepared(items, ORIG))  # original restores (and verifies) every time
    # a changed file is verified again, and found out
    _tamper(tmp_path / items[1].archive_path, 10, 10)
    out = list(pool.prepared(items, WM))
    assert [p.verdict for p in out] == [Verdict.AUTHENTIC, Verdict.TAMPERED, Verdict.AUTHENTIC]
    assert out[1].tampered_tiles == [[0, 0, 0, 64, 64]] and not out[1].cached
    # any change to the key store drops what was verified with it
    doc = json.loads(keys_path.read_text())
    keys_path.write_text(json.dumps(doc, indent=1))
    assert not any(p.cached for p in pool.prepared(items, WM))
    pool.close()


def test_pool_processes_give_the_same_answers_in_order(tmp_path: Path) -> None:
    keys, keys_path = _keys(tmp_path)
    items = [_archive(tmp_path, _ct(), keys, instance_id=i)[0] for i in range(1, 5)]
    _tamper(tmp_path / items[2].archive_path, 300, 300)
    pool = EgressPool(tmp_path, keys_path, workers=1)
    try:
        for policy in (WM, ORIG):
            out = list(pool.prepared(items, policy))
            assert [p.item.instance_id for p in out] == [1, 2, 3, 4]
            assert [p.verdict for p in out] == [Verdict.AUTHENTIC, Verdict.AUTHENTIC, Verdict.TAMPERED, Verdict.AUTHENTIC]
            expected = (tmp_path / items[0].archive_path).read_bytes() if policy is WM else None
            assert out[0].payload is not None and (expected is None or out[0].payload == expected)
            assert out[2].tampered_tiles == [[0, 256, 256, 320, 320]]
    finally:
        pool.close()


# -- presentation contexts ---------------------------------------------------------------------


def _accepted(sop_class: str, ts: str, *, scu: bool = True) -> PresentationContext:
    cx = PresentationContext()
    cx.context_id, cx.abstract_syntax, cx.transfer_syntax, cx.result = 1, sop_class, [ts], 0
    cx._as_scu, cx._as_scp = scu, not scu
    return cx


def test_contexts_offer_native_for_every_class_then_stored_syntaxes() -> None:
    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    contexts, left_out = propose_contexts([(ct, ExplicitVRLittleEndian), (mr, JPEG2000Lossless), (ct, ImplicitVRLittleEndian)])
    assert left_out == set()
    assert [(c.abstract_syntax, c.transfer_syntax) for c in contexts] == [
        (ct, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        (mr, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        (mr, [JPEG2000Lossless]),
    ]
    many = [(f"1.2.3.{i}", JPEG2000Lossless) for i in range(MAX_CONTEXTS + 5)]
    contexts, left_out = propose_contexts(many)
    assert len(contexts) == MAX_CONTEXTS and left_out == {f"1.2.3.{i}" for i in range(MAX_CONTEXTS, MAX_CONTEXTS + 5)}


def test_route_prefers_the_stored_syntax_then_falls_back() -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    assert route([_accepted(ct, JPEG2000Lossless)], ct, JPEG2000Lossless) is Route.AS_IS
    assert route([_accepted(ct, ExplicitVRLittleEndian)], ct, JPEG2000Lossless) is Route.NATIVE
    assert route([_accepted(ct, ImplicitVRLittleEndian)], ct, ExplicitVRLittleEndian) is Route.REENCODE
    assert route([_accepted(ct, ExplicitVRLittleEndian)], "1.2.840.10008.5.1.4.1.1.4", ExplicitVRLittleEndian) is Route.NONE
    assert route([_accepted(ct, ExplicitVRLittleEndian, scu=False)], ct, ExplicitVRLittleEndian) is Route.NONE


# -- direct C-STORE sending ------------------------------------------------------------------------


def test_dataset_offset_and_pdv_fragments(tmp_path: Path) -> None:
    ds = _ct()
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    offset = dataset_offset(data)
    assert pydicom.dcmread(io.BytesIO(data[offset:]), force=True).SOPInstanceUID == ds.SOPInstanceUID
    with pytest.raises(ValueError):
        dataset_offset(b"\x00" * 200)
    parts = _fragments(data[offset:], 7, False, 16378)
    pdus = [bytes(parts[i]) + bytes(parts[i + 1]) for i in range(0, len(parts), 2)]
    body = b""
    for n, pdu in enumerate(pdus):
        kind, _r, pdu_len, pdv_len, cx, control = struct.unpack(">BBIIBB", pdu[:12])
        assert (kind, cx) == (4, 7) and pdu_len == len(pdu) - 6 <= 16384 and pdv_len == pdu_len - 4
        assert control == (0x02 if n == len(pdus) - 1 else 0x00)  # data, last fragment flagged
        body += pdu[12:]
    assert body == data[offset:]
    (command,) = [bytes(p) for p in _fragments(b"\x01\x02", 3, True, 100)[1:]]
    assert command == b"\x01\x02" and _fragments(b"\x01\x02", 3, True, 100)[0][-1] == 0x03


def test_instances_left_when_the_association_ends_are_recorded() -> None:
    """pynetdicom stops asking for sub-operations when the association
    breaks; the instances it never asked for get a failed ``sent`` event
    (before, the log said "1 sent, 1 failed" of 20 and the rest vanished)."""
    from types import SimpleNamespace

    from dicom_wm.retrieve.egress import Prepared
    from scp.retrieve import _Peer, _suboperations

    items = [RetrieveItem(i, f"1.2.3.{i}", "1.2.840.10008.5.1.4.1.1.2", InstanceState.WATERMARKED, None, None,
                          None, None, None) for i in range(1, 6)]

    class Pool:  # every instance refused (no file): no peer needed
        def prepared(self, todo, policy, recipient=None):
            for item in todo:
                yield Prepared(item, policy, Verdict.UNREADABLE, reason="no archived file")

    class Audit:
        service, destination, address, policy, sent_count = "C-GET", "GETSCU", "127.0.0.1:1", WM, 0
        failed_count, flushed, reasons = 0, False, {}

        def sent(self, item, *, result, verdict, reason=None, **_kw):
            assert result == "failed"
            self.failed_count += 1
            self.reasons[item.sop_instance_uid] = reason

        def flush(self):
            self.flushed = True

    audit = Audit()
    gen = _suboperations(SimpleNamespace(is_cancelled=False), Pool(), items, WM, audit, _Peer())
    next(gen), next(gen)  # two sub-operations, then the association is gone
    gen.close()
    assert audit.flushed and audit.failed_count == 5
    assert [audit.reasons[f"1.2.3.{i}"] for i in (3, 4, 5)] == ["not attempted: the association ended"] * 3
    assert audit.reasons["1.2.3.1"] == "no archived file"


def test_the_instance_being_sent_when_the_association_ends_is_recorded(tmp_path: Path) -> None:
    """A requester killed mid-C-GET: the generator is closed at the yield of
    the instance pynetdicom was sending, whose sent event was lost."""
    from types import SimpleNamespace

    from scp.retrieve import _Peer, _suboperations

    keys, _ = _keys(tmp_path)
    item, _ = _archive(tmp_path, _ct(), keys)
    data = (tmp_path / item.archive_path).read_bytes()
    authentic = prepare(item, WM, keys, data)
    assert authentic.ok

    class Pool:
        def prepared(self, todo, policy, recipient=None):
            yield authentic

    reasons: dict[str, str | None] = {}
    audit = SimpleNamespace(service="C-GET", destination="GETSCU", address="127.0.0.1:1", policy=WM, sent_count=0,
                            failed_count=0, flush=lambda: None,
                            sent=lambda it, *, result, verdict, reason=None, **kw: reasons.update({result: reason}))
    ctx = PresentationContext()  # the requester accepted the stored syntax
    ctx.abstract_syntax, ctx.transfer_syntax, ctx._as_scu = item.sop_class_uid, [ExplicitVRLittleEndian], True
    ctx.context_id, ctx.result = 1, 0x00
    peer = _Peer(assoc=SimpleNamespace(accepted_contexts=[ctx]))
    gen = _suboperations(SimpleNamespace(is_cancelled=False), Pool(), [item], WM, audit, peer)
    status, ds = next(gen)
    assert ds is not None and str(ds.SOPInstanceUID) == item.sop_instance_uid  # handed over to be sent
    gen.close()
    assert reasons == {"failed": "the association ended while it was being sent"}
