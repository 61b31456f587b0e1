"""The robust layer over the frames of a cine loop (issue #7): frames dropped,
inserted, reordered or re-encoded one by one; the message comes from the sum."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dicom_wm.cli.app import app
from dicom_wm.keys import KeyStore
from dicom_wm.pixels import read_samples
from dicom_wm.robust import decode_robust, embed_robust
from dicom_wm.robust.frames import MAX_FRAME_DECODES, FrameStack, decode_frames_detail, decode_robust_frames
from dicom_wm.watermark import EmbedOptions, VerifyStatus, embed_dataset, restore_dataset, verify_dataset
from tests.test_frames import KEYS, cine

SECRET = KEYS.secret("kframes01")
RECORD = uuid.UUID("5f1e0c2a-9b7d-4e61-8a3f-0d2c4b6e8f10")
N = 12


def render(plane: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """8-bit rendering on the 1st..99th percentile window of ``ref``."""
    p1, p99 = np.percentile(ref, [1, 99])
    return np.clip(np.round((plane - p1) / (p99 - p1) * 255), 0, 255).astype(np.uint8)


def jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


@pytest.fixture(scope="module")
def marked():
    """A 12-frame 128x128 cine watermarked with the robust option: the
    original frames, the stored frames, the 8-bit renderings, the message."""
    ds = cine(frames=N, size=128)
    res = embed_dataset(ds, KEYS, record_uuid=RECORD, options=EmbedOptions(robust=True))
    assert res.robust_message is not None
    original = read_samples(ds).samples[..., 0]
    stored = read_samples(res.dataset).samples[..., 0]
    rendered = [render(p, original) for p in stored]
    return ds, res.dataset, original, stored, rendered, bytes.fromhex(res.robust_message)


def test_robust_cine_restores_sample_exact_and_decodes(marked):
    ds, wm, original, stored, _, msg = marked
    assert verify_dataset(wm, KEYS).status is VerifyStatus.AUTHENTIC
    restored = read_samples(restore_dataset(wm, KEYS).dataset).samples
    assert np.array_equal(restored, read_samples(ds).samples)
    assert not np.array_equal(stored, original)  # the robust layer is there
    assert decode_robust_frames(stored, SECRET) == msg  # a 3-D stack is a sequence of frames
    assert decode_robust_frames(list(read_samples(wm).samples), SECRET) == msg  # (rows, cols, 1) frames


def test_half_the_frames_dropped(marked):
    *_, rendered, msg = marked
    kept = [jpeg(f, 50) for f in rendered[1::2]]
    assert decode_robust_frames(kept, SECRET) == msg


def test_unmarked_and_other_message_frames_inserted(marked):
    _, _, original, _, rendered, msg = marked
    other = bytes(range(8))
    assert other != msg
    unmarked = [render(p, original) for p in original[:4]]
    foreign = [render(embed_robust(p, 0, 4095, other, SECRET)[0], original) for p in original[4:8]]
    frames = list(rendered) + unmarked + foreign
    order = np.random.default_rng(3).permutation(len(frames))
    found = decode_frames_detail([frames[i] for i in order], SECRET)
    assert found is not None and found.message == msg
    carrying = {int(np.flatnonzero(order == i)[0]) for i in range(N)}  # input positions of the marked frames
    unmarked_at = {int(np.flatnonzero(order == i)[0]) for i in range(N, N + 4)}
    assert carrying <= set(found.frames)
    assert not unmarked_at & set(found.frames)
    assert found.attempts <= MAX_FRAME_DECODES


def test_reordered_frames(marked):
    *_, rendered, msg = marked
    order = np.random.default_rng(8).permutation(N)
    assert decode_robust_frames([rendered[i] for i in order], SECRET) == msg
    assert decode_robust_frames(rendered[::-1], SECRET) == msg


def test_jpeg_per_frame_each_frame_fails_but_the_sum_decodes():
    """96x96 frames re-encoded at JPEG Q20: no single frame decodes with the
    single-image decoder (geometry search included); 16 summed do."""
    ds = cine(frames=16, size=96)
    original = read_samples(ds).samples[..., 0]
    msg = bytes.fromhex("a1b2c3d4e5f60718")
    frames = [jpeg(render(embed_robust(p, 0, 4095, msg, SECRET)[0], original), 20) for p in original]
    assert [decode_robust(f, SECRET) for f in frames] == [None] * len(frames)
    found = decode_frames_detail(frames, SECRET)
    assert found is not None and found.message == msg
    assert found.how.split()[-1] in {"sum", "sync-weighted", "group"}  # a sum over frames did it


def test_unmarked_cine_and_wrong_key_give_none(marked):
    _, _, original, stored, rendered, _ = marked
    assert decode_robust_frames([render(p, original) for p in original], SECRET) is None
    assert decode_robust_frames(original, SECRET) is None
    assert decode_robust_frames(stored, b"\x62" * 32) is None
    stack = FrameStack(rendered)  # reused across keys
    assert decode_robust_frames(stack, b"\x62" * 32) is None
    assert decode_robust_frames(stack, SECRET) is not None


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="frame 1"):
        decode_robust_frames([np.zeros((64, 64)), np.zeros((4, 4, 4, 4))], SECRET)
    assert decode_robust_frames([], SECRET) is None


# --- dicom-wm trace on cines ------------------------------------------------


@pytest.fixture(scope="module")
def cli_cine(tmp_path_factory):
    """A robust-marked 8-frame cine under a key store file, and its message."""
    folder = tmp_path_factory.mktemp("cine")
    store = KeyStore.init(folder / "keys.json")
    store.rotate()  # trace tries every key
    ds = cine(frames=8, size=128)
    res = embed_dataset(ds, store, record_uuid=RECORD, options=EmbedOptions(robust=True))
    path = folder / "cine.dcm"
    res.dataset.save_as(path, enforce_file_format=True)
    original = read_samples(ds).samples[..., 0]
    rendered = [render(p, original) for p in read_samples(res.dataset).samples[..., 0]]
    return folder, path, rendered, res.robust_message


def _trace(folder: Path, target: Path):
    keys = ["--keys", str(folder / "keys.json"), "--data-dir", str(folder)]
    return CliRunner().invoke(app, ["trace", str(target), "--json", *keys])


def test_trace_multiframe_dicom(cli_cine):
    folder, path, _, msg = cli_cine
    result = _trace(folder, path)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["message"] == msg
    assert out["frames"] == 8 and out["frames_carrying"] == list(range(8))


def test_trace_directory_of_exported_frames_in_any_order(cli_cine, tmp_path):
    folder, _, rendered, msg = cli_cine
    names = np.random.default_rng(4).permutation(len(rendered))  # sorted names are a shuffled order
    for name, frame in zip(names, rendered):
        Image.fromarray(jpeg(frame, 60)).save(tmp_path / f"frame{name:03d}.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("not a frame")
    result = _trace(folder, tmp_path)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["message"] == msg and out["frames"] == len(rendered)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert _trace(folder, empty).exit_code == 1


@pytest.mark.parametrize("suffix", [".tif", ".gif"])
def test_trace_multipage_tiff_and_animated_gif(cli_cine, tmp_path, suffix):
    folder, _, rendered, msg = cli_cine
    pages = [Image.fromarray(f) for f in rendered]
    path = tmp_path / f"cine{suffix}"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    result = _trace(folder, path)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["message"] == msg and out["frames"] == len(rendered)

    clean = tmp_path / f"clean{suffix}"
    blank = [Image.fromarray(np.full((128, 128), 100 + 5 * i, np.uint8)) for i in range(3)]
    blank[0].save(clean, save_all=True, append_images=blank[1:])
    none = _trace(folder, clean)
    assert none.exit_code == 1 and json.loads(none.stdout)["message"] is None


def test_false_positive_bound_by_construction():
    # each attempt is one 32-bit keyed check; the bound holds whatever the frame count
    assert MAX_FRAME_DECODES * 2.0**-32 <= 1e-6


def test_frames_carrying_are_input_positions(marked):
    *_, rendered, msg = marked
    frames = [np.zeros((8, 8), np.uint8), *rendered[:4]]  # a frame too small to decode comes first
    found = decode_frames_detail(frames, SECRET)
    assert found is not None and found.message == msg
    assert found.frames == (1, 2, 3, 4)


def test_cine_rotated_as_a_whole_is_found_by_resampling_every_frame():
    """8 frames of 256², each exported rotated by -5 degrees and saved as JPEG
    Q50: the identity sums cannot work; the geometry is read on the frames'
    average, every frame resampled under it and the tiles summed."""
    ds = cine(frames=8, size=256)
    original = read_samples(ds).samples[..., 0]
    msg = bytes.fromhex("0123456789abcdef")
    frames = [
        jpeg(np.asarray(Image.fromarray(render(embed_robust(p, 0, 4095, msg, SECRET)[0], original)).rotate(-5, Image.BILINEAR)), 50)
        for p in original
    ]
    found = decode_frames_detail(frames, SECRET)
    assert found is not None and found.message == msg and found.how.startswith("geometry")
    assert found.frames == tuple(range(8))
