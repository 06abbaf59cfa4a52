"""Speaking one sentence with eSpeak NG and timing its words (the corpus's ground truth).

1. eSpeak NG speaks the sentence (voice = accent + variant, a rate and a pitch) at 22050 Hz and
   reports a WORD event per word; the event's ``sample`` is the word's exact start
   (``_word_start_samples`` handles the words eSpeak merges or reports out of place).
2. The audio is resampled to 16 kHz with ``scipy.signal.resample_poly(x, 320, 441)`` (a linear-phase
   filter with its delay compensated, so times are preserved); starts become
   ``round(sample * 16000 / 22050)``.
3. Word ends: word ``i`` ends at the last 5 ms frame in ``[start_i, start_{i+1})`` (the last word:
   up to the end of the audio) whose energy is within ``END_THRESHOLD_DB`` (40 dB) of the loudest
   frame of the utterance, so pauses before the next word are not part of the word.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from scipy.signal import firwin, resample_poly

from otalign.data.synth.text import speak_text_and_words

__all__ = ["ACCENTS", "VARIANTS", "SAMPLE_RATE", "END_THRESHOLD_DB", "RATE_WPM_RANGE", "PITCH_RANGE",
           "PITCH_VARIATION_RANGE", "synthesize_utterance"]

SAMPLE_RATE = 16000
# resample 22050 -> 16000: 16000/22050 = 320/441
_UP, _DOWN = 320, 441
END_THRESHOLD_DB = 40.0
_ENERGY_FRAME = 80  # 5 ms at 16 kHz

# Label used in manifests -> eSpeak NG voice name (British English's voice file is "en").
ACCENTS: dict[str, str] = {
    "en-us": "en-us",
    "en-gb": "en",
    "en-gb-scotland": "en-gb-scotland",
    "en-gb-x-rp": "en-gb-x-rp",
    "en-gb-x-gbclan": "en-gb-x-gbclan",
    "en-gb-x-gbcwmd": "en-gb-x-gbcwmd",
    "en-029": "en-029",
    "en-us-nyc": "en-us-nyc",
}
VARIANTS: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
RATE_WPM_RANGE = (135, 205)
PITCH_RANGE = (30, 70)
PITCH_VARIATION_RANGE = (30, 80)


def _frame_db(x: np.ndarray) -> np.ndarray:
    n_frames = int(np.ceil(x.size / _ENERGY_FRAME))
    padded = np.zeros(n_frames * _ENERGY_FRAME, dtype=np.float64)
    padded[: x.size] = x
    power = np.mean(padded.reshape(n_frames, _ENERGY_FRAME) ** 2, axis=1)
    return 10.0 * np.log10(power + 1e-12)


@lru_cache(maxsize=1)
def _designed_filter() -> np.ndarray:
    max_rate = max(_UP, _DOWN)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def _resampling_filter() -> np.ndarray:
    """resample_poly's default anti-aliasing FIR for 22050 -> 16000, designed once (it costs 4 ms)."""
    return _designed_filter().copy()  # resample_poly scales the array it is given in place


def _word_ends(x: np.ndarray, starts: list[int]) -> list[int]:
    """End of each word: last loud 5 ms frame before the next word's start (see module doc)."""
    db = _frame_db(x)
    threshold = db.max() - END_THRESHOLD_DB
    ends = []
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else x.size
        first, last = start // _ENERGY_FRAME, int(np.ceil(stop / _ENERGY_FRAME))
        loud = np.nonzero(db[first:last] > threshold)[0]
        if loud.size:
            end = min(stop, (first + int(loud[-1]) + 1) * _ENERGY_FRAME)
        else:
            end = min(stop, start + _ENERGY_FRAME)
        ends.append(max(end, start + 1))
    return ends


