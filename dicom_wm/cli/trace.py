"""``dicom-wm trace IMAGE``: read the robust leak-tracing mark of a DICOM file
(every frame of a multi-frame one), of an exported PNG/JPEG/TIFF/GIF (every
page of a multi-page TIFF or animated GIF), or of a directory of exported
frames, or of audio (a WAV file, a DICOM waveform), and name the record (and
recipient) it points to when a provenance database is at hand.

:func:`decoder_for` is the one place that knows input kinds: it reads the
input once and returns the decoder that is then tried with every key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from dicom_wm.cli.common import EXIT_FAILED, EXIT_OK, DataDirOpt, JsonOpt, KeysOpt, fail, load_keystore, out_console
from dicom_wm.keys import default_data_dir

__all__ = ["register", "trace", "load_image", "load_frames", "decoder_for", "Decoder"]

_EXPORT_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
_DICOM_SUFFIXES = {".dcm", ".dicom"}
_AUDIO_SUFFIXES = {".wav"}

# A decoder takes a key's secret and gives the message (or None) and extra
# fields for the report.
Decoder = Callable[[bytes], tuple[bytes | None, dict[str, Any]]]


def _export_frames(path: Path) -> list[np.ndarray]:
    """Every page (multi-page TIFF, animated GIF/WebP) of an image export."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            out = []
            for page in ImageSequence.Iterator(im):
                if page.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr"):
                    page = page.convert("RGB")
                out.append(np.asarray(page))
            return out
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: cannot read image: {exc}") from None


def _dicom_frames(path: Path) -> list[np.ndarray]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from dicom_wm.errors import UnsupportedInput
    from dicom_wm.pixels import read_samples

    try:
        planes = read_samples(pydicom.dcmread(path))
    except InvalidDicomError:
        # a leaked export is often renamed: read it by its content
        try:
            return _export_frames(path)
        except ValueError:
            raise ValueError(f"{path}: neither a DICOM file nor an image export (PNG, JPEG, TIFF, ...)") from None
    except (UnsupportedInput, OSError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    return [f[:, :, 0] if f.shape[-1] == 1 else f for f in planes.samples]


def load_frames(path: Path) -> list[np.ndarray]:
    """Every frame ``path`` holds, each 2-D (or rows x cols x 3): all frames of
    a DICOM file, all pages of a multi-page TIFF / animated GIF, or -- for a
    directory -- those of every image export and DICOM file in it, in sorted
    name order (the robust decoders do not depend on the order)."""
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _EXPORT_SUFFIXES | _DICOM_SUFFIXES
        )
        if not files:
            raise ValueError(f"{path}: no image or DICOM files in the directory")
        frames, problems = [], []
        for p in files:  # a damaged export among the frames does not stop the others
            try:
                frames.extend(load_frames(p))
            except ValueError as exc:
                problems.append(str(exc))
        if not frames:
            raise ValueError(f"{path}: no readable frames ({problems[0]})")
        for problem in problems:
            typer.echo(f"warning: skipped {problem}", err=True)
        return frames
    if path.suffix.lower() in _EXPORT_SUFFIXES:
        return _export_frames(path)
    return _dicom_frames(path)


def load_image(path: Path) -> np.ndarray:
    """A 2-D (or rows x cols x 3) array: frame 0 of a DICOM file (luminance
    when it has colour), or the pixels of an image export."""
    return load_frames(path)[0]


def _is_audio(path: Path) -> bool:
    """A WAV file, or a DICOM object with a Waveform Sequence and no Pixel Data."""
    if path.is_dir():
        return False
    if path.suffix.lower() in _AUDIO_SUFFIXES:
        return True
    if path.suffix.lower() in _EXPORT_SUFFIXES:
        return False
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, defer_size=1024)  # pixel data is not read
    except (InvalidDicomError, OSError):
        return False
    return "WaveformSequence" in ds and "PixelData" not in ds


def decoder_for(path: Path) -> Decoder:
    """Read ``path`` once and pick the robust decoder for what it holds.

    The one place that knows input kinds:

    * audio -- a ``.wav`` file, or a DICOM object with a Waveform Sequence and
      no Pixel Data -- goes to the audio layer
      (:func:`~dicom_wm.robust.audio.load_audio` once, then
      :func:`~dicom_wm.robust.audio.decode_audio_robust` per key: what
      :func:`~dicom_wm.robust.audio.trace_audio` does, without re-reading);
    * one image frame to the single-image decoder (with its geometry search);
    * several frames (multi-frame DICOM, multi-page TIFF, animated GIF, a
      directory of frames) to
      :func:`~dicom_wm.robust.frames.decode_frames_detail`, which sums them.

    Raises
    ------
    ValueError
        When ``path`` cannot be read.
    """
    # the robust layer (scipy, ~0.2 s to import) loads only for this command
    from dicom_wm.robust import decode_robust
    from dicom_wm.robust.frames import FrameStack, decode_frames_detail

    if path.exists() and not (path.is_dir() or path.is_file()):
        raise ValueError(f"{path}: not a regular file (a FIFO, device or socket)")  # opening it could block
    if _is_audio(path):
        from dicom_wm.robust.audio import decode_audio_robust, load_audio

        channels, rate = load_audio(path)
        return lambda secret: (decode_audio_robust(channels, rate, secret), {})
    frames = load_frames(path)
    if len(frames) == 1:
        return lambda secret: (decode_robust(frames[0], secret), {})

    stack = FrameStack(frames)  # whitened once, decoded under every key

    def decode(secret: bytes) -> tuple[bytes | None, dict[str, Any]]:
        found = decode_frames_detail(stack, secret)
        extra: dict[str, Any] = {"frames": len(frames)}
        if found is None:
            return None, extra
        extra["frames_carrying"] = list(found.frames)
        return found.message, extra

    return decode


