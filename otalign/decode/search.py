"""CTC search: greedy (best path) and log-space prefix beam search.

CTC defines p(y | x) = sum over alignments pi with B(pi) = y of prod_t p_t(pi_t), where B removes
repeats, then blanks. Greedy decoding takes B(argmax_t p_t); prefix beam search keeps, for each
candidate prefix y, the two partial sums

    p_b(y)  = probability of all alignments of frames 1..t that collapse to y and end in blank,
    p_nb(y) = same, ending in a non-blank (the last label of y),

and extends them frame by frame (Graves 2012 ch. 7; Hannun et al. 2014 without an LM):

    blank:          p_b'(y)    += (p_b(y) + p_nb(y)) p_t(blank)
    c == last(y):   p_nb'(y)   += p_nb(y) p_t(c)           (repeat collapses into y)
                    p_nb'(y+c) += p_b(y) p_t(c)            (blank in between: a new c)
    c != last(y):   p_nb'(y+c) += (p_b(y) + p_nb(y)) p_t(c)

all in log space. With a beam at least as large as the number of reachable prefixes the search is
exact: the score of a prefix equals p(y | x) summed over all its alignments.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

NEG_INF = -math.inf


def ctc_greedy(log_probs: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None, blank: int = 0) -> list[list[int]]:
    """Best-path decoding of a (B, T, V) batch: argmax per frame, collapse repeats, drop blanks.

    Frames at or beyond ``lengths[b]`` are ignored (``None`` = all T frames).
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, V), got {tuple(log_probs.shape)}")
    B, T, _ = log_probs.shape
    if lengths is None:
        lengths = [T] * B
    lengths = [int(n) for n in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]
    if len(lengths) != B:
        raise ValueError(f"lengths has {len(lengths)} entries for a batch of {B}")
    best = log_probs.argmax(dim=-1).cpu()
    out: list[list[int]] = []
    for b, n in enumerate(lengths):
        if not 0 <= n <= T:
            raise ValueError(f"lengths[{b}]={n} is outside [0, {T}]")
        path = torch.unique_consecutive(best[b, :n])
        out.append([int(i) for i in path if int(i) != blank])
    return out


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


def ctc_prefix_beam_search(
    log_probs: torch.Tensor | np.ndarray,
    beam: int = 10,
    blank: int = 0,
    token_threshold: float | None = None,
    nbest: int | None = None,
) -> list[tuple[list[int], float]]:
    """Prefix beam search over one utterance's (T, V) log-probabilities.

    Args:
        log_probs: (T, V) log-probabilities of the valid frames only.
        beam: prefixes kept after each frame.
        blank: blank id.
        token_threshold: if set, at each frame only labels with log-prob >= this value are
            extended (plus the blank, always), a speed-up that makes the search approximate.
            ``None`` (default) extends every label.
        nbest: how many hypotheses to return (default: ``beam``).

    Returns:
        Up to ``nbest`` ``(ids, log_prob)`` pairs, best first, where ``log_prob`` is
        log p(ids | x) accumulated over the alignments the beam kept.
    """
    lp = log_probs.detach().cpu().double().numpy() if isinstance(log_probs, torch.Tensor) else np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 2:
        raise ValueError(f"log_probs must be (T, V) for one utterance, got shape {lp.shape}")
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    T, V = lp.shape
    if not 0 <= blank < V:
        raise ValueError(f"blank={blank} is outside [0, {V})")
    # prefix (tuple of ids) -> [log p_b, log p_nb]
    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, NEG_INF]}
    for t in range(T):
        frame = lp[t]
        if token_threshold is None:
            labels = [c for c in range(V) if c != blank]
        else:
            labels = [int(c) for c in np.nonzero(frame >= token_threshold)[0] if c != blank]
        lp_blank = float(frame[blank])
        nxt: dict[tuple[int, ...], list[float]] = {}

        def entry(prefix: tuple[int, ...]) -> list[float]:
            e = nxt.get(prefix)
            if e is None:
                e = nxt[prefix] = [NEG_INF, NEG_INF]
            return e

        for prefix, (p_b, p_nb) in beams.items():
            p_total = _logaddexp(p_b, p_nb)
            e = entry(prefix)
            e[0] = _logaddexp(e[0], p_total + lp_blank)
            last = prefix[-1] if prefix else None
            for c in labels:
                p_c = float(frame[c])
                if c == last:
                    e[1] = _logaddexp(e[1], p_nb + p_c)
                    ext = entry(prefix + (c,))
                    ext[1] = _logaddexp(ext[1], p_b + p_c)
                else:
                    ext = entry(prefix + (c,))
                    ext[1] = _logaddexp(ext[1], p_total + p_c)
        scored = sorted(nxt.items(), key=lambda kv: _logaddexp(kv[1][0], kv[1][1]), reverse=True)
        # A prefix of probability 0 (e.g. "aa" one frame after "a" with no blank yet) is dead.
        kept = [kv for kv in scored[:beam] if _logaddexp(kv[1][0], kv[1][1]) > NEG_INF]
        beams = dict(kept or scored[:1])
    ranked = sorted(((list(p), _logaddexp(s[0], s[1])) for p, s in beams.items()), key=lambda x: x[1], reverse=True)
    return ranked[: (nbest or beam)]


def decode_batch(
    log_probs: torch.Tensor,
    lengths: torch.Tensor | Sequence[int],
    mode: str = "greedy",
    beam: int = 10,
    blank: int = 0,
    token_threshold: float | None = None,
) -> list[list[int]]:
    """Best label sequence per utterance of a (B, T, V) batch; ``mode`` is 'greedy' or 'beam'."""
    if mode == "greedy":
        return ctc_greedy(log_probs, lengths, blank=blank)
    if mode == "beam":
        lengths = lengths.tolist() if isinstance(lengths, torch.Tensor) else list(lengths)
        return [
            ctc_prefix_beam_search(log_probs[b, : int(n)], beam=beam, blank=blank, token_threshold=token_threshold, nbest=1)[0][0]
            for b, n in enumerate(lengths)
        ]
    raise ValueError(f"mode must be 'greedy' or 'beam', got {mode!r}")


@torch.inference_mode()
def transcribe_batch(
    model: torch.nn.Module,
    tokenizer,
    feats: torch.Tensor,
    feat_lengths: torch.Tensor,
    mode: str = "greedy",
    beam: int = 10,
    lm_decoder=None,
) -> list[str]:
    """Texts for one padded fbank batch: model forward, then greedy / beam / beam+LM search.

    ``model`` is a :class:`otalign.models.asr.CTCModel` (put it in eval mode first);
    ``lm_decoder`` an optional :class:`otalign.decode.lm.LMBeamDecoder` (used when given, any mode).
    """
    out = model(feats, feat_lengths)
    lengths = out.out_lengths.tolist()
    if lm_decoder is not None:
        ids = [lm_decoder.decode(out.log_probs[b, :n]) for b, n in enumerate(lengths)]
    else:
        ids = decode_batch(out.log_probs, lengths, mode=mode, beam=beam, blank=tokenizer.blank_id)
    return [tokenizer.decode(seq) for seq in ids]
