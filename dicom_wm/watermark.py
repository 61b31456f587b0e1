"""Instance-level embed / verify / restore: the library's public contract.

An instance's samples are split into planes (frame x channel); each plane
carries its own authenticated block (dicom_wm.payload) through the engine's
±1 histogram shifting (dicom_wm.engine). The header gets a private block and
a Contributing Equipment item (dicom_wm.header), removed again on restore.
"""

from __future__ import annotations

import bisect
import copy
import enum
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from dicom_wm.engine import get_predictor
from dicom_wm.engine.adaptive import ADAPTIVE_PREFIX, N_WEIGHTS, AdaptedPredictor, AdaptiveFitter, weights_identity
from dicom_wm.engine.histogram_shift import WalkOrder, walk_order
from dicom_wm.engine.plane_codec import (
    STANDARD,
    PlaneReading,
    WalkMode,
    embed_plane,
    plane_walk,
    read_plane,
    reembed_plane,
)
from dicom_wm.engine.predictors import Predictor
from dicom_wm.errors import InsufficientCapacity, KeyStoreError, NotAuthentic, SelfCheckFailed, UnsupportedInput
from dicom_wm.header import (
    WatermarkHeader,
    apply_watermark_header,
    changed_elements,
    read_watermark_header,
    remove_watermark_header,
)
from dicom_wm.keys import KeyStore
from dicom_wm.payload.block import FORMAT_VERSION, PREDICTOR_CODES, TILE, WALK_ROBUST, PlaneBlock
from dicom_wm.payload.mac import (
    canonical_dtype,
    samples_sha256,
    identity_bytes,
    instance_mac,
    tile_digests,
    tile_grid,
)
from dicom_wm.pixels import PixelPlanes, read_samples, write_samples

__all__ = [
    "EmbedOptions",
    "EmbedResult",
    "VerifyStatus",
    "VerifyResult",
    "RestoreResult",
    "embed_dataset",
    "verify_dataset",
    "restore_dataset",
]


class VerifyStatus(str, enum.Enum):
    AUTHENTIC = "authentic"
    TAMPERED = "tampered"
    NOT_WATERMARKED = "not_watermarked"
    INVALID = "invalid"  # MAC mismatch that cannot be localised, or unknown key
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class EmbedOptions:
    predictor: str = "classic"  # "classic" | "learned" | "classic-adaptive" | "learned-adaptive"
    max_copies: int = 3  # payload copies per plane (at least 1 must fit)
    roi_lossless: bool = False  # walk the detected body last (unchanged when the rest suffices)
    robust: bool = False  # add the robust leak-tracing layer (dicom_wm.robust) under the reversible one
    recipient: str | None = None  # robust layer: AE title the message names (fingerprinted copies)
    threads: int = 1  # robust layer: planes marked at once (its filters release the GIL); same result


@dataclass
class EmbedResult:
    dataset: Dataset  # the watermarked dataset (input untouched)
    record_uuid: str
    key_id: str
    payload_bits: int  # bits embedded over all planes (all copies)
    capacity_bits: int  # single-layer capacity over all planes
    psnr_db: float  # peak 2**BitsStored - 1; inf when identical
    max_abs_delta: int
    lossy_source: bool
    original_sample_sha256: str  # SHA-256 of the original samples (canonical int64 LE, (f, r, c, ch))
    predictor: str
    model_sha256: str | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    walk_mode: str = "standard"  # "standard" | "roi-lossless"
    robust_message: str | None = None  # hex, when the robust layer was added
    body_unchanged: bool | None = None  # roi-lossless: no sample inside the body mask changed


@dataclass
class VerifyResult:
    status: VerifyStatus
    record_uuid: str | None = None
    key_id: str | None = None
    tampered_tiles: list[list[int]] = field(default_factory=list)  # [frame, row0, col0, row1, col1], end-exclusive
    payload_bits: int | None = None
    capacity_bits: int | None = None
    error: str | None = None
    original_sample_sha256: str | None = None  # of the restored samples (when restorable)
    # multi-frame only: {"missing", "extra", "reordered", "modified"} -> frame indices
    # (missing/reordered/modified: original indices; extra: positions in the received instance)
    frames: dict[str, list[int]] | None = None


@dataclass
class RestoreResult:
    dataset: Dataset  # the restored original
    verify: VerifyResult


# Planes per predictor call: bounds memory for long cine loops.
_CHUNK_SAMPLES = 8 * 1024 * 1024


