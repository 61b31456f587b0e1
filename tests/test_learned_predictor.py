"""The learned predictor (issue #5): exact integer arithmetic, B-lattice-only
context, pinned checkpoint, engine contract and restore exactness."""

from __future__ import annotations

import dataclasses
import shutil
import warnings

import numpy as np
import pytest
import torch

from dicom_wm.engine.learned import LearnedPredictor, load_learned_predictor, select_device
from dicom_wm.engine.predictors import ClassicRhombus, Predictor, a_lattice_mask
from dicom_wm.models import (
    DEFAULT_MODEL,
    LatticeNetConfig,
    ModelIntegrityError,
    build_lattice_net,
    get_card,
    load_weights,
    reference_forward,
)
from dicom_wm.models.checkpoint import WEIGHTS_DIR
from dicom_wm.models.config import FLOAT64_EXACT_LIMIT
from dicom_wm.models.corpus import HELD_OUT_FAMILIES, HELD_OUT_FILES, TRAIN_FILES, is_available, load_image
from dicom_wm.models.geometry import mirror_index
from dicom_wm.models.lattice_net import accumulation_bounds, validate_weights, weight_shapes

CARD = get_card()
WEIGHTS = load_weights(CARD)
DEPTHS = [(bits, signed) for bits in (8, 10, 12, 14, 15, 16) for signed in (False, True)]
SHAPES = [(1, 2, 2), (2, 3, 3), (1, 7, 5), (3, 16, 17), (1, 33, 64)]


@pytest.fixture(scope="module")
def cpu_predictor() -> LearnedPredictor:
    return load_learned_predictor(device="cpu")


