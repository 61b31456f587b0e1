"""The file-level CLI: keys, embed, verify, restore (exit codes, one line or
one JSON object per file, nothing half-written, no tracebacks)."""

from __future__ import annotations

import base64
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from dicom_wm.cli import files as cli_files
from dicom_wm.cli.app import app
from dicom_wm.errors import SelfCheckFailed
from dicom_wm.keys import KeyStore
from dicom_wm.watermark import EmbedResult

# Large enough to carry a payload, small enough to be quick: 300x484 16-bit
# MONOCHROME2 and 256x256 8-bit RGB, both native.
MONO = "examples_overlay.dcm"
RGB = "SC_rgb_jpeg_dcmd.dcm"
# 128x128 CT: too small for one payload block (a clean capacity error).
TOO_SMALL = "CT_small.dcm"

JSON_FIELDS = {
    "path",
    "status",
    "psnr_db",
    "max_abs_delta",
    "payload_bits",
    "capacity_bits",
    "record_uuid",
    "key_id",
    "tampered_tiles",
    "error",
}


@pytest.fixture()
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("DICOM_WM_KEYS", raising=False)
    monkeypatch.setenv("DICOM_WM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


@pytest.fixture()
def keyfile(runner: CliRunner, tmp_path: Path) -> Path:
    result = runner.invoke(app, ["keys", "init"])
    assert result.exit_code == 0, result.output
    return tmp_path / "data" / "keys.json"


def _copy(name: str, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(get_testdata_file(name), dst)
    return dst


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _no_traceback(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def _elements_equal_except_pixels(a: pydicom.Dataset, b: pydicom.Dataset) -> list[str]:
    skip = {0x7FE00010}
    diff = [f"{e.tag}" for e in a if e.tag not in skip and (e.tag not in b or b[e.tag] != e)]
    return diff + [f"{t} added" for t in b.keys() if t not in a and t not in skip]


# -- keys ------------------------------------------------------------------------------


def test_keys_init_list_rotate(runner: CliRunner, tmp_path: Path):
    path = tmp_path / "data" / "keys.json"
    init = runner.invoke(app, ["keys", "init", "--json"])
    assert init.exit_code == 0, init.output
    first = json.loads(init.stdout)["key_id"]
    assert path.stat().st_mode & 0o777 == 0o600

    again = runner.invoke(app, ["keys", "init"])
    assert again.exit_code == 1
    assert f"key store {path} already exists" in again.stderr
    _no_traceback(again)

    rotated = runner.invoke(app, ["keys", "rotate"])
    assert rotated.exit_code == 0
    second = KeyStore.load(path).active_id
    assert second != first and second in rotated.stdout and first in rotated.stdout

    listed = runner.invoke(app, ["keys", "list", "--json"])
    assert listed.exit_code == 0
    assert _lines(listed.stdout) == [{"key_id": first, "active": False}, {"key_id": second, "active": True}]
    table = runner.invoke(app, ["keys", "list"])
    assert first in table.stdout and second in table.stdout

    store = KeyStore.load(path)
    everything = init.output + rotated.output + listed.output + table.output
    for key_id in store.ids():
        assert base64.b64encode(store.secret(key_id)).decode() not in everything


def test_keys_option_beats_env(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DICOM_WM_KEYS", str(tmp_path / "env.json"))
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    assert (tmp_path / "env.json").exists()
    assert runner.invoke(app, ["keys", "init", "--keys", str(tmp_path / "flag.json")]).exit_code == 0
    assert (tmp_path / "flag.json").exists()
    assert runner.invoke(app, ["keys", "init", "--data-dir", str(tmp_path / "dd")]).exit_code == 1  # env keys wins
    monkeypatch.delenv("DICOM_WM_KEYS")
    assert runner.invoke(app, ["keys", "init", "--data-dir", str(tmp_path / "dd")]).exit_code == 0
    assert (tmp_path / "dd" / "keys.json").exists()


def test_keys_list_warns_about_loose_permissions(runner: CliRunner, keyfile: Path):
    keyfile.chmod(0o644)
    result = runner.invoke(app, ["keys", "list"])
    assert result.exit_code == 0
    assert "warning" in result.stderr and "0644" in result.stderr


@pytest.mark.parametrize("command", [["keys", "list"], ["keys", "rotate"], ["verify", "x.dcm"], ["embed", "a", "b"]])
def test_missing_key_store_is_one_line_exit_3(runner: CliRunner, tmp_path: Path, command: list[str]):
    result = runner.invoke(app, command)
    assert result.exit_code == 3
    assert result.stderr.strip() == (
        f"error: key store {tmp_path / 'data' / 'keys.json'} not found (create one with `dicom-wm keys init`)"
    )
    _no_traceback(result)


# -- embed / verify / restore, real engine ------------------------------------------------


@pytest.mark.parametrize("name", [MONO, RGB])
def test_embed_verify_restore_round_trip(runner: CliRunner, keyfile: Path, tmp_path: Path, name: str):
    src = _copy(name, tmp_path / "in.dcm")
    wm, back = tmp_path / "wm.dcm", tmp_path / "back.dcm"

    embedded = runner.invoke(app, ["embed", str(src), str(wm), "--json"])
    assert embedded.exit_code == 0, embedded.output
    [line] = _lines(embedded.stdout)
    assert JSON_FIELDS | {"predictor", "model_sha256"} <= set(line)
    store = KeyStore.load(keyfile)
    assert line["status"] == "watermarked" and line["error"] is None
    assert line["key_id"] == store.active_id
    assert line["max_abs_delta"] == 1 and isinstance(line["psnr_db"], float) and line["psnr_db"] > 40
    assert 0 < line["payload_bits"] and line["capacity_bits"] > 0
    assert line["predictor"].startswith("classic") and line["tampered_tiles"] == []

    verified = runner.invoke(app, ["verify", str(wm), "--json"])
    assert verified.exit_code == 0, verified.output
    [v] = _lines(verified.stdout)
    assert JSON_FIELDS <= set(v)
    assert (v["status"], v["record_uuid"], v["key_id"]) == ("authentic", line["record_uuid"], line["key_id"])

    restored = runner.invoke(app, ["restore", str(wm), str(back)])
    assert restored.exit_code == 0, restored.output
    assert restored.stdout.startswith(f"restored  {wm} -> {back}")

    original, again, marked = pydicom.dcmread(src), pydicom.dcmread(back), pydicom.dcmread(wm)
    assert np.array_equal(again.pixel_array, original.pixel_array)
    assert _elements_equal_except_pixels(original, again) == []
    assert not np.array_equal(marked.pixel_array, original.pixel_array)
    assert marked.SOPInstanceUID == original.SOPInstanceUID


def test_human_embed_line(runner: CliRunner, keyfile: Path, tmp_path: Path):
    src = _copy(MONO, tmp_path / "in.dcm")
    result = runner.invoke(app, ["embed", str(src), str(tmp_path / "wm.dcm")])
    assert result.exit_code == 0
    assert result.stdout.startswith(f"watermarked  {src} -> {tmp_path / 'wm.dcm'}  key ")
    assert "max |delta| 1" in result.stdout and "PSNR" in result.stdout


def _tamper(path: Path, row: int, col: int) -> None:
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.copy()
    arr[row, col] = arr[row, col] + 1 if arr[row, col] < 255 else arr[row, col] - 1
    ds.PixelData = arr.tobytes()
    ds.save_as(path)


def test_tampered_sample_is_localised_and_restore_refused(runner: CliRunner, keyfile: Path, tmp_path: Path):
    src = _copy(MONO, tmp_path / "in.dcm")
    wm = tmp_path / "wm.dcm"
    assert runner.invoke(app, ["embed", str(src), str(wm)]).exit_code == 0
    _tamper(wm, 150, 200)

    verified = runner.invoke(app, ["verify", str(wm), "--json"])
    assert verified.exit_code == 1
    [v] = _lines(verified.stdout)
    assert v["status"] == "tampered"
    assert any(f == 0 and r0 <= 150 < r1 and c0 <= 200 < c1 for f, r0, c0, r1, c1 in v["tampered_tiles"])
    assert all(r1 - r0 <= 64 and c1 - c0 <= 64 for _, r0, c0, r1, c1 in v["tampered_tiles"])
    human = runner.invoke(app, ["verify", str(wm)])
    assert human.exit_code == 1 and human.stdout.startswith(f"tampered  {wm}  ")

    back = tmp_path / "back.dcm"
    refused = runner.invoke(app, ["restore", str(wm), str(back)])
    assert refused.exit_code == 1
    assert refused.stdout.startswith(f"refused  {wm}: ") and "--force" in refused.stdout
    assert not back.exists()
    _no_traceback(refused)

    forced = runner.invoke(app, ["restore", str(wm), str(back), "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    [f] = _lines(forced.stdout)
    assert (f["status"], f["verify_status"]) == ("restored", "tampered")
    assert back.exists()


def test_other_key_store_is_invalid(runner: CliRunner, keyfile: Path, tmp_path: Path):
    src = _copy(MONO, tmp_path / "in.dcm")
    wm = tmp_path / "wm.dcm"
    assert runner.invoke(app, ["embed", str(src), str(wm)]).exit_code == 0
    other = tmp_path / "other.json"
    KeyStore.init(other)
    result = runner.invoke(app, ["verify", str(wm), "--keys", str(other), "--json"])
    assert result.exit_code == 1
    [v] = _lines(result.stdout)
    assert v["status"] == "invalid"
    refused = runner.invoke(app, ["restore", str(wm), str(tmp_path / "back.dcm"), "--keys", str(other)])
    assert refused.exit_code == 1 and not (tmp_path / "back.dcm").exists()


def test_never_watermarked_is_not_watermarked(runner: CliRunner, keyfile: Path, tmp_path: Path):
    src = _copy(MONO, tmp_path / "in.dcm")
    result = runner.invoke(app, ["verify", str(src), "--json"])
    assert result.exit_code == 1
    assert _lines(result.stdout)[0]["status"] == "not_watermarked"


def _refused_by_every_file_command(runner: CliRunner, src: Path, tmp_path: Path, reason: str) -> None:
    """embed, verify and restore each print one ``unsupported`` line, exit 1, write nothing."""
    for command in (["embed", str(src), str(tmp_path / "o.dcm")], ["verify", str(src)],
                    ["restore", str(src), str(tmp_path / "r.dcm")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1
        assert result.stdout == f"unsupported  {src}: {reason}\n"
        _no_traceback(result)
    assert not (tmp_path / "o.dcm").exists() and not (tmp_path / "r.dcm").exists()


def test_non_dicom_file_one_line_nonzero(runner: CliRunner, keyfile: Path, tmp_path: Path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image\n")
    _refused_by_every_file_command(runner, junk, tmp_path, "not a DICOM file (no 'DICM' prefix after the 128-byte preamble)")


def test_a_named_fifo_is_refused_without_blocking(runner: CliRunner, keyfile: Path, tmp_path: Path):
    import os

    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    _refused_by_every_file_command(runner, fifo, tmp_path, "not a regular file (a FIFO, device or socket)")


def test_directory_run_mirrors_and_continues_past_bad_files(runner: CliRunner, keyfile: Path, tmp_path: Path):
    inp = tmp_path / "in"
    _copy(MONO, inp / "a" / "mono.dcm")
    _copy(RGB, inp / "b" / "c" / "rgb")  # no extension: found anyway
    _copy(TOO_SMALL, inp / "small.dcm")
    (inp / "notes.txt").write_text("hello")
    data = Path(get_testdata_file(MONO)).read_bytes()
    (inp / "cut.dcm").write_bytes(data[: len(data) // 2])
    nopix = pydicom.dcmread(get_testdata_file(MONO))
    del nopix.PixelData
    nopix.save_as(inp / "nopix.dcm")
    out = tmp_path / "out"

    result = runner.invoke(app, ["embed", str(inp), str(out), "--json"])
    assert result.exit_code == 1
    lines = {Path(x["path"]).relative_to(inp).as_posix(): x for x in _lines(result.stdout)}
    assert set(lines) == {"a/mono.dcm", "b/c/rgb", "small.dcm", "notes.txt", "cut.dcm", "nopix.dcm"}
    assert all(JSON_FIELDS <= set(x) for x in lines.values())
    assert lines["a/mono.dcm"]["status"] == lines["b/c/rgb"]["status"] == "watermarked"
    assert lines["small.dcm"]["status"] == "error" and "insufficient capacity" in lines["small.dcm"]["error"]
    assert lines["notes.txt"]["status"] == "unsupported" and "not a DICOM file" in lines["notes.txt"]["error"]
    assert lines["cut.dcm"]["status"] == "unsupported" and "truncated" in lines["cut.dcm"]["error"]
    assert lines["nopix.dcm"]["status"] == "unsupported" and "Pixel Data" in lines["nopix.dcm"]["error"]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a/mono.dcm", "b/c/rgb"]  # nothing for the failures, no temp files

    verified = runner.invoke(app, ["verify", str(out), "--json"])
    assert verified.exit_code == 0, verified.output
    assert [x["status"] for x in _lines(verified.stdout)] == ["authentic", "authentic"]

    back = tmp_path / "back"
    restored = runner.invoke(app, ["restore", str(out), str(back)])
    assert restored.exit_code == 0, restored.output
    for rel in written:
        assert np.array_equal(pydicom.dcmread(back / rel).pixel_array, pydicom.dcmread(inp / rel).pixel_array)

    mixed = runner.invoke(app, ["verify", str(out), str(inp / "a" / "mono.dcm")])
    assert mixed.exit_code == 1
    assert mixed.stdout.count("\n") == 3
    assert "2 authentic, 1 not_watermarked" in mixed.stderr


def test_output_inside_input_is_not_walked(runner: CliRunner, keyfile: Path, tmp_path: Path):
    inp = tmp_path / "in"
    _copy(MONO, inp / "mono.dcm")
    first = runner.invoke(app, ["embed", str(inp), str(inp / "wm"), "--json"])
    assert first.exit_code == 0, first.output
    assert [x["path"] for x in _lines(first.stdout)] == [str(inp / "mono.dcm")]
    assert (inp / "wm" / "mono.dcm").exists()


def test_file_into_existing_directory(runner: CliRunner, keyfile: Path, tmp_path: Path):
    src = _copy(MONO, tmp_path / "mono.dcm")
    (tmp_path / "outdir").mkdir()
    result = runner.invoke(app, ["embed", str(src), str(tmp_path / "outdir")])
    assert result.exit_code == 0
    assert (tmp_path / "outdir" / "mono.dcm").exists()


def test_usage_errors(runner: CliRunner, keyfile: Path, tmp_path: Path):
    missing = runner.invoke(app, ["embed", str(tmp_path / "nope"), str(tmp_path / "o")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    clash = runner.invoke(app, ["embed", str(tmp_path / "d"), str(tmp_path / "f")])
    assert clash.exit_code == 2 and "is a file" in clash.stderr
    empty = runner.invoke(app, ["verify", str(tmp_path / "d")])
    assert empty.exit_code == 1 and "no files" in empty.stderr
    gone = runner.invoke(app, ["verify", str(tmp_path / "nope.dcm")])
    assert gone.exit_code == 1 and gone.stdout.startswith(f"error  {tmp_path / 'nope.dcm'}: cannot read")
    bad_predictor = runner.invoke(app, ["embed", "a", "b", "--predictor", "fancy"])
    assert bad_predictor.exit_code == 2


# -- error mapping, with the engine replaced ---------------------------------------------


def test_self_check_failure_writes_nothing(runner: CliRunner, keyfile: Path, tmp_path: Path, monkeypatch):
    def fails(*args, **kwargs):
        raise SelfCheckFailed("self-check failed (tampered); nothing was written")

    monkeypatch.setattr(cli_files, "embed_dataset", fails)
    src = _copy(MONO, tmp_path / "in.dcm")
    out = tmp_path / "out.dcm"
    result = runner.invoke(app, ["embed", str(src), str(out)])
    assert result.exit_code == 1
    assert result.stdout == f"error  {src}: self-check failed (tampered); nothing was written\n"
    assert not out.exists()


def test_unexpected_exception_is_a_line_not_a_traceback(runner: CliRunner, keyfile: Path, tmp_path: Path, monkeypatch):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli_files, "verify_dataset", bug)
    src = _copy(MONO, tmp_path / "in.dcm")
    result = runner.invoke(app, ["verify", str(src), "--json"])
    assert result.exit_code == 1
    [line] = _lines(result.stdout)
    assert line["status"] == "error" and line["error"] == "internal error: ZeroDivisionError: division by zero"
    _no_traceback(result)


def test_write_failure_leaves_target_untouched(runner: CliRunner, keyfile: Path, tmp_path: Path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    src = _copy(MONO, tmp_path / "in.dcm")
    out = tmp_path / "out.dcm"
    out.write_bytes(b"previous")
    monkeypatch.setattr("dicom_wm.fileio.os.fsync", disk_full)
    result = runner.invoke(app, ["embed", str(src), str(out)])
    assert result.exit_code == 1
    assert result.stdout == f"error  {src}: cannot write {out}: No space left on device\n"
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["in.dcm", "out.dcm"]


def test_identical_psnr_is_json_null(runner: CliRunner, keyfile: Path, tmp_path: Path, monkeypatch):
    def identical(ds, keys, **kwargs):
        return EmbedResult(
            dataset=ds, record_uuid="00000000-0000-4000-8000-000000000000", key_id=keys.active_id,
            payload_bits=0, capacity_bits=0, psnr_db=math.inf, max_abs_delta=0, lossy_source=False,
            original_sample_sha256="0" * 64, predictor="classic-rhombus", model_sha256=None,
        )

    monkeypatch.setattr(cli_files, "embed_dataset", identical)
    src = _copy(MONO, tmp_path / "in.dcm")
    result = runner.invoke(app, ["embed", str(src), str(tmp_path / "o.dcm"), "--json"])
    assert result.exit_code == 0
    assert '"psnr_db": null' in result.stdout
    assert _lines(result.stdout)[0]["psnr_db"] is None


# -- the installed console script ------------------------------------------------------


def test_console_script_reports_bad_input_without_traceback(tmp_path: Path):
    exe = shutil.which("dicom-wm") or str(Path(sys.executable).with_name("dicom-wm"))
    if not Path(exe).exists():
        pytest.skip("dicom-wm console script not installed (pip install -e .)")
    keys = tmp_path / "k.json"
    KeyStore.init(keys)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    proc = subprocess.run(
        [exe, "verify", str(junk), "--keys", str(keys)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"unsupported  {junk}: ")
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and proc.stderr == ""


# -- the front door ----------------------------------------------------------------------


def test_readme_opens_with_two_setup_commands_and_ci_runs_the_second():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text().splitlines()
    block = readme[readme.index("```sh") + 1 :]
    commands = block[: block.index("```")]
    assert len(commands) == 2
    assert commands[0].startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && dicom-wm ")
    assert commands[1] == 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && python -m pytest -q'
    assert all(line.strip() in ("", "# dicom-wm") for line in readme[: readme.index("```sh")])
    ci = (root / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci
    assert ci[-1] == commands[1]


def test_verify_series_reports_missing_and_added(tmp_path):
    """`verify --series DIR`: per-instance statuses plus what is missing from
    the series (an InstanceNumber gap) or added to it (another series)."""
    import copy
    import json as _json

    import pydicom
    from pydicom.uid import generate_uid
    from typer.testing import CliRunner

    from dicom_wm.cli.app import app
    from dicom_wm.keys import KeyStore
    from dicom_wm.watermark import embed_dataset

    keys_path = tmp_path / "keys.json"
    store = KeyStore.init(keys_path)
    src = pydicom.dcmread(pydicom.data.get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    series_uid, series_dir = generate_uid(), tmp_path / "series"
    series_dir.mkdir()
    for n in (1, 2, 4):  # instance 3 is missing
        ds = copy.deepcopy(src)
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = series_uid, generate_uid(), n
        embed_dataset(ds, store).dataset.save_as(series_dir / f"{n}.dcm", enforce_file_format=True)
    foreign = copy.deepcopy(src)
    foreign.SeriesInstanceUID, foreign.SOPInstanceUID, foreign.InstanceNumber = generate_uid(), generate_uid(), 9
    embed_dataset(foreign, store).dataset.save_as(series_dir / "foreign.dcm", enforce_file_format=True)

    result = CliRunner().invoke(app, ["verify", "--series", str(series_dir), "--keys", str(keys_path), "--json"])
    assert result.exit_code == 1, result.output
    report = _json.loads(result.output.strip().splitlines()[-1])
    assert report["ok"] is False
    assert [m["instance_number"] for m in report["missing"]] == [3]
    assert report["added"] == [str(series_dir / "foreign.dcm")]
    assert {i["status"] for i in report["instances"]} == {"authentic"}


def test_waveform_goes_through_the_same_cli(tmp_path):
    import pydicom
    from typer.testing import CliRunner

    from dicom_wm.cli.app import app
    from dicom_wm.keys import KeyStore

    keys_path = tmp_path / "keys.json"
    KeyStore.init(keys_path)
    src = pydicom.data.get_testdata_file("waveform_ecg.dcm")
    runner = CliRunner()
    out, back = tmp_path / "ecg_wm.dcm", tmp_path / "ecg_back.dcm"
    assert runner.invoke(app, ["embed", src, str(out), "--keys", str(keys_path)]).exit_code == 0
    assert runner.invoke(app, ["verify", str(out), "--keys", str(keys_path)]).exit_code == 0
    assert runner.invoke(app, ["restore", str(out), str(back), "--keys", str(keys_path)]).exit_code == 0
    a, b = pydicom.dcmread(src), pydicom.dcmread(back)
    assert a.WaveformSequence[0].WaveformData == b.WaveformSequence[0].WaveformData


def test_cli_start_loads_only_what_every_command_needs():
    """Every command pays for the CLI's imports: the robust layer and the
    ROI mask (scipy, ~0.2 s), the learned predictor (torch), the database
    (sqlalchemy, ~0.15 s) and the settings model (pydantic) load only in the
    commands that use them."""
    heavy = ("scipy", "torch", "sqlalchemy", "pydantic")
    probe = f"import sys, dicom_wm.cli.app; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_audit_kinds_are_the_event_kinds():
    from dicom_wm.cli.audit import EVENT_KINDS
    from dicom_wm.db.models import EventKind

    assert EVENT_KINDS == tuple(k.value for k in EventKind)
