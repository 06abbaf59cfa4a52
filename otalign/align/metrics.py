"""Alignment as detection: score a frame-to-token transport plan against ground-truth word timings.

A plan ``P`` (T frames x N tokens, any non-negative matrix: an OT plan, attention weights
transposed, CIF firing weights) is read as a detector: token ``j`` is *detected* on the frames
where it has mass. Two mappings turn the ground truth into frame sets:

1. **wordpiece -> word** (``word_index``): token ``j`` belongs to the whitespace word
   ``word_index[j]`` of the transcript (what ``PLMTeacher`` returns; [CLS]/[SEP] are dropped).
2. **word span -> encoder frames** (:func:`span_frame_mask`): encoder frame ``i`` covers
   ``[i * frame_s, (i + 1) * frame_s)`` seconds (``frame_s = 0.04`` after 4x subsampling of a
   10 ms hop). Frame ``i`` belongs to a span ``[start_s, end_s)`` when their overlap is at least
   half a frame (``overlap >= frame_s / 2``). A frame can therefore belong to two words only when
   it is split exactly in half between them. A span shorter than half a frame would own no frame;
   it then gets the single frame that contains its midpoint, so that every word has a non-empty
   frame set.

Token ``j``'s *span* is the frame set of its word. With ``S_ij = 1`` when frame ``i`` is in
token ``j``'s span, ``m_j = sum_i P_ij`` its mass and ``M = sum_ij P_ij``:

- ``token_recall``   = (1/N) #{ j : argmax_i P_ij in span(j) }   (a token with no mass is a miss;
  ties go to the earliest frame)
- ``coverage``       = (1/N) #{ j : sum_i S_ij P_ij >= x * m_j, m_j > 0 }   (x = ``coverage_level``)
- ``precision``      = sum_ij S_ij P_ij / M
- ``f1``             = 2 * precision * token_recall / (precision + token_recall)
- ``mass_outside_words`` = mass on frames that belong to no word span / M
- ``mass_on_nonspeech``  = mass on frames that belong to an annotated nonspeech span / M
  (also split by kind: ``mass_on_silence``, ``mass_on_noise``)
- ``boundary_error_ms``: for each word ``w`` with mass, its frame profile is
  ``q_i = sum_{j in w} P_ij``; its *active* frames are those with
  ``q_i >= boundary_threshold * max_i q_i`` (half maximum by default). The predicted start is the
  start time of the first active frame, the predicted end the end time of the last one, and the
  word's error is ``(|pred_start - start_s| + |pred_end - end_s|) / 2``. The utterance value is the
  mean over words with mass, in milliseconds; ``start_error_ms`` and ``end_error_ms`` are the two
  halves separately. Note the floor: frames are 40 ms, so a perfect detector still errs by up to
  about 20 ms at each boundary.

Batch aggregation (:func:`aggregate_metrics`):

- **micro**: pool over the whole set. Token metrics (recall, coverage) are pooled over all tokens;
  mass metrics (precision, mass fractions) pool the mass after rescaling each utterance's plan to
  total mass ``N_u`` (its token count), so that every *token* weighs the same whatever the
  aligner's total mass (1 for OT/UOT, m for partial OT, N for attention); boundary error is the
  mean over all words with mass. Micro F1 is computed from micro precision and micro recall.
- **macro**: the plain mean over utterances of the per-utterance values (utterances without
  tokens are left out; utterances where a metric is undefined, e.g. no word has mass, are left
  out of that metric's mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

FRAME_S = 0.04  # encoder frame length after 4x subsampling of a 10 ms hop

# The metric names, in the order tables print them.
METRIC_NAMES = (
    "precision",
    "token_recall",
    "f1",
    "coverage",
    "mass_outside_words",
    "mass_on_nonspeech",
    "mass_on_silence",
    "mass_on_noise",
    "boundary_error_ms",
    "start_error_ms",
    "end_error_ms",
    "plan_entropy",
)


def frame_intervals(num_frames: int, frame_s: float = FRAME_S) -> np.ndarray:
    """Start and end time in seconds of each encoder frame, shape (num_frames, 2).

    Frame ``i`` covers ``[i * frame_s, (i + 1) * frame_s)`` (the convention of
    ``otalign.models.subsampling.encoder_frame_times``).
    """
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if not frame_s > 0:
        raise ValueError(f"frame_s must be > 0, got {frame_s}")
    starts = np.arange(num_frames, dtype=np.float64) * frame_s
    return np.stack([starts, starts + frame_s], axis=1)


def span_frame_mask(
    spans: Sequence[tuple[float, float]], num_frames: int, frame_s: float = FRAME_S
) -> np.ndarray:
    """Boolean (len(spans), num_frames) matrix: frame i belongs to span k.

    Rule: frame ``[t_i, t_i + frame_s)`` belongs to span ``[start_s, end_s)`` when their overlap
    is ``>= frame_s / 2``. A span that wins no frame that way (shorter than half a frame, or
    straddling two frames) gets the frame that contains its midpoint (clipped to the last frame).
    Spans entirely after the last frame get no frame.
    """
    mask = np.zeros((len(spans), num_frames), dtype=bool)
    if num_frames == 0:
        return mask
    frames = frame_intervals(num_frames, frame_s)
    for k, (start_s, end_s) in enumerate(spans):
        if not end_s >= start_s:
            raise ValueError(f"span {k} has end_s={end_s} < start_s={start_s}")
        overlap = np.minimum(frames[:, 1], end_s) - np.maximum(frames[:, 0], start_s)
        # a tiny tolerance so that exactly half a frame counts despite float rounding
        mask[k] = overlap >= frame_s / 2 - 1e-9
        if not mask[k].any():
            mid = 0.5 * (start_s + end_s)
            if mid < num_frames * frame_s:
                mask[k, min(int(mid // frame_s), num_frames - 1)] = True
    return mask


def token_frame_mask(
    word_index: Sequence[int] | np.ndarray,
    word_spans: Sequence[tuple[float, float]],
    num_frames: int,
    frame_s: float = FRAME_S,
) -> np.ndarray:
    """Boolean (num_frames, N): frame i lies in the span of token j's word (the S matrix above)."""
    word_index = np.asarray(word_index, dtype=np.int64)
    if word_index.size and (word_index.min() < 0 or word_index.max() >= len(word_spans)):
        raise ValueError(
            f"word_index refers to words {word_index.min()}..{word_index.max()} but there are "
            f"{len(word_spans)} word spans"
        )
    words = span_frame_mask(word_spans, num_frames, frame_s)  # (W, T)
    return words[word_index].T.copy() if word_index.size else np.zeros((num_frames, 0), bool)


