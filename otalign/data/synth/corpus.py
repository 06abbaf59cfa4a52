"""A multi-speaker English corpus with ground-truth word timings, synthesised offline by eSpeak NG.

Pipeline for one utterance (``_synthesize_job``):

1. eSpeak NG speaks the sentence (voice = accent + variant, random rate and pitch) at 22050 Hz and
   reports a WORD event per word; the event's ``sample`` is the word's exact start.
2. The audio is resampled to 16 kHz with ``scipy.signal.resample_poly(x, 320, 441)`` (a linear-phase
   filter with its delay compensated, so times are preserved); starts become
   ``round(sample * 16000 / 22050)``.
3. Word ends: word ``i`` ends at the last 5 ms frame in ``[start_i, start_{i+1})`` (the last word:
   up to the end of the audio) whose energy is within ``END_THRESHOLD_DB`` (40 dB) of the loudest
   frame of the utterance, so pauses before the next word are not part of the word.
4. Imbalance, in a chosen and recorded fraction of utterances (``ImbalanceConfig``): silence
   inserted before the first word, after the last and at some word boundaries (inserted at the
   next word's start, with 2 ms fades against clicks; the spans after it shift by its length),
   noise-only segments with no words (white, pink or babble), and background noise over the whole
   utterance (white, pink, or babble made from other synthesized utterances) at a recorded SNR,
   where ``SNR = 10 log10(P_speech / P_noise)`` and ``P_speech`` is the mean power over word spans.
   Every inserted segment is listed in ``nonspeech``; the background noise in ``noise``. In an
   utterance with background noise the inserted silences carry that noise too (their kind stays
   ``"silence"``: no foreground event). Without imbalance, eSpeak's output has almost no leading
   or trailing silence (words cover ~99% of a clean utterance; ~42% in ``test_noisy`` of the demo).

Splits and disjointness:

- Text: sentences from Debian fortunes (``/usr/share/games/fortunes``), split at ``.!?``; kept when
  they contain only letters and simple punctuation, no all-caps words (eSpeak would spell them) and
  normalise to 3-25 words; deduplicated by normalised text. The test and dev sentences are drawn
  first and are never used in train; train cycles through the remaining ones (with other voices)
  when more utterances are asked for than there are sentences (``summary["train_text_reuse"]``).
- Voices: ``ACCENTS`` x ``VARIANTS`` (8 x 12 = 96). A fixed 1/6 of the pairs
  (``(accent_index + 3 * variant_index) % 6 == 0``, 16 pairs) are held out for test; train and dev
  use the other 80.
- ``test_clean`` and ``test_noisy`` hold the *same* sentences spoken by the *same* voices:
  ``test_noisy`` is ``test_clean`` with the heavy imbalance of ``ImbalanceConfig.heavy()`` applied,
  so the two can be compared utterance by utterance.

Determinism: everything is a function of ``seed``. Each utterance draws from
``np.random.default_rng([seed, split, index])``. eSpeak itself keeps state across calls (the
pitch-flutter index in its wave generator is a C static), so the same sentence spoken twice in one
process can differ by a few pitch periods (~5-15 ms in word timings). Utterances are therefore
synthesised in fixed shards of ``SHARD_SIZE``, each in a fresh process, which makes the output
independent of ``jobs`` and scheduling; the word starts are taken from the events of the very
synthesis that produced the audio, and recorded in ``synth.event_samples`` (22050 Hz).
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.fft import next_fast_len
from scipy.signal import firwin, resample_poly

from otalign.data.manifest import NoiseInfo, NonSpeechSpan, Utterance, WordSpan, normalize_text, write_manifest

__all__ = [
    "ACCENTS",
    "VARIANTS",
    "SIZES",
    "ImbalanceConfig",
    "voice_pairs",
    "load_fortune_sentences",
    "speak_text_and_words",
    "synthesize_utterance",
    "synthesize_corpus",
]

SAMPLE_RATE = 16000
# resample 22050 -> 16000: 16000/22050 = 320/441
_UP, _DOWN = 320, 441
END_THRESHOLD_DB = 40.0
_ENERGY_FRAME = 80  # 5 ms at 16 kHz
_FADE = 32  # 2 ms

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

# Utterance counts per size: train, dev, test (test_clean and test_noisy each hold `test`).
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (40, 8, 8),
    "demo": (1500, 150, 150),
    "bench": (3000, 300, 300),
}

FORTUNES_DIR = "/usr/share/games/fortunes"
_SPLIT_CODES = {"train": 0, "dev": 1, "test": 2, "babble": 3}


@dataclass(frozen=True)
class ImbalanceConfig:
    """Probabilities and ranges (seconds, dB) of the silence/noise added to an imbalanced utterance."""

    leading_silence_prob: float = 0.8
    trailing_silence_prob: float = 0.8
    edge_silence_s: tuple[float, float] = (0.2, 1.5)
    interword_silence_prob: float = 0.15  # per word boundary
    interword_silence_s: tuple[float, float] = (0.15, 0.8)
    max_interword_silences: int = 3
    noise_segment_prob: float = 0.5  # one noise-only segment (with short silences around it)
    noise_segment_s: tuple[float, float] = (0.3, 1.2)
    noise_segment_snr_db: tuple[float, float] = (0.0, 10.0)
    background_noise_prob: float = 0.6
    background_snr_db: tuple[float, float] = (5.0, 25.0)
    noise_kinds: tuple[str, ...] = ("white", "pink", "babble")

    @classmethod
    def heavy(cls) -> "ImbalanceConfig":
        """The test_noisy setting: always padded, more gaps, noise in most utterances."""
        return cls(leading_silence_prob=1.0, trailing_silence_prob=1.0, edge_silence_s=(0.5, 2.0),
                   interword_silence_prob=0.25, noise_segment_prob=0.7, background_noise_prob=0.7,
                   background_snr_db=(5.0, 20.0))


def voice_pairs() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train/dev pairs, held-out test pairs) of (accent label, variant); fixed, seed-independent."""
    train, test = [], []
    for a, accent in enumerate(ACCENTS):
        for v, variant in enumerate(VARIANTS):
            (test if (a + 3 * v) % 6 == 0 else train).append((accent, variant))
    return train, test


