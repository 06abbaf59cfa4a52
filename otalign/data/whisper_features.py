"""Whisper's own log-mel front end (``transformers.WhisperFeatureExtractor``), variable length.

Audio is resampled to 16 kHz; features are ``(T, n_mels)`` float32 (time-major like fbank),
``T = num_samples // 160`` (10 ms hop), no padding to 30 s. The >30 s rule: audio longer than
Whisper's 30 s window is **rejected** with :class:`WhisperInputTooLong`, whose message names the
utterance; it is never truncated. Split such recordings into segments (manifest ``offset`` /
``duration``, Kaldi ``segments``) before training.
"""

from __future__ import annotations

import numpy as np

from otalign.data.features import FEATURE_SAMPLE_RATE, resample

__all__ = ["WhisperInputTooLong", "WhisperFrontend", "MAX_WHISPER_SECONDS", "MAX_MEL_FRAMES", "HOP_LENGTH"]

MAX_WHISPER_SECONDS = 30
HOP_LENGTH = 160
MAX_MEL_FRAMES = MAX_WHISPER_SECONDS * FEATURE_SAMPLE_RATE // HOP_LENGTH  # 3000


class WhisperInputTooLong(ValueError):
    """Audio longer than the Whisper encoder's 30 s window."""


class WhisperFrontend:
    """``frontend(samples, sample_rate, utt_id=None) -> (T, n_mels)`` Whisper log-mel."""

    def __init__(self, n_mels: int = 80):
        from transformers import WhisperFeatureExtractor

        self.n_mels = int(n_mels)
        self._fe = WhisperFeatureExtractor(feature_size=self.n_mels)

    @property
    def config(self) -> dict:
        """Everything that determines the features (for cache keys)."""
        import transformers

        return {"extractor": "transformers.WhisperFeatureExtractor", "transformers": transformers.__version__,
                "n_mels": self.n_mels, "hop": HOP_LENGTH, "n_fft": 400, "sample_rate": FEATURE_SAMPLE_RATE}

    def __call__(self, samples: np.ndarray, sample_rate: int, utt_id: str | None = None) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"utterance {utt_id!r}: expected mono 1-D samples, got shape {samples.shape}")
        x = resample(samples, sample_rate, FEATURE_SAMPLE_RATE)
        seconds = x.size / FEATURE_SAMPLE_RATE
        if x.size > MAX_WHISPER_SECONDS * FEATURE_SAMPLE_RATE:
            raise WhisperInputTooLong(
                f"utterance {utt_id!r} is {seconds:.2f} s long; the Whisper encoder takes at most "
                f"{MAX_WHISPER_SECONDS} s: split it into segments (manifest offset/duration) or drop it")
        if x.size < HOP_LENGTH:
            raise ValueError(f"utterance {utt_id!r} is {seconds * 1000:.1f} ms long: shorter than one 10 ms frame")
        feats = self._fe(x, sampling_rate=FEATURE_SAMPLE_RATE, padding="do_not_pad", truncation=False,
                         return_tensors="np").input_features[0]
        return np.ascontiguousarray(feats.T, dtype=np.float32)
