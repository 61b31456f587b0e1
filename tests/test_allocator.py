"""The allocator tuning (dicom_wm.allocator): freed memory is kept for the
next slice, and an administrator's own malloc settings win.

Each case runs in a fresh interpreter: the tuning is per process and cannot
be undone in one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="the tuning applies to glibc on Linux only",
)

# Page faults per classic-predictor call on a 512 x 512 plane, after warming up.
_PROBE = """
import resource
import numpy as np
from dicom_wm.allocator import tune_allocator
from dicom_wm.engine.predictors import ClassicRhombus
tuned = tune_allocator()
x = np.random.default_rng(0).integers(0, 4096, (1, 512, 512))
c = ClassicRhombus()
for _ in range(3):
    c.predict_and_complexity(x)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    c.predict_and_complexity(x)
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20)
"""


def _probe(**env: str) -> tuple[bool, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "DICOM_WM_MALLOC"))}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    return out[0] == "True", float(out[1])


def test_tuned_process_reuses_freed_memory_instead_of_faulting_in_fresh_pages() -> None:
    tuned, faults = _probe()
    untuned, default_faults = _probe(DICOM_WM_MALLOC_TUNING="0")
    assert tuned and not untuned
    # measured: ~0.1 per call tuned, ~1500 with glibc's defaults (2-core VM)
    assert faults < 50
    assert faults * 10 < default_faults


@pytest.mark.parametrize(
    "env",
    [{"MALLOC_TRIM_THRESHOLD_": "131072"}, {"MALLOC_MMAP_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}],
)
def test_an_administrators_malloc_settings_are_left_alone(env: dict[str, str]) -> None:
    assert _probe(**env)[0] is False
