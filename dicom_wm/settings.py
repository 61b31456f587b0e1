"""One typed settings object for the service (serve, worker, status, ...).

Sources, strongest first: CLI flags (passed as keyword overrides), environment
variables ``DICOM_WM_*``, an optional TOML file (``--config`` or env
``DICOM_WM_CONFIG``; keys are the field names, top level or under a
``[dicom-wm]`` table), then the defaults below.

The effective configuration is logged at start through :meth:`Settings.redacted`,
which masks URL passwords; the key store's secrets never pass through here.
"""

from __future__ import annotations

import enum
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["Settings", "PoolKind", "Predictor", "Device", "load_settings", "redact_url", "CONFIG_ENV"]

CONFIG_ENV = "DICOM_WM_CONFIG"
SQLITE_FILE = "dicom-wm.sqlite3"
KNOWN_QUEUES = ("embed", "gpu")


class PoolKind(str, enum.Enum):
    """How the embedded mode runs tasks: worker processes (default: the
    engine is numpy-heavy and the association threads must keep the GIL) or
    threads (cheap start-up; tests)."""

    PROCESS = "process"
    THREAD = "thread"


class Predictor(str, enum.Enum):
    """The workers' sample predictor. ``auto``: the learned one where the
    device resolves to a GPU, the classic one on a CPU (where the learned
    predictor is 50-100x slower, docs/learned-predictor.md)."""

    CLASSIC = "classic"
    LEARNED = "learned"
    AUTO = "auto"
    # per-plane fitted linear stage on the base (weights in the header; docs/learned-predictor.md)
    CLASSIC_ADAPTIVE = "classic-adaptive"
    LEARNED_ADAPTIVE = "learned-adaptive"


