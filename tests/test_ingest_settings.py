"""Settings: defaults, env over TOML, CLI flags over env, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dicom_wm.settings import PoolKind, load_settings


pytestmark = pytest.mark.usefixtures("no_dicom_wm_env")


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path)
    assert (s.port, s.ae_title, s.broker, s.embedded) == (11112, "DICOMWM", None, True)
    assert s.db_url == f"sqlite:///{(tmp_path / 'dicom-wm.sqlite3').resolve()}"
    assert s.queues == ["embed", "gpu"] and s.pool is PoolKind.PROCESS
    assert s.keys_path == tmp_path / "keys.json"


def test_precedence_flag_over_env_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "dicom-wm.toml"
    cfg.write_text('port = 104\nae-title = "FROMTOML"\nallowed_calling_aes = ["CT1", "MR1"]\n', encoding="utf-8")
    s = load_settings(cfg)
    assert (s.port, s.ae_title, s.allowed_calling_aes) == (104, "FROMTOML", ["CT1", "MR1"])
    monkeypatch.setenv("DICOM_WM_PORT", "2000")
    monkeypatch.setenv("DICOM_WM_ALLOWED_CALLING_AES", "A, B")
    s = load_settings(cfg)
    assert (s.port, s.allowed_calling_aes) == (2000, ["A", "B"])
    s = load_settings(cfg, port=3000, ae_title=None)
    assert (s.port, s.ae_title) == (3000, "FROMTOML")


def test_config_file_from_env_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dicom-wm]\nworkers = 3\nqueues = ["gpu"]\n', encoding="utf-8")
    monkeypatch.setenv("DICOM_WM_CONFIG", str(cfg))
    s = load_settings()
    assert (s.workers, s.worker_count, s.queues) == (3, 3, ["gpu"])


def test_redacted_hides_passwords(tmp_path: Path) -> None:
    s = load_settings(
        data_dir=tmp_path, db="postgresql+psycopg://pacs:s3cret@db:5432/wm", broker="redis://:hunter2@redis:6379/0"
    )
    text = repr(s.redacted())
    assert "s3cret" not in text and "hunter2" not in text
    assert s.redacted()["mode"] == "distributed"
    assert s.redacted()["db_url"] == "postgresql+psycopg://pacs:***@db:5432/wm"


@pytest.mark.parametrize(
    ("field", "value"),
    [("queues", "embed,cpu"), ("queue", "fast"), ("port", 0), ("ae_title", "A" * 17), ("log_level", "LOUD"),
     ("db", "not a url")],
)
def test_bad_values_are_named(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        load_settings(**{field: value})


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_unknown_config_key_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("prot = 104\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(cfg)


@pytest.mark.parametrize(("level", "quiet"), [("INFO", True), ("WARNING", True), ("DEBUG", False), (10, False)])
def test_service_logging_keeps_library_chatter_out_unless_debug(level, quiet) -> None:
    """pydicom logged every decode failure it raised with a traceback (the
    instance's FAILED reason already says it in one line)."""
    import logging

    from dicom_wm.process_setup import configure_logging

    names = ("pydicom", "pynetdicom", "alembic")
    saved = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.NOTSET)
        configure_logging(level, force=True)
        pydicom_log = logging.getLogger("pydicom.pixels.decoders.base")
        assert pydicom_log.isEnabledFor(logging.ERROR) is not quiet
        assert logging.getLogger("pynetdicom.dul").isEnabledFor(logging.INFO) is not quiet
    finally:
        for n, lv in saved.items():
            logging.getLogger(n).setLevel(lv)
