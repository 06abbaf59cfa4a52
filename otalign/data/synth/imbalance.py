"""Imbalance: silence and noise added to an utterance, every piece recorded.

In a chosen and recorded fraction of utterances (``ImbalanceConfig``): silence inserted before the
first word, after the last and at some word boundaries (inserted at the next word's start, with
2 ms fades against clicks; the spans after it shift by its length), noise-only segments with no
words (white, pink or babble), and background noise over the whole utterance (white, pink, or
babble made from other synthesized utterances) at a recorded SNR, where
``SNR = 10 log10(P_speech / P_noise)`` and ``P_speech`` is the mean power over word spans. Every
inserted segment is listed in ``nonspeech``; the background noise in ``noise``. In an utterance
with background noise the inserted silences carry that noise too (their kind stays ``"silence"``:
no foreground event).

Babble comes from a ``BabbleBank``: a few tracks, each the sum of several synthesized talkers,
built once per corpus, saved beside it (``babble_bank.npz``) and handed to every worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy.fft import next_fast_len

from otalign.data.manifest import NoiseInfo, NonSpeechSpan
from otalign.data.synth.timing import PITCH_RANGE, RATE_WPM_RANGE, SAMPLE_RATE, synthesize_utterance

__all__ = ["ImbalanceConfig", "BabbleBank", "Imbalanced", "impose_imbalance", "make_noise"]

_FADE = 32  # 2 ms
# The random stream of babble track t is default_rng([seed, BABBLE_STREAM, t]); 0-2 are the
# train, dev and test splits (corpus.SPLIT_CODES).
BABBLE_STREAM = 3


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


@dataclass(frozen=True)
class BabbleBank:
    """Babble tracks (unit power, 16 kHz), each the sum of several synthesized talkers."""

    tracks: tuple[np.ndarray, ...] = ()

    @classmethod
    def synthesize(cls, sentences: list[str], voices: list[tuple[str, str]], seed: int,
                   num_tracks: int = 8, talkers: int = 4) -> "BabbleBank":
        """``num_tracks`` tracks of ``talkers`` sentences each, drawn from the seed."""
        bank = []
        for t in range(num_tracks):
            rng = np.random.default_rng([seed, BABBLE_STREAM, t])
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
        return cls(tuple(bank))

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, *self.tracks)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BabbleBank":
        with np.load(path) as bank:
            return cls(tuple(bank[k] for k in bank.files))

    def __len__(self) -> int:
        return len(self.tracks)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` samples of one track from a random start (looped); pink noise if the bank is empty."""
        if not self.tracks:
            return _pink(n, rng)
        track = self.tracks[int(rng.integers(len(self.tracks)))]
        start = int(rng.integers(track.size))
        reps = int(np.ceil((start + n) / track.size))
        return _unit_power(np.tile(track, reps)[start:start + n])


def make_noise(kind: str, n: int, rng: np.random.Generator, babble: BabbleBank) -> np.ndarray:
    """``n`` samples of unit-power ``"white"``, ``"pink"`` or ``"babble"`` noise."""
    if kind == "white":
        return _white(n, rng)
    if kind == "pink":
        return _pink(n, rng)
    if kind == "babble":
        return babble.sample(n, rng)
    raise ValueError(f"unknown noise kind {kind!r}")


# ----------------------------------------------------------------------------------------------
# inserted silence and noise


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
                   speech_power: float, rng: np.random.Generator, babble: BabbleBank
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
            piece = (make_noise(ins.source, ins.num_samples, rng, babble) * level).astype(np.float32)
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


def _speech_power(x: np.ndarray, starts: list[int], ends: list[int]) -> float:
    inside = np.concatenate([x[s:e] for s, e in zip(starts, ends)])
    return float(np.mean(inside.astype(np.float64) ** 2)) if inside.size else float(np.mean(x ** 2))


@dataclass(frozen=True)
class Imbalanced:
    """An utterance with silence/noise added: the signal, shifted word spans (16 kHz samples) and
    what was added (``nonspeech`` segments, background ``noise`` or ``None``)."""

    samples: np.ndarray
    starts: list[int]
    ends: list[int]
    nonspeech: list[NonSpeechSpan]
    noise: NoiseInfo | None


def impose_imbalance(x: np.ndarray, starts: list[int], ends: list[int], config: ImbalanceConfig,
                     rng: np.random.Generator, babble: BabbleBank) -> Imbalanced:
    """Insert silence/noise segments into the clean signal ``x`` and maybe mix background noise.

    Draws from ``rng`` in a fixed order (the plan, the noise segments, the background), so the
    result is a function of the generator's state.
    """
    speech_power = _speech_power(x, starts, ends)
    inserts = _plan_inserts(rng, config, starts, x.size)
    y, new_starts, new_ends, spans = _apply_inserts(x, starts, ends, inserts, speech_power, rng, babble)
    noise = None
    if rng.random() < config.background_noise_prob:
        kind = str(rng.choice(config.noise_kinds))
        snr_db = float(rng.uniform(*config.background_snr_db))
        level = np.sqrt(speech_power / 10.0 ** (snr_db / 10.0))
        y = y + make_noise(kind, y.size, rng, babble) * level
        noise = NoiseInfo(kind, snr_db)
    return Imbalanced(y, new_starts, new_ends, spans, noise)
