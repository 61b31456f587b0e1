"""The robust layer's deep pair: pinned weights, an exactly undone learned map,
a decoder that reads the pattern through JPEG, and the training's attack layers."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from dicom_wm.robust import RobustMark, decode_robust, deep, detect, embed_robust, undo_robust  # noqa: E402
from dicom_wm.robust.code import bits_of, check_bytes, encode_bits  # noqa: E402
from dicom_wm.robust.mark import MAP_BLOCK  # noqa: E402

SECRET = b"deep-pair-test-secret-0123456789"
MESSAGE = bytes.fromhex("0123456789abcdef")
_ROOT = Path(__file__).resolve().parents[1]


def _speckle(seed: int, shape: tuple[int, int] = (384, 512)) -> np.ndarray:
    """An ultrasound-like 8-bit plane: a black surround and a speckled fan."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    yy, xx = np.mgrid[:rows, :cols]
    fan = (np.hypot(yy + 40, xx - cols / 2) < rows) & (np.abs(xx - cols / 2) < 0.6 * (yy + 60))
    tissue = 90 + 40 * np.sin(xx / 37.0) + 30 * np.cos(yy / 23.0)
    speckle = tissue * rng.rayleigh(0.8, shape)
    return np.where(fan, np.clip(speckle, 0, 255), 0).round().astype(np.int64)


def _jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue()))).astype(np.float64)


def _chip_snr(whitened: np.ndarray) -> float:
    """Soft-bit SNR (mean / std of the de-signed soft bits) at the identity geometry."""
    key = detect._Key(SECRET)
    folded = detect._fold(whitened, np.ones(whitened.shape, bool))
    soft = detect._soft_bits(folded, detect._sync(folded, key)[1], key)
    sign = 1.0 - 2.0 * encode_bits(np.concatenate([bits_of(MESSAGE), bits_of(check_bytes(MESSAGE, SECRET))]))
    v = sign * soft
    return float(v.mean() / v.std())


def test_weights_are_pinned_small_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = deep._PATH.read_bytes()
    assert len(blob) < 10 * 2**20
    assert hashlib.sha256(blob).hexdigest() == deep.MODEL_SHA256
    assert deep.load_models() is not None
    bad = tmp_path / "deep-v1.pt"
    shutil.copy(deep._PATH, bad)
    with bad.open("r+b") as f:
        f.seek(len(blob) // 2)
        byte = f.read(1)
        f.seek(len(blob) // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(deep, "_PATH", bad)
    deep.load_models.cache_clear()
    try:
        with pytest.raises(ValueError, match="SHA-256"):
            deep.load_models()
    finally:
        monkeypatch.undo()
        deep.load_models.cache_clear()


def test_learned_map_is_stored_and_undone_exactly() -> None:
    plane = _speckle(1)
    q = deep.deep_map(plane, 4)
    assert q is not None and q.shape == (-(-plane.shape[0] // MAP_BLOCK), -(-plane.shape[1] // MAP_BLOCK))
    assert q.dtype == np.uint8 and 1 <= q.min() and q.max() <= 15
    marked, mark = embed_robust(plane, 0, 255, MESSAGE, SECRET)
    assert mark.smap == q.tobytes()  # the encoder's map, as the record carries it
    again = RobustMark.from_bytes(mark.to_bytes())
    assert np.array_equal(undo_robust(marked, 0, 255, again, SECRET), plane)
    # the rule-based map remains selectable, and differs
    _, rule = embed_robust(plane, 0, 255, MESSAGE, SECRET, deep=False)
    assert rule.smap != mark.smap


def test_deep_decoder_reads_the_pattern_through_jpeg() -> None:
    plane = _speckle(2)
    marked, _ = embed_robust(plane, 0, 255, MESSAGE, SECRET)
    attacked = _jpeg(marked, 50)
    w = deep.deep_whiten(attacked)
    assert w is not None and w.shape == attacked.shape and np.abs(w).max() <= 3.0
    d_deep = _chip_snr(w)
    d_zero = _chip_snr(deep.deep_whiten(_jpeg(plane, 50)))  # unmarked: no correlation with the pattern
    assert d_deep > 1.0 and abs(d_zero) < 0.3
    assert decode_robust(attacked, SECRET) == MESSAGE


def test_without_the_deep_pair_decoding_still_works() -> None:
    plane = _speckle(3)
    marked, _ = embed_robust(plane, 0, 255, MESSAGE, SECRET, deep=False)
    assert decode_robust(_jpeg(marked, 70), SECRET, deep=False) == MESSAGE


def _training_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("train_robust_deep", _ROOT / "tools" / "train_robust_deep.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_jpeg_layer_matches_a_real_codec_and_passes_gradients() -> None:
    train = _training_module()
    x = _speckle(4, (128, 128)).astype(np.float32)
    for quality in (30, 50, 90):
        real = _jpeg(x, quality)
        t = torch.tensor(x)[None, None].requires_grad_(True)
        approx = train.jpeg(t, quality, (0, 0))
        err = np.abs(approx.detach().numpy()[0, 0] - real)
        assert err.mean() < 1.0, (quality, err.mean())  # PIL's IDCT and rounding differ slightly
        approx.sum().backward()
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