_ALLOWED_SENTENCE = re.compile(r"^[A-Za-z ,.;:!?'\"\u2019()-]+$")
_ALL_CAPS_WORD = re.compile(r"\b[A-Z]{2,}\b")
_ATTRIBUTION = re.compile(r"^\s*--")


def load_fortune_sentences(fortunes_dir: str = FORTUNES_DIR, min_words: int = 3,
                           max_words: int = 25) -> list[str]:
    """Sentences from the fortune files (split on ``%`` lines, then at ``.!?``), deduplicated.

    Returns the original sentences (with punctuation, for natural prosody), sorted by their
    normalised text so the pool does not depend on file system order.
    """
    files = sorted(f for f in glob.glob(os.path.join(fortunes_dir, "*"))
                   if os.path.isfile(f) and "." not in os.path.basename(f))
    if not files:
        raise ValueError(f"no fortune files in {fortunes_dir} (Debian: apt-get install fortunes fortunes-min)")
    by_normalized: dict[str, str] = {}
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            raw = f.read()
        for block in re.split(r"^%\s*$", raw, flags=re.M):
            lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not _ATTRIBUTION.match(ln)]
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(lines)):
                sentence = sentence.strip()
                if not sentence or not _ALLOWED_SENTENCE.match(sentence) or _ALL_CAPS_WORD.search(sentence):
                    continue
                normalized = normalize_text(sentence)
                if min_words <= len(normalized.split()) <= max_words:
                    by_normalized.setdefault(normalized, sentence)
    return [by_normalized[k] for k in sorted(by_normalized)]


