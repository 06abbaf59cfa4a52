"""Whisper's log-mel front end: variable length, equal to the 30 s-padded extractor, the >30 s rule."""

from __future__ import annotations

import numpy as np
import pytest

from otalign.data.features import resample
from otalign.data.whisper_features import WhisperFrontend, WhisperInputTooLong


def _tone_speechlike(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
            ).astype(np.float32)


def test_variable_length_equals_the_padded_extractor():
    from transformers import WhisperFeatureExtractor

    x = _tone_speechlike(2.345)
    feats = WhisperFrontend(80)(x, 16000)
    assert feats.shape == (x.size // 160, 80) and feats.dtype == np.float32
    ref = WhisperFeatureExtractor(feature_size=80)(x, sampling_rate=16000, return_tensors="np").input_features[0]
    assert ref.shape == (80, 3000)
    np.testing.assert_allclose(feats, ref[:, : feats.shape[0]].T, atol=1e-5)


def test_other_sample_rates_are_resampled():
    x = _tone_speechlike(1.0, 8000)
    feats = WhisperFrontend(80)(x, 8000)
    np.testing.assert_allclose(feats, WhisperFrontend(80)(resample(x, 8000, 16000), 16000), atol=1e-6)
    assert feats.shape[0] == 100


def test_longer_than_30s_is_rejected_naming_the_utterance():
    fe = WhisperFrontend(80)
    assert fe(np.zeros(30 * 16000, np.float32) + 1e-3, 16000).shape == (3000, 80)
    with pytest.raises(WhisperInputTooLong, match=r"utterance 'utt-long' is 30\.01 s long.*split"):
        fe(np.zeros(30 * 16000 + 160, np.float32), 16000, utt_id="utt-long")
    with pytest.raises(ValueError, match="utt-short"):
        fe(np.zeros(100, np.float32), 16000, utt_id="utt-short")