def _word_start_samples(engine: Any, raw: Any, words: list[str], offsets: list[int], voice: str,
                        speak_text: str) -> list[int]:
    """Start sample (22050 Hz) of every word, from eSpeak's own events.

    Most words get a WORD event (multi-word dictionary entries place the second word's event at a
    text position inside the first word; it is matched by order). eSpeak merges some unstressed function words into the word
    before them ("in the", "of the", "for a", "too much"): the group gets one WORD event and its
    PHONEME events carry the group's text position. A merged word then starts at the PHONEME event
    that is ``len(phonemes(word))`` phonemes (pauses excluded) from the end of the group, counted
    over the merged words that follow it in the group.
    """
    index_of_offset = {off + 1: i for i, off in enumerate(offsets)}  # text_position is 1-based
    starts: list[int | None] = [None] * len(words)
    group_position: list[int | None] = [None] * len(words)
    for ev in raw.word_events:
        i = index_of_offset.get(ev.text_position)
        if i is not None and starts[i] is None:
            starts[i] = ev.sample
            group_position[i] = ev.text_position
    # Multi-word dictionary entries ("too much", "the while") report the second word's WORD event
    # at a text position inside the first word: take an unused event lying between the neighbours.
    used = {group_position[i] for i in range(len(words)) if group_position[i] is not None}
    spare = [ev for ev in raw.word_events if ev.text_position not in used and ev.text_position > 0]
    for i in range(1, len(words)):
        if starts[i] is not None:
            continue
        upper = offsets[i + 1] + 1 if i + 1 < len(words) else float("inf")
        for ev in spare:
            if offsets[i - 1] + 1 < ev.text_position < upper and (starts[i - 1] or 0) < ev.sample:
                starts[i], group_position[i] = ev.sample, ev.text_position
                spare.remove(ev)
                break
    i = 0
    while i < len(words):
        if starts[i] is not None:
            i += 1
            continue
        head = i - 1
        if head < 0 or group_position[head] is None:
            raise ValueError(f"eSpeak gave no WORD event for {words[i]!r} in {speak_text!r}")
        tail = i
        while tail + 1 < len(words) and starts[tail + 1] is None:
            tail += 1
        group = [p for p in raw.phoneme_events if p.text_position == group_position[head] and not p.is_pause]
        counts = [len(engine.phonemes(words[k], voice)) for k in range(i, tail + 1)]
        for k in range(i, tail + 1):
            index = len(group) - sum(counts[k - i:])
            if index < 1 or any(c < 1 for c in counts):
                raise ValueError(f"cannot place merged word {words[k]!r} in {speak_text!r}")
            starts[k] = group[index].sample
        i = tail + 1
    if any(b < a for a, b in zip(starts, starts[1:])):
        raise ValueError(f"eSpeak word events out of order in {speak_text!r}")
    return [int(s) for s in starts]


def synthesize_utterance(sentence: str, accent: str, variant: str, rate_wpm: int, pitch: int,
                         pitch_range: int = 50) -> dict[str, Any]:
    """Speak one sentence and return the clean 16 kHz signal with its word spans.

    Returns a dict with ``samples`` (float32, 16 kHz), ``words``, ``starts``/``ends`` (16 kHz
    sample indices), ``event_samples`` (word starts from eSpeak events, 22050 Hz) and ``speak_text``.
    Raises ``ValueError`` when eSpeak's events cannot be mapped onto the words.
    """
    from otalign.data.espeak import ESpeak

    speak_text, words, offsets = speak_text_and_words(sentence)
    if not words:
        raise ValueError(f"sentence {sentence!r} has no words after normalisation")
    engine = ESpeak()
    voice = f"{ACCENTS[accent]}+{variant}" if variant else ACCENTS[accent]
    raw = engine.synthesize(speak_text, voice, rate_wpm, pitch, pitch_range)
    event_samples = _word_start_samples(engine, raw, words, offsets, voice, speak_text)
    x = resample_poly(raw.samples.astype(np.float32) / 32768.0, _UP, _DOWN,
                      window=_resampling_filter()).astype(np.float32)
    starts = [min(int(round(s * _UP / _DOWN)), x.size - 1) for s in event_samples]
    ends = _word_ends(x, starts)
    return {"samples": x, "words": words, "starts": starts, "ends": ends,
            "event_samples": event_samples, "speak_text": speak_text, "voice": voice,
            "espeak_version": engine.version}
