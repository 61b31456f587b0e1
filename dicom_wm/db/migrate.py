"""Schema migrations (alembic), callable from the CLI and from serve.

The alembic environment lives in the repository's top-level ``migrations/``
(with ``alembic.ini`` beside it); set ``DICOM_WM_MIGRATIONS`` to its path when
the package is installed somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from dicom_wm.db.engine import get_engine

__all__ = ["upgrade", "downgrade", "current_revision", "head_revision", "is_up_to_date", "migrations_dir"]

MIGRATIONS_ENV = "DICOM_WM_MIGRATIONS"


def migrations_dir() -> Path:
    """Where the alembic environment is."""
    env = os.environ.get(MIGRATIONS_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "migrations"
    if not (path / "env.py").is_file():
        raise FileNotFoundError(f"alembic environment not found in {path} (set {MIGRATIONS_ENV})")
    return path


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision``."""
    cfg = _config(url)
    with get_engine(url).begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def downgrade(url: str, revision: str) -> None:
    """Take the database at ``url`` down to ``revision`` (``"base"``: empty)."""
    cfg = _config(url)
    with get_engine(url).begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    """The revision the database is at (``None``: never migrated)."""
    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def is_up_to_date(url: str) -> bool:
    return current_revision(url) == head_revision()
