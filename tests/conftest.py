"""Shared test hygiene."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """`serve` / `worker` configure the root logger on the stderr they were
    given; under CliRunner that stream is closed after the test, so later
    tests would log into a closed file. Put the root logger back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def no_dicom_wm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``DICOM_WM_*`` variable of the shell running the tests (a data
    dir, a database URL ...) reaches the settings under test."""
    for name in [n for n in os.environ if n.startswith("DICOM_WM_")]:
        monkeypatch.delenv(name)