def bit_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def random_planes(shape, bits, signed, rng, kind="noise") -> np.ndarray:
    lo, hi = bit_range(bits, signed)
    if kind == "noise":
        return rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64)
    # smooth ramp + noise + saturated blocks: context near both range ends
    n, r, c = shape
    ramp = np.linspace(lo, hi, r * c).reshape(1, r, c).repeat(n, 0)
    img = np.rint(ramp + rng.normal(0, (hi - lo) / 200, shape)).astype(np.int64)
    img[:, : r // 3, : c // 3] = lo
    img[:, -(r // 3) :, -(c // 3) :] = hi
    return np.clip(img, lo, hi)


def torch_forward(planes: np.ndarray, device: str = "cpu", weights=WEIGHTS, config=CARD.config):
    net = build_lattice_net(config)
    net.load_integer_weights(weights)
    net.to(device)
    with torch.no_grad():
        p, c = net(torch.from_numpy(planes).to(device))
    return p.cpu().numpy(), c.cpu().numpy()


def real_planes(name: str, crop: int = 96) -> list[np.ndarray]:
    """A central crop and a corner crop (mirror-padding context) of a file."""
    planes = load_image(name, max_frames=1).planes[:1]
    _, r, c = planes.shape
    r0, c0 = max(0, r // 2 - crop // 2), max(0, c // 2 - crop // 2)
    return [planes[:, r0 : r0 + crop, c0 : c0 + crop], planes[:, : crop - 1, : crop + 1]]


# --- exactness: torch float64 path == pure-integer numpy reference ----------


@pytest.mark.parametrize("bits,signed", DEPTHS)
@pytest.mark.parametrize("kind", ["noise", "structured"])
def test_torch_equals_integer_reference_random(bits, signed, kind):
    rng = np.random.default_rng(bits * 2 + signed)
    for shape in SHAPES:
        x = random_planes(shape, bits, signed, rng, kind)
        p, c = torch_forward(x)
        rp, rc = reference_forward(x, WEIGHTS, CARD.config)
        assert np.array_equal(p, rp), f"prediction differs for {shape} {bits}-bit signed={signed}"
        assert np.array_equal(c, rc), f"complexity differs for {shape} {bits}-bit signed={signed}"


REAL_FILES = ["693_UNCR.dcm", "MR2_UNCR.dcm", "RG1_UNCR.dcm", "US1_UNCR.dcm", "CT_small.dcm",
              "MR_small.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "RG3_UNCR.dcm", "J2K_pixelrep_mismatch.dcm"]


@pytest.mark.parametrize("name", REAL_FILES)
def test_torch_equals_integer_reference_real(name):
    if not is_available(name):
        pytest.skip(f"{name} not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crops = real_planes(name)
    for x in crops:
        p, c = torch_forward(x)
        rp, rc = reference_forward(x, WEIGHTS, CARD.config)
        assert np.array_equal(p, rp) and np.array_equal(c, rc)


def test_torch_equals_reference_at_the_accumulation_limits():
    """Largest allowed weights and clipped inputs: every clip and the
    worst-case accumulations are exercised, and both paths still agree."""
    cfg = CARD.config
    rng = np.random.default_rng(7)
    top = (1 << cfg.weight_bits) - 1
    w = {k: rng.choice([-top, top], size=s).astype(np.int64) for k, s in weight_shapes(cfg).items() if k != "shifts"}
    w["shifts"] = np.array([0] * cfg.conv_layers + [0, 0], dtype=np.int64)
    bounds = accumulation_bounds(cfg, w)
    assert max(bounds.values()) < FLOAT64_EXACT_LIMIT
    x = rng.choice([-(1 << 16), 1 << 16, 0], size=(2, 24, 26)).astype(np.int64)
    p, c = torch_forward(x, weights=w)
    rp, rc = reference_forward(x, w, cfg)
    assert np.array_equal(p, rp) and np.array_equal(c, rc)


def test_cpu_thread_count_does_not_change_results():
    x = random_planes((2, 64, 64), 16, False, np.random.default_rng(3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch_forward(x)
        torch.set_num_threads(max(2, before))
        many = torch_forward(x)
    finally:
        torch.set_num_threads(before)
    assert all(np.array_equal(a, b) for a, b in zip(one, many))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bits,signed", DEPTHS)
def test_cuda_equals_cpu(bits, signed):
    rng = np.random.default_rng(100 + bits * 2 + signed)
    for shape in SHAPES + [(4, 512, 512)]:
        for kind in ("noise", "structured"):
            x = random_planes(shape, bits, signed, rng, kind)
            assert all(np.array_equal(a, b) for a, b in zip(torch_forward(x, "cuda"), torch_forward(x, "cpu")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", REAL_FILES)
def test_cuda_equals_cpu_real(name):
    if not is_available(name):
        pytest.skip(f"{name} not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = load_image(name, max_frames=2).planes
    assert all(np.array_equal(a, b) for a, b in zip(torch_forward(x, "cuda"), torch_forward(x, "cpu")))


# --- context: A-lattice outputs depend on B-lattice samples only ------------


@pytest.mark.parametrize("shape", SHAPES + [(2, 40, 41)])
def test_a_lattice_outputs_ignore_a_samples(shape, cpu_predictor):
    rng = np.random.default_rng(shape[1] * 100 + shape[2])
    x = random_planes(shape, 12, False, rng, "structured")
    a = a_lattice_mask(shape[1], shape[2])
    y = x.copy()
    y[:, a] = rng.integers(0, 4096, size=(shape[0], int(a.sum())))
    px, cx = cpu_predictor.predict_and_complexity(x)
    py, cy = cpu_predictor.predict_and_complexity(y)
    assert np.array_equal(px[:, a], py[:, a])
    assert np.array_equal(cx[:, a], cy[:, a])


def test_a_lattice_outputs_ignore_a_samples_real(cpu_predictor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = load_image("CT_small.dcm").planes
    a = a_lattice_mask(*x.shape[1:])
    y = x.copy()
    y[:, a] = np.random.default_rng(0).integers(-2000, 3000, size=(1, int(a.sum())))
    assert np.array_equal(cpu_predictor.predict(x)[:, a], cpu_predictor.predict(y)[:, a])
    assert np.array_equal(cpu_predictor.complexity(x)[:, a], cpu_predictor.complexity(y)[:, a])


def test_mirror_padding_keeps_lattice_parity():
    for n in (2, 3, 4, 7, 512):
        idx = np.arange(-40, n + 40)
        m = mirror_index(idx, n)
        assert m.min() >= 0 and m.max() < n
        assert np.array_equal(m % 2, idx % 2)


# --- the Predictor contract ---------------------------------------------------


def test_contract_and_provenance(cpu_predictor):
    assert isinstance(cpu_predictor, Predictor)
    assert cpu_predictor.name == f"learned-{DEFAULT_MODEL}"
    assert cpu_predictor.model_sha256 == CARD.sha256 and len(CARD.sha256) == 64
    x = random_planes((3, 20, 21), 16, True, np.random.default_rng(1), "structured")
    p, c = cpu_predictor.predict(x), cpu_predictor.complexity(x)
    assert p.dtype == np.int64 and c.dtype == np.int64 and p.shape == c.shape == x.shape
    assert c.min() >= 0
    b = ~a_lattice_mask(20, 21)
    assert np.array_equal(p[:, b], ClassicRhombus().predict(x)[:, b])


def test_flat_neighbourhoods_predict_like_classic(cpu_predictor):
    """Where the four rhombus neighbours are equal the prediction is their
    value, as for the classic predictor: black padding at the range minimum
    stays walkable (the engine walks predictions equal to lo)."""
    x = np.zeros((1, 32, 32), np.int64)
    x[0, 10:20, 10:20] = 500
    n = np.pad(x[0], 1, mode="reflect")
    flat = (n[:-2, 1:-1] == n[2:, 1:-1]) & (n[2:, 1:-1] == n[1:-1, :-2]) & (n[1:-1, :-2] == n[1:-1, 2:])
    sel = flat & a_lattice_mask(32, 32)
    assert sel.sum() > 200
    assert np.array_equal(cpu_predictor.predict(x)[0][sel], n[:-2, 1:-1][sel])


def test_batching_is_independent_of_chunking(cpu_predictor, monkeypatch):
    x = random_planes((5, 24, 30), 14, True, np.random.default_rng(2), "structured")
    whole = cpu_predictor.predict_and_complexity(x)
    monkeypatch.setattr("dicom_wm.engine.learned._BATCH_SAMPLES", {"cpu": 24 * 30 * 2})
    chunked = cpu_predictor.predict_and_complexity(x + 0)  # equal input, fresh computation
    single = [cpu_predictor.predict_and_complexity(x[i : i + 1]) for i in range(5)]
    for k in range(2):
        assert np.array_equal(whole[k], chunked[k])
        assert np.array_equal(whole[k], np.concatenate([s[k] for s in single]))


def test_rejects_bad_input(cpu_predictor):
    with pytest.raises(TypeError, match="int32 or int64"):
        cpu_predictor.predict(np.zeros((1, 4, 4), np.float64))
    with pytest.raises(ValueError, match="too small"):
        cpu_predictor.predict(np.zeros((1, 1, 4), np.int64))
    with pytest.raises(ValueError, match="shape"):
        cpu_predictor.predict(np.zeros((4, 4), np.int64))


def test_device_selection():
    assert select_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


def test_engine_resolves_learned():
    from dicom_wm.engine import get_predictor

    for name in ("learned", f"learned-{DEFAULT_MODEL}"):
        pred = get_predictor(name)
        assert isinstance(pred, LearnedPredictor) and pred.model_sha256 == CARD.sha256


# --- checkpoint: pinned hash, weights_only, bounds ---------------------------


def test_checkpoint_is_small_and_bounded():
    path = WEIGHTS_DIR / CARD.checkpoint
    assert path.stat().st_size <= 5 * 1024 * 1024
    bounds = accumulation_bounds(CARD.config, WEIGHTS)
    assert max(bounds.values()) < FLOAT64_EXACT_LIMIT


def test_hash_mismatch_refuses_to_load(tmp_path):
    data = bytearray((WEIGHTS_DIR / CARD.checkpoint).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / CARD.checkpoint).write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        load_weights(CARD, tmp_path)


def test_missing_checkpoint_and_unknown_card(tmp_path):
    with pytest.raises(ModelIntegrityError, match="missing"):
        load_weights(CARD, tmp_path)
    with pytest.raises(ValueError, match="unknown model card"):
        get_card("no-such-model")


def test_config_mismatch_is_refused(tmp_path):
    shutil.copy(WEIGHTS_DIR / CARD.checkpoint, tmp_path / CARD.checkpoint)
    other = dataclasses.replace(CARD, config=LatticeNetConfig(channels=8))
    with pytest.raises(ModelIntegrityError, match="config"):
        load_weights(other, tmp_path)


def test_checkpoint_loads_with_weights_only(monkeypatch):
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_weights(CARD)
    assert seen.get("weights_only") is True


def test_validate_weights_rejects_non_integers_and_oversize():
    w = {k: v.copy() for k, v in WEIGHTS.items()}
    w["conv0.weight"] = w["conv0.weight"].astype(np.float64)
    with pytest.raises(ValueError, match="integers"):
        validate_weights(CARD.config, w)
    w = {k: v.copy() for k, v in WEIGHTS.items()}
    w["out.weight"][0, 0, 0, 0] = 1 << CARD.config.weight_bits
    with pytest.raises(ValueError, match="2\\*\\*"):
        validate_weights(CARD.config, w)


# --- split and restore exactness ---------------------------------------------


def test_training_never_lists_held_out_families():
    assert not [f for f in TRAIN_FILES if f.startswith(HELD_OUT_FAMILIES)]
    assert {m for m in HELD_OUT_FILES.values()} == {"CT", "MR", "CR", "US"}


ROUNDTRIP_FILES = ["693_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "US1_UNCR.dcm", "eCT_Supplemental.dcm",
                   "JPGLosslessP14SV1_1s_1f_8b.dcm", "693_UNCI.dcm"]


@pytest.mark.parametrize("name", ROUNDTRIP_FILES)
def test_embed_verify_restore_with_learned(name):
    """Public API with predictor="learned": the payload records the model,
    verify finds it, restore gives every stored sample back."""
    import pydicom
    from pydicom.data import get_testdata_file

    from dicom_wm.keys import KeyStore
    from dicom_wm.pixels import read_samples
    from dicom_wm.watermark import EmbedOptions, VerifyStatus, embed_dataset, restore_dataset, verify_dataset

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not installed")
    keys = KeyStore.in_memory({"ktest0001": b"\x11" * 32}, "ktest0001")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        before = read_samples(ds).samples.copy()
        result = embed_dataset(ds, keys, options=EmbedOptions(predictor="learned"))
        assert result.predictor == f"learned-{DEFAULT_MODEL}" and result.model_sha256 == CARD.sha256
        marked = read_samples(result.dataset).samples
        assert 0 < np.abs(marked - before).max() <= 1
        check = verify_dataset(result.dataset, keys)
        assert check.status is VerifyStatus.AUTHENTIC, check.error
        restored = restore_dataset(result.dataset, keys).dataset
    assert np.array_equal(read_samples(restored).samples, before)
