import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from otalign.data.asterisk import DEFAULT_SOUNDS_DIRS, TRANSCRIPTS_FILE, is_test_prompt, prepare_asterisk, read_transcripts
from otalign.data.manifest import read_manifest

INSTALLED = any(os.path.isdir(d) for d in DEFAULT_SOUNDS_DIRS) and os.path.isfile(TRANSCRIPTS_FILE)
pytestmark = pytest.mark.skipif(not INSTALLED, reason="Debian asterisk-core-sounds-en-g722 is not installed")


def test_transcripts_cover_the_prompts():
    table = read_transcripts()
    assert len(table) >= 560 and table["activated"] == "Activated."


def test_split_is_fixed_by_prompt_name():
    names = sorted(read_transcripts())
    test = [n for n in names if is_test_prompt(n)]
    assert 0.05 < len(test) / len(names) < 0.15
    assert is_test_prompt("vm-goodbye") == (int(hashlib.sha1(b"vm-goodbye").hexdigest(), 16) % 10 == 0)


def test_prepare_asterisk_subset_writes_16khz_manifests_and_counts_skips(tmp_path):
    sounds = Path(next(d for d in DEFAULT_SOUNDS_DIRS if os.path.isdir(d)))
    source_before = {p: p.stat().st_mtime_ns for p in sorted(sounds.glob("a*"))}
    summary = prepare_asterisk(tmp_path / "ast", limit=20)
    assert {p: p.stat().st_mtime_ns for p in sorted(sounds.glob("a*"))} == source_before
    train = read_manifest(tmp_path / "ast" / "train.jsonl").utterances
    test = read_manifest(tmp_path / "ast" / "test.jsonl").utterances
    assert len(train) + len(test) + summary["skipped"] == 20
    assert summary["skip_counts"].get("non-speech prompt", 0) >= 1  # "ascending-2tone: [ascending tones]"
    ids = {u.id for u in train + test}
    assert "asterisk-activated" in ids and "asterisk-ascending-2tone" not in ids
    for utt in train + test:
        samples, sr = sf.read(utt.audio_filepath)
        assert sr == 16000 and samples.ndim == 1 and abs(samples.size / 16000 - utt.duration) < 1e-3
        assert np.abs(samples).max() > 0.05  # real speech, not silence
        assert is_test_prompt(utt.id.removeprefix("asterisk-")) == (utt in test)
