"""The local front-end pieces against a maintained reference (faster-whisper)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip(
    "cosyvoice",
    reason="the cosyvoice family is not installed: run `make worker-env FAMILY=cosyvoice`",
)

pytestmark = pytest.mark.unit


def test_mel_filters_match_whispers() -> None:
    from faster_whisper.feature_extractor import FeatureExtractor

    from duplexvoice.worker.adapters.cosyvoice_frontend import mel_filters

    ours = mel_filters(16000, 400, 128)
    reference = np.asarray(FeatureExtractor.get_mel_filters(16000, 400, 128))
    assert ours.shape == reference.shape
    assert np.allclose(ours, reference, atol=1e-6)
