"""Optional character n-gram LM for CTC beam search, through flashlight-text's KenLM decoder.

Needs ``flashlight-text`` (pip, wheel with KenLM built in; it does not touch numpy). Nothing here
needs KenLM's ``lmplz``: :func:`train_char_ngram_arpa` writes the ARPA file itself.

The LM is over the CTC output units (characters, with the word separator ``"|"`` as a unit), so
decoding stays open-vocabulary: no lexicon, flashlight's ``LexiconFreeDecoder``. The model is a
backoff n-gram with absolute discounting (Ney et al. 1994), written in ARPA form:

    p(w | h) = (c(h w) - D) / c(h)                      if c(h w) > 0
             = alpha(h) * p(w | h')                     otherwise (h' = h without its first unit)
    alpha(h) = (1 - sum_{w: c(h w)>0} (c(h w) - D)/c(h)) / (1 - sum_{w: c(h w)>0} p(w | h'))
    p(w)     = (c(w) + 1) / (N + |V| + 1)              (add-one unigrams; <unk> gets 1/(N+|V|+1))

Sentences are ``<s> c_1 ... c_n </s>``; the ARPA stores log10 probabilities and backoffs.
Decoding scores ``ln p_ctc(y|x) + lm_weight * log10 p_lm(y) + sil_score * (#separators)``
(flashlight adds KenLM's log10 scores to the natural-log emissions as they are).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from otalign.text.tokenizer import WORD_SEPARATOR, CharTokenizer

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def _sentences(texts: Iterable[str], tokenizer: CharTokenizer) -> list[list[str]]:
    out = []
    for t in texts:
        ids = tokenizer.encode(t)
        if ids:
            out.append([BOS] + [tokenizer.symbols[i] for i in ids] + [EOS])
    return out


def train_char_ngram_arpa(
    texts: Iterable[str],
    path: str | os.PathLike,
    tokenizer: CharTokenizer | None = None,
    order: int = 5,
    discount: float = 0.5,
) -> Path:
    """Write a backoff character n-gram (see the module docstring) to ``path`` in ARPA format."""
    tokenizer = tokenizer or CharTokenizer()
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if not 0 < discount < 1:
        raise ValueError(f"discount must be in (0, 1), got {discount}")
    sents = _sentences(texts, tokenizer)
    if not sents:
        raise ValueError("texts has no non-empty sentence to train the LM on")

    # counts[k][(h..., w)] for n-grams of length k+1; <s> is only ever a history.
    counts: list[dict[tuple[str, ...], int]] = [defaultdict(int) for _ in range(order)]
    for s in sents:
        for i in range(1, len(s)):
            for k in range(order):
                if i - k < 0:
                    break
                counts[k][tuple(s[i - k : i + 1])] += 1

    vocab = [sym for sym in tokenizer.symbols[1:]] + [EOS]
    N = sum(counts[0].values())
    uni_den = N + len(vocab) + 1
    prob: list[dict[tuple[str, ...], float]] = [dict() for _ in range(order)]
    backoff: list[dict[tuple[str, ...], float]] = [dict() for _ in range(order)]
    for w in vocab:
        prob[0][(w,)] = (counts[0].get((w,), 0) + 1) / uni_den
    prob[0][(UNK,)] = 1 / uni_den

    def p_bo(ngram: tuple[str, ...]) -> float:
        """Backed-off probability of the last unit of ``ngram`` given the rest."""
        k = len(ngram) - 1
        if k == 0:
            return prob[0].get(ngram, prob[0][(UNK,)])
        if ngram in prob[k]:
            return prob[k][ngram]
        return backoff[k - 1].get(ngram[:-1], 1.0) * p_bo(ngram[1:])

    for k in range(1, order):
        by_history: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
        for ng, c in counts[k].items():
            by_history[ng[:-1]].append((ng[-1], c))
        for h, followers in by_history.items():
            c_h = sum(c for _, c in followers)
            seen_mass = 0.0
            lower_mass = 0.0
            for w, c in followers:
                prob[k][h + (w,)] = (c - discount) / c_h
                seen_mass += (c - discount) / c_h
                lower_mass += p_bo(h[1:] + (w,))
            backoff[k - 1][h] = (1.0 - seen_mass) / max(1.0 - lower_mass, 1e-12)

    lines = ["", "\\data\\"]
    entries: list[list[str]] = []
    for k in range(order):
        rows = []
        items = sorted(prob[k].items())
        if k == 0:
            items = [((BOS,), None)] + items  # <s> is never predicted: log10 p = -99
        for ng, p in items:
            logp = -99.0 if p is None else math.log10(p)
            row = f"{logp:.6f}\t{' '.join(ng)}"
            if k < order - 1 and ng in backoff[k]:
                row += f"\t{math.log10(max(backoff[k][ng], 1e-99)):.6f}"
            rows.append(row)
        entries.append(rows)
        lines.append(f"ngram {k + 1}={len(rows)}")
    for k, rows in enumerate(entries):
        lines += ["", f"\\{k + 1}-grams:"] + rows
    lines += ["", "\\end\\", ""]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out


class LMBeamDecoder:
    """CTC beam search with a character n-gram LM (flashlight-text ``LexiconFreeDecoder`` + KenLM).

    Args:
        tokenizer: the CTC model's :class:`CharTokenizer` (unit ids = decoder token ids).
        arpa_path: the LM (from :func:`train_char_ngram_arpa`, or any KenLM ARPA/binary whose units
            are the tokenizer's symbols).
        lm_weight: weight of KenLM's log10 p_lm. sil_score: bonus per word separator.
        beam: hypotheses kept. beam_size_token: units tried per frame (default: all).
        beam_threshold: drop hypotheses this far (nats) below the best.
    """

    def __init__(
        self,
        tokenizer: CharTokenizer,
        arpa_path: str | os.PathLike,
        lm_weight: float = 0.5,
        sil_score: float = 0.0,
        beam: int = 10,
        beam_size_token: int | None = None,
        beam_threshold: float = 25.0,
    ) -> None:
        try:
            from flashlight.lib.text.decoder import CriterionType, LexiconFreeDecoder, LexiconFreeDecoderOptions
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import Dictionary
        except ImportError as e:
            raise ValueError("n-gram LM decoding needs flashlight-text: pip install flashlight-text==0.0.7") from e
        if not Path(arpa_path).is_file():
            raise ValueError(f"LM file {arpa_path} does not exist")
        if WORD_SEPARATOR not in tokenizer.symbols:
            raise ValueError(f"the tokenizer has no word separator {WORD_SEPARATOR!r}")
        self.tokenizer = tokenizer
        self.blank = tokenizer.blank_id
        self.dictionary = Dictionary(list(tokenizer.symbols))
        self.lm = KenLM(str(arpa_path), self.dictionary)
        V = tokenizer.vocab_size
        opts = LexiconFreeDecoderOptions(
            beam_size=beam,
            beam_size_token=beam_size_token or V,
            beam_threshold=beam_threshold,
            lm_weight=lm_weight,
            sil_score=sil_score,
            log_add=False,
            criterion_type=CriterionType.CTC,
        )
        self.decoder = LexiconFreeDecoder(opts, self.lm, tokenizer.symbols.index(WORD_SEPARATOR), self.blank, [])

    def decode(self, log_probs: torch.Tensor | np.ndarray) -> list[int]:
        """Best unit sequence for one utterance's (T, V) log-probabilities (valid frames only)."""
        em = torch.as_tensor(log_probs, dtype=torch.float32).detach().cpu().contiguous()
        if em.dim() != 2 or em.shape[1] != self.tokenizer.vocab_size:
            raise ValueError(f"log_probs must be (T, {self.tokenizer.vocab_size}), got {tuple(em.shape)}")
        T, V = em.shape
        if T == 0:
            return []
        results = self.decoder.decode(em.data_ptr(), T, V)
        tokens = [t for t in results[0].tokens if t >= 0]
        out, prev = [], None
        for t in tokens:  # flashlight returns the frame-level path: collapse it the CTC way
            if t != prev and t != self.blank:
                out.append(int(t))
            prev = t
        # the separator at either end carries no text
        while out and self.tokenizer.symbols[out[0]] == WORD_SEPARATOR:
            out.pop(0)
        while out and self.tokenizer.symbols[out[-1]] == WORD_SEPARATOR:
            out.pop()
        return out