class Device(str, enum.Enum):
    """Where the learned predictor runs: ``auto`` = CUDA when torch sees
    one, else the CPU. Predictions are bit-identical on every device."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Service configuration. Field names are the TOML keys; the environment
    variable of field ``x`` is ``DICOM_WM_X``."""

    model_config = SettingsConfigDict(env_prefix="DICOM_WM_", extra="forbid", validate_default=True)

    # where things live
    data_dir: Path = Field(Path("dicom-wm-data"), description="spool, archive, SQLite file and key store")
    db: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/dicom-wm.sqlite3")
    broker: str | None = Field(None, description="Celery broker URL (redis://...); unset: embedded worker pool")
    keys: Path | None = Field(None, description="key store file; default <data_dir>/keys.json")

    # the DICOM AE
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    ae_title: str = Field("DICOMWM", min_length=1, max_length=16)
    allowed_calling_aes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="calling AE titles allowed to store; empty: any"
    )
    max_pdu: int = Field(0, ge=0, description="largest P-DATA PDU we accept (0: unlimited)")
    network_timeout_s: float = Field(60.0, gt=0)
    egress_workers: int | None = Field(
        None, ge=0, description="verification processes for C-MOVE/C-GET (0: in the association thread); "
        "default: CPU count, at most 8"
    )

    # the workers
    workers: int | None = Field(None, ge=1, description="embedded pool size / Celery concurrency; default: CPU count")
    pool: PoolKind = PoolKind.PROCESS
    pool_nice: int = Field(10, ge=0, le=19, description="embedded pool processes run at this nice value")
    queue: str = Field("embed", description="queue serve sends new instances to")
    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(KNOWN_QUEUES))
    predictor: Predictor = Predictor.CLASSIC
    device: Device = Field(Device.AUTO, description="learned predictor: auto (CUDA when available), cpu or cuda")
    batch_size: int = Field(
        1, ge=1, le=1024, description="instances per task (embedded pool) or per embed_batch message serve sends "
        "(distributed); >1 predicts their planes in shared forward passes (learned predictor; the gpu queue's mode)"
    )
    batch_wait_ms: float = Field(
        50.0, ge=0, le=60000, description="wait at most this long for a batch to fill (pool, or serve's dispatcher)"
    )
    roi_lossless: bool = Field(False, description="walk the detected body last (unchanged when the rest suffices)")
    robust: bool = Field(False, description="add the robust leak-tracing layer under the reversible one")
    max_embed_memory_mb: int | None = Field(
        None, ge=1, description="FAIL (stored as received) an image whose watermarking would need more memory "
        "than this per worker; default: the machine's memory / worker processes"
    )
    max_retries: int = Field(5, ge=0, description="retries of a transient failure before FAILED")
    retry_backoff_s: float = Field(2.0, gt=0, description="first retry delay; doubles each retry")
    retry_backoff_max_s: float = Field(300.0, gt=0)
    visibility_timeout_s: int = Field(3600, ge=1, description="Redis: redeliver an unacknowledged task after this")
    reconcile_interval_s: float = Field(60.0, gt=0, description="how often serve re-queues stuck rows")
    stale_after_s: float = Field(900.0, gt=0, description="a WATERMARKING row older than this is re-queued")
    orphan_spool_after_s: float = Field(
        3600.0, gt=0, description="serve removes a spool file no row refers to once it is this old"
    )
    reception_quiet_s: float = Field(
        0.3, ge=0, description="embedded: hand work to the pool once no instance arrived for this long (0: at once)"
    )
    reception_max_hold_s: float = Field(10.0, gt=0, description="embedded: ... but never hold work longer than this")

    log_level: str = "INFO"

    @field_validator("allowed_calling_aes", "queues", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("queues")
    @classmethod
    def _known_queues(cls, value: list[str]) -> list[str]:
        unknown = [q for q in value if q not in KNOWN_QUEUES]
        if unknown or not value:
            raise ValueError(f"queues {value!r}: each must be one of {', '.join(KNOWN_QUEUES)}")
        return value

    @field_validator("queue")
    @classmethod
    def _known_queue(cls, value: str) -> str:
        if value not in KNOWN_QUEUES:
            raise ValueError(f"queue {value!r} must be one of {', '.join(KNOWN_QUEUES)}")
        return value

    @field_validator("db", "broker")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            make_url(value)
        except ArgumentError:
            raise ValueError(f"not a URL: {redact_url(value)!r}") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"log_level {value!r} must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    # -- derived --------------------------------------------------------------

    @property
    def db_url(self) -> str:
        """The effective database URL (SQLite in the data dir by default)."""
        if self.db:
            return self.db
        return f"sqlite:///{(self.data_dir / SQLITE_FILE).resolve()}"

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: serve runs the workers itself."""
        return self.broker is None

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def embed_memory_limit_mb(self) -> int | None:
        """``max_embed_memory_mb``, else this machine's memory shared by the
        worker processes (None where the platform does not say)."""
        if self.max_embed_memory_mb is not None:
            return self.max_embed_memory_mb
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
        return max(1, total // self.worker_count // 2**20)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def archive_dir(self) -> Path:
        return self.data_dir / "archive"

    @property
    def keys_path(self) -> Path:
        from dicom_wm.keys import default_keys_path

        return default_keys_path(self.keys, self.data_dir)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration for logs: URLs with passwords masked,
        derived paths resolved. Contains no secret."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in ("db", "broker") and value:
                value = redact_url(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, enum.Enum):
                value = value.value
            out[name] = value
        out["db_url"] = redact_url(self.db_url)
        out["mode"] = "embedded" if self.embedded else "distributed"
        out["keys_path"] = str(self.keys_path)
        out["worker_count"] = self.worker_count
        return out

    # -- sources ----------------------------------------------------------------

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))


class _TomlSource(PydanticBaseSettingsSource):
    """Values from the TOML file named by :data:`_toml_path` (set by
    :func:`load_settings`) or env ``DICOM_WM_CONFIG``."""

    path: Path | None = None

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _TomlSource.path or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
        if path is None:
            return {}
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"config file {path} not found") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"config file {path}: {exc}") from None
        table = doc.get("dicom-wm", doc)
        if not isinstance(table, dict):
            raise ValueError(f"config file {path}: [dicom-wm] must be a table")
        return {k.replace("-", "_"): v for k, v in table.items()}


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: ``overrides`` (CLI flags; ``None`` values are
    ignored) over environment over the TOML ``config`` file over defaults.

    Raises ``ValueError`` (pydantic's ``ValidationError``) naming the bad value.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    _TomlSource.path = Path(config) if config is not None else None
    try:
        return Settings(**given)
    finally:
        _TomlSource.path = None


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"
