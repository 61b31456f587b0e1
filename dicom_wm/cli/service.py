"""Service commands: serve, worker, status, show, db upgrade.

Registered on the main app by ``dicom_wm.cli.app`` with :func:`register`.
Every command takes ``--data-dir`` and ``--db`` (env ``DICOM_WM_DATA_DIR``,
``DICOM_WM_DB``) and ``--config`` (TOML; env ``DICOM_WM_CONFIG``); flags
override the environment, which overrides the file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dicom_wm.cli.common import cli_settings, exit_error, sessions_for

if TYPE_CHECKING:  # pydantic and sqlalchemy load only in the commands that use them
    from dicom_wm.settings import Settings

__all__ = ["register", "db_app"]

log = logging.getLogger("dicom_wm.service")

DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="data dir (env DICOM_WM_DATA_DIR; default ./dicom-wm-data)")]
DbOpt = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL (env DICOM_WM_DB; default SQLite in the data dir)")]
BrokerOpt = Annotated[str | None, typer.Option("--broker", help="Celery broker URL, e.g. redis://host:6379/0 (env DICOM_WM_BROKER)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config file (env DICOM_WM_CONFIG)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]

db_app = typer.Typer(help="Provenance database maintenance.", no_args_is_help=True)


# Engine options of the workers (embedded pool or Celery); env DICOM_WM_PREDICTOR /
# DICOM_WM_ROI_LOSSLESS or the TOML file set them too. Recorded per instance.
PredictorOpt = Annotated[
    str | None,
    typer.Option(
        "--predictor",
        help="sample predictor: classic, learned, classic-adaptive, learned-adaptive (per-plane fitted stage), "
        "or auto (learned on a GPU, classic on a CPU); default classic",
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="learned predictor's device: auto (CUDA if available), cpu or cuda")
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option("--batch-size", help="instances per task (embedded pool) or per embed_batch message (--broker), "
                 "predicted in shared passes (default 1)"),
]
BatchWaitOpt = Annotated[
    float | None, typer.Option("--batch-wait-ms", help="longest wait for a batch to fill (default 50)")
]
RoiOpt = Annotated[
    bool | None,
    typer.Option("--roi-lossless/--no-roi-lossless", help="leave the detected body unchanged when the rest suffices"),
]

RobustOpt = Annotated[
    bool | None, typer.Option("--robust/--no-robust", help="add the robust leak-tracing layer (docs/robust.md)")
]


def _logging(settings: Settings) -> None:
    from dicom_wm.process_setup import configure_logging

    configure_logging(settings.log_level, force=True)


def _check_predictor(settings: Settings) -> None:
    """Load the configured predictor once at start, so a missing GPU or a bad
    checkpoint stops the service instead of failing every instance."""
    from dicom_wm.ingest.task import check_predictor

    try:
        name, device = check_predictor(settings)
    except Exception as exc:  # noqa: BLE001 - ValueError (device), ModelIntegrityError, torch errors
        raise exit_error(f"predictor {settings.predictor.value} (device {settings.device.value}): {exc}", 2) from None
    log.info("predictor %s on %s (setting %s, batch_size %d)", name, device, settings.predictor.value,
             settings.batch_size)


# -- serve -----------------------------------------------------------------------------


def serve(
    host: Annotated[str | None, typer.Option("--host", help="address to listen on (default 0.0.0.0)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="DICOM port (default 11112)")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="our AE title (default DICOMWM)")] = None,
    data_dir: DataDirOpt = None,
    db: DbOpt = None,
    broker: BrokerOpt = None,
    workers: Annotated[int | None, typer.Option("--workers", help="embedded worker processes (default: CPU count)")] = None,
    predictor: PredictorOpt = None,
    device: DeviceOpt = None,
    batch_size: BatchSizeOpt = None,
    batch_wait_ms: BatchWaitOpt = None,
    roi_lossless: RoiOpt = None,
    robust: RobustOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run the DICOM service: Storage SCP, queue, and (without --broker) the workers."""
    settings = cli_settings(config, host=host, port=port, ae_title=ae_title, data_dir=data_dir, db=db,
                         broker=broker, workers=workers, predictor=predictor, device=device,
                         batch_size=batch_size, batch_wait_ms=batch_wait_ms, roi_lossless=roi_lossless,
                         robust=robust)
    _logging(settings)
    if settings.embedded:
        _check_predictor(settings)
    from dicom_wm.db.engine import get_sessionmaker
    from dicom_wm.errors import KeyStoreError
    from dicom_wm.ingest.dispatch import Dispatcher, pending_instance_ids
    from dicom_wm.ingest.runtime import SchemaOutOfDate, clean_spool, ensure_keys, ensure_schema, prepare_data_dir
    from scp import ScpContext, start_server

    log.info("effective configuration: %s", json.dumps(settings.redacted(), sort_keys=True))
    try:
        prepare_data_dir(settings)
        ensure_schema(settings, upgrade_sqlite=True)  # first: a refused start creates no key
        ensure_keys(settings, create=True)
    except (SchemaOutOfDate, KeyStoreError, OSError) as exc:
        raise exit_error(str(exc), 2) from None
    sessions = get_sessionmaker(settings.db_url)
    clean_spool(settings, sessions)

    backend: Any
    if settings.embedded:
        from dicom_wm.ingest.pool import EmbeddedPool

        backend = EmbeddedPool(settings)
        backend.warm_up()
    else:
        from workers.app import CeleryBackend

        backend = CeleryBackend(settings)
    dispatcher = Dispatcher(
        sessions, backend, queue_name=settings.queue, actor=f"{settings.ae_title}@dispatcher",
        reconcile_interval_s=settings.reconcile_interval_s, stale_after_s=settings.stale_after_s,
        # reception first only where the workers share this machine
        quiet_s=settings.reception_quiet_s if settings.embedded else 0.0,
        max_hold_s=settings.reception_max_hold_s,
        # distributed: groups of batch_size ids, one embed_batch message each (the pool batches by itself)
        group_size=1 if settings.embedded else settings.batch_size,
        group_wait_s=settings.batch_wait_ms / 1000.0,
        # a worker killed between its commit and the unlink leaves an orphan behind
        housekeeping=lambda: clean_spool(settings, sessions, min_age_s=settings.orphan_spool_after_s),
    )
    if settings.embedded:
        backend.set_on_broken(lambda: dispatcher.enqueue_many(pending_instance_ids(sessions), "pool restart"))
    dispatcher.start(requeue_pending=True)

    ctx = ScpContext(settings, sessions, dispatcher.enqueue, frozenset(settings.allowed_calling_aes))
    try:
        server = start_server(ctx)
    except OSError as exc:
        dispatcher.stop()
        backend.close()
        raise exit_error(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", 2) from None
    from scp.retrieve import egress_pool

    threading.Thread(target=egress_pool(ctx).start, name="egress-pool-start", daemon=True).start()

    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    mode = "embedded, %d worker process(es)" % settings.worker_count if settings.embedded else "distributed"
    log.info("dicom-wm ready (%s)", mode)
    stop.wait()
    server.shutdown()
    dispatcher.stop()
    backend.close()
    log.info("stopped")


# -- worker ----------------------------------------------------------------------------


def worker(
    data_dir: DataDirOpt = None,
    db: DbOpt = None,
    broker: BrokerOpt = None,
    queues: Annotated[str | None, typer.Option("--queues", help="queues to consume (default embed,gpu)")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", help="task processes (default: CPU count)")] = None,
    predictor: PredictorOpt = None,
    device: DeviceOpt = None,
    roi_lossless: RoiOpt = None,
    robust: RobustOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run a Celery worker (distributed mode) consuming the watermark queues."""
    settings = cli_settings(config, data_dir=data_dir, db=db, broker=broker, queues=queues, workers=concurrency,
                         predictor=predictor, device=device, roi_lossless=roi_lossless, robust=robust)
    _logging(settings)
    if settings.embedded:
        raise exit_error("a worker needs a broker (--broker or DICOM_WM_BROKER); without one, serve runs the workers", 2)
    _check_predictor(settings)
    from dicom_wm.errors import KeyStoreError
    from dicom_wm.ingest.runtime import SchemaOutOfDate, ensure_keys, ensure_schema, prepare_data_dir
    from workers.app import app, configure

    log.info("effective configuration: %s", json.dumps(settings.redacted(), sort_keys=True))
    try:
        prepare_data_dir(settings)
        ensure_schema(settings, upgrade_sqlite=False)
        ensure_keys(settings, create=False)
    except (SchemaOutOfDate, KeyStoreError, OSError) as exc:
        raise exit_error(str(exc), 2) from None
    from dicom_wm.db.engine import dispose_engines

    dispose_engines()  # prefork children must not share the parent's connections
    configure(settings)
    app.worker_main([
        "worker",
        "--queues", ",".join(settings.queues),
        "--concurrency", str(settings.worker_count),
        "--loglevel", settings.log_level,
        "--hostname", f"dicom-wm-{os.getpid()}@%h",
        "--without-mingle",
        "--without-gossip",
    ])


# -- status / show -------------------------------------------------------------------


def status(
    data_dir: DataDirOpt = None,
    db: DbOpt = None,
    broker: BrokerOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Instances per state, queue depth and the latest errors."""
    settings = cli_settings(config, data_dir=data_dir, db=db, broker=broker)
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_wm.ingest.report import status_summary

    depths = None
    if not settings.embedded:
        try:
            from workers.app import queue_depths

            depths = queue_depths(settings)
        except Exception as exc:  # the broker being down is worth reporting, not crashing over
            typer.echo(f"warning: broker unreachable: {exc}", err=True)
    try:
        summary = status_summary(sessions_for(settings, create=False), depths)
    except SQLAlchemyError as exc:
        raise exit_error(f"database unavailable: {str(exc).splitlines()[0]}") from None
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
        return
    console = Console()
    table = Table(title=f"dicom-wm instances ({summary['total']} rows)")
    table.add_column("state")
    table.add_column("current versions", justify="right")
    table.add_column("all rows", justify="right")
    for state, count in summary["states"].items():
        table.add_row(state, str(summary["current_states"][state]), str(count))
    console.print(table)
    depth = summary["queue_depth"]
    line = f"waiting for a worker: {depth['waiting_rows']}, in progress: {depth['in_progress_rows']}"
    if depth["oldest_in_progress_since"]:
        line += f" (the oldest since {depth['oldest_in_progress_since']})"
    if "broker" in depth:
        line += ", broker queues: " + ", ".join(f"{k}={v}" for k, v in depth["broker"].items())
    console.print(line, soft_wrap=True, markup=False)
    if summary["last_errors"]:
        errors = Table(title="latest errors")
        for col in ("time", "SOP Instance UID", "v", "state", "error"):
            errors.add_column(col)
        for e in summary["last_errors"]:
            errors.add_row(e["time"] or "", e["sop_instance_uid"], str(e["version"]), e["state"], e["error"] or "")
        console.print(errors)


def show(
    sop_instance_uid: Annotated[str, typer.Argument(help="SOP Instance UID")],
    data_dir: DataDirOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Provenance and events of one instance (every received version)."""
    settings = cli_settings(config, data_dir=data_dir, db=db)
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_wm.ingest.report import instance_report

    try:
        report = instance_report(sessions_for(settings, create=False), sop_instance_uid)
    except SQLAlchemyError as exc:
        raise exit_error(f"database unavailable: {str(exc).splitlines()[0]}") from None
    if report is None:
        raise exit_error(f"no instance with SOP Instance UID {sop_instance_uid!r}")
    if as_json:
        typer.echo(json.dumps(report, sort_keys=True))
        return
    console = Console()
    for version in report["versions"]:
        table = Table(title=f"{sop_instance_uid} version {version['version']}"
                      + (" (current)" if version["is_current"] else ""), show_header=False)
        table.add_column("field")
        table.add_column("value")
        for key, value in version.items():
            if value is not None:
                table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
        console.print(table)
    events = Table(title="events")
    for col in ("time", "kind", "actor", "details"):
        events.add_column(col)
    for e in report["events"]:
        events.add_row(e["time"] or "", e["kind"], e["actor"] or "", json.dumps(e["details"], sort_keys=True))
    console.print(events)


# -- db ----------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    data_dir: DataDirOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create or migrate the database schema to the current version."""
    settings = cli_settings(config, data_dir=data_dir, db=db)
    _logging(settings)
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_wm.db import migrate
    from dicom_wm.settings import redact_url

    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        before = migrate.current_revision(settings.db_url)
        migrate.upgrade(settings.db_url)
        after = migrate.current_revision(settings.db_url)
    except (SQLAlchemyError, OSError) as exc:
        raise exit_error(f"upgrade of {redact_url(settings.db_url)} failed: {str(exc).splitlines()[0]}") from None
    typer.echo(f"{redact_url(settings.db_url)}: {before or 'empty'} -> {after}")


def register(app: typer.Typer) -> None:
    """Add serve, worker, status, show and the db group to ``app``."""
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.command("status")(status)
    app.command("show")(show)
    app.add_typer(db_app, name="db")
