"""The synthetic corpus: ground-truth word timings, energy in spans, determinism, disjoint splits."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from otalign.data.espeak import ESPEAK_SAMPLE_RATE
from otalign.data.manifest import read_manifest
from otalign.data.synth import ACCENTS, speak_text_and_words, synthesize_corpus, voice_pairs

from .conftest import TINY

SPLITS = ("train", "dev", "test_clean", "test_noisy")


def _all(corpus_dir):
    return {split: read_manifest(corpus_dir / f"{split}.jsonl").utterances for split in SPLITS}


def test_corpus_has_every_split_and_utterances_are_valid(tiny_corpus):
    corpus_dir, summary = tiny_corpus
    manifests = _all(corpus_dir)
    assert summary["counts"] == {k: len(v) for k, v in manifests.items()}
    assert len(manifests["train"]) >= 14 and len(manifests["test_clean"]) == len(manifests["test_noisy"])
    for utts in manifests.values():
        for utt in utts:
            info = sf.info(utt.audio_filepath)
            assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
            assert abs(info.frames / 16000 - utt.duration) < 1e-3
            assert [w.word for w in utt.words] == utt.text.split()


def test_imbalanced_fraction_is_exact_and_recorded(tiny_corpus):
    corpus_dir, summary = tiny_corpus
    train = _all(corpus_dir)["train"]
    expected = round(TINY["imbalanced_fraction"] * TINY["num_utterances"])
    skipped_train = sum(1 for r in summary["skipped_reasons"] if r.startswith("train"))
    assert expected - skipped_train <= sum(u.nonspeech is not None for u in train) <= expected
    noisy = _all(corpus_dir)["test_noisy"]
    assert all(u.nonspeech for u in noisy)  # heavy setting: always padded


def test_word_starts_agree_with_the_synthesizers_own_events_within_10ms(tiny_corpus):
    corpus_dir, _ = tiny_corpus
    checked = 0
    for utts in _all(corpus_dir).values():
        for utt in utts:
            events_s = np.array(utt.extra["synth"]["event_samples"]) / ESPEAK_SAMPLE_RATE
            for w, event_s in zip(utt.words, events_s):
                # silence/noise inserted before the word shifts it by the inserted length
                shift = sum(s.end - s.start for s in (utt.nonspeech or []) if s.end <= w.start + 1e-3)
                assert abs(w.start - shift - event_s) < 0.010, (utt.id, w, event_s, shift)
                checked += 1
    assert checked > 100


_FRESH_SYNTHESIS = """
import json, sys
from otalign.data.espeak import ESpeak
s = json.loads(sys.argv[1])
raw = ESpeak().synthesize(s["speak_text"], s["voice"], s["rate_wpm"], s["pitch"], s["pitch_range"])
print(json.dumps({"word": [[e.text_position, e.sample] for e in raw.word_events],
                  "phoneme": [p.sample for p in raw.phoneme_events]}))
