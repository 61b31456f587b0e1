"""``dicom-wm trace`` on an exported PNG: message, record and recipient."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from dicom_wm.cli.app import app
from dicom_wm.db import Base, Destination, Instance, InstanceState, get_sessionmaker, utcnow
from dicom_wm.db.engine import get_engine
from dicom_wm.keys import KeyStore
from dicom_wm.pixels import read_samples
from dicom_wm.robust import embed_robust, message_for
from tests.corpus import pydicom_data_files

_DATA = pydicom_data_files()
pytestmark = pytest.mark.skipif(_DATA is None, reason="needs pydicom-data")


def _export(plane: np.ndarray, ref: np.ndarray, path: Path) -> Path:
    from PIL import Image

    p1, p99 = np.percentile(ref, [1, 99])
    Image.fromarray(np.clip(np.round((plane - p1) / (p99 - p1) * 255), 0, 255).astype(np.uint8)).save(path)
    return path


def test_trace_png_export_names_record_and_recipient(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "keys.json")
    old = store.active_id
    store.rotate()  # trace must try every key, not only the active one
    record = uuid.uuid4()
    assert _DATA is not None
    planes = read_samples(pydicom.dcmread(_DATA / "693_UNCR.dcm"))
    plane = planes.samples[0, :, :, 0]
    marked, _ = embed_robust(plane, planes.lo, planes.hi, message_for(record, "LEAKY_VIEWER"), store.secret(old))
    png = _export(marked, plane, tmp_path / "leak.png")
    clean = _export(plane, plane, tmp_path / "clean.png")

    url = f"sqlite:///{tmp_path / 'trace.sqlite3'}"
    Base.metadata.create_all(get_engine(url))
    now = utcnow()
    with get_sessionmaker(url)() as s:
        s.add(Instance(
            sop_instance_uid="1.2.3.4.5", version=1, is_current=True, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            study_instance_uid="1.2.3", series_instance_uid="1.2.3.4", patient_id="PAT-7", received_at=now,
            updated_at=now, received_transfer_syntax_uid="1.2.840.10008.1.2.1", received_size=10,
            received_sha256="0" * 64, state=InstanceState.WATERMARKED, attempts=1, record_uuid=str(record),
        ))
        s.add(Destination(ae_title="LEAKY_VIEWER", host="10.0.0.9", port=104))
        s.add(Destination(ae_title="OTHER_PACS", host="10.0.0.8", port=104))
        s.commit()

    runner = CliRunner()
    keys = ["--keys", str(tmp_path / "keys.json"), "--data-dir", str(tmp_path)]
    found = runner.invoke(app, ["trace", str(png), "--json", "--db", url, *keys])
    assert found.exit_code == 0, found.output
    out = json.loads(found.stdout)
    assert out["message"] == message_for(record, "LEAKY_VIEWER").hex()
    assert out["key_id"] == old
    assert [r["sop_instance_uid"] for r in out["records"]] == ["1.2.3.4.5"]
    assert out["records"][0]["patient_id"] == "PAT-7"
    assert out["recipients"] == ["LEAKY_VIEWER"]

    text = runner.invoke(app, ["trace", str(png), "--db", url, *keys])
    assert text.exit_code == 0 and "recipient LEAKY_VIEWER" in text.stdout

    renamed = tmp_path / "leak_copy.bin"  # a leaked copy keeps its content, not always its name
    renamed.write_bytes(png.read_bytes())
    again = runner.invoke(app, ["trace", str(renamed), "--json", *keys])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["message"] == out["message"]

    none = runner.invoke(app, ["trace", str(clean), "--json", *keys])
    assert none.exit_code == 1
    assert json.loads(none.stdout)["message"] is None


def test_file_that_is_neither_dicom_nor_image_is_one_clear_error(tmp_path: Path) -> None:
    KeyStore.init(tmp_path / "keys.json")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    res = CliRunner().invoke(app, ["trace", str(notes), "--keys", str(tmp_path / "keys.json")])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [f"error: {notes}: neither a DICOM file nor an image export (PNG, JPEG, TIFF, ...)"]


def test_a_fifo_is_refused_and_a_damaged_frame_does_not_stop_a_directory(tmp_path: Path) -> None:
    import os

    KeyStore.init(tmp_path / "keys.json")
    keys = ["--keys", str(tmp_path / "keys.json"), "--data-dir", str(tmp_path)]
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    res = CliRunner().invoke(app, ["trace", str(fifo), *keys])
    assert res.exit_code == 1 and "not a regular file" in res.output

    frames = tmp_path / "frames"
    frames.mkdir()
    plane = read_samples(pydicom.dcmread(_DATA / "693_UNCR.dcm")).samples[0, :, :, 0]
    for i in range(3):
        _export(plane, plane, frames / f"f{i}.png")
    (frames / "f1.png").write_bytes(b"\x89PNG broken")
    res = CliRunner().invoke(app, ["trace", str(frames), "--json", *keys])
    assert res.exit_code == 1, res.output  # unmarked frames: nothing decodes, but every good frame was read
    assert json.loads(res.stdout)["message"] is None and json.loads(res.stdout)["frames"] == 2
    assert "warning: skipped" in res.stderr and "f1.png" in res.stderr


def test_unmarked_dicom_file_traces_to_null(tmp_path: Path) -> None:
    KeyStore.init(tmp_path / "keys.json")
    assert _DATA is not None
    dcm = _DATA / "693_UNCR.dcm"
    result = CliRunner().invoke(
        app, ["trace", str(dcm), "--json", "--keys", str(tmp_path / "keys.json"), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout) == {"file": str(dcm), "message": None, "key_id": None}


def test_trace_audio_wav_and_dicom_waveform(tmp_path: Path) -> None:
    """A WAV file and a DICOM waveform object go to the audio layer."""
    import wave

    from dicom_wm.waveform import linear_samples
    from dicom_wm.watermark import EmbedOptions, embed_dataset
    from waveform_support import speech_like, voice_dataset

    store = KeyStore.init(tmp_path / "keys.json")
    record = uuid.uuid4()
    ds = voice_dataset(speech_like(5.0, seed=7), "MB")
    wm = embed_dataset(ds, store, record_uuid=record, options=EmbedOptions(robust=True, recipient="LEAKY_VIEWER")).dataset
    wm.save_as(tmp_path / "marked.dcm", enforce_file_format=True)
    ds.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    lin = linear_samples(wm)[0][0]
    with wave.open(str(tmp_path / "leak.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.asarray(lin, dtype="<i2").tobytes())

    keys = ["--keys", str(tmp_path / "keys.json"), "--data-dir", str(tmp_path)]
    runner = CliRunner()
    expected = message_for(record, "LEAKY_VIEWER").hex()
    for name in ("leak.wav", "marked.dcm"):
        found = runner.invoke(app, ["trace", str(tmp_path / name), "--json", *keys])
        assert found.exit_code == 0, found.output
        assert json.loads(found.stdout)["message"] == expected
    plain = runner.invoke(app, ["trace", str(tmp_path / "plain.dcm"), "--json", *keys])
    assert plain.exit_code == 1 and json.loads(plain.stdout)["message"] is None
