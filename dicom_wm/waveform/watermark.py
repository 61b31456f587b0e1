"""Waveform embed / verify / restore: the image contract, for WaveformData.

Each multiplex group is one plane shaped (channels, samples) and goes
through the same engine as an image plane (dicom_wm.engine.plane_codec: ±1
histogram shifting on the A lattice, a second pass on the B lattice when
needed, authenticated blocks with copies and sync scan), with the 1-D
predictor of :mod:`dicom_wm.waveform.predictor`. Pooling a group's channels
into one plane is what lets short groups (a 1.2 s median beat carries ~100
bits per lead) hold one block. Tiles are (channel, time window) pairs.

Step: ECG and every other waveform change by at most one stored step (one
LSB; one quantisation level for µ-law / A-law). 16-bit linear *audio* has
so fine a scale that its noise floor leaves few ±1 carriers, so for it the
embedder picks the smallest step 2**k (k <= 4, i.e. at most ±16 LSB, below
-66 dBFS) that carries AUDIO_TARGET_BPS on the A lattice; the watermark then
works on ``stored >> k`` and keeps the low k bits. The block's channel
field (the plane is a whole group, so it names no channel) carries k;
readers try k = 0..4 and accept a block only at the step it names.

Robust layer (audio SOP classes only): with ``robust=True`` every channel
first gets the audio leak-tracing mark (:mod:`dicom_wm.robust.audio`,
docs/audio-robust.md) on its stored samples (code ranks for µ-law / A-law);
the reversible layer then carries the marked samples, and each group's
blocks carry the channels' :class:`~dicom_wm.robust.audio.AudioMark` bytes
(walk flag WALK_ROBUST), so verify and restore undo the mark exactly after
the reversible layer. Other waveforms (ECG, hemodynamic ...) ignore the
option: a leak-tracing mark on a diagnostic trace is not wanted, and a
pipeline-wide ``--robust`` must not fail them; ``robust_message`` is then
None.

Spec: docs/format.md, section "Waveforms".
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
import uuid
from dataclasses import replace

import numpy as np
from pydicom.dataset import Dataset

from dicom_wm.engine.histogram_shift import WalkOrder, carrier_mask
from dicom_wm.engine.plane_codec import PlaneReading, embed_plane, lattice_walk, read_plane, reembed_plane
from dicom_wm.errors import InsufficientCapacity, SelfCheckFailed, UnsupportedInput
from dicom_wm.header import WatermarkHeader, apply_watermark_header, read_watermark_header, remove_watermark_header
from dicom_wm.keys import KeyStore
from dicom_wm.payload.block import FORMAT_VERSION, WALK_ROBUST, PlaneBlock
from dicom_wm.payload.mac import instance_mac
from dicom_wm.pixels.reader import transfer_syntax
from dicom_wm.waveform.mac import CANONICAL_DTYPE, group_digests, waveform_identity, windows
from dicom_wm.waveform.predictor import Linear1D
from dicom_wm.waveform.companding import RANK_TO_ALAW, RANK_TO_ULAW, alaw_decode, ulaw_decode
from dicom_wm.waveform.samples import (
    SampleInterpretation,
    WaveformGroup,
    from_domain,
    read_groups,
    tile_units,
    to_domain,
    write_group,
)
from dicom_wm.watermark import (
    EmbedResult,
    RestoreResult,
    VerifyResult,
    VerifyStatus,
    check_restorable,
    no_payload_result,
    secret_lookup,
)

__all__ = [
    "PREDICTOR_CODE",
    "MAX_STEP_BITS",
    "AUDIO_TARGET_BPS",
    "AUDIO_SOP_CLASSES",
    "step_candidates",
    "auto_step",
    "embed_waveform",
    "verify_waveform",
    "restore_waveform",
    "stored_sample_sha256",
]

# Waveform blocks say "predictor 0": the 1-D linear predictor (code 0 is
# classic-rhombus in image blocks; the object type tells them apart).
PREDICTOR_CODE = 0
MAX_COPIES = 3
MAX_STEP_BITS = 4  # 16-bit linear audio changes by at most 2**4 = 16 LSB
AUDIO_TARGET_BPS = 200  # A-lattice bits per second per channel the step aims for
AUDIO_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.9.4.1",  # Basic Voice Audio Waveform Storage
        "1.2.840.10008.5.1.4.1.1.9.4.2",  # General Audio Waveform Storage
    }
)


def stored_sample_sha256(stored: list[np.ndarray]) -> str:
    """SHA-256 of every group's stored samples, groups in sequence order, each
    in Waveform Data order (sample-major, channel fastest), as little-endian
    int32."""
    h = hashlib.sha256()
    for s in stored:
        h.update(np.ascontiguousarray(s.T, dtype=CANONICAL_DTYPE).tobytes())
    return h.hexdigest()


def _walk(group: WaveformGroup) -> WalkOrder:
    return lattice_walk(group.domain, Linear1D(group.frozen), 0, group.lo, group.hi)


def step_candidates(group: WaveformGroup) -> list[int]:
    """Steps (bits) a group may have been watermarked with, in the order a
    reader tries them: 0, then 1..4 for 16-bit linear samples."""
    if group.interpretation.companded or group.interpretation.bits_allocated != 16:
        return [0]
    return list(range(0, max(0, min(MAX_STEP_BITS, group.bits_stored - 4)) + 1))


def auto_step(ds: Dataset, group: WaveformGroup, extra_bits: int = 0) -> int:
    """0, except for 16-bit linear audio: the smallest step whose A-lattice
    walk carries AUDIO_TARGET_BPS per channel, plus ``extra_bits`` per
    payload copy (the robust layer's marks), (the largest if none does)."""
    steps = step_candidates(group)
    if str(ds.get("SOPClassUID", "")) not in AUDIO_SOP_CLASSES or len(steps) == 1 or not group.sampling_frequency:
        return 0
    need = AUDIO_TARGET_BPS * group.n_samples / group.sampling_frequency * group.n_channels + extra_bits
    for k in steps:
        g = group.with_step(k)
        walk = _walk(g)
        if int(carrier_mask(g.domain.reshape(-1)[walk.index] - walk.pred).sum()) >= need:
            return k
    return steps[-1]


def _steps_of(groups: list[WaveformGroup]) -> list[int]:
    return [g.step_bits for g in groups]


def _levels(g: WaveformGroup) -> np.ndarray:
    """Sample values in quantisation levels: stored values, code ranks for
    µ-law / A-law."""
    return g.domain if g.interpretation.companded else g.stored


def _distortion(before: list[WaveformGroup], after: list[WaveformGroup]) -> tuple[float, int]:
    """PSNR over all groups and max |delta| in quantisation levels; peak
    2**BitsStored - 1 (255 for ranks)."""
    max_abs, err, weight = 0, 0.0, 0
    for a, b in zip(before, after):
        d = np.abs(_levels(b) - _levels(a))
        if d.size:
            max_abs = max(max_abs, int(d.max()))
        peak = 255.0 if a.interpretation.companded else float(2**a.bits_stored - 1)
        err += float(np.sum(d.astype(np.float64) ** 2)) / (peak * peak)
        weight += d.size
    return (math.inf if err == 0 else 10 * math.log10(weight / err)), max_abs


def _rank_table(interp: SampleInterpretation) -> np.ndarray | None:
    """Linear amplitude of each code rank (µ-law / A-law), else None."""
    if interp is SampleInterpretation.MB:
        return ulaw_decode(RANK_TO_ULAW)
    if interp is SampleInterpretation.AB:
        return alaw_decode(RANK_TO_ALAW)
    return None


def _mark_group(g: WaveformGroup, message: bytes, secret: bytes) -> tuple[WaveformGroup, bytes]:
    """The group (step 0) with the audio robust mark on every channel, and
    the marks' bytes for its blocks."""
    from dicom_wm.robust.audio import embed_audio_robust, pack_marks

    marked = np.empty_like(g.domain)
    marks = []
    for c in range(g.n_channels):
        marked[c], mark = embed_audio_robust(
            g.domain[c], g.lo, g.hi, message, secret, sample_rate=g.sampling_frequency,
            linear=_rank_table(g.interpretation), frozen=g.frozen,
        )
        marks.append(mark)
    return replace(g, stored=from_domain(marked, g.interpretation)), pack_marks(marks)


def _unmark_group(g: WaveformGroup, stored: np.ndarray, blocks: list[PlaneBlock], secret: bytes) -> np.ndarray | None:
    """The stored samples under the robust mark of ``blocks`` (``stored`` as
    is when they carry none; None when the mark bytes do not fit: an edit)."""
    data = next((b.robust_mark for b in blocks if b.walk_flags & WALK_ROBUST), None)
    if data is None:
        return stored
    from dicom_wm.robust.audio import undo_audio_robust, unpack_marks

    try:
        marks = unpack_marks(data)
        g0 = replace(g, stored=stored, step_bits=0)
        if len(marks) != g0.n_channels:
            return None
        domain = np.stack([undo_audio_robust(g0.domain[c], g0.lo, g0.hi, m, secret, frozen=g0.frozen) for c, m in enumerate(marks)])
        return from_domain(domain, g.interpretation)
    except ValueError:
        return None


def embed_waveform(
    ds: Dataset,
    keys: KeyStore,
    *,
    record_uuid: uuid.UUID | None = None,
    max_copies: int = MAX_COPIES,
    step_bits: int | None = None,
    robust: bool = False,
    recipient: str | None = None,
) -> EmbedResult:
    """Watermark the Waveform Data of ``ds`` (``ds`` is not modified).

    Every changed sample moves by one step and stays in its Bits Stored
    range; a padding-value sample never changes and no sample becomes one.
    The step is one LSB (one quantisation level for µ-law / A-law codes),
    except for 16-bit linear audio (module docstring): at most 16 LSB.

    Parameters
    ----------
    ds : Dataset
        An instance with a Waveform Sequence (ECG, Basic Voice Audio, ...).
    keys : KeyStore
        Its active key signs the payload.
    record_uuid : uuid.UUID, optional
        Provenance record; a new one when omitted.
    max_copies : int
        Payload copies per multiplex group (1..255; as many as fit).
    step_bits : int, optional
        Step 2**step_bits for every 16-bit linear group (0..4); by default
        0, or the automatic audio step.
    robust : bool
        Audio SOP classes: add the robust leak-tracing layer first (module
        docstring); ignored for other waveforms.
    recipient : str, optional
        AE title the robust message names (fingerprinted copies).

    Returns
    -------
    EmbedResult
        ``psnr_db`` and ``max_abs_delta`` are on stored values (code ranks
        for µ-law / A-law), robust layer included; ``original_sample_sha256``
        is :func:`stored_sample_sha256` of the original; ``robust_message``
        the robust message (hex) when the layer was added.

    Raises
    ------
    UnsupportedInput, InsufficientCapacity, SelfCheckFailed, KeyStoreError
    """
    if not 1 <= max_copies <= 255:
        raise ValueError(f"max_copies {max_copies} must be in 1..255")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if read_watermark_header(ds) is not None:
        raise UnsupportedInput("already watermarked by dicom-wm: restore it before embedding again")
    originals = read_groups(ds)
    if step_bits is not None and not 0 <= step_bits <= MAX_STEP_BITS:
        raise ValueError(f"step_bits {step_bits} must be in 0..{MAX_STEP_BITS}")
    for g in originals:
        if g.hi - g.lo < 5:
            raise UnsupportedInput(f"Waveform Sequence item {g.index + 1}: sample range too small to watermark")
    timings["decode"] = time.perf_counter() - t
    key_id = keys.active_id
    secret = keys.secret(key_id)
    ruuid = record_uuid or uuid.uuid4()
    robust = robust and str(ds.get("SOPClassUID", "")) in AUDIO_SOP_CLASSES
    carriers, marks, robust_message = originals, [b""] * len(originals), None
    if robust:
        from dicom_wm.robust import message_for

        t = time.perf_counter()
        message = message_for(ruuid, recipient)
        carriers, marks = [], []
        for g in originals:
            marked, mark = _mark_group(g, message, secret)
            carriers.append(marked)
            marks.append(mark)
            if len(mark) > 0xFFFF:
                raise InsufficientCapacity(
                    f"insufficient capacity: undoing the robust layer on group {g.index + 1} needs {len(mark)} bytes"
                )
        robust_message = message.hex()
        timings["robust"] = time.perf_counter() - t
    t = time.perf_counter()
    groups: list[WaveformGroup] = []
    for g, mark in zip(carriers, marks):
        if step_bits is None:
            k = auto_step(ds, g, 8 * len(mark))
        elif step_bits in step_candidates(g):
            k = step_bits
        else:
            k = 0
        groups.append(g.with_step(k))

    tiles = [tile_units(g.sampling_frequency) for g in groups]
    # the MACs cover the original samples (under the robust mark, if any)
    digests = [group_digests(secret, ruuid, g, o.stored, tile) for g, o, tile in zip(groups, originals, tiles)]
    identity = waveform_identity(ds, _steps_of(groups))
    imac = instance_mac(secret, identity, ruuid, [d for group in digests for d in group])
    walks = [_walk(g) for g in groups]
    timings["predict"] = time.perf_counter() - t

    t = time.perf_counter()
    out_domain: list[np.ndarray] = []
    payload_bits = capacity_bits = 0
    for g, walk, tile, group_macs, mark in zip(groups, walks, tiles, digests, marks):
        template = PlaneBlock(
            frame=g.index, channel=g.step_bits, n_frames=len(groups), n_channels=g.n_channels, lattice_pass=0, passes=1,
            walk_flags=WALK_ROBUST if robust else 0, copies=1, key_id=key_id, record_uuid=ruuid, instance_mac=imac, predictor_code=PREDICTOR_CODE,
            model_sha256_prefix=bytes(16), n_used=0, moved_flags=np.zeros(0, bool), tile=tile, tile_mac_len=4,
            first_tile=0, tile_macs=b"", robust_mark=mark,
        )
        emb = embed_plane(
            g.domain, walk, Linear1D(g.frozen), template, group_macs, secret, g.lo, g.hi, max_copies,
            f"multiplex group {g.index + 1} of {len(groups)}",
        )
        out_domain.append(emb.watermarked)
        payload_bits += emb.payload_bits
        capacity_bits += emb.capacity_bits
    timings["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    out = copy.deepcopy(ds)
    for g, domain in zip(groups, out_domain):
        write_group(out, g, domain)
    # Only Waveform Data changed (inside its item): nothing to record.
    apply_watermark_header(
        out,
        WatermarkHeader(
            format_version=FORMAT_VERSION, key_id=key_id, record_uuid=str(ruuid), predictor=Linear1D.name,
            model_sha256=None, lossy_source=False, original_transfer_syntax=str(transfer_syntax(ds)),
        ),
        Dataset(),
    )
    timings["encode"] = time.perf_counter() - t

    # Self-check (invariant 3): read the result back as a verifier would.
    t = time.perf_counter()
    check, restored = _verify(out, keys, reembed=False, hint=(_steps_of(groups), walks))
    if (
        check.status is not VerifyStatus.AUTHENTIC
        or restored is None
        or any(not np.array_equal(r, g.stored) for r, g in zip(restored, originals))
    ):
        raise SelfCheckFailed(
            f"self-check failed ({check.status.value}{': ' + check.error if check.error else ''}); nothing was written"
        )
    timings["self_check"] = time.perf_counter() - t

    psnr, max_abs = _distortion(originals, [replace(o, stored=g.to_stored(d)) for o, g, d in zip(originals, groups, out_domain)])
    return EmbedResult(
        dataset=out, record_uuid=str(ruuid), key_id=key_id, payload_bits=payload_bits,
        capacity_bits=capacity_bits, psnr_db=psnr, max_abs_delta=max_abs, lossy_source=False,
        original_sample_sha256=stored_sample_sha256([g.stored for g in originals]), predictor=Linear1D.name,
        model_sha256=None, timings=timings, robust_message=robust_message,
    )


def _whole_group(g: WaveformGroup) -> set[tuple[int, ...]]:
    return {(g.index, c, 0, g.n_samples) for c in range(g.n_channels)}


def _windows_where(g: WaveformGroup, tile: int, bad: np.ndarray) -> set[tuple[int, ...]]:
    """(group, channel, s0, s1) of every window where ``bad`` (channels, samples) is set."""
    return {
        (g.index, c, s0, s1)
        for c in range(g.n_channels)
        for s0, s1 in windows(g.n_samples, tile)
        if bad[c, s0:s1].any()
    }


def _read(
    g: WaveformGroup, lookup, steps: list[int], walks: list[WalkOrder] | None
) -> tuple[WaveformGroup, PlaneReading, list[str]]:
    """Read a group's blocks trying each step in turn; the group at the step
    that held them (else at step 0), its reading and every problem seen."""
    problems: list[str] = []
    fallback: tuple[WaveformGroup, PlaneReading] | None = None
    for i, k in enumerate(steps):
        gk = g.with_step(k)
        reading = read_plane(gk.domain, walks[i] if walks else _walk(gk), Linear1D(gk.frozen), lookup, gk.lo, gk.hi)
        # A block names its step (the channel field): bits read at another
        # step can, on special signals (a ramp), spell the same block.
        if reading.blocks and all(b.channel == k for b in reading.blocks):
            return gk, reading, problems
        if reading.problem:
            problems.append(reading.problem)
        if fallback is None:
            fallback = (gk, PlaneReading([], None, reading.problem))
    if fallback is None:
        raise ValueError("no step to try")
    return fallback[0], fallback[1], problems


def _verify(
    ds: Dataset,
    keys: KeyStore,
    *,
    reembed: bool = True,
    hint: tuple[list[int], list[WalkOrder]] | None = None,
) -> tuple[VerifyResult, list[np.ndarray] | None]:
    """Verify; also return each group's restored stored samples when they
    can be computed. ``hint``: the embedder's steps and walks (self-check)."""
    try:
        originals = read_groups(ds)
        header = read_watermark_header(ds)
    except UnsupportedInput as exc:
        return VerifyResult(VerifyStatus.UNSUPPORTED, error=str(exc)), None
    lookup = secret_lookup(keys)
    groups: list[WaveformGroup] = []
    readings: list[PlaneReading] = []
    problems: set[str] = set()
    for i, g in enumerate(originals):
        steps = [hint[0][i]] if hint else step_candidates(g)
        gk, reading, seen = _read(g, lookup, steps, [hint[1][i]] if hint else None)
        groups.append(gk)
        readings.append(reading)
        problems.update(seen)

    found = [b for r in readings for b in r.blocks]
    if not found:
        return no_payload_result(problems, header), None

    ref = found[0]
    result = VerifyResult(VerifyStatus.AUTHENTIC, record_uuid=str(ref.record_uuid), key_id=ref.key_id)
    consistent = ref.n_frames == len(groups) and all(
        (b.record_uuid, b.key_id, b.instance_mac, b.n_frames) == (ref.record_uuid, ref.key_id, ref.instance_mac, ref.n_frames)
        and b.predictor_code == PREDICTOR_CODE
        and b.walk_flags == ref.walk_flags
        and b.walk_flags in (0, WALK_ROBUST)
        and b.tile >= 1
        for b in found
    )
    for g, reading in zip(groups, readings):
        if any((b.frame, b.channel, b.n_channels) != (g.index, g.step_bits, g.n_channels) for b in reading.blocks):
            consistent = False
        if len({b.tile for b in reading.blocks}) > 1:
            consistent = False
    if not consistent:
        result.status = VerifyStatus.INVALID
        result.error = "multiplex groups carry payloads of different records or a different layout"
        return result, None

    secret = lookup(ref.key_id)
    tampered: set[tuple[int, ...]] = set()
    restored = [g.stored.copy() for g in groups]
    all_digests: list[bytes] = []
    payload_bits = 0
    for i, (g, reading) in enumerate(zip(groups, readings)):
        if reading.restored is None:
            tampered |= _whole_group(g)
            continue
        tile = reading.blocks[0].tile
        payload_bits += sum(8 * b.encoded_length() * b.copies for b in reading.blocks)
        original = _unmark_group(g, g.to_stored(reading.restored), reading.blocks, secret)
        if original is None:
            tampered |= _whole_group(g)
            continue
        restored[i] = original
        expected = group_digests(secret, ref.record_uuid, g, restored[i], tile)
        all_digests.extend(expected)
        carried: dict[int, bytes] = {}
        for b in reading.blocks:
            for k in range(len(b.tile_macs) // b.tile_mac_len):
                carried[b.first_tile + k] = b.tile_macs[k * b.tile_mac_len : (k + 1) * b.tile_mac_len]
        wins = windows(g.n_samples, tile)
        for c in range(g.n_channels):
            for w, (s0, s1) in enumerate(wins):
                k = c * len(wins) + w
                if k not in carried or expected[k][: len(carried[k])] != carried[k]:
                    tampered.add((g.index, c, s0, s1))
    result.payload_bits = payload_bits
    if not tampered and reembed:
        for g, reading in zip(groups, readings):
            again = reembed_plane(reading.restored, reading.blocks, Linear1D(g.frozen), secret, g.lo, g.hi)
            diff = again != g.domain
            if diff.any():
                tampered |= _windows_where(g, reading.blocks[0].tile, diff)
    if tampered:
        result.status = VerifyStatus.TAMPERED
        result.tampered_tiles = [list(t) for t in sorted(tampered)]
        result.error = f"{len(tampered)} time window(s) do not match their MAC"
        return result, restored
    if instance_mac(secret, waveform_identity(ds, _steps_of(groups)), ref.record_uuid, all_digests) != ref.instance_mac:
        result.status = VerifyStatus.INVALID
        result.error = "instance MAC mismatch: identifying attributes changed (not localisable to time windows)"
        return result, restored
    result.original_sample_sha256 = stored_sample_sha256(restored)
    return result, restored


def verify_waveform(ds: Dataset, keys: KeyStore) -> VerifyResult:
    """Verify a waveform instance. Never raises for bad input: problems come
    back as a status and an error line. ``tampered_tiles`` lists
    ``[group, channel, sample0, sample1]`` time windows (end-exclusive)."""
    return _verify(ds, keys)[0]


def restore_waveform(ds: Dataset, keys: KeyStore, *, force: bool = False) -> RestoreResult:
    """Give back the original waveform instance, sample-exact and with the
    header block removed. Raises NotAuthentic unless it verifies (or
    ``force``), UnsupportedInput when it cannot be read."""
    result, restored = _verify(ds, keys)
    check_restorable(result, restored, force)
    out = copy.deepcopy(ds)
    for g, stored in zip(read_groups(ds), restored):
        write_group(out, g, to_domain(stored, g.interpretation))
    remove_watermark_header(out, keep_identity=force)
    return RestoreResult(dataset=out, verify=result)