"""


def test_recorded_events_are_espeaks_events_for_a_shards_first_utterance(tiny_corpus):
    """The first utterance of a shard is spoken by a fresh eSpeak: a fresh process reproduces it."""
    corpus_dir, _ = tiny_corpus
    utt = next(u for u in _all(corpus_dir)["train"] if u.id == "train-000000")
    synth = utt.extra["synth"]
    out = subprocess.run([sys.executable, "-c", _FRESH_SYNTHESIS, json.dumps(synth)], check=True,
                         capture_output=True, text=True).stdout
    events = json.loads(out)
    _, words, offsets = speak_text_and_words(synth["speak_text"])
    by_position = dict(events["word"])
    for i, recorded in enumerate(synth["event_samples"]):
        if offsets[i] + 1 in by_position:
            assert recorded == by_position[offsets[i] + 1], (words[i], recorded)
        else:  # merged function word ("in the"): starts at one of eSpeak's phoneme events
            assert recorded in events["phoneme"] or recorded in by_position.values(), (words[i], recorded)
    # the manifest's first word start is the event, resampled to 16 kHz, plus inserted silence
    shift = sum(s.end - s.start for s in (utt.nonspeech or []) if s.end <= utt.words[0].start + 1e-3)
    assert abs(utt.words[0].start - shift - by_position[1] / ESPEAK_SAMPLE_RATE) < 0.001


def _frame_energy(samples, start_s, end_s):
    a, b = int(round(start_s * 16000)), int(round(end_s * 16000))
    return float(np.sum(samples[a:b].astype(np.float64) ** 2))


def test_word_spans_hold_the_energy_and_inserted_silences_hold_almost_none(tiny_corpus):
    corpus_dir, _ = tiny_corpus
    manifests = _all(corpus_dir)
    clean = [u for split in ("train", "dev", "test_clean", "test_noisy") for u in manifests[split]
             if u.noise is None and not any(s.kind == "noise" for s in (u.nonspeech or []))]
    with_silence = [u for u in clean if u.nonspeech]
    assert len(clean) >= 10 and len(with_silence) >= 3
    for utt in clean:
        samples, _ = sf.read(utt.audio_filepath, dtype="float32")
        total = float(np.sum(samples.astype(np.float64) ** 2))
        in_words = sum(_frame_energy(samples, w.start, w.end) for w in utt.words)
        assert in_words / total > 0.95, (utt.id, in_words / total)
        for span in utt.nonspeech or []:
            assert _frame_energy(samples, span.start, span.end) / total < 1e-4, (utt.id, span)


def test_noise_is_mixed_at_the_recorded_snr(tiny_corpus):
    corpus_dir, _ = tiny_corpus
    noisy = [u for u in _all(corpus_dir)["test_noisy"] if u.noise is not None]
    assert noisy, "the heavy setting should put background noise in some test_noisy utterances"
    for utt in noisy:
        clean_id = utt.id.replace("test-noisy", "test-clean")
        clean = next(u for u in _all(corpus_dir)["test_clean"] if u.id == clean_id)
        assert clean.text == utt.text and clean.speaker == utt.speaker
        samples, _ = sf.read(utt.audio_filepath, dtype="float32")
        # in inserted silences there is only the background noise; in words speech + noise
        silences = [s for s in utt.nonspeech if s.kind == "silence" and s.end - s.start > 0.1]
        noise_power = np.mean(np.concatenate([samples[int(s.start * 16000):int(s.end * 16000)] for s in silences]) ** 2)
        word_power = np.mean(np.concatenate([samples[int(w.start * 16000):int(w.end * 16000)] for w in utt.words]) ** 2)
        measured = 10 * np.log10((word_power - noise_power) / noise_power)
        assert abs(measured - utt.noise.snr_db) < 2.0, (utt.id, measured, utt.noise.snr_db)


def test_splits_are_disjoint_by_text_and_test_by_voice(tiny_corpus):
    corpus_dir, _ = tiny_corpus
    m = _all(corpus_dir)
    texts = {split: {u.text for u in utts} for split, utts in m.items()}
    assert not texts["train"] & texts["dev"]
    assert not (texts["train"] | texts["dev"]) & texts["test_clean"]
    assert texts["test_clean"] == texts["test_noisy"]
    train_voices, test_voices = voice_pairs()
    held_out = {f"{a}+{v}" for a, v in test_voices}
    assert not held_out & {f"{a}+{v}" for a, v in train_voices}
    assert all(u.speaker in held_out for u in m["test_clean"] + m["test_noisy"])
    assert not any(u.speaker in held_out for u in m["train"] + m["dev"])
    # every accent is still seen in training
    assert {a for a, _ in train_voices} == set(ACCENTS)


def _digest(corpus_dir):
    h = hashlib.sha256()
    for split in SPLITS:
        for line in (corpus_dir / f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            h.update(line.encode())
            h.update((corpus_dir / record["audio_filepath"]).read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_synthesis_is_deterministic_for_a_seed_and_independent_of_jobs(tiny_corpus, tmp_path):
    corpus_dir, _ = tiny_corpus
    again = tmp_path / "again"
    synthesize_corpus(again, jobs=2, **TINY)
    assert _digest(again) == _digest(corpus_dir)
    other = tmp_path / "other"
    synthesize_corpus(other, jobs=1, **{**TINY, "seed": TINY["seed"] + 1, "num_utterances": 4})
    assert (other / "train.jsonl").read_text() != (corpus_dir / "train.jsonl").read_text()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="size"):
        synthesize_corpus("/tmp/never", size="huge")
    with pytest.raises(ValueError, match="imbalanced_fraction"):
        synthesize_corpus("/tmp/never", imbalanced_fraction=1.5)
