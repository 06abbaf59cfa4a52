"""The synthetic corpus is unchanged by refactoring: seed 0, size tiny gives the recorded corpus.

``golden/synth_tiny_seed0.json`` holds the sha1 of every wav, of every babble track and of every
utterance as read (all fields, via ``read_manifest``), recorded with the code before the split of
``synth.py`` into ``otalign.data.synth.{text,timing,imbalance,corpus}``. The utterances are compared
as read rather than as manifest lines, so that a change of the manifest's spelling (the Lhotse
``alignment`` key) is not a change of the corpus. eSpeak NG of another version speaks differently:
the test is skipped there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from otalign.data.manifest import Utterance, read_manifest
from otalign.data.synth import synthesize_corpus

from .conftest import _NO_ESPEAK

GOLDEN = Path(__file__).parent / "golden" / "synth_tiny_seed0.json"
SPLITS = ("train", "dev", "test_clean", "test_noisy")


def _canonical(utt: Utterance, corpus: Path) -> str:
    return json.dumps({
        "id": utt.id, "audio": str(Path(utt.audio_filepath).relative_to(corpus.resolve())),
        "duration": utt.duration, "text": utt.text, "speaker": utt.speaker, "sr": utt.sample_rate,
        "offset": utt.offset, "downmix": utt.downmix,
        "words": None if utt.words is None else [[w.word, w.start, w.end] for w in utt.words],
        "nonspeech": None if utt.nonspeech is None else [[s.kind, s.start, s.end, s.source] for s in utt.nonspeech],
        "noise": None if utt.noise is None else [utt.noise.kind, utt.noise.snr_db],
        "extra": utt.extra}, sort_keys=True)


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@pytest.mark.slow
def test_seed_0_tiny_corpus_is_the_recorded_one(tmp_path):
    if _NO_ESPEAK:
        pytest.skip(f"eSpeak NG unavailable: {_NO_ESPEAK}")
    golden = json.loads(GOLDEN.read_text())
    corpus = tmp_path / "corpus"
    synthesize_corpus(corpus, size="tiny", seed=0, jobs=2, progress=False)
    utterances = {u.id: u for split in SPLITS for u in read_manifest(corpus / f"{split}.jsonl", verbose=False)}
    version = next(iter(utterances.values())).extra["synth"]["engine_version"]
    if version != golden["espeak_version"]:
        pytest.skip(f"eSpeak NG {version} speaks differently from {golden['espeak_version']} of the recording")
    wavs = {p.relative_to(corpus).as_posix(): _sha1(p.read_bytes()) for p in sorted(corpus.glob("wav/**/*.wav"))}
    assert wavs == golden["wavs"]
    assert {k: _sha1(_canonical(u, corpus).encode()) for k, u in utterances.items()} == golden["utterances"]
    with np.load(corpus / "babble_bank.npz") as bank:
        assert [_sha1(bank[k].tobytes()) for k in bank.files] == golden["babble"]