def _to_planes(samples: np.ndarray) -> np.ndarray:
    f, r, c, ch = samples.shape
    return np.ascontiguousarray(samples.transpose(0, 3, 1, 2)).reshape(f * ch, r, c)


def _stack_planes(planes: list[np.ndarray], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """(frames, rows, cols, channels) samples from planes in ``_to_planes`` order."""
    f, r, c, ch = shape
    out = np.empty(shape, dtype)
    for p, plane in enumerate(planes):
        out[p // ch, :, :, p % ch] = plane
    return out


def _walks(
    planes: np.ndarray, predictor: Predictor, lo: int, hi: int, mode: WalkMode = STANDARD
) -> list[WalkOrder]:
    """Walk order of every plane; depends on B-lattice samples only."""
    if hasattr(predictor, "predict_a_lattice"):  # per plane, no batching to gain
        return [plane_walk(plane, predictor, lo, hi, mode.protect(plane)) for plane in planes]
    n, r, c = planes.shape
    step = max(1, _CHUNK_SAMPLES // (r * c))
    walks: list[WalkOrder] = []
    for start in range(0, n, step):
        chunk = planes[start : start + step]
        pred, cost = _for_planes(predictor, start, start + len(chunk)).predict_and_complexity(chunk)
        walks.extend(
            walk_order(pred[i], cost[i], lo, hi, mode.protect(chunk[i])) for i in range(len(chunk))
        )
    return walks


class _Distortion:
    """PSNR and max |delta| summed up plane by plane (no whole-image temporaries)."""

    def __init__(self) -> None:
        self.squared = 0.0
        self.count = 0
        self.max_abs = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        diff = np.abs(a - b)  # samples are int32 up to 16 bits: differences fit
        m = int(diff.max()) if diff.size else 0
        self.max_abs = max(self.max_abs, m)
        # the usual case (|delta| <= 1): squared error is the change count
        self.squared += np.count_nonzero(diff) if m <= 1 else float(np.sum(diff.astype(np.float64) ** 2))
        self.count += diff.size

    def psnr(self, bits_stored: int) -> float:
        mse = self.squared / self.count if self.count else 0.0
        peak = float(2**bits_stored - 1)
        return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def _for_planes(predictor: Predictor, start: int, stop: int) -> Predictor:
    """The predictor of planes ``start:stop`` (adaptive ones carry per-plane weights)."""
    return predictor.sub(start, stop) if isinstance(predictor, AdaptedPredictor) else predictor


def _identity(ds: Dataset, predictor: Predictor) -> bytes:
    """The instance MAC's identity: the identifying attributes, plus (adaptive
    predictors) the carried weights, so that editing them fails verify."""
    ident = identity_bytes(ds)
    if isinstance(predictor, AdaptedPredictor):
        ident += weights_identity(predictor.name, predictor.weights)
    return ident


def _predictor_fields(predictor: Predictor) -> tuple[int, bytes]:
    name = predictor.name
    if name.startswith(ADAPTIVE_PREFIX + "learned"):
        name = "adaptive-learned"
    code = PREDICTOR_CODES["learned"] if name.startswith("learned") else PREDICTOR_CODES[name]
    sha = bytes.fromhex(predictor.model_sha256)[:16] if predictor.model_sha256 else bytes(16)
    return code, sha


def embed_dataset(
    ds: Dataset,
    keys: KeyStore,
    *,
    record_uuid: uuid.UUID | None = None,
    options: EmbedOptions | None = None,
    engine_predictor: Predictor | None = None,
    pixels: PixelPlanes | None = None,
) -> EmbedResult:
    """Watermark ``ds`` (not modified): image pixel data, or waveform samples
    (dicom_wm.waveform). Raises UnsupportedInput, InsufficientCapacity,
    SelfCheckFailed, KeyStoreError.

    ``engine_predictor``: an already loaded predictor for the image path
    (a worker's, on its device, or a ``PrecomputedPredictor`` holding a
    batch's predictions); it replaces ``options.predictor``. ``pixels``:
    ``read_samples(ds)`` when the caller already decoded it (a batch did,
    for its shared forward passes)."""
    options = options or EmbedOptions()
    if not 1 <= options.max_copies <= 255:
        raise ValueError(f"max_copies {options.max_copies} must be in 1..255")
    if options.threads < 1:
        raise ValueError(f"threads {options.threads} must be at least 1")
    if "PixelData" not in ds:
        from dicom_wm.waveform import embed_waveform, is_waveform  # imports this module

        if is_waveform(ds):
            return embed_waveform(
                ds, keys, record_uuid=record_uuid, max_copies=options.max_copies,
                robust=options.robust, recipient=options.recipient,
            )
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if read_watermark_header(ds) is not None:
        raise UnsupportedInput("already watermarked by dicom-wm: restore it before embedding again")
    px = pixels if pixels is not None else read_samples(ds)
    timings["decode"] = time.perf_counter() - t
    f_count, rows, cols, ch_count = px.samples.shape
    if rows < 2 or cols < 2:
        raise UnsupportedInput(f"image {rows}x{cols} is too small to watermark (needs at least 2x2)")
    if px.hi - px.lo < 5:
        raise UnsupportedInput(f"Bits Stored {px.bits_stored} is too few to watermark (needs at least 3)")
    predictor = engine_predictor if engine_predictor is not None else get_predictor(options.predictor)
    key_id = keys.active_id
    secret = keys.secret(key_id)
    ruuid = record_uuid or uuid.uuid4()

    t = time.perf_counter()
    dtype = canonical_dtype(px.bits_stored, px.signed)
    sample_sha = samples_sha256(px.samples, dtype)
    pcode, psha = _predictor_fields(predictor)
    planes = _to_planes(px.samples)
    mode = WalkMode(roi=options.roi_lossless, inverted=px.photometric == "MONOCHROME1")
    digests = [
        tile_digests(secret, ruuid, p // ch_count, p % ch_count, planes[p], TILE, dtype) for p in range(len(planes))
    ]
    # The reversible layer carries whatever it is given: the original planes,
    # or (robust option) the planes with the robust mark, whose undo
    # information then travels in each plane's block.
    carriers, marks, robust_message = planes, [b""] * len(planes), None
    if options.robust:
        t_robust = time.perf_counter()
        carriers, marks, robust_message = _apply_robust(
            planes, px.lo, px.hi, ruuid, options.recipient, secret, options.threads
        )
        timings["robust"] = time.perf_counter() - t_robust
    if isinstance(predictor, AdaptiveFitter):  # per-plane weights, fitted on what the layer carries
        predictor = predictor.fit(carriers, px.lo, px.hi)
    imac = instance_mac(secret, _identity(ds, predictor), ruuid, [d for plane in digests for d in plane])
    walks = _walks(carriers, predictor, px.lo, px.hi, mode)
    timings["predict"] = time.perf_counter() - t

    t = time.perf_counter()
    new_samples = np.empty_like(px.samples)  # written plane by plane: no stacked copy of a long cine
    body_changed = False
    distortion = _Distortion()
    payload_bits = capacity_bits = 0
    for p, walk in enumerate(walks):
        frame, channel = divmod(p, ch_count)
        template = PlaneBlock(
            frame=frame, channel=channel, n_frames=f_count, n_channels=ch_count, lattice_pass=0, passes=1,
            walk_flags=WALK_ROBUST if options.robust else 0, copies=1, key_id=key_id, record_uuid=ruuid,
            instance_mac=imac, predictor_code=pcode, model_sha256_prefix=psha, n_used=0,
            moved_flags=np.zeros(0, bool), tile=TILE, tile_mac_len=4, first_tile=0, tile_macs=b"",
            robust_mark=marks[p],
        )
        where = f"frame {frame + 1} of {f_count}" + (f", channel {channel}" if ch_count > 1 else "")
        emb = embed_plane(
            carriers[p], walk, _for_planes(predictor, p, p + 1), template, digests[p],
            secret, px.lo, px.hi, options.max_copies, where, mode,
        )
        new_samples[frame, :, :, channel] = emb.watermarked
        distortion.add(emb.watermarked, planes[p])
        if mode.roi and not body_changed:
            body_changed = bool((emb.watermarked != planes[p])[mode.protect(planes[p])].any())
        payload_bits += emb.payload_bits
        capacity_bits += emb.capacity_bits
    timings["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    out = _writable_copy(ds)
    write_samples(out, new_samples, px)
    original_elements, added_tags = changed_elements(ds, out)
    apply_watermark_header(
        out,
        WatermarkHeader(
            format_version=FORMAT_VERSION, key_id=key_id, record_uuid=str(ruuid), predictor=predictor.name,
            model_sha256=predictor.model_sha256, lossy_source=px.lossy_source,
            original_transfer_syntax=px.source_transfer_syntax,
            adaptive_weights=(
                predictor.weights.astype("<i2").tobytes() if isinstance(predictor, AdaptedPredictor) else None
            ),
        ),
        original_elements,
        added_tags=added_tags,
    )
    timings["encode"] = time.perf_counter() - t

    # Self-check (invariant 3): read the stored samples back and extract as a
    # verifier would; the restored planes must equal the original ones and
    # every block must be ours (then every tile and instance MAC matches too).
    t = time.perf_counter()
    problem = _self_check(out, planes, carriers, walks, predictor, keys, imac, ruuid, mode)
    if problem:
        raise SelfCheckFailed(f"self-check failed ({problem}); nothing was written")
    timings["self_check"] = time.perf_counter() - t

    psnr, max_abs = distortion.psnr(px.bits_stored), distortion.max_abs
    body_unchanged = not body_changed if mode.roi else None
    return EmbedResult(
        dataset=out, record_uuid=str(ruuid), key_id=key_id, payload_bits=payload_bits,
        capacity_bits=capacity_bits, psnr_db=psnr, max_abs_delta=max_abs, lossy_source=px.lossy_source,
        original_sample_sha256=sample_sha, predictor=predictor.name, model_sha256=predictor.model_sha256,
        timings=timings, walk_mode="roi-lossless" if mode.roi else "standard", body_unchanged=body_unchanged,
        robust_message=robust_message,
    )


def _self_check(
    out: Dataset,
    planes: np.ndarray,
    carriers: np.ndarray,
    walks: list[WalkOrder],
    predictor: Predictor,
    keys: KeyStore,
    imac: bytes,
    ruuid: uuid.UUID,
    mode: WalkMode,
) -> str | None:
    """None when extract + restore of ``out`` gives back ``planes``, else why not.

    It reuses the embedder's A walks: they came from the original B lattice,
    and a plane whose B lattice changed cannot restore to the original."""
    try:
        px = read_samples(out)
    except UnsupportedInput as exc:
        return f"written pixel data does not decode: {exc}"
    ch_count = px.samples.shape[3]
    lookup = secret_lookup(keys)
    for p, walk in enumerate(walks):
        stored = np.ascontiguousarray(px.samples[p // ch_count, :, :, p % ch_count])  # one plane at a time
        reading = read_plane(stored, walk, _for_planes(predictor, p, p + 1), lookup, px.lo, px.hi, mode)
        if reading.restored is None:
            return f"plane {p}: payload not readable ({reading.problem})"
        if any(b.instance_mac != imac or b.record_uuid != ruuid for b in reading.blocks):
            return f"plane {p}: payload does not match"
        if not np.array_equal(reading.restored, carriers[p]):
            return f"plane {p}: restore differs from the original"
        if carriers is not planes:
            original = _undo_robust(reading.restored, reading.blocks, px.lo, px.hi, lookup(reading.blocks[0].key_id))
            if original is None or not np.array_equal(original, planes[p]):
                return f"plane {p}: undoing the robust layer differs from the original"
    return None


def _apply_robust(
    planes: np.ndarray, lo: int, hi: int, ruuid: uuid.UUID, recipient: str | None, secret: bytes, threads: int = 1
) -> tuple[np.ndarray, list[bytes], str]:
    """Robust leak-tracing mark on every plane; returns the marked planes,
    each plane's undo information and the message (hex). Each plane's mark
    depends on that plane alone, so ``threads`` > 1 marks several at once
    with the same result."""
    try:
        from dicom_wm import robust
    except ImportError as exc:  # a deployment without the robust subpackage
        raise UnsupportedInput(f"the robust layer is not available: {exc}") from None
    message = robust.message_for(ruuid, recipient)
    marked = np.empty_like(planes)

    def mark_plane(p: int) -> bytes:
        marked[p], mark = robust.embed_robust(planes[p], lo, hi, message, secret)
        return mark.to_bytes()

    if threads > 1 and len(planes) > 1:
        with ThreadPoolExecutor(min(threads, len(planes))) as pool:
            marks = list(pool.map(mark_plane, range(len(planes))))
    else:
        marks = [mark_plane(p) for p in range(len(planes))]
    for p, mark_bytes in enumerate(marks):
        if len(mark_bytes) > 0xFFFF:
            raise InsufficientCapacity(
                f"insufficient capacity: undoing the robust layer on plane {p} needs {len(mark_bytes)} bytes "
                "(too many clipped samples)"
            )
    return marked, marks, message.hex()


def _undo_robust(carrier: np.ndarray, blocks: list[PlaneBlock], lo: int, hi: int, secret: bytes) -> np.ndarray | None:
    """The original plane under a robust mark (None when the mark bytes are
    unusable: an edited image). Planes without a robust mark are returned as is."""
    mark_bytes = next((b.robust_mark for b in blocks if b.walk_flags & WALK_ROBUST), None)
    if mark_bytes is None:
        return carrier
    from dicom_wm import robust

    try:
        return robust.undo_robust(carrier, lo, hi, robust.RobustMark.from_bytes(mark_bytes), secret)
    except ValueError:
        return None


# Elements that writing samples or the header may change in place: copied
# deeply; everything else is shared with the input, which is not modified.
_WRITTEN_GROUPS = (0x0028, 0x7FE0, 0x0077)
_CONTRIBUTING_EQUIPMENT = 0x0018A001


def _writable_copy(ds: Dataset) -> Dataset:
    """A copy of ``ds`` that embed or restore may modify without touching ``ds``.

    A full deepcopy costs more than the whole watermark on a CT slice, so
    only the elements we write are copied. Big-endian sources are converted
    element by element by the pixel writer, so they get a full deepcopy."""
    if not ds.original_encoding[1] and ds.original_encoding[1] is not None:
        return copy.deepcopy(ds)
    out = _shallow_copy(ds)
    for tag in list(out._dict):
        if tag.group in _WRITTEN_GROUPS or tag == _CONTRIBUTING_EQUIPMENT:
            out._dict[tag] = _element_copy(ds._dict[tag])
    if hasattr(ds, "file_meta"):
        meta = _shallow_copy(ds.file_meta)
        for tag in list(meta._dict):
            meta._dict[tag] = _element_copy(meta._dict[tag])
        out.file_meta = meta
    return out


def _shallow_copy(ds: Dataset) -> Dataset:
    """``copy.copy`` with the instance's own containers (elements, private
    block cache, pixel caches, charset list), which copy.copy would share."""
    out = copy.copy(ds)
    for name, value in vars(ds).items():
        if isinstance(value, (dict, list)):
            setattr(out, name, copy.copy(value))
    return out


# Element values that nothing changes in place: a copy may share them.
_IMMUTABLE_VALUES = (str, bytes, int, float, type(None))


def _element_copy(elem: DataElement | RawDataElement) -> DataElement | RawDataElement:
    """A copy of a data element that can be changed without touching
    ``elem``: immutable values are shared, anything else (sequences,
    multi-values) is deep-copied. Much cheaper than deepcopy per element.
    A raw (not yet parsed) element is an immutable tuple: parsing it in the
    copy stores the parsed element in the copy only."""
    if isinstance(elem, RawDataElement):
        return elem
    if elem.VR == "SQ" or not isinstance(elem.value, _IMMUTABLE_VALUES):
        return copy.deepcopy(elem)
    out = elem.__class__.__new__(elem.__class__)
    out.__dict__.update(elem.__dict__)
    return out


def _candidate_predictors(
    header: WatermarkHeader | None, hint: Predictor | None, lo: int, hi: int, n_planes: int
) -> list[Predictor]:
    adaptive = header is not None and header.predictor.startswith(ADAPTIVE_PREFIX)
    if hint is not None and not adaptive:
        return [hint]
    names = ([header.predictor] if header else []) + ["classic"]
    out: list[Predictor] = []
    for name in names:
        try:
            if hint is not None and adaptive and name == header.predictor and hint.name == name[len(ADAPTIVE_PREFIX):]:
                pred: Predictor = AdaptiveFitter(hint)
            else:
                pred = get_predictor(name)
        except Exception:  # noqa: BLE001 - a missing optional model only narrows the search
            continue
        if isinstance(pred, AdaptiveFitter):  # the reader uses the carried weights, never refits
            weights = _carried_weights(header, n_planes)
            if weights is None:
                continue
            pred = AdaptedPredictor(pred.base, weights, lo, hi)
        if all(p.name != pred.name for p in out):
            out.append(pred)
    return out


def _carried_weights(header: WatermarkHeader | None, n_planes: int) -> np.ndarray | None:
    """The adaptive rows of the header, (n_planes, N_WEIGHTS) int16, or None when
    absent or not one row per plane."""
    raw = header.adaptive_weights if header is not None else None
    if raw is None or len(raw) != 2 * N_WEIGHTS * n_planes:
        return None
    return np.frombuffer(raw, dtype="<i2").reshape(n_planes, N_WEIGHTS).astype(np.int16)


def secret_lookup(keys: KeyStore):
    """Key id -> secret, raising KeyError for unknown ids (the plane codec's
    contract)."""

    def lookup(key_id: str) -> bytes:
        try:
            return keys.secret(key_id)
        except KeyStoreError:
            raise KeyError(key_id) from None

    return lookup


def _plane_tiles(frame: int, rows: int, cols: int, bad: np.ndarray | None = None) -> set[tuple[int, ...]]:
    """Tiles of one plane: all of them, or those where ``bad`` (rows, cols) is set."""
    tiles = tile_grid(rows, cols, TILE)
    if bad is None:
        return {(frame, *t) for t in tiles}
    return {(frame, r0, c0, r1, c1) for (r0, c0, r1, c1) in tiles if bad[r0:r1, c0:c1].any()}


def _verify(
    ds: Dataset,
    keys: KeyStore,
    *,
    reembed: bool = True,
    predictor_hint: Predictor | None = None,
) -> tuple[VerifyResult, PixelPlanes | None]:
    """Verify; also return the restored samples (with how the stored ones
    were decoded) when they can be computed."""
    try:
        px = read_samples(ds)
        header = read_watermark_header(ds)
    except UnsupportedInput as exc:
        return VerifyResult(VerifyStatus.UNSUPPORTED, error=str(exc)), None
    f_count, rows, cols, ch_count = px.samples.shape
    if rows < 2 or cols < 2 or px.hi - px.lo < 5:
        status = VerifyStatus.INVALID if header else VerifyStatus.NOT_WATERMARKED
        return VerifyResult(status, error="image too small to carry a watermark"), None
    planes = _to_planes(px.samples)
    lookup = secret_lookup(keys)
    inverted = px.photometric == "MONOCHROME1"
    candidates = [
        (pred, WalkMode(roi=roi, inverted=inverted))
        for pred in _candidate_predictors(header, predictor_hint, px.lo, px.hi, len(planes))
        for roi in (False, True)
    ]
    if header is None and f_count > _PROBE_FRAMES and not _probe_finds_payload(
        planes, _probe_planes(f_count, ch_count), candidates, lookup, px.lo, px.hi
    ):
        return VerifyResult(VerifyStatus.NOT_WATERMARKED), None

    readings: list[PlaneReading] = []
    predictor: Predictor | None = None
    mode = STANDARD
    for predictor, mode in candidates:
        walks = _walks(planes, predictor, px.lo, px.hi, mode)
        readings = [
            read_plane(planes[p], w, _for_planes(predictor, p, p + 1), lookup, px.lo, px.hi, mode)
            for p, w in enumerate(walks)
        ]
        if any(r.blocks for r in readings):
            break
    found = [b for r in readings for b in r.blocks]
    if not found or predictor is None:
        return no_payload_result({r.problem for r in readings}, header), None

    ref = found[0]
    result = VerifyResult(VerifyStatus.AUTHENTIC, record_uuid=str(ref.record_uuid), key_id=ref.key_id)
    if any(
        (b.record_uuid, b.key_id, b.instance_mac, b.n_frames, b.n_channels)
        != (ref.record_uuid, ref.key_id, ref.instance_mac, ref.n_frames, ref.n_channels)
        for b in found
    ) or ref.n_channels != ch_count:
        result.status = VerifyStatus.INVALID
        result.error = "planes carry payloads of different records or a different channel layout"
        return result, None
    secret = lookup(ref.key_id)
    origin = _frame_origins(readings, f_count, ch_count)
    tampered: set[tuple[int, ...]] = set()
    modified: set[int] = set()
    # Per-plane references, not copies (a long cine's planes run to GBs):
    # what the reversible layer carried (robust-marked, with the robust
    # option), and the original under it.
    restored_planes: list[np.ndarray] = list(planes)
    carrier_planes: list[np.ndarray] = list(planes)
    payload_bits = 0
    grid = tile_grid(rows, cols, TILE)
    dtype = canonical_dtype(px.bits_stored, px.signed)
    digests: dict[tuple[int, int], list[bytes]] = {}
    for p, reading in enumerate(readings):
        frame, channel = divmod(p, ch_count)
        source = origin[frame]
        if source is None or reading.restored is None:
            tampered |= _plane_tiles(frame, rows, cols)
            continue
        payload_bits += sum(8 * b.encoded_length() * b.copies for b in reading.blocks)
        carrier_planes[p] = reading.restored
        original = _undo_robust(reading.restored, reading.blocks, px.lo, px.hi, secret)
        if original is None:
            tampered |= _plane_tiles(frame, rows, cols)
            modified.add(source)
            continue
        restored_planes[p] = original
        expected = tile_digests(secret, ref.record_uuid, source, channel, original, TILE, dtype)
        digests[(source, channel)] = expected
        carried: dict[int, bytes] = {}
        for b in reading.blocks:
            for i in range(len(b.tile_macs) // b.tile_mac_len):
                carried[b.first_tile + i] = b.tile_macs[i * b.tile_mac_len : (i + 1) * b.tile_mac_len]
        for i, tile in enumerate(grid):
            if i not in carried or expected[i][: len(carried[i])] != carried[i]:
                tampered.add((frame, *tile))
                modified.add(source)
    restored = _stack_planes(restored_planes, px.samples.shape, px.samples.dtype)
    del restored_planes
    result.payload_bits = payload_bits
    if not tampered and reembed:
        for p, reading in enumerate(readings):
            expected_plane = reembed_plane(
                carrier_planes[p], reading.blocks, _for_planes(predictor, p, p + 1), secret, px.lo, px.hi, mode,
                walk_a=walks[p],
            )
            diff = expected_plane != planes[p]
            if diff.any():
                tampered |= _plane_tiles(p // ch_count, rows, cols, diff)
                modified.add(origin[p // ch_count])  # type: ignore[arg-type]  # every plane has a source here
    frames = _frame_report(origin, ref.n_frames, modified)
    if ref.n_frames > 1 or f_count > 1:
        result.frames = frames
    if tampered or any(frames.values()):
        result.status = VerifyStatus.TAMPERED
        result.tampered_tiles = [list(t) for t in sorted(tampered)]
        problems = [f"{len(tampered)} tile(s) do not match their MAC"] if tampered else []
        problems += [f"frames {kind}: {idx}" for kind, idx in frames.items() if idx and kind != "modified"]
        result.error = "; ".join(problems)
        return result, replace(px, samples=restored)
    ordered = [d for f in range(ref.n_frames) for c in range(ch_count) for d in digests[(f, c)]]
    if instance_mac(secret, _identity(ds, predictor), ref.record_uuid, ordered) != ref.instance_mac:
        result.status = VerifyStatus.INVALID
        result.error = "instance MAC mismatch: identifying attributes changed (not localisable to tiles)"
        return result, replace(px, samples=restored)
    result.original_sample_sha256 = samples_sha256(restored, dtype)
    return result, replace(px, samples=restored)


# Without our header, a multi-frame instance is first probed on a few frames
# spread over it (first and last included): reading every plane of an
# unwatermarked 120-frame cine in both walk modes took 45 s to say
# "not_watermarked". Only a file that lost its header *and* had every probed
# frame replaced is reported not_watermarked instead of tampered (never
# authentic; a retrieve refuses it either way, as its record says WATERMARKED).
_PROBE_FRAMES = 5


def _probe_planes(f_count: int, ch_count: int) -> list[int]:
    frames = sorted({int(f) for f in np.linspace(0, f_count - 1, _PROBE_FRAMES).round()})
    return [f * ch_count + c for f in frames for c in range(ch_count)]


def _probe_finds_payload(
    planes: np.ndarray, probe: list[int], candidates: list[tuple[Predictor, WalkMode]], lookup, lo: int, hi: int
) -> bool:
    """Whether any probed plane holds a block, or something that looks like
    one (a MAC failure, an unknown key id), in any candidate walk."""
    sub = planes[probe]
    for predictor, mode in candidates:
        for p, walk in zip(probe, _walks(sub, predictor, lo, hi, mode)):
            reading = read_plane(planes[p], walk, _for_planes(predictor, p, p + 1), lookup, lo, hi, mode)
            if reading.blocks or reading.problem not in (None, "none"):
                return True
    return False


def _frame_origins(readings: list[PlaneReading], f_count: int, ch_count: int) -> list[int | None]:
    """For each received frame, the original frame index its payload names
    (None when its planes carry no consistent payload, or when it repeats a
    frame already seen)."""
    origin: list[int | None] = []
    seen: set[int] = set()
    for j in range(f_count):
        names = set()
        for c in range(ch_count):
            reading = readings[j * ch_count + c]
            if not reading.blocks or any(b.channel != c for b in reading.blocks):
                names.add(None)
            names.update(b.frame for b in reading.blocks)
        source = names.pop() if len(names) == 1 else None
        if source is not None and source in seen:
            source = None  # a duplicated frame counts as inserted
        if source is not None:
            seen.add(source)
        origin.append(source)
    return origin


def _frame_report(origin: list[int | None], n_frames: int, modified: set[int]) -> dict[str, list[int]]:
    """missing / modified: original frame indices; extra: received positions
    with no frame of this record; reordered: original indices outside the
    longest run of frames that kept their relative order."""
    present = [o for o in origin if o is not None]
    keep = _longest_increasing(present)
    return {
        "missing": sorted(set(range(n_frames)) - set(present)),
        "extra": [j for j, o in enumerate(origin) if o is None],
        "reordered": sorted(set(present) - keep),
        "modified": sorted(modified),
    }


def _longest_increasing(seq: list[int]) -> set[int]:
    """Values of one longest strictly increasing subsequence (patience sort)."""
    tails: list[int] = []  # indices into seq
    tail_values: list[int] = []
    prev = [-1] * len(seq)
    for i, value in enumerate(seq):
        k = bisect.bisect_left(tail_values, value)
        if k:
            prev[i] = tails[k - 1]
        if k == len(tails):
            tails.append(i)
            tail_values.append(value)
        else:
            tails[k] = i
            tail_values[k] = value
    out: set[int] = set()
    i = tails[-1] if tails else -1
    while i >= 0:
        out.add(seq[i])
        i = prev[i]
    return out


def no_payload_result(problems: set[str | None], header: WatermarkHeader | None) -> VerifyResult:
    """The verdict when no authentic block was found: an unknown key id, a
    watermark that is there but unreadable (MAC failures, or our header
    without a payload), or no watermark at all."""
    unknown = sorted(p.split(":", 1)[1] for p in problems if p and p.startswith("unknown_key:"))
    if unknown:
        return VerifyResult(VerifyStatus.INVALID, key_id=unknown[0], error=f"unknown key id {unknown[0]!r}")
    if "mac" in problems or header is not None:
        return VerifyResult(
            VerifyStatus.INVALID,
            record_uuid=header.record_uuid if header else None,
            key_id=header.key_id if header else None,
            error="watermark present but no authentic payload could be read",
        )
    return VerifyResult(VerifyStatus.NOT_WATERMARKED)


def verify_dataset(ds: Dataset, keys: KeyStore) -> VerifyResult:
    """Never raises for bad input: problems come back as a status + error."""
    if "PixelData" not in ds:
        from dicom_wm.waveform import is_waveform, verify_waveform

        if is_waveform(ds):
            return verify_waveform(ds, keys)
    return _verify(ds, keys)[0]


def check_restorable(result: VerifyResult, restored: object | None, force: bool) -> None:
    """Refuse a restore (image or waveform) unless the instance verified, or
    ``force`` was given and something can be restored."""
    if result.status is VerifyStatus.UNSUPPORTED:
        raise UnsupportedInput(result.error or "unsupported")
    if result.status is not VerifyStatus.AUTHENTIC and not force:
        detail = result.error or result.status.value
        raise NotAuthentic(f"instance is {result.status.value} ({detail}); refusing to restore without force")
    if restored is None:
        raise NotAuthentic(f"instance is {result.status.value}: nothing can be restored")


def restore_dataset(ds: Dataset, keys: KeyStore, *, force: bool = False) -> RestoreResult:
    """Give back the original. Raises NotAuthentic unless the instance verifies
    (or ``force``), UnsupportedInput / NotAuthentic when nothing can be restored."""
    if "PixelData" not in ds:
        from dicom_wm.waveform import is_waveform, restore_waveform

        if is_waveform(ds):
            return restore_waveform(ds, keys, force=force)
    result, restored = _verify(ds, keys)
    check_restorable(result, restored, force)
    px = restored
    out = _writable_copy(ds)
    write_samples(out, restored.samples, px)
    remove_watermark_header(out, keep_identity=force)
    # The restored pixel data is native, so it keeps the photometric
    # interpretation it was decoded to (YBR_FULL_422 comes back as YBR_FULL,
    # JPEG 2000 YBR_ICT/RCT as RGB): the original's would not describe it.
    if out.get("PhotometricInterpretation") != px.photometric:
        out.PhotometricInterpretation = px.photometric
    return RestoreResult(dataset=out, verify=result)
