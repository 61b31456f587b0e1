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
from collections import Counter
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
    "dcmtk_tool",
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


def killer_of_embedding_attempts(
    url: str, worker_pids: Callable[[], list[int]], kills: list[int], up_to_attempt: int
) -> Callable[[], bool]:
    """A ``wait_until`` predicate for a database holding one instance: while
    that instance is WATERMARKING at an attempt up to ``up_to_attempt`` not
    yet in ``kills``, SIGKILL the first of ``worker_pids()`` and note the
    attempt; true once the instance is final."""
    from sqlalchemy import select

    from dicom_wm.db import Instance, get_sessionmaker

    sessions = get_sessionmaker(url)

    def check() -> bool:
        with sessions() as s:
            row = s.scalars(select(Instance)).first()
            if row is None or row.state.value in ("WATERMARKED", "FAILED", "SKIPPED"):
                return row is not None
            if row.state.value == "WATERMARKING" and row.attempts not in kills and row.attempts <= up_to_attempt:
                pids = worker_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    kills.append(row.attempts)
        return False

    return check


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
    """How to run the CLI: ``$DICOM_WM_TEST_CLI`` (split on spaces) if set,
    else the console script beside this interpreter."""
    override = os.environ.get("DICOM_WM_TEST_CLI")
    if override:
        return override.split()
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
    return dcmtk_tool("storescu")


def dcmtk_tool(tool: str) -> str | None:
    """Path of DCMTK's ``tool`` (storescu, findscu, movescu, ...), or None:
    pynetdicom installs same-named scripts in the venv, told apart by
    ``--version``."""
    candidates = [f"/usr/bin/{tool}"] + [str(Path(p) / tool) for p in os.environ.get("PATH", "").split(os.pathsep)]
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


# storescu proposes uncompressed syntaxes plus at most one compressed family;
# files are sent in one storescu run per family, with the matching option.
_DCMTK_PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def send_with_dcmtk(storescu: str, port: int, paths: Iterable[Path], *, calling: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    """Send ``paths`` with DCMTK storescu (TCP_NODELAY=1): one association per
    compressed transfer syntax family. Returns the last failing run, else the
    last run."""
    groups: dict[str | None, list[Path]] = {}
    for path in paths:
        ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(_DCMTK_PROPOSE.get(ts), []).append(path)
    result: subprocess.CompletedProcess[str] | None = None
    for option, group in groups.items():
        cmd = [storescu, "-aet", calling, "-aec", "DICOMWM", *([option] if option else []), "127.0.0.1", str(port),
               *map(str, group)]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "TCP_NODELAY": "1"})
        if result is None or run.returncode != 0 or result.returncode == 0:
            result = run if (result is None or result.returncode == 0) else result
    if result is None:
        raise ValueError("nothing to send")
    return result


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


# -- checking a finished ingest ---------------------------------------------------------


def rows_by_sop(url: str) -> dict[str, list[object]]:
    """Every instance row, grouped by SOP Instance UID (fresh session)."""
    from dicom_wm.db import Instance, get_sessionmaker

    with get_sessionmaker(url)() as s:
        out: dict[str, list[object]] = {}
        for row in s.query(Instance).order_by(Instance.id):
            out.setdefault(row.sop_instance_uid, []).append(row)
        return out


def count_final(url: str) -> tuple[int, int]:
    """(rows in a final state, all rows)."""
    from sqlalchemy import func, select

    from dicom_wm.db import FINAL_STATES, Instance, get_sessionmaker

    with get_sessionmaker(url)() as s:
        total = s.scalar(select(func.count()).select_from(Instance)) or 0
        final = s.scalar(select(func.count()).select_from(Instance).where(Instance.state.in_(FINAL_STATES))) or 0
        return int(final), int(total)


