"""Shared helpers for the ingest / SCP / distributed tests.

* :func:`build_study` writes a multi-series study (CT, MR, CR, US incl.
  multi-frame and colour, plus SR without pixel data) made from pydicom's
  test files and pydicom-data with fresh Study / Series / SOP Instance UIDs.
* :class:`ServiceProcess` runs ``dicom-wm serve`` / ``dicom-wm worker`` as
  subprocesses; :func:`wait_for_echo` polls readiness with C-ECHO and a
  deadline.
* :func:`dcmtk_storescu` finds DCMTK's storescu (pynetdicom installs a
  Python ``storescu`` that can shadow it on PATH).

Nothing here downloads anything.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

__all__ = [
    "PYDICOM_FILES",
    "PYDICOM_DATA",
    "StudyFile",
    "build_study",
    "small_ct",
    "free_port",
    "wait_for_echo",
    "ServiceProcess",
    "dicom_wm_command",
    "dcmtk_storescu",
    "send_with_pynetdicom",
    "wait_until",
]

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
_spec = importlib.util.find_spec("data_store")
PYDICOM_DATA = Path(_spec.origin).parent / "data" if _spec and _spec.origin else None


def source_file(name: str) -> Path:
    for folder in (PYDICOM_FILES, PYDICOM_DATA):
        if folder is not None and (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name} is neither in pydicom's test files nor in pydicom-data")


@dataclass(frozen=True)
class StudyFile:
    path: Path
    source: str
    series: str
    sop_instance_uid: str
    has_pixels: bool


# (series label, modality, [(source file, copies)])
FULL_STUDY: tuple[tuple[str, str, tuple[tuple[str, int], ...]], ...] = (
    ("ct-axial", "CT", (("693_UNCR.dcm", 90),)),
    ("ct-mixed", "CT", (("693_J2KR.dcm", 20), ("eCT_Supplemental.dcm", 10), ("JPEG2000.dcm", 2))),
    ("mr", "MR", (("MR-SIEMENS-DICOM-WithOverlays.dcm", 20), ("examples_overlay.dcm", 10), ("MR2_J2KR.dcm", 2))),
    ("cr", "CR", (("RG3_J2KR.dcm", 3),)),
    ("us-colour", "US", (("US1_UNCR.dcm", 10), ("US1_J2KR.dcm", 5), ("color-px.dcm", 20))),
    ("us-mono-cine", "US", (("JPGLosslessP14SV1_1s_1f_8b.dcm", 5), ("examples_ybr_color.dcm", 2))),
    ("sr", "SR", (("reportsi.dcm", 3),)),
)

SMALL_STUDY: tuple[tuple[str, str, tuple[tuple[str, int], ...]], ...] = (
    ("ct-axial", "CT", (("693_UNCR.dcm", 12),)),
    ("us-colour", "US", (("color-px.dcm", 4), ("US1_J2KR.dcm", 1))),
    ("mr-multiframe", "MR", (("eCT_Supplemental.dcm", 2),)),
    ("sr", "SR", (("reportsi.dcm", 1),)),
)


def build_study(
    out_dir: Path,
    layout: tuple[tuple[str, str, tuple[tuple[str, int], ...]], ...] = FULL_STUDY,
    *,
    patient_id: str = "DWM-TEST-1",
) -> list[StudyFile]:
    """Write the study's files under ``out_dir/<series>/`` and describe them."""
    study_uid = generate_uid()
    files: list[StudyFile] = []
    for series_number, (label, modality, sources) in enumerate(layout, start=1):
        series_uid = generate_uid()
        folder = out_dir / label
        folder.mkdir(parents=True, exist_ok=True)
        number = 0
        for source, copies in sources:
            template = pydicom.dcmread(source_file(source))
            for _ in range(copies):
                number += 1
                ds = copy.deepcopy(template)
                sop_uid = generate_uid()
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series_uid
                ds.SOPInstanceUID = sop_uid
                ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
                ds.PatientID = patient_id
                ds.PatientName = "Test^Ingest"
                ds.PatientBirthDate = "19700101"
                ds.PatientSex = "O"
                ds.StudyDate = "20261128"
                ds.StudyTime = "120000"
                ds.AccessionNumber = "ACC0001"
                ds.StudyID = "1"
                ds.Modality = modality
                ds.SeriesNumber = series_number
                ds.SeriesDescription = label
                ds.InstanceNumber = number
                path = folder / f"{number:04d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                files.append(StudyFile(path, source, label, sop_uid, "PixelData" in ds))
    return files