def _db_url(db: str | None, data_dir: Path | None) -> str | None:
    if db:
        return db
    from dicom_wm.settings import SQLITE_FILE

    path = default_data_dir(data_dir) / SQLITE_FILE
    return f"sqlite:///{path.resolve()}" if path.is_file() else None


def _lookup(url: str, message: bytes) -> dict[str, Any]:
    from sqlalchemy import select

    from dicom_wm.db import Destination, Instance, get_sessionmaker
    from dicom_wm.robust import parse_message, recipient_tag, record_prefix

    tag, who = parse_message(message)
    with get_sessionmaker(url)() as session:
        rows = session.scalars(
            select(Instance).where(Instance.record_uuid.like(record_prefix(tag) + "%")).order_by(Instance.id)
        ).all()
        records = [
            {
                "record_uuid": r.record_uuid,
                "patient_id": r.patient_id,
                "study_instance_uid": r.study_instance_uid,
                "series_instance_uid": r.series_instance_uid,
                "sop_instance_uid": r.sop_instance_uid,
            }
            for r in rows
        ]
        recipients = []
        if who:
            recipients = sorted(
                {d.ae_title for d in session.scalars(select(Destination)).all() if recipient_tag(d.ae_title) == who}
            )
    return {"records": records, "recipients": recipients}


def trace(
    image: Annotated[
        Path,
        typer.Argument(
            help="a DICOM file (every frame is used; a waveform object: its audio), a PNG/JPEG/TIFF/GIF "
            "export (every page), a directory of exported frames, or a WAV file",
            exists=True,
        ),
    ],
    json_out: JsonOpt = False,
    keys: KeysOpt = None,
    data_dir: DataDirOpt = None,
    db: Annotated[
        str | None,
        typer.Option("--db", envvar="DICOM_WM_DB", help="database URL (default: the data dir's SQLite file, if any)"),
    ] = None,
) -> None:
    """Decode the robust (leak-tracing) mark of IMAGE with every key of the
    key store; name the record and recipient it points to. The frames of a
    cine or volume (multi-frame DICOM, multi-page TIFF, animated GIF, a
    directory of exported frames, in any order) are decoded together."""
    store = load_keystore(keys, data_dir)
    try:
        decode = decoder_for(image)
    except ValueError as exc:
        fail(str(exc), EXIT_FAILED)
    message = key_id = None
    extra: dict[str, Any] = {}
    for kid in store.ids():
        message, extra = decode(store.secret(kid))
        if message is not None:
            key_id = kid
            break
    result: dict[str, Any] = {"file": str(image), "message": message.hex() if message else None, "key_id": key_id}
    result.update(extra)
    if message is not None:
        from dicom_wm.robust import parse_message, record_prefix

        tag, who = parse_message(message)
        result["record_tag"] = record_prefix(tag)
        result["recipient_tag"] = who or None
        url = _db_url(db, data_dir)
        if url is not None:
            from sqlalchemy.exc import SQLAlchemyError

            try:
                result.update(_lookup(url, message))
            except SQLAlchemyError as exc:
                fail(f"database unavailable: {str(exc).splitlines()[0]}", EXIT_FAILED)
    if json_out:
        typer.echo(json.dumps(result))
    else:
        out_console.print(f"message: {result['message'] or 'null'}", markup=False)
        if message is not None:
            out_console.print(f"record: {result['record_tag']}… (key {key_id})", markup=False)
            if result.get("frames_carrying"):
                out_console.print(
                    f"frames: {len(result['frames_carrying'])} of {result['frames']} carry it", markup=False
                )
            elif "frames" in result:
                out_console.print(f"frames: {result['frames']} (found on their average)", markup=False)
            if result["recipient_tag"]:
                out_console.print(f"recipient tag: {result['recipient_tag']}", markup=False)
            for rec in result.get("records", []):
                out_console.print(
                    f"  instance {rec['sop_instance_uid']} patient {rec['patient_id']} "
                    f"study {rec['study_instance_uid']} series {rec['series_instance_uid']} ({rec['record_uuid']})",
                    markup=False,
                )
            for ae in result.get("recipients", []):
                out_console.print(f"  recipient {ae}", markup=False)
    raise typer.Exit(EXIT_OK if message is not None else EXIT_FAILED)


def register(app: typer.Typer) -> None:
    """Add ``trace`` to ``app``."""
    app.command("trace")(trace)