@dataclass
class UtteranceMetrics:
    """Per-utterance detection metrics (see the module docstring) plus the sums that pool them."""

    num_tokens: int
    num_frames: int
    precision: float
    token_recall: float
    f1: float
    coverage: float
    mass_outside_words: float
    mass_on_nonspeech: float
    mass_on_silence: float
    mass_on_noise: float
    boundary_error_ms: float  # nan when no word has mass
    start_error_ms: float
    end_error_ms: float
    plan_entropy: float  # mean over tokens of the normalised entropy of their frame distribution
    # pooled sums (for micro averages)
    tokens_recalled: int = 0
    tokens_covered: int = 0
    word_errors_ms: list[float] = field(default_factory=list)
    word_start_errors_ms: list[float] = field(default_factory=list)
    word_end_errors_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in ("num_tokens", "num_frames") + METRIC_NAMES}


def _f1(precision: float, recall: float) -> float:
    if not (precision + recall) > 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def _as_spans(items: Iterable) -> list[tuple[float, float]]:
    spans = []
    for item in items:
        if isinstance(item, Mapping):
            spans.append((float(item["start"]), float(item["end"])))
        elif hasattr(item, "start") and hasattr(item, "end"):  # otalign.data WordSpan
            spans.append((float(item.start), float(item.end)))
        else:
            spans.append((float(item[0]), float(item[1])))
    return spans


