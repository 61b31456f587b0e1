"""Alembic environment for dicom-wm.

The URL comes from (first that is set): a connection handed in by
``dicom_wm.db.migrate`` (``config.attributes["connection"]``), ``-x url=...``,
the ``sqlalchemy.url`` option, then the service settings (``--db`` /
``DICOM_WM_DB`` / TOML / SQLite in the data dir).
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from dicom_wm.db.engine import get_engine
from dicom_wm.db.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from dicom_wm.settings import load_settings

    return load_settings().db_url


def _configure(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    with get_engine(_url()).connect() as connection:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
