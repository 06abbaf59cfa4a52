"""A setting with known frame-token correspondence that needs no training.

Real PLM states of real sentences are laid over the frames of their words, as if an ideal
acoustic encoder + adapter had learned to reproduce them; silence and noise frames get vectors
that match no token. Aligning these "acoustic" states directly (no adapter) with each aligner and
scoring against the known spans measures the aligners themselves, free of training noise.

Construction of one utterance (all randomness from one ``numpy`` generator seeded by ``seed``):

1. **Text and tokens.** A sentence is encoded by the PLM teacher (all-MiniLM-L6-v2 by default):
   wordpiece states ``z_1..z_N`` and ``word_index`` (the wordpiece -> word map).
2. **Word timings.** Either real word spans (``examples_from_manifest``: a synthesised manifest's
   ``words`` and ``nonspeech``) or the generative duration model (:class:`DurationModel`):

   - word duration ``d_w = (base_s + per_char_s * len(word)) * exp(sigma_log * n)``, ``n ~ N(0,1)``,
     at least ``(pieces_w + 1)`` frames so every wordpiece owns a frame;
   - the nonspeech fraction ``f ~ U(min_nonspeech, max_nonspeech)`` of the utterance's duration is
     split (Dirichlet(1)) over a leading segment, a trailing segment and pauses after a random
     ``pause_prob`` share of the inner word boundaries;
   - inner pauses are ``noise`` with probability ``noise_prob`` and ``silence`` otherwise; the
     leading and trailing segments are silence.
3. **Frames.** ``T = ceil(duration / frame_s)``; frame ``i`` belongs to a word by the metric's own
   rule (overlap >= half a frame, :func:`otalign.align.metrics.span_frame_mask`). The ``K`` frames of a
   word with ``P`` wordpieces are split in order: frame ``k`` carries wordpiece ``floor(k P / K)``.
4. **States.**

   - speech frame of wordpiece ``j``: ``z_j + noise_level * |z_j| * g / sqrt(D)``, ``g ~ N(0, I)``
     (relative noise ``noise_level``: ``cos(frame, z_j) ~ 1 / sqrt(1 + noise_level^2)``);
   - silence frame: one per-utterance random direction ``s`` (scaled to the mean token norm) plus
     the same relative noise: all silence frames look alike, like real silence;
   - noise frame: a fresh random direction per frame, scaled to the mean token norm;
   - both nonspeech kinds are then mixed towards the utterance's mean token state:
     ``v <- (1 - nonspeech_mix) v + nonspeech_mix * mean_j z_j`` (renormalised). MiniLM states
     are anisotropic (mean pairwise cosine ~0.4), so a random direction would be unrealistically
     easy to reject; ``nonspeech_mix`` makes nonspeech frames resemble "a generic token".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from otalign.align.metrics import FRAME_S, span_frame_mask

__all__ = [
    "AlignmentExample",
    "DurationModel",
    "SYNTHETIC_SENTENCES",
    "synthetic_examples",
    "examples_from_manifest",
    "layout_states",
    "collate_examples",
]

# Real English sentences (proverbs and plain statements, written for this project) with repeated
# function words, wordpiece-split words and varied lengths.
SYNTHETIC_SENTENCES = (
    "a penny saved is a penny earned",
    "the early bird catches the worm",
    "she sells seashells by the seashore",
    "all that glitters is not gold",
    "the quick brown fox jumps over the lazy dog",
    "actions speak louder than words",
    "where there is smoke there is fire",
    "the pen is mightier than the sword",
    "better late than never but never late is better",
    "a journey of a thousand miles begins with a single step",
    "knowledge is power and time is money",
    "the weather forecast predicts heavy rain tomorrow afternoon",
    "please remember to switch off the lights before leaving",
    "our neighbours adopted an enormous fluffy grey cat",
    "the committee postponed the meeting until further notice",
    "photosynthesis converts sunlight into chemical energy",
    "he carefully unwrapped the mysterious parcel",
    "the orchestra rehearsed the symphony for three hours",
    "two wrongs do not make a right",
    "you cannot judge a book by its cover",
    "the train to the airport leaves every twenty minutes",
    "my grandmother bakes delicious blueberry muffins on sundays",
    "the museum reopened after extensive renovations",
    "honesty is the best policy",
    "every cloud has a silver lining",
    "the children built a sandcastle near the water",
    "an apple a day keeps the doctor away",
    "the programmer fixed the bug in the compiler",
    "rome was not built in a day",
    "the library closes at nine in the evening",
    "thunderstorms disrupted flights across the region",
    "practice makes perfect but nobody is perfect",
    "the detective examined the footprints in the garden",
    "fortune favours the bold",
    "the recipe calls for two cups of flour",
    "we watched the sunset from the top of the hill",
)


@dataclass
class AlignmentExample:
    """One utterance with states whose frame-token correspondence is known.

    Attributes:
        id: utterance id.
        text: the transcript (whitespace words = ``word_spans``).
        frame_states: (T, D) acoustic(-like) states, already at the PLM width.
        token_states: (N, D) PLM wordpiece states.
        token_strings: the N wordpiece strings.
        word_index: (N,) long, whitespace-word index of each wordpiece.
        word_spans: per word ``(start_s, end_s)``.
        nonspeech: ``[{"kind": "silence"|"noise", "start": s, "end": s}]``.
        frame_s: frame length in seconds (frame i covers [i frame_s, (i+1) frame_s)).
    """

    id: str
    text: str
    frame_states: Tensor
    token_states: Tensor
    token_strings: list[str]
    word_index: Tensor
    word_spans: list[tuple[float, float]]
    nonspeech: list[dict] = field(default_factory=list)
    frame_s: float = FRAME_S

    @property
    def num_frames(self) -> int:
        return int(self.frame_states.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.token_states.shape[0])

    @property
    def speech_fraction(self) -> float:
        """Fraction of frames that belong to some word (the precision balanced OT is expected to reach)."""
        if self.num_frames == 0:
            return 0.0
        return float(span_frame_mask(self.word_spans, self.num_frames, self.frame_s).any(axis=0).mean())


@dataclass
class DurationModel:
    """Generative word/pause timing (see the module docstring for the formulas)."""

    base_s: float = 0.12
    per_char_s: float = 0.055
    sigma_log: float = 0.25
    min_nonspeech: float = 0.3
    max_nonspeech: float = 0.5
    pause_prob: float = 0.3
    noise_prob: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.min_nonspeech <= self.max_nonspeech < 1:
            raise ValueError(
                f"need 0 <= min_nonspeech <= max_nonspeech < 1, got {self.min_nonspeech}, {self.max_nonspeech}"
            )

    def sample(self, words: Sequence[str], pieces_per_word: Sequence[int], rng: np.random.Generator,
               frame_s: float = FRAME_S) -> tuple[list[tuple[float, float]], list[dict], float]:
        """Word spans, nonspeech spans and total duration (seconds) for one utterance."""
        durations = []
        for word, pieces in zip(words, pieces_per_word):
            d = (self.base_s + self.per_char_s * len(word)) * math.exp(self.sigma_log * rng.standard_normal())
            durations.append(max(d, (pieces + 1) * frame_s))
        speech_s = float(sum(durations))
        fraction = rng.uniform(self.min_nonspeech, self.max_nonspeech)
        # a little extra so that, after frames are assigned by the half-overlap rule, the share of
        # nonspeech frames stays above min_nonspeech
        nonspeech_s = speech_s * fraction / (1.0 - fraction) + 2 * frame_s
        inner = [k for k in range(len(words) - 1) if rng.random() < self.pause_prob]
        shares = rng.dirichlet(np.ones(len(inner) + 2))
        lead_s, trail_s = nonspeech_s * shares[0], nonspeech_s * shares[1]
        pause_after = {k: nonspeech_s * s for k, s in zip(inner, shares[2:])}
        spans, nonspeech = [], []
        t = lead_s
        if lead_s > 0:
            nonspeech.append({"kind": "silence", "start": 0.0, "end": lead_s})
        for k, d in enumerate(durations):
            spans.append((t, t + d))
            t += d
            if k in pause_after:
                kind = "noise" if rng.random() < self.noise_prob else "silence"
                nonspeech.append({"kind": kind, "start": t, "end": t + pause_after[k]})
                t += pause_after[k]
        nonspeech.append({"kind": "silence", "start": t, "end": t + trail_s})
        return spans, nonspeech, t + trail_s


def _random_directions(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((count, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def layout_states(
    token_states: Tensor,
    word_index: Sequence[int] | Tensor,
    word_spans: Sequence[tuple[float, float]],
    nonspeech: Sequence[dict],
    duration_s: float,
    rng: np.random.Generator,
    noise_level: float = 0.3,
    nonspeech_mix: float = 0.3,
    frame_s: float = FRAME_S,
) -> Tensor:
    """(T, D) frame states for given token states and timings (steps 3-4 of the module docstring)."""
    z = token_states.detach().double().cpu().numpy()
    word_index = np.asarray(word_index, dtype=np.int64)
    num_tokens, dim = z.shape
    num_frames = max(1, int(math.ceil(duration_s / frame_s - 1e-9)))
    word_frames = span_frame_mask(list(word_spans), num_frames, frame_s)  # (W, T)
    mean_norm = float(np.linalg.norm(z, axis=1).mean()) if num_tokens else 1.0
    mean_token = z.mean(axis=0) if num_tokens else np.zeros(dim)
    mean_dir = mean_token / max(np.linalg.norm(mean_token), 1e-12)

    states = np.zeros((num_frames, dim))
    owner = np.full(num_frames, -1)  # token carried by each frame, -1 = nonspeech
    for w in range(len(word_spans)):
        pieces = np.nonzero(word_index == w)[0]
        frames = np.nonzero(word_frames[w] & (owner < 0))[0]
        if len(pieces) == 0 or len(frames) == 0:
            continue
        for k, frame in enumerate(frames):
            owner[frame] = pieces[(k * len(pieces)) // len(frames)]
    speech = owner >= 0
    if speech.any():
        zj = z[owner[speech]]
        noise = rng.standard_normal(zj.shape) / math.sqrt(dim)
        states[speech] = zj + noise_level * np.linalg.norm(zj, axis=1, keepdims=True) * noise

    # nonspeech: silence frames share one direction (+ noise), noise frames are all different
    ns_frames = np.nonzero(~speech)[0]
    if len(ns_frames):
        kind_of = np.array(["silence"] * num_frames, dtype=object)
        spans_by_kind = {"noise": [(s["start"], s["end"]) for s in nonspeech if s["kind"] == "noise"]}
        if spans_by_kind["noise"]:
            noisy = span_frame_mask(spans_by_kind["noise"], num_frames, frame_s).any(axis=0)
            kind_of[noisy] = "noise"
        silence_dir = _random_directions(rng, 1, dim)[0]
        vectors = np.empty((len(ns_frames), dim))
        for n, frame in enumerate(ns_frames):
            if kind_of[frame] == "noise":
                v = _random_directions(rng, 1, dim)[0]
            else:
                v = silence_dir + noise_level * rng.standard_normal(dim) / math.sqrt(dim)
                v /= np.linalg.norm(v)
            v = (1.0 - nonspeech_mix) * v + nonspeech_mix * mean_dir
            vectors[n] = mean_norm * v / np.linalg.norm(v)
        states[ns_frames] = vectors
    return torch.from_numpy(states).to(token_states.dtype)


def _teacher(teacher):
    if teacher is not None:
        return teacher
    from otalign.text.teacher import PLMTeacher

    return PLMTeacher()


def synthetic_examples(
    num_utterances: int = 16,
    sentences: Sequence[str] = SYNTHETIC_SENTENCES,
    teacher=None,
    seed: int = 0,
    noise_level: float = 0.3,
    nonspeech_mix: float = 0.3,
    durations: DurationModel | None = None,
    frame_s: float = FRAME_S,
) -> list[AlignmentExample]:
    """``num_utterances`` synthetic examples (sentences cycled in order) from the generative timing model.

    Args:
        teacher: an object with ``encode(texts) -> TeacherOutput`` (``otalign.text.PLMTeacher``);
            ``None`` loads all-MiniLM-L6-v2.
        noise_level, nonspeech_mix: see the module docstring.
    """
    if num_utterances < 1:
        raise ValueError(f"num_utterances must be >= 1, got {num_utterances}")
    if not sentences:
        raise ValueError("sentences is empty")
    durations = durations or DurationModel()
    rng = np.random.default_rng(seed)
    texts = [sentences[k % len(sentences)] for k in range(num_utterances)]
    teacher = _teacher(teacher)
    examples = []
    for start in range(0, len(texts), 32):
        batch = texts[start:start + 32]
        out = teacher.encode(batch)
        for b, text in enumerate(batch):
            n = int(out.mask[b].sum())
            z = out.states[b, :n].float()
            word_index = out.word_index[b, :n].long()
            words = text.split()
            pieces = np.bincount(word_index.numpy(), minlength=len(words))
            spans, nonspeech, duration = durations.sample(words, pieces, rng, frame_s)
            frames = layout_states(z, word_index, spans, nonspeech, duration, rng, noise_level, nonspeech_mix, frame_s)
            examples.append(AlignmentExample(f"synthetic-{start + b:05d}", text, frames, z, list(out.token_strings[b]),
                                             word_index, spans, nonspeech, frame_s))
    return examples


def examples_from_manifest(
    utterances: Iterable,
    teacher=None,
    seed: int = 0,
    noise_level: float = 0.3,
    nonspeech_mix: float = 0.3,
    frame_s: float = FRAME_S,
) -> list[AlignmentExample]:
    """Synthetic states laid over *real* word timings of manifest utterances (e.g. eSpeak's).

    ``utterances``: ``otalign.data.manifest.Utterance`` objects or manifest dicts with ``text``,
    ``duration``, ``words`` and optionally ``nonspeech``. Utterances without ``words``, or whose
    word count differs from ``text.split()``, raise ``ValueError`` naming the utterance.
    """
    rows = []
    for u in utterances:
        d = u if isinstance(u, dict) else u.to_dict()
        if not d.get("words"):
            raise ValueError(f"utterance {d.get('id')!r} has no word timings ('words')")
        if len(d["words"]) != len(d["text"].split()):
            raise ValueError(f"utterance {d.get('id')!r}: {len(d['words'])} word spans for "
                             f"{len(d['text'].split())} words of its text")
        rows.append(d)
    if not rows:
        raise ValueError("no utterances")
    rng = np.random.default_rng(seed)
    teacher = _teacher(teacher)
    examples = []
    for start in range(0, len(rows), 32):
        batch = rows[start:start + 32]
        out = teacher.encode([d["text"] for d in batch])
        for b, d in enumerate(batch):
            n = int(out.mask[b].sum())
            z = out.states[b, :n].float()
            word_index = out.word_index[b, :n].long()
            spans = [(float(w["start"]), float(w["end"])) for w in d["words"]]
            nonspeech = [dict(kind=s["kind"], start=float(s["start"]), end=float(s["end"]))
                         for s in d.get("nonspeech") or []]
            frames = layout_states(z, word_index, spans, nonspeech, float(d["duration"]), rng, noise_level,
                                   nonspeech_mix, frame_s)
            examples.append(AlignmentExample(str(d.get("id", start + b)), d["text"], frames, z,
                                             list(out.token_strings[b]), word_index, spans, nonspeech, frame_s))
    return examples


def collate_examples(examples: Sequence[AlignmentExample]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pad to a batch: frame_states (B,T,D), frame_mask (B,T), token_states (B,N,D), token_mask (B,N)."""
    if not examples:
        raise ValueError("examples is empty")
    dim = examples[0].token_states.shape[1]
    batch, max_t, max_n = len(examples), max(e.num_frames for e in examples), max(e.num_tokens for e in examples)
    frames = torch.zeros(batch, max_t, dim)
    tokens = torch.zeros(batch, max_n, dim)
    frame_mask = torch.zeros(batch, max_t, dtype=torch.bool)
    token_mask = torch.zeros(batch, max_n, dtype=torch.bool)
    for b, e in enumerate(examples):
        frames[b, :e.num_frames] = e.frame_states
        tokens[b, :e.num_tokens] = e.token_states
        frame_mask[b, :e.num_frames] = True
        token_mask[b, :e.num_tokens] = True
    return frames, frame_mask, tokens, token_mask