def token_plan_entropy(plan: np.ndarray) -> float:
    """Mean over tokens with mass of the entropy of the token's distribution over frames, divided
    by log T: 1 for a flat column (the uniform plan, chance), 0 for a token on one frame. Whether
    a trained aligner's plans sharpen shows here, whatever their precision."""
    p = np.asarray(plan, dtype=np.float64)
    num_frames = p.shape[0]
    mass = p.sum(axis=0)
    keep = mass > 0
    if num_frames < 2 or not keep.any():
        return math.nan
    q = p[:, keep] / mass[keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(q > 0, q * np.log(q), 0.0).sum(axis=0)
    return float(h.mean() / math.log(num_frames))


def utterance_metrics(
    plan,
    word_index: Sequence[int] | np.ndarray,
    word_spans: Sequence,
    nonspeech: Sequence = (),
    frame_s: float = FRAME_S,
    coverage_level: float = 0.5,
    boundary_threshold: float = 0.5,
) -> UtteranceMetrics:
    """Detection metrics of one utterance's plan.

    Args:
        plan: (T, N) non-negative array or tensor, valid frames x valid tokens (no padding).
        word_index: (N,) whitespace-word index of each token (wordpiece -> word mapping); tokens
            with a negative index (special tokens) are left out.
        word_spans: one entry per word: ``(start_s, end_s)``, a manifest dict with ``start``
            and ``end`` in seconds, or an ``otalign.data`` ``WordSpan``.
        nonspeech: annotated nonspeech spans: dicts ``{kind, start, end}`` (manifest form) or
            ``(kind, start_s, end_s)`` tuples; ``kind`` is ``silence`` or ``noise``.
        frame_s: encoder frame length in seconds.
        coverage_level: the x of coverage@x (a token is covered when >= x of its mass is in span).
        boundary_threshold: active frames of a word have profile >= this fraction of its peak.
    """
    p = np.asarray(plan.detach().cpu() if hasattr(plan, "detach") else plan, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"plan must be (T, N), got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("plan holds NaN or inf")
    if (p < 0).any():
        raise ValueError("plan must be non-negative")
    word_index = np.asarray(word_index.detach().cpu() if hasattr(word_index, "detach") else word_index,
                            dtype=np.int64).reshape(-1)
    if word_index.shape[0] != p.shape[1]:
        raise ValueError(f"word_index has {word_index.shape[0]} entries but plan has {p.shape[1]} tokens")
    # tokens of no word (word_index -1: [CLS]/[SEP] kept by PLMTeacher(keep_special=True)) have no
    # span to be scored against: their columns are left out
    if (word_index < 0).any():
        p, word_index = p[:, word_index >= 0], word_index[word_index >= 0]
    num_frames, num_tokens = p.shape
    if not 0.0 < coverage_level <= 1.0:
        raise ValueError(f"coverage_level must be in (0, 1], got {coverage_level}")
    spans = _as_spans(word_spans)
    in_span = token_frame_mask(word_index, spans, num_frames, frame_s)  # (T, N)

    total = p.sum()
    token_mass = p.sum(axis=0)
    nan = math.nan
    if num_tokens == 0:
        # nothing to detect: every metric is undefined; aggregate_metrics counts and skips it
        return UtteranceMetrics(0, num_frames, *([nan] * len(METRIC_NAMES)))
    if total <= 0:
        # nothing was detected: every token is missed, mass fractions are undefined
        return UtteranceMetrics(num_tokens, num_frames, 0.0, 0.0, 0.0, 0.0, *([nan] * 8))

    # recall: argmax frame inside the span; a token without mass is a miss
    peak = p.argmax(axis=0)
    recalled = (token_mass > 0) & in_span[peak, np.arange(num_tokens)]
    mass_in_span = (p * in_span).sum(axis=0)
    covered = (token_mass > 0) & (mass_in_span >= coverage_level * token_mass - 1e-12 * total)
    precision = float(mass_in_span.sum() / total)
    recall = float(recalled.mean())

    frame_mass = p.sum(axis=1)
    any_word = span_frame_mask(spans, num_frames, frame_s).any(axis=0)
    outside = float(frame_mass[~any_word].sum() / total)

    ns_kinds: list[str] = []
    ns_spans: list[tuple[float, float]] = []
    for item in nonspeech:
        if isinstance(item, Mapping):
            ns_kinds.append(str(item.get("kind", "silence")))
            ns_spans.append((float(item["start"]), float(item["end"])))
        elif hasattr(item, "kind"):  # otalign.data NonSpeechSpan
            ns_kinds.append(str(item.kind))
            ns_spans.append((float(item.start), float(item.end)))
        else:
            kind, start_s, end_s = item
            ns_kinds.append(str(kind))
            ns_spans.append((float(start_s), float(end_s)))
    ns_mask = span_frame_mask(ns_spans, num_frames, frame_s)
    kinds = np.array(ns_kinds)

    def mass_on(rows: np.ndarray) -> float:
        frames = rows.any(axis=0) if rows.size else np.zeros(num_frames, bool)
        return float(frame_mass[frames].sum() / total)

    on_nonspeech = mass_on(ns_mask)
    on_silence = mass_on(ns_mask[kinds == "silence"]) if len(kinds) else 0.0
    on_noise = mass_on(ns_mask[kinds == "noise"]) if len(kinds) else 0.0

    # boundary error per word with mass
    times = frame_intervals(num_frames, frame_s)
    errors, start_errors, end_errors = [], [], []
    for w in np.unique(word_index):
        profile = p[:, word_index == w].sum(axis=1)
        peak_mass = profile.max()
        if peak_mass <= 0:
            continue
        active = np.nonzero(profile >= boundary_threshold * peak_mass)[0]
        start_s, end_s = spans[w]
        start_err = abs(times[active[0], 0] - start_s) * 1000.0
        end_err = abs(times[active[-1], 1] - end_s) * 1000.0
        start_errors.append(start_err)
        end_errors.append(end_err)
        errors.append(0.5 * (start_err + end_err))

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else math.nan

    return UtteranceMetrics(
        num_tokens=num_tokens,
        num_frames=num_frames,
        precision=precision,
        token_recall=recall,
        f1=_f1(precision, recall),
        coverage=float(covered.mean()),
        mass_outside_words=outside,
        mass_on_nonspeech=on_nonspeech,
        mass_on_silence=on_silence,
        mass_on_noise=on_noise,
        boundary_error_ms=mean(errors),
        start_error_ms=mean(start_errors),
        end_error_ms=mean(end_errors),
        plan_entropy=token_plan_entropy(p),
        tokens_recalled=int(recalled.sum()),
        tokens_covered=int(covered.sum()),
        word_errors_ms=errors,
        word_start_errors_ms=start_errors,
        word_end_errors_ms=end_errors,
    )


def aggregate_metrics(per_utterance: Sequence[UtteranceMetrics]) -> dict[str, float]:
    """Micro and macro averages over utterances (definitions in the module docstring).

    Returns a flat dict: ``micro_<metric>`` and ``macro_<metric>`` for every metric in
    :data:`METRIC_NAMES`, plus ``num_utterances``, ``num_tokens``, ``num_words_scored`` and
    ``num_empty_utterances`` (utterances without tokens, left out of every mean).
    """
    scored = [m for m in per_utterance if m.num_tokens > 0]
    out: dict[str, float] = {
        "num_utterances": len(per_utterance),
        "num_empty_utterances": len(per_utterance) - len(scored),
        "num_tokens": sum(m.num_tokens for m in scored),
    }
    n_tokens = out["num_tokens"]
    # micro: tokens pooled; mass metrics weighted by token count (plan rescaled to mass N_u)
    for name in ("precision", "mass_outside_words", "mass_on_nonspeech", "mass_on_silence", "mass_on_noise",
                 "plan_entropy"):
        pairs = [(m.num_tokens, getattr(m, name)) for m in scored if not math.isnan(getattr(m, name))]
        weight = sum(w for w, _ in pairs)
        out[f"micro_{name}"] = sum(w * v for w, v in pairs) / weight if weight else math.nan
    out["micro_token_recall"] = sum(m.tokens_recalled for m in scored) / n_tokens if n_tokens else math.nan
    out["micro_coverage"] = sum(m.tokens_covered for m in scored) / n_tokens if n_tokens else math.nan
    out["micro_f1"] = (_f1(out["micro_precision"], out["micro_token_recall"]) if n_tokens else math.nan)
    all_errors = [e for m in scored for e in m.word_errors_ms]
    out["num_words_scored"] = len(all_errors)
    out["micro_boundary_error_ms"] = float(np.mean(all_errors)) if all_errors else math.nan
    starts = [e for m in scored for e in m.word_start_errors_ms]
    ends = [e for m in scored for e in m.word_end_errors_ms]
    out["micro_start_error_ms"] = float(np.mean(starts)) if starts else math.nan
    out["micro_end_error_ms"] = float(np.mean(ends)) if ends else math.nan
    # macro: plain mean of per-utterance values (nan-valued utterances skipped per metric)
    for name in METRIC_NAMES:
        values = [getattr(m, name) for m in scored if not math.isnan(getattr(m, name))]
        out[f"macro_{name}"] = float(np.mean(values)) if values else math.nan
    return out


def batch_metrics(
    plans,
    frame_mask,
    token_mask,
    word_index,
    word_spans: Sequence[Sequence],
    nonspeech: Sequence[Sequence] | None = None,
    frame_s: float = FRAME_S,
    coverage_level: float = 0.5,
    boundary_threshold: float = 0.5,
) -> tuple[list[UtteranceMetrics], dict[str, float]]:
    """Score a padded batch of plans (B, T, N) with masks (B, T), (B, N) and word_index (B, N).

    Padding is stripped per utterance (valid frames and tokens are assumed to be a prefix, as the
    collate functions produce them). Returns the per-utterance metrics and their aggregate.
    """
    plans = np.asarray(plans.detach().cpu() if hasattr(plans, "detach") else plans, dtype=np.float64)
    frame_mask = np.asarray(frame_mask.cpu() if hasattr(frame_mask, "cpu") else frame_mask, dtype=bool)
    token_mask = np.asarray(token_mask.cpu() if hasattr(token_mask, "cpu") else token_mask, dtype=bool)
    word_index = np.asarray(word_index.cpu() if hasattr(word_index, "cpu") else word_index)
    if plans.ndim != 3:
        raise ValueError(f"plans must be (B, T, N), got shape {plans.shape}")
    batch = plans.shape[0]
    if len(word_spans) != batch:
        raise ValueError(f"word_spans has {len(word_spans)} utterances, plans has {batch}")
    nonspeech = nonspeech if nonspeech is not None else [()] * batch
    results = []
    for b in range(batch):
        t, n = int(frame_mask[b].sum()), int(token_mask[b].sum())
        results.append(
            utterance_metrics(plans[b, :t, :n], word_index[b, :n], word_spans[b], nonspeech[b], frame_s,
                              coverage_level, boundary_threshold)
        )
    return results, aggregate_metrics(results)
