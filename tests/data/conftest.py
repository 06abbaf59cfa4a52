"""Shared fixtures: a tiny synthetic corpus (synthesised once per session) and real short audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from otalign.data.synth import synthesize_corpus, synthesize_utterance


def _espeak_available() -> str | None:
    try:
        from otalign.data.espeak import ESpeak

        ESpeak()
    except (RuntimeError, OSError) as err:
        return str(err)
    return None


_NO_ESPEAK = _espeak_available()


TINY = dict(num_utterances=16, num_dev=4, num_test=4, seed=3, imbalanced_fraction=0.5, progress=False)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> tuple[Path, dict]:
    if _NO_ESPEAK:
        pytest.skip(f"eSpeak NG unavailable: {_NO_ESPEAK}")
    out = tmp_path_factory.mktemp("synth") / "corpus"
    summary = synthesize_corpus(out, jobs=1, **TINY)
    return out, summary


@pytest.fixture(scope="session")
def spoken_words() -> list[np.ndarray]:
    """Real speech (eSpeak NG, 16 kHz float32) for writing fake corpora."""
    if _NO_ESPEAK:
        pytest.skip(f"eSpeak NG unavailable: {_NO_ESPEAK}")
    out = []
    for k, sentence in enumerate(["hello world", "good morning to you", "the cat sat", "open the door"]):
        out.append(synthesize_utterance(sentence, "en-us", "m3" if k % 2 else "f2", 170, 50)["samples"])
    return out


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = 16000, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, sample_rate, format=fmt) if fmt else sf.write(path, samples, sample_rate)
    return path