def speak_text_and_words(sentence: str) -> tuple[str, list[str], list[int]]:
    """The text eSpeak speaks, its normalised words, and each word's 0-based character offset.

    The spoken text is the normalised words with the sentence's ``,;:.!?`` kept after the word
    they follow (for natural pauses and intonation), so each spoken word is one manifest word.
    """
    words: list[str] = []
    pieces: list[str] = []
    offsets: list[int] = []
    position = 0
    for token in sentence.split():
        sub_words = normalize_text(token).split()
        if not sub_words:
            continue
        stripped = token.rstrip("'\"\u2019)")
        punctuation = stripped[-1] if stripped and stripped[-1] in ",;:.!?" else ""
        for k, word in enumerate(sub_words):
            piece = word + (punctuation if k == len(sub_words) - 1 else "")
            offsets.append(position)
            words.append(word)
            pieces.append(piece)
            position += len(piece) + 1
    return " ".join(pieces), words, offsets


# ----------------------------------------------------------------------------------------------
# noise


def _unit_power(x: np.ndarray) -> np.ndarray:
    power = float(np.mean(x.astype(np.float64) ** 2))
    return (x / np.sqrt(power)).astype(np.float32) if power > 0 else x.astype(np.float32)


def _white(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f power spectrum: white noise shaped by 1/sqrt(f) in the frequency domain."""
    m = next_fast_len(max(n, 2))  # an FFT of a prime length is 100x slower
    spectrum = np.fft.rfft(rng.standard_normal(m))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0
    return _unit_power(np.fft.irfft(spectrum / np.sqrt(freqs), n=m)[:n])


def _babble(n: int, rng: np.random.Generator, babble_bank: list[np.ndarray]) -> np.ndarray:
    if not babble_bank:
        return _pink(n, rng)
    track = babble_bank[int(rng.integers(len(babble_bank)))]
    start = int(rng.integers(track.size))
    reps = int(np.ceil((start + n) / track.size))
    return _unit_power(np.tile(track, reps)[start:start + n])


def _noise(kind: str, n: int, rng: np.random.Generator, babble_bank: list[np.ndarray]) -> np.ndarray:
    if kind == "white":
        return _white(n, rng)
    if kind == "pink":
        return _pink(n, rng)
    if kind == "babble":
        return _babble(n, rng, babble_bank)
    raise ValueError(f"unknown noise kind {kind!r}")


# ----------------------------------------------------------------------------------------------
# one utterance


def _frame_db(x: np.ndarray) -> np.ndarray:
    n_frames = int(np.ceil(x.size / _ENERGY_FRAME))
    padded = np.zeros(n_frames * _ENERGY_FRAME, dtype=np.float64)
    padded[: x.size] = x
    power = np.mean(padded.reshape(n_frames, _ENERGY_FRAME) ** 2, axis=1)
    return 10.0 * np.log10(power + 1e-12)


_FILTER: np.ndarray | None = None


def _resampling_filter() -> np.ndarray:
    """resample_poly's default anti-aliasing FIR for 22050 -> 16000, designed once (it costs 4 ms)."""
    global _FILTER
    if _FILTER is None:
        max_rate = max(_UP, _DOWN)
        _FILTER = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    return _FILTER.copy()  # resample_poly scales the array it is given in place


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


@dataclass
class _Insert:
    """A piece inserted at sample ``position`` of the clean 16 kHz signal."""

    position: int
    kind: str  # "silence" or "noise"
    num_samples: int
    source: str | None = None
    snr_db: float | None = None


def _plan_inserts(rng: np.random.Generator, config: ImbalanceConfig, starts: list[int],
                  num_samples: int) -> list[_Insert]:
    inserts: list[_Insert] = []

    def seconds(low_high: tuple[float, float]) -> int:
        return int(round(rng.uniform(*low_high) * SAMPLE_RATE))

    if rng.random() < config.leading_silence_prob:
        inserts.append(_Insert(0, "silence", seconds(config.edge_silence_s)))
    boundaries = list(range(1, len(starts)))
    rng.shuffle(boundaries)
    chosen = [b for b in boundaries if rng.random() < config.interword_silence_prob]
    for b in sorted(chosen[: config.max_interword_silences]):
        inserts.append(_Insert(starts[b], "silence", seconds(config.interword_silence_s)))
    if rng.random() < config.noise_segment_prob:
        # where: before the first word, after the last, or at a word boundary
        slot = int(rng.integers(len(starts) + 1))
        position = num_samples if slot == len(starts) else (0 if slot == 0 else starts[slot])
        kind = str(rng.choice(config.noise_kinds))
        inserts.append(_Insert(position, "silence", seconds((0.1, 0.4))))
        inserts.append(_Insert(position, "noise", seconds(config.noise_segment_s), kind,
                               float(rng.uniform(*config.noise_segment_snr_db))))
        inserts.append(_Insert(position, "silence", seconds((0.1, 0.4))))
    if rng.random() < config.trailing_silence_prob:
        inserts.append(_Insert(num_samples, "silence", seconds(config.edge_silence_s)))
    # stable sort keeps the order chosen above for pieces at one position
    return sorted(inserts, key=lambda ins: ins.position)


def _apply_inserts(x: np.ndarray, starts: list[int], ends: list[int], inserts: list[_Insert],
                   speech_power: float, rng: np.random.Generator, babble_bank: list[np.ndarray]
                   ) -> tuple[np.ndarray, list[int], list[int], list[NonSpeechSpan]]:
    """Insert the planned pieces into ``x``; returns the new signal, shifted spans and annotations."""
    ramp = np.linspace(0.0, 1.0, _FADE, dtype=np.float32)
    faded = x.copy()
    for cut in sorted({ins.position for ins in inserts if 0 < ins.position < x.size}):
        # fade the speech out and back in around a cut inside it, so the cut makes no click
        before = faded[max(0, cut - _FADE):cut]
        before *= ramp[::-1][_FADE - before.size:]
        after = faded[cut:cut + _FADE]
        after *= ramp[: after.size]
    pieces: list[np.ndarray] = []
    spans: list[NonSpeechSpan] = []
    cursor = 0  # position in the clean signal
    out_len = 0  # length of the output so far
    for ins in inserts:
        if ins.position > cursor:
            pieces.append(faded[cursor:ins.position])
            out_len += ins.position - cursor
            cursor = ins.position
        if ins.kind == "silence":
            piece = np.zeros(ins.num_samples, dtype=np.float32)
        else:
            level = np.sqrt(speech_power / 10.0 ** (ins.snr_db / 10.0))
            piece = (_noise(ins.source, ins.num_samples, rng, babble_bank) * level).astype(np.float32)
            piece[:_FADE] *= ramp[: piece[:_FADE].size]
            piece[-_FADE:] *= ramp[::-1][_FADE - piece[-_FADE:].size:]
        spans.append(NonSpeechSpan(ins.kind, out_len / SAMPLE_RATE, (out_len + piece.size) / SAMPLE_RATE,
                                   ins.source))
        pieces.append(piece)
        out_len += piece.size
    pieces.append(faded[cursor:])
    y = np.concatenate(pieces)

    def shifted(sample: int, inclusive: bool) -> int:
        # a word starting exactly at an insertion point moves after the inserted piece;
        # a word ending exactly there does not
        return sample + sum(ins.num_samples for ins in inserts
                            if ins.position < sample or (inclusive and ins.position == sample))

    new_starts = [shifted(s, inclusive=True) for s in starts]
    new_ends = [shifted(e, inclusive=False) for e in ends]
    return y, new_starts, new_ends, spans


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


def _speech_power(x: np.ndarray, starts: list[int], ends: list[int]) -> float:
    inside = np.concatenate([x[s:e] for s, e in zip(starts, ends)])
    return float(np.mean(inside.astype(np.float64) ** 2)) if inside.size else float(np.mean(x ** 2))


def _finish(utt_id: str, split_dir: Path, base: dict[str, Any], y: np.ndarray, starts: list[int],
            ends: list[int], nonspeech: list[NonSpeechSpan] | None, noise: NoiseInfo | None,
            gain_db: float, synth_params: dict[str, Any], speaker: str) -> dict[str, Any]:
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    scale = 0.9 * 10.0 ** (gain_db / 20.0) / peak if peak > 0 else 1.0
    pcm = np.clip(np.round(y * scale * 32767.0), -32768, 32767).astype(np.int16)
    shard = split_dir / utt_id.rsplit("-", 1)[-1][:-3].rjust(3, "0")
    shard.mkdir(parents=True, exist_ok=True)
    path = shard / f"{utt_id}.wav"
    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")
    utt = Utterance(
        id=utt_id,
        # relative to the corpus folder, where the manifests are written
        audio_filepath=path.relative_to(split_dir.parent.parent).as_posix(),
        duration=pcm.size / SAMPLE_RATE,
        text=" ".join(base["words"]),
        speaker=speaker,
        sample_rate=SAMPLE_RATE,
        words=[WordSpan(w, s / SAMPLE_RATE, e / SAMPLE_RATE) for w, s, e in zip(base["words"], starts, ends)],
        nonspeech=nonspeech if nonspeech else ([] if nonspeech is not None else None),
        noise=noise,
        extra={"synth": synth_params},
    )
    return utt.to_dict()


def _synthesize_job(job: dict[str, Any]) -> dict[str, Any]:
    """Synthesise one job; returns {"records": [(split, manifest dict), ...], "error": str | None}."""
    rng = np.random.default_rng([job["seed"], _SPLIT_CODES[job["split"]], job["index"]])
    accent, variant = job["voices"][int(rng.integers(len(job["voices"])))]
    rate_wpm = int(rng.integers(RATE_WPM_RANGE[0], RATE_WPM_RANGE[1] + 1))
    pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
    pitch_range = int(rng.integers(PITCH_VARIATION_RANGE[0], PITCH_VARIATION_RANGE[1] + 1))
    try:
        base = synthesize_utterance(job["sentence"], accent, variant, rate_wpm, pitch, pitch_range)
    except ValueError as err:
        return {"records": [], "error": f"{job['id']}: {err}"}
    speaker = f"{accent}+{variant}"
    synth_params = {"engine": "espeak-ng", "engine_version": base["espeak_version"], "voice": base["voice"],
                    "rate_wpm": rate_wpm, "pitch": pitch, "pitch_range": pitch_range,
                    "speak_text": base["speak_text"]}
    # eSpeak's own word start events of this very synthesis (22050 Hz samples), kept for checking:
    # re-synthesising later need not reproduce them exactly (see synthesize_corpus)
    synth_params["event_samples"] = base["event_samples"]
    x, starts, ends = base["samples"], base["starts"], base["ends"]
    gain_db = float(rng.uniform(-10.0, 0.0))
    out_dir = Path(job["out_dir"])
    records = []
    for variant_name, imbalanced in job["outputs"]:
        split_dir = out_dir / "wav" / variant_name
        utt_id = job["id"] if variant_name in ("train", "dev") else f"{variant_name.replace('_', '-')}-{job['index']:06d}"
        if not imbalanced:
            records.append((variant_name, _finish(utt_id, split_dir, base, x, starts, ends, None, None,
                                                  gain_db, synth_params, speaker)))
            continue
        config = ImbalanceConfig(**job["imbalance"]) if variant_name != "test_noisy" else ImbalanceConfig.heavy()
        speech_power = _speech_power(x, starts, ends)
        inserts = _plan_inserts(rng, config, starts, x.size)
        y, new_starts, new_ends, spans = _apply_inserts(x, starts, ends, inserts, speech_power, rng,
                                                        _BABBLE_BANK)
        noise = None
        if rng.random() < config.background_noise_prob:
            kind = str(rng.choice(config.noise_kinds))
            snr_db = float(rng.uniform(*config.background_snr_db))
            level = np.sqrt(speech_power / 10.0 ** (snr_db / 10.0))
            y = y + _noise(kind, y.size, rng, _BABBLE_BANK) * level
            noise = NoiseInfo(kind, snr_db)
        records.append((variant_name, _finish(utt_id, split_dir, base, y, new_starts, new_ends, spans, noise,
                                              gain_db, synth_params, speaker)))
    return {"records": records, "error": None}


# ----------------------------------------------------------------------------------------------
# babble and the worker pool

_BABBLE_BANK: list[np.ndarray] = []


def _make_babble_bank(sentences: list[str], voices: list[tuple[str, str]], seed: int,
                      num_tracks: int = 8, talkers: int = 4) -> list[np.ndarray]:
    """Babble tracks, each the sum of ``talkers`` synthesized sentences (unit power, 16 kHz)."""
    bank = []
    for t in range(num_tracks):
        rng = np.random.default_rng([seed, _SPLIT_CODES["babble"], t])
        voices_idx = rng.choice(len(voices), size=talkers, replace=False)
        signals = []
        for k in range(talkers):
            sentence = sentences[int(rng.integers(len(sentences)))]
            accent, variant = voices[int(voices_idx[k])]
            try:
                out = synthesize_utterance(sentence, accent, variant, int(rng.integers(*RATE_WPM_RANGE)),
                                           int(rng.integers(*PITCH_RANGE)))
            except ValueError:
                continue
            signals.append(_unit_power(out["samples"]))
        if not signals:
            continue
        length = max(s.size for s in signals)
        track = np.zeros(length, dtype=np.float32)
        for s in signals:
            # each talker loops so the babble has no gaps
            track += np.tile(s, int(np.ceil(length / s.size)))[:length]
        bank.append(_unit_power(track))
    return bank


SHARD_SIZE = 50


def _babble_task(sentences: list[str], voices: list[tuple[str, str]], seed: int, path: str) -> int:
    bank = _make_babble_bank(sentences, voices, seed)
    np.savez(path, *bank)
    return len(bank)


def _shard_task(shard: list[dict[str, Any]], babble_path: str) -> list[dict[str, Any]]:
    """Synthesise one shard in a fresh process (see ``synthesize_corpus`` on determinism)."""
    global _BABBLE_BANK
    with np.load(babble_path) as bank:
        _BABBLE_BANK = [bank[k] for k in bank.files]
    return [_synthesize_job(job) for job in shard]


def _split_counts(size: str, num_utterances: int | None, num_dev: int | None,
                  num_test: int | None) -> tuple[int, int, int]:
    if size not in SIZES and num_utterances is None:
        raise ValueError(f"size must be one of {sorted(SIZES)} or num_utterances given, got size={size!r}")
    train, dev, test = SIZES.get(size, SIZES["demo"])
    if num_utterances is not None:
        if num_utterances < 1:
            raise ValueError(f"num_utterances must be >= 1, got {num_utterances}")
        train = num_utterances
        dev = test = int(min(2000, max(50, round(0.05 * num_utterances))))
    dev = dev if num_dev is None else num_dev
    test = test if num_test is None else num_test
    return train, dev, test


def synthesize_corpus(
    out_dir: str | os.PathLike,
    *,
    size: str = "demo",
    num_utterances: int | None = None,
    num_dev: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
    jobs: int = 2,
    imbalanced_fraction: float = 0.5,
    imbalance: ImbalanceConfig | None = None,
    fortunes_dir: str = FORTUNES_DIR,
    progress: bool = True,
) -> dict[str, Any]:
    """Synthesise a corpus into ``out_dir``; returns (and writes to ``summary.json``) a summary.

    Writes ``train.jsonl``, ``dev.jsonl``, ``test_clean.jsonl``, ``test_noisy.jsonl``,
    ``wav/<split>/<shard>/<id>.wav`` (16 kHz mono PCM16), ``babble_bank.npz`` and ``summary.json``.
    Worker processes come from a ``forkserver`` that imports the caller's main module: call this
    from under ``if __name__ == "__main__":`` in a script (the CLI does).

    Args:
        size: ``"tiny"`` (40/8/8), ``"demo"`` (1500/150/150) or ``"bench"`` (3000/300/300)
            utterances in train/dev/test (test counts apply to both test_clean and test_noisy);
            demo is about 2.0 h of train audio (2.6 h in all), bench about 3.9 h (5 h in all).
        num_utterances: number of train utterances (overrides ``size``); dev and test then get 5%
            each (50 to 2000). Scales to 100 h and more (train text is reused with new voices).
        num_dev, num_test: override the dev/test counts.
        seed: everything (texts, voices, rates, imbalance, noise) is a function of it.
        jobs: worker processes. Utterances are synthesised in fixed shards of ``SHARD_SIZE``, each
            in a fresh process with its own eSpeak, so the output does not depend on ``jobs``.
        imbalanced_fraction: exact fraction of train and dev utterances that get silence/noise
            (``round(fraction * n)`` of them, chosen by the seed); ``test_noisy`` always does.
        imbalance: probabilities and ranges for train/dev (default ``ImbalanceConfig()``).
    """
    if not 0.0 <= imbalanced_fraction <= 1.0:
        raise ValueError(f"imbalanced_fraction must be in [0, 1], got {imbalanced_fraction}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    num_train, num_dev, num_test = _split_counts(size, num_utterances, num_dev, num_test)
    imbalance = imbalance or ImbalanceConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_output_folder(out_dir)
    try:
        return _synthesize_locked(out_dir, num_train, num_dev, num_test, size, num_utterances, seed, jobs,
                                  imbalanced_fraction, imbalance, fortunes_dir, progress)
    finally:
        lock.close()  # releases the flock


class SynthFolderBusy(ValueError):
    """Another ``otalign synth`` is writing into the same output folder."""


def _lock_output_folder(out_dir: Path):
    """An exclusive ``fcntl.flock`` on ``out_dir/.synth.lock``, held for the whole run: two runs
    into one folder would otherwise mix their audio under one manifest. The second run fails."""
    import fcntl

    handle = open(out_dir / ".synth.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SynthFolderBusy(f"output folder {out_dir} is being written by another otalign synth run "
                              f"(lock {out_dir / '.synth.lock'} is held); wait for it or choose another folder")
    return handle


def _synthesize_locked(out_dir, num_train, num_dev, num_test, size, num_utterances, seed, jobs,
                       imbalanced_fraction, imbalance, fortunes_dir, progress):
    started = time.perf_counter()

    sentences = load_fortune_sentences(fortunes_dir)
    order = np.random.default_rng([seed, 99]).permutation(len(sentences))
    pool = [sentences[i] for i in order]
    if num_test + num_dev >= len(pool):
        raise ValueError(f"only {len(pool)} sentences: too few for {num_test} test + {num_dev} dev")
    test_texts = pool[:num_test]
    dev_texts = pool[num_test:num_test + num_dev]
    train_pool = pool[num_test + num_dev:]
    train_texts = [train_pool[i % len(train_pool)] for i in range(num_train)]
    train_voices, test_voices = voice_pairs()

    def imbalanced_mask(n: int, code: int) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        chosen = np.random.default_rng([seed, 7, code]).permutation(n)[: int(round(imbalanced_fraction * n))]
        mask[chosen] = True
        return mask

    config_dict = asdict(imbalance)
    job_list: list[dict[str, Any]] = []
    for split, texts, voices in (("train", train_texts, train_voices), ("dev", dev_texts, train_voices),
                                 ("test", test_texts, test_voices)):
        mask = imbalanced_mask(len(texts), _SPLIT_CODES[split]) if split != "test" else None
        for i, sentence in enumerate(texts):
            outputs = [("test_clean", False), ("test_noisy", True)] if split == "test" else [(split, bool(mask[i]))]
            job_list.append({"split": split, "index": i, "id": f"{split}-{i:06d}", "sentence": sentence,
                             "voices": voices, "seed": seed, "outputs": outputs, "imbalance": config_dict,
                             "out_dir": str(out_dir.resolve())})

    shards = [job_list[k:k + SHARD_SIZE] for k in range(0, len(job_list), SHARD_SIZE)]
    babble_path = str(out_dir / "babble_bank.npz")
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    bar = tqdm(total=len(job_list), desc="synth", unit="utt", disable=not progress) if tqdm else None
    # Each shard runs in a fresh process forked from a clean fork server (maxtasksperchild=1):
    # eSpeak keeps state across calls (its pitch-flutter index is a C static), so an utterance's
    # audio depends on what the same process spoke before. A fresh process per fixed shard makes
    # the corpus a function of the seed alone, whatever ``jobs`` is.
    context = multiprocessing.get_context("forkserver")
    # the fork server imports only this module (not the caller's __main__, which may import torch)
    context.set_forkserver_preload(["otalign.data.synth"])
    shard_results: dict[int, list[dict[str, Any]]] = {}
    with context.Pool(jobs, maxtasksperchild=1) as workers:
        num_babble = workers.apply(_babble_task, (train_pool, train_voices, seed, babble_path))
        pending = [(k, workers.apply_async(_shard_task, (shard, babble_path))) for k, shard in enumerate(shards)]
        for k, handle in pending:
            shard_results[k] = handle.get()
            if bar:
                bar.update(len(shards[k]))
    if bar:
        bar.close()
    results = [r for k in range(len(shards)) for r in shard_results[k]]

    by_split: dict[str, list[dict[str, Any]]] = {"train": [], "dev": [], "test_clean": [], "test_noisy": []}
    errors = []
    for result in results:
        if result["error"]:
            errors.append(result["error"])
        for split, record in result["records"]:
            by_split[split].append(record)
    for split, records in by_split.items():
        write_manifest(out_dir / f"{split}.jsonl", records)
    elapsed = time.perf_counter() - started

    def hours(records: list[dict[str, Any]]) -> float:
        return sum(r["duration"] for r in records) / 3600.0

    total_audio_s = sum(hours(r) for r in by_split.values()) * 3600.0
    summary: dict[str, Any] = {
        "out_dir": str(out_dir),
        "seed": seed,
        "size": size if num_utterances is None else f"num_utterances={num_utterances}",
        "jobs": jobs,
        "counts": {k: len(v) for k, v in by_split.items()},
        "hours": {k: round(hours(v), 4) for k, v in by_split.items()},
        "imbalanced": {k: sum(1 for r in v if "nonspeech" in r) for k, v in by_split.items()},
        "imbalanced_fraction": imbalanced_fraction,
        "imbalance": config_dict,
        "skipped": len(errors),
        "skipped_reasons": errors[:20],
        "sentence_pool": len(sentences),
        "train_text_reuse": round(num_train / max(1, len(train_pool)), 3),
        "test_voices": [f"{a}+{v}" for a, v in test_voices],
        "babble_tracks": num_babble,
        "elapsed_s": round(elapsed, 2),
        "audio_s": round(total_audio_s, 2),
        "x_real_time": round(total_audio_s / elapsed, 1) if elapsed > 0 else None,
    }
    with open(out_dir / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(f"synth: {out_dir}: {counts} utterances; skipped {len(errors)}; "
          f"{total_audio_s / 3600:.2f} h of audio in {elapsed:.1f} s ({summary['x_real_time']}x real time)")
    return summary
