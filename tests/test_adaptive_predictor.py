"""Forward-adaptive predictors (classic-adaptive, learned-adaptive): the
integer adapted stage (torch == numpy reference, on CUDA too when present),
B-lattice-only context, the per-plane fit, and whole-instance round trips
with the weights carried in the private header (tampering detected)."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from dicom_wm.engine import get_predictor
from dicom_wm.engine.adaptive import (
    FLAG_CLASSIC_BASE,
    N_WEIGHTS,
    AdaptedPredictor,
    AdaptiveFitter,
    adapt_reference,
    adapt_torch,
    fit_plane_weights,
)
from dicom_wm.engine.histogram_shift import carrier_mask, walk_order
from dicom_wm.engine.predictors import ClassicRhombus, a_lattice_mask
from dicom_wm.errors import InsufficientCapacity
from dicom_wm.header import PRIVATE_CREATOR, PRIVATE_GROUP, read_watermark_header
from dicom_wm.keys import KeyStore
from dicom_wm.pixels import read_samples
from dicom_wm.watermark import EmbedOptions, VerifyStatus, embed_dataset, restore_dataset, verify_dataset
from corpus import synthetic_image

KEYS = KeyStore.in_memory({"ktest0001": b"\x11" * 32}, "ktest0001")
DEPTHS = [(bits, signed) for bits in (8, 10, 12, 14, 16) for signed in (False, True)]


def bit_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def smooth_planes(shape, bits, signed, rng) -> np.ndarray:
    """A smooth, anisotropic image with noise and saturated corners."""
    lo, hi = bit_range(bits, signed)
    n, r, c = shape
    y, x = np.mgrid[0:r, 0:c]
    base = (np.sin(x / 15.0) + 0.3 * np.cos(y / 6.0)) * min((hi - lo) / 5, 400) + (lo + hi) / 2
    img = np.rint(base[None] + rng.normal(0, 1.5, shape)).astype(np.int64)
    img[:, : r // 5, : c // 5] = lo
    img[:, -(r // 5) :, -(c // 5) :] = hi
    return np.clip(img, lo, hi)


@pytest.mark.parametrize("bits,signed", DEPTHS)
@pytest.mark.parametrize("shape", [(1, 2, 2), (2, 3, 5), (1, 7, 6), (3, 33, 40)])
def test_torch_adapted_stage_equals_numpy_reference(bits, signed, shape):
    rng = np.random.default_rng(bits * 7 + signed + shape[2])
    lo, hi = bit_range(bits, signed)
    planes = rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64)
    base, _ = ClassicRhombus().predict_and_complexity(planes)
    # random weights over the whole int16 range, and the extremes
    weights = rng.integers(-(1 << 15) + 1, 1 << 15, size=(shape[0], N_WEIGHTS)).astype(np.int16)
    weights[0, :] = 32767
    weights[:, 0] = rng.integers(0, 2, size=shape[0])  # flags (not read by the stage itself)
    ref = adapt_reference(planes, base, weights, lo, hi)
    got = adapt_torch(torch.from_numpy(planes), torch.from_numpy(base), weights, lo, hi).numpy()
    assert np.array_equal(got, ref)
    a = a_lattice_mask(*shape[1:])
    assert ref[:, a].min() >= lo and ref[:, a].max() <= hi
    assert np.array_equal(ref[:, ~a], base[:, ~a])


def _fitted(name: str, base_name: str = "learned"):
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        px = read_samples(pydicom.dcmread(path))
    planes = np.ascontiguousarray(px.samples.transpose(0, 3, 1, 2)).reshape(-1, *px.samples.shape[1:3])
    r0, c0 = max(0, planes.shape[1] // 2 - 128), max(0, planes.shape[2] // 2 - 128)
    planes = planes[:, r0 : r0 + 256, c0 : c0 + 256]  # a central crop
    fitter = get_predictor(base_name + "-adaptive")
    assert isinstance(fitter, AdaptiveFitter)
    return planes.astype(np.int64), fitter.fit(planes, px.lo, px.hi), px


@pytest.mark.parametrize("name", ["MR2_UNCR.dcm", "693_UNCR.dcm"])
def test_torch_equals_reference_on_real_fitted_weights(name):
    planes, adapted, px = _fitted(name)
    base, _ = adapted.base.predict_and_complexity(planes)
    ref = adapt_reference(planes, base, adapted.weights, px.lo, px.hi)
    got = adapt_torch(torch.from_numpy(planes), torch.from_numpy(base), adapted.weights, px.lo, px.hi).numpy()
    assert np.array_equal(got, ref)
    if torch.cuda.is_available():
        cuda = adapt_torch(torch.from_numpy(planes).cuda(), torch.from_numpy(base).cuda(), adapted.weights, px.lo, px.hi)
        assert np.array_equal(cuda.cpu().numpy(), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bits,signed", DEPTHS)
def test_cuda_adapted_stage_equals_cpu(bits, signed):
    rng = np.random.default_rng(bits + 100 * signed)
    lo, hi = bit_range(bits, signed)
    planes = smooth_planes((2, 96, 80), bits, signed, rng)
    base, _ = ClassicRhombus().predict_and_complexity(planes)
    weights = rng.integers(-4000, 4000, size=(2, N_WEIGHTS)).astype(np.int16)
    weights[:, 0] = 0
    cpu = adapt_torch(torch.from_numpy(planes), torch.from_numpy(base), weights, lo, hi).numpy()
    gpu = adapt_torch(torch.from_numpy(planes).cuda(), torch.from_numpy(base).cuda(), weights, lo, hi).cpu().numpy()
    assert np.array_equal(cpu, gpu)


def test_a_lattice_outputs_ignore_a_samples():
    rng = np.random.default_rng(5)
    planes = smooth_planes((2, 40, 41), 12, False, rng)
    weights = rng.integers(-3000, 3000, size=(2, N_WEIGHTS)).astype(np.int16)
    weights[:, 0] = [0, 1]  # plane 1 on the classic base
    for base_pred in (ClassicRhombus(), get_predictor("learned")):
        adapted = AdaptedPredictor(base_pred, weights, 0, 4095)
        p0, c0 = adapted.predict_and_complexity(planes)
        other = planes.copy()
        a = a_lattice_mask(40, 41)
        other[:, a] = rng.integers(0, 4096, size=other[:, a].shape)
        p1, c1 = adapted.predict_and_complexity(other)
        assert np.array_equal(p0[:, a], p1[:, a]) and np.array_equal(c0[:, a], c1[:, a])


def _capacity(plane, pred, cost, lo, hi) -> int:
    w = walk_order(pred, cost, lo, hi)
    return int(carrier_mask(plane.reshape(-1)[w.index] - w.pred).sum())


@pytest.mark.parametrize("base_name", ["classic", "learned"])
def test_fit_never_loses_and_gains_on_mr2(base_name):
    """Per plane, the fitted stage is kept only when it carries more; on a
    crop of the held-out MR2 it must carry clearly more than the base."""
    planes, adapted, px = _fitted("MR2_UNCR.dcm", base_name)
    base, cost = adapted.base.predict_and_complexity(planes)
    pred, cost2 = adapted.predict_and_complexity(planes)
    if adapted.weights[0, 0] == 0:  # the plane's own base: same walk order
        assert np.array_equal(cost, cost2)
    cap_base = _capacity(planes[0], base[0], cost[0], px.lo, px.hi)
    classic, classic_cost = ClassicRhombus().predict_and_complexity(planes)
    cap_classic = _capacity(planes[0], classic[0], classic_cost[0], px.lo, px.hi)
    cap_adapted = _capacity(planes[0], pred[0], cost2[0], px.lo, px.hi)
    assert adapted.weights[0, 1:].any()
    assert cap_adapted > 1.10 * max(cap_base, cap_classic)


def test_fit_falls_back_to_the_base_on_noise():
    rng = np.random.default_rng(3)
    plane = rng.integers(0, 256, size=(64, 64), dtype=np.int64)
    base, cost = ClassicRhombus().predict_and_complexity(plane[None])
    w, cap = fit_plane_weights(plane, base[0], cost[0], 0, 255)
    pred = adapt_reference(plane[None], base, w[None], 0, 255)[0]
    assert cap == _capacity(plane, pred, cost[0], 0, 255) >= _capacity(plane, base[0], cost[0], 0, 255)
    if not w.any():
        assert np.array_equal(pred[a_lattice_mask(64, 64)], base[0][a_lattice_mask(64, 64)])


def test_adapted_predictor_checks_plane_count():
    adapted = AdaptedPredictor(ClassicRhombus(), np.zeros((2, N_WEIGHTS), np.int16), 0, 255)
    with pytest.raises(ValueError):
        adapted.predict_and_complexity(np.zeros((3, 8, 8), np.int64))
    with pytest.raises(TypeError):
        AdaptiveFitter(ClassicRhombus()).predict_and_complexity(np.zeros((1, 8, 8), np.int64))
    with pytest.raises(ValueError):
        adapt_reference(np.zeros((1, 4, 4), np.int64), np.zeros((1, 4, 4), np.int64), np.zeros((1, 3), np.int16), 0, 9)
    bad_flags = np.zeros((1, N_WEIGHTS), np.int16)
    bad_flags[0, 0] = 2
    with pytest.raises(ValueError):
        AdaptedPredictor(ClassicRhombus(), bad_flags, 0, 255).predict_and_complexity(np.zeros((1, 8, 8), np.int64))


# (file, predictor): real CT, MR, CR, US. The large CR runs with the classic
# base only (the CNN takes ~10 s per 3.6 Mpixel plane on one CPU core).
ROUNDTRIPS = [
    ("693_UNCR.dcm", "learned-adaptive"),
    ("693_UNCR.dcm", "classic-adaptive"),
    ("MR2_UNCR.dcm", "learned-adaptive"),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", "classic-adaptive"),
    ("RG1_UNCR.dcm", "classic-adaptive"),
    ("US1_UNCR.dcm", "learned-adaptive"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "learned-adaptive"),
]


def _embed(name: str, predictor: str):
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        before = read_samples(ds).samples.copy()
        result = embed_dataset(ds, KEYS, options=EmbedOptions(predictor=predictor))
    return ds, before, result


@pytest.mark.parametrize("name,predictor", ROUNDTRIPS)
def test_embed_verify_restore_real(name, predictor):
    ds, before, result = _embed(name, predictor)
    base = get_predictor(predictor).base
    assert result.predictor == "adaptive-" + base.name
    assert result.model_sha256 == base.model_sha256
    header = read_watermark_header(result.dataset)
    assert header is not None and header.predictor == result.predictor
    n_planes = before.shape[0] * before.shape[3]
    assert header.adaptive_weights is not None and len(header.adaptive_weights) == 2 * N_WEIGHTS * n_planes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        marked = read_samples(result.dataset).samples
        assert 0 < np.abs(marked - before).max() <= 1
        check = verify_dataset(result.dataset, KEYS)
        assert check.status is VerifyStatus.AUTHENTIC, check.error
        restored = restore_dataset(result.dataset, KEYS).dataset
    assert np.array_equal(read_samples(restored).samples, before)
    assert (PRIVATE_GROUP, PRIVATE_CREATOR) not in [(t.group, restored.get(t).value) for t in restored.keys() if t.group == PRIVATE_GROUP]


def _weights_tag(ds):
    return ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR).get_tag(0x0C)


@pytest.mark.parametrize("predictor", ["classic-adaptive", "learned-adaptive"])
def test_header_weight_tampering_is_detected(predictor):
    _, before, result = _embed("MR2_UNCR.dcm", predictor)
    ds = result.dataset
    tag = _weights_tag(ds)
    raw = bytearray(ds[tag].value)
    weights = np.frombuffer(bytes(raw), "<i2").reshape(-1, N_WEIGHTS)
    assert weights.any()  # MR2 keeps fitted weights
    # the smallest possible edit: one weight by 1/1024
    edited = weights.copy()
    edited[0, -1] += 1
    ds[tag].value = edited.astype("<i2").tobytes()
    assert verify_dataset(ds, KEYS).status is not VerifyStatus.AUTHENTIC
    # a large edit, and removing the element
    edited[0, 1] = -edited[0, 1]
    ds[tag].value = edited.astype("<i2").tobytes()
    assert verify_dataset(ds, KEYS).status is not VerifyStatus.AUTHENTIC
    del ds[tag]
    assert verify_dataset(ds, KEYS).status is not VerifyStatus.AUTHENTIC
    ds[tag] = pydicom.DataElement(tag, "OB", bytes(raw))
    assert verify_dataset(ds, KEYS).status is VerifyStatus.AUTHENTIC




@pytest.mark.parametrize("bits", [8, 10, 12, 14, 16])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("predictor", ["classic-adaptive", "learned-adaptive"])
def test_synthetic_round_trip(bits, signed, predictor):
    """Random 8-16-bit images, two frames (one weight row each): exact,
    authentic, ±1 round trip, or a clean capacity error."""
    rng = np.random.default_rng(bits * 3 + signed)
    planes = smooth_planes((2, 120, 136), bits, signed, rng)
    planes[1] = np.clip(planes[1] + rng.integers(-3, 4, size=planes[1].shape), *bit_range(bits, signed))
    ds = synthetic_image(planes, 8 if bits == 8 else 16, bits, signed)
    before = read_samples(ds).samples.copy()
    try:
        result = embed_dataset(ds, KEYS, options=EmbedOptions(predictor=predictor))
    except InsufficientCapacity:
        pytest.fail("a smooth 120x136 image must carry the payload")
    marked = read_samples(result.dataset).samples
    assert np.abs(marked - before).max() <= 1
    assert verify_dataset(result.dataset, KEYS).status is VerifyStatus.AUTHENTIC
    assert np.array_equal(read_samples(restore_dataset(result.dataset, KEYS).dataset).samples, before)


def test_two_pass_plane_round_trips():
    """A plane whose A lattice cannot hold the block uses the B pass with
    the same carried weights (the reader's predictor on the shifted view);
    still ±1 and exact."""
    import uuid

    from dicom_wm.engine.plane_codec import embed_plane, read_plane
    from dicom_wm.payload.block import PlaneBlock

    rng = np.random.default_rng(3)
    lo, hi = 0, 4095
    y, x = np.mgrid[0:192, 0:192]
    img = np.clip(np.rint(2000 + 300 * np.sin(x / 9.0) + rng.normal(0, 2, (192, 192))), lo, hi).astype(np.int64)
    adapted = AdaptiveFitter(ClassicRhombus()).fit(img[None], lo, hi)
    assert adapted.weights[0].any()
    pred, cost = adapted.predict_and_complexity(img[None])
    template = PlaneBlock(
        frame=0, channel=0, n_frames=1, n_channels=1, lattice_pass=0, passes=1, walk_flags=0, copies=1,
        key_id="ktest", record_uuid=uuid.UUID(int=7), instance_mac=bytes(16), predictor_code=2,
        model_sha256_prefix=bytes(16), n_used=0, moved_flags=np.zeros(0, bool), tile=64, tile_mac_len=4,
        first_tile=0, tile_macs=b"",
    )
    secret = b"\x44" * 32
    macs = [i.to_bytes(4, "big") for i in range(450)]
    emb = embed_plane(img, walk_order(pred[0], cost[0], lo, hi), adapted, template, macs, secret, lo, hi, 1, "test")
    assert emb.passes == 2
    assert np.abs(emb.watermarked - img).max() == 1
    # the reader: predictor rebuilt from the carried weights, walk from the received plane
    reader = AdaptedPredictor(ClassicRhombus(), adapted.weights.copy(), lo, hi)
    p2, c2 = reader.predict_and_complexity(emb.watermarked[None])
    reading = read_plane(emb.watermarked, walk_order(p2[0], c2[0], lo, hi), reader, lambda k: secret, lo, hi)
    assert [b.lattice_pass for b in reading.blocks] == [0, 1]
    assert np.array_equal(reading.restored, img)


def test_old_instances_and_other_predictors_still_read():
    _, before, result = _embed("693_UNCR.dcm", "classic")
    header = read_watermark_header(result.dataset)
    assert header is not None and header.adaptive_weights is None
    assert verify_dataset(result.dataset, KEYS).status is VerifyStatus.AUTHENTIC


@pytest.mark.parametrize("option", ["classic-adaptive", "learned-adaptive"])
def test_cli_embed_json_reports_the_adaptive_predictor(option, tmp_path, monkeypatch):
    import json
    import shutil

    from typer.testing import CliRunner

    from dicom_wm.cli.app import app

    src = get_testdata_file("693_UNCR.dcm", download=False)
    if src is None:
        pytest.skip("693_UNCR.dcm not installed")
    monkeypatch.delenv("DICOM_WM_KEYS", raising=False)
    monkeypatch.setenv("DICOM_WM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    shutil.copy(src, tmp_path / "in.dcm")
    out = runner.invoke(app, ["embed", "in.dcm", "wm.dcm", "--predictor", option, "--json"])
    assert out.exit_code == 0, out.output
    record = [json.loads(line) for line in out.output.splitlines() if line.strip()][0]
    base = get_predictor(option).base
    assert record["predictor"] == "adaptive-" + base.name
    assert record["model_sha256"] == base.model_sha256
    verified = runner.invoke(app, ["verify", "wm.dcm", "--json"])
    assert verified.exit_code == 0, verified.output
    assert "authentic" in verified.output


def test_learned_adaptive_takes_the_classic_base_where_it_carries_more():
    """On the lossy, piecewise-constant CT the CNN loses to the classic mean;
    learned-adaptive flags the plane's base as classic and carries at least
    as much as classic-adaptive (and the flag round-trips through verify)."""
    ds, before, result = _embed("693_UNCI.dcm", "learned-adaptive")
    header = read_watermark_header(result.dataset)
    row = np.frombuffer(header.adaptive_weights, "<i2").reshape(-1, N_WEIGHTS)
    assert row[0, 0] == FLAG_CLASSIC_BASE
    _, _, classic = _embed("693_UNCI.dcm", "classic")
    assert result.capacity_bits >= classic.capacity_bits
    assert verify_dataset(result.dataset, KEYS).status is VerifyStatus.AUTHENTIC
    assert np.array_equal(read_samples(restore_dataset(result.dataset, KEYS).dataset).samples, before)
    # clearing the flag (a header edit) must not verify
    edited = row.copy()
    edited[0, 0] = 0
    result.dataset[_weights_tag(result.dataset)].value = edited.astype("<i2").tobytes()
    assert verify_dataset(result.dataset, KEYS).status is not VerifyStatus.AUTHENTIC
