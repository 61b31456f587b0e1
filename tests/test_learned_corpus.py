"""Restore exactness with the learned predictor over the whole image corpus
(issue #5). Slow on a CPU (one CNN pass per embed, self-check, verify and
restore), hence the ``slow`` marker; the SLOW cine loop is left out."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dicom_wm.errors import InsufficientCapacity
from dicom_wm.keys import KeyStore
from dicom_wm.models import get_card
from dicom_wm.pixels import read_samples
from dicom_wm.watermark import EmbedOptions, VerifyStatus, embed_dataset, restore_dataset, verify_dataset
from corpus import corpus_params

pytestmark = pytest.mark.slow

KEYS = KeyStore.in_memory({"ktest0001": b"\x11" * 32}, "ktest0001")
LEARNED = EmbedOptions(predictor="learned")


@pytest.mark.parametrize("entry", [p for p in corpus_params(ok_only=True) if not p.values[0].slow])
def test_corpus_restore_with_learned(entry):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = entry.load()
        before = read_samples(ds).samples.copy()
        try:
            result = embed_dataset(ds, KEYS, options=LEARNED)
        except InsufficientCapacity:
            assert np.array_equal(read_samples(ds).samples, before)
            return
        assert result.model_sha256 == get_card().sha256
        marked = read_samples(result.dataset)
        assert np.abs(marked.samples - before).max() <= 1
        assert marked.samples.min() >= marked.lo and marked.samples.max() <= marked.hi
        assert verify_dataset(result.dataset, KEYS).status is VerifyStatus.AUTHENTIC
        restored = restore_dataset(result.dataset, KEYS).dataset
    assert np.array_equal(read_samples(restored).samples, before)
