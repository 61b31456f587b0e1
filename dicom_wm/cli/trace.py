"""``dicom-wm trace IMAGE``: read the robust leak-tracing mark of a DICOM file
or of an exported PNG/JPEG/TIFF, and name the record (and recipient) it
points to when a provenance database is at hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from dicom_wm.cli.common import EXIT_FAILED, EXIT_OK, DataDirOpt, JsonOpt, KeysOpt, fail, load_keystore, out_console
from dicom_wm.keys import default_data_dir
from dicom_wm.robust import decode_robust, parse_message, recipient_tag, record_prefix

__all__ = ["register", "trace", "load_image"]

_EXPORT_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


def load_image(path: Path) -> np.ndarray:
    """A 2-D (or rows x cols x 3) array: frame 0 of a DICOM file (luminance
    when it has colour), or the pixels of an image export."""
    if path.suffix.lower() in _EXPORT_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                if im.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr"):
                    im = im.convert("RGB")
                return np.asarray(im)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{path}: cannot read image: {exc}") from None
    import pydicom
    from pydicom.errors import InvalidDicomError

    from dicom_wm.errors import UnsupportedInput
    from dicom_wm.pixels import read_samples

    try:
        planes = read_samples(pydicom.dcmread(path))
    except (InvalidDicomError, UnsupportedInput, OSError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    frame = planes.samples[0]
    return frame[:, :, 0] if frame.shape[-1] == 1 else frame


def _db_url(db: str | None, data_dir: Path | None) -> str | None:
    if db:
        return db
    from dicom_wm.settings import SQLITE_FILE

    path = default_data_dir(data_dir) / SQLITE_FILE
    return f"sqlite:///{path.resolve()}" if path.is_file() else None


def _lookup(url: str, message: bytes) -> dict[str, Any]:
    from sqlalchemy import select

    from dicom_wm.db import Destination, Instance, get_sessionmaker

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
    image: Annotated[Path, typer.Argument(help="a DICOM file or a PNG/JPEG/TIFF export", exists=True, dir_okay=False)],
    json_out: JsonOpt = False,
    keys: KeysOpt = None,
    data_dir: DataDirOpt = None,
    db: Annotated[
        str | None,
        typer.Option("--db", envvar="DICOM_WM_DB", help="database URL (default: the data dir's SQLite file, if any)"),
    ] = None,
) -> None:
    """Decode the robust (leak-tracing) mark of IMAGE with every key of the
    key store; name the record and recipient it points to."""
    store = load_keystore(keys, data_dir)
    try:
        pixels = load_image(image)
    except ValueError as exc:
        fail(str(exc), EXIT_FAILED)
    message = key_id = None
    for kid in store.ids():
        message = decode_robust(pixels, store.secret(kid))
        if message is not None:
            key_id = kid
            break
    result: dict[str, Any] = {"file": str(image), "message": message.hex() if message else None, "key_id": key_id}
    if message is not None:
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