def small_ct(uid: str | None = None) -> Dataset:
    """A 512x512 CT (pydicom-data 693_UNCR) with fresh UIDs, in memory."""
    ds = pydicom.dcmread(source_file("693_UNCR.dcm"))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


# -- processes and networking -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    """Poll ``predicate`` until true or raise ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def echo_ok(port: int, ae_title: str = "DICOMWM", calling: str = "ECHOSCU") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def wait_for_echo(port: int, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """C-ECHO until the server answers (or ``proc`` died, or the deadline)."""

    def ready() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering C-ECHO")
        return echo_ok(port)

    wait_until(ready, timeout, interval=0.2, what=f"C-ECHO on port {port}")


def dicom_wm_command() -> list[str]:
    """How to run the CLI: the console script beside this interpreter."""
    script = Path(sys.executable).parent / "dicom-wm"
    if script.exists():
        return [str(script)]
    found = shutil.which("dicom-wm")
    if found:
        return [found]
    return [sys.executable, "-m", "dicom_wm.cli.app"]


class ServiceProcess:
    """A ``dicom-wm`` subprocess with its log captured in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            dicom_wm_command() + args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the whole process group (the process and its children)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        try:  # leftover children of the group (pool processes)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def dcmtk_storescu() -> str | None:
    """Path of DCMTK's storescu, or None."""
    candidates = ["/usr/bin/storescu"] + [str(Path(p) / "storescu") for p in os.environ.get("PATH", "").split(os.pathsep)]
    for candidate in candidates:
        if not os.access(candidate, os.X_OK):
            continue
        try:
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in out.lower():
            return candidate
    return None


def send_with_dcmtk(storescu: str, port: int, paths: Iterable[Path], *, calling: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    """Send ``paths`` in one association with DCMTK storescu (TCP_NODELAY=1)."""
    cmd = [storescu, "-aet", calling, "-aec", "DICOMWM", "--propose-lossless", "127.0.0.1", str(port), *map(str, paths)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "TCP_NODELAY": "1"})


def send_with_pynetdicom(port: int, paths: Iterable[Path], *, calling: str = "PYNETSCU") -> list[int]:
    """Send ``paths`` over one association (contexts from the files); statuses."""
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 60
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMWM")
    if not assoc.is_established:
        raise RuntimeError("association rejected or aborted")
    statuses = []
    try:
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            statuses.append(int(rsp.Status) if rsp else -1)
    finally:
        assoc.release()
    return statuses



# -- PostgreSQL and Redis on localhost -------------------------------------------------

PG_ADMIN_DSN = os.environ.get("DICOM_WM_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
REDIS_URL = os.environ.get("DICOM_WM_TEST_REDIS", "redis://127.0.0.1:6379/0")


def services_unavailable() -> str | None:
    """Why PostgreSQL or Redis cannot be used (None when both answer)."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            pass
    except Exception as exc:
        return f"PostgreSQL not reachable ({PG_ADMIN_DSN}): {str(exc).splitlines()[0] if str(exc) else exc}"
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis not reachable ({REDIS_URL}): {exc}"
    return None


def require_services() -> None:
    """Skip (locally) or fail (CI=true) when the services are absent."""
    import pytest

    reason = services_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the distributed tests, but {reason}")
    pytest.skip(f"needs PostgreSQL and Redis on localhost: {reason}")


class FreshPostgres:
    """A database created for one test (``dwm_test_<random>``), dropped after."""

    def __init__(self) -> None:
        import secrets

        self.name = f"dwm_test_{secrets.token_hex(5)}"

    def __enter__(self) -> str:
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        dsn = dict(part.split("=", 1) for part in PG_ADMIN_DSN.split())
        host, port, user = dsn.get("host", "127.0.0.1"), dsn.get("port", "5432"), dsn.get("user", "postgres")
        return f"postgresql+psycopg://{user}@{host}:{port}/{self.name}"

    def __exit__(self, *exc: object) -> None:
        import psycopg

        from dicom_wm.db.engine import dispose_engines

        dispose_engines()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