def wait_all_final(url: str, expected: int, timeout: float, procs: Iterable[ServiceProcess] = ()) -> None:
    def done() -> bool:
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.log_path.name} exited early:\n{p.log_text()[-3000:]}")
        final, total = count_final(url)
        return total >= expected and final == total

    try:
        wait_until(done, timeout, interval=0.5, what=f"{expected} instances in a final state")
    except TimeoutError as exc:
        states = Counter(r.state.value for rows in rows_by_sop(url).values() for r in rows)
        raise TimeoutError(f"{exc}; states now {dict(states)}") from None


def check_ingest(
    url: str, data_dir: Path, files: list[StudyFile], keys_path: Path, *, worker_killed: bool = False
) -> dict[str, int]:
    """Every sent instance has exactly one row, is WATERMARKED (or SKIPPED
    for want of pixel data) with exactly one final event, verifies authentic
    and restores to the sent samples; the spool is empty. Returns counts."""
    import numpy as np
    from sqlalchemy import func, select

    from dicom_wm.db import Event, InstanceState, get_sessionmaker
    from dicom_wm.keys import KeyStore
    from dicom_wm.pixels import read_samples
    from dicom_wm.watermark import VerifyStatus, restore_dataset, verify_dataset

    keys = KeyStore.load(keys_path)
    rows = rows_by_sop(url)
    assert sorted(rows) == sorted(f.sop_instance_uid for f in files), "received set differs from sent set"
    with get_sessionmaker(url)() as s:
        final_events = dict(
            s.execute(
                select(Event.instance_id, func.count())
                .where(Event.kind.in_(["watermarked", "skipped", "failed"]))
                .group_by(Event.instance_id)
            ).all()
        )
    counts = {"WATERMARKED": 0, "SKIPPED": 0}
    for f in files:
        versions = rows[f.sop_instance_uid]
        assert len(versions) == 1, f"{f.source}: {len(versions)} rows"
        row = versions[0]
        assert final_events.get(row.id) == 1, f"{f.source}: {final_events.get(row.id)} final events"
        assert row.spool_path is None
        stored = data_dir / row.archive_path
        if not f.has_pixels:
            assert row.state is InstanceState.SKIPPED and row.state_reason, f"{f.source}: {row.state}"
            assert stored.read_bytes() == f.path.read_bytes() or row.stored_sha256 == row.received_sha256
            counts["SKIPPED"] += 1
            continue
        assert row.state is InstanceState.WATERMARKED, f"{f.source}: {row.state.value} {row.state_reason}"
        ds = pydicom.dcmread(stored)
        verdict = verify_dataset(ds, keys)
        assert verdict.status is VerifyStatus.AUTHENTIC, f"{f.source}: {verdict.status} {verdict.error}"
        restored = restore_dataset(ds, keys).dataset
        original = pydicom.dcmread(f.path)
        assert np.array_equal(read_samples(restored).samples, read_samples(original).samples), f.source
        for elem in original:
            if elem.keyword in ("PixelData",) or elem.tag.group == 0x0002:
                continue
            if elem.tag.group == 0x0028 and row.stored_transfer_syntax_uid != row.received_transfer_syntax_uid:
                continue  # stored as decoded samples: encoding-bound attributes (e.g. YBR_RCT -> RGB) follow
            assert elem.tag in restored, f"{f.source}: {elem.keyword or elem.tag} lost"
            assert restored[elem.tag].value == elem.value, f"{f.source}: {elem.keyword or elem.tag} changed"
        counts["WATERMARKED"] += 1
    spool = data_dir / "spool"
    if worker_killed:
        # A worker killed between its final commit and its clean-up leaves a
        # spool file no row refers to (every row's spool_path is None above);
        # serve removes such files at its next start, as here.
        from dicom_wm.db import get_sessionmaker
        from dicom_wm.ingest.runtime import clean_spool
        from dicom_wm.settings import load_settings

        clean_spool(load_settings(data_dir=data_dir, db=url), get_sessionmaker(url))
    assert not spool.exists() or not [p for p in spool.iterdir() if p.is_file()], "spool not empty"
    return counts
