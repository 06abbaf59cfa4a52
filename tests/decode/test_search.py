import itertools
import math

import numpy as np
import pytest
import torch

from otalign.decode.search import ctc_greedy, ctc_prefix_beam_search, decode_batch


def _collapse(path, blank=0):
    out, prev = [], None
    for c in path:
        if c != prev and c != blank:
            out.append(c)
        prev = c
    return tuple(out)


def brute_force(log_probs: np.ndarray) -> dict[tuple, float]:
    """log p(y|x) for every label sequence y, summing over all V^T alignments."""
    T, V = log_probs.shape
    sums: dict[tuple, float] = {}
    for path in itertools.product(range(V), repeat=T):
        lp = sum(log_probs[t, c] for t, c in enumerate(path))
        y = _collapse(path)
        sums[y] = np.logaddexp(sums.get(y, -math.inf), lp)
    return sums


def _random_log_probs(rng, T, V, sharpness=1.0):
    x = rng.standard_normal((T, V)) * sharpness
    return x - np.logaddexp.reduce(x, axis=1, keepdims=True)


def test_greedy_collapses_repeats_and_drops_blanks():
    # best path per frame: a a _ a b b _ (a=1, b=2, blank=0) -> "a a b"
    best = [1, 1, 0, 1, 2, 2, 0]
    lp = torch.full((1, len(best), 3), math.log(0.1))
    for t, c in enumerate(best):
        lp[0, t, c] = math.log(0.8)
    assert ctc_greedy(lp, torch.tensor([7])) == [[1, 1, 2]]
    assert ctc_greedy(lp, torch.tensor([3])) == [[1]]  # frames past the length are ignored
    assert ctc_greedy(lp, torch.tensor([0])) == [[]]


@pytest.mark.parametrize("T,V", [(1, 2), (2, 3), (3, 3), (4, 2), (5, 3)])
def test_beam_search_scores_equal_brute_force_sums(T, V):
    rng = np.random.default_rng(T * 10 + V)
    for _ in range(4):
        lp = _random_log_probs(rng, T, V)
        exact = brute_force(lp)
        nbest = ctc_prefix_beam_search(torch.from_numpy(lp), beam=1000)
        assert len(nbest) == len(exact)  # a big enough beam keeps every reachable prefix
        best_y = max(exact, key=exact.get)
        assert tuple(nbest[0][0]) == best_y
        assert nbest[0][1] == pytest.approx(exact[best_y], abs=1e-9)
        for ids, score in nbest:
            assert score == pytest.approx(exact[tuple(ids)], abs=1e-9)
        # probabilities of all label sequences sum to one
        assert np.logaddexp.reduce([s for _, s in nbest]) == pytest.approx(0.0, abs=1e-9)


def test_beam_10_finds_the_brute_force_best_prefix():
    rng = np.random.default_rng(7)
    for _ in range(10):
        lp = _random_log_probs(rng, 5, 3, sharpness=2.0)
        exact = brute_force(lp)
        best_y = max(exact, key=exact.get)
        ids, score = ctc_prefix_beam_search(lp, beam=10)[0]
        assert tuple(ids) == best_y
        # a pruned beam may have dropped a few alignments of the winner: a lower bound, close
        assert score <= exact[best_y] + 1e-12
        assert score == pytest.approx(exact[best_y], abs=1e-3)


def test_beam_top1_equals_greedy_when_peaked():
    rng = np.random.default_rng(3)
    T, V = 60, 29
    path = rng.integers(0, V, T)
    x = rng.standard_normal((T, V))
    x[np.arange(T), path] += 12.0  # one label holds > 99.9% of each frame
    lp = torch.from_numpy(x - np.logaddexp.reduce(x, axis=1, keepdims=True)).float()
    greedy = ctc_greedy(lp[None], torch.tensor([T]))[0]
    assert ctc_prefix_beam_search(lp, beam=10)[0][0] == greedy
    assert decode_batch(lp[None], [T], mode="beam", beam=10) == [greedy]
    assert decode_batch(lp[None], [T], mode="greedy") == [greedy]


def test_beam_search_can_beat_greedy_by_summing_alignments():
    # Classic case: best path is blank,blank (empty) with p=0.36, but "a" has 1 - 0.36 - p(aa-free)...
    # frames: p(blank)=0.6, p(a)=0.4 each. Empty: 0.36. "a": aa, a_, _a = 0.16+0.24+0.24 = 0.64.
    lp = torch.log(torch.tensor([[0.6, 0.4], [0.6, 0.4]]))
    assert ctc_greedy(lp[None], None) == [[]]
    ids, score = ctc_prefix_beam_search(lp, beam=10)[0]
    assert ids == [1] and score == pytest.approx(math.log(0.64))


def test_token_threshold_prunes_but_keeps_peaked_result():
    rng = np.random.default_rng(5)
    T, V = 40, 29
    x = rng.standard_normal((T, V))
    x[np.arange(T), rng.integers(0, V, T)] += 10.0
    lp = x - np.logaddexp.reduce(x, axis=1, keepdims=True)
    exact = ctc_prefix_beam_search(lp, beam=10)[0][0]
    assert ctc_prefix_beam_search(lp, beam=10, token_threshold=math.log(1e-3))[0][0] == exact


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="log_probs"):
        ctc_prefix_beam_search(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="beam"):
        ctc_prefix_beam_search(np.zeros((2, 3)), beam=0)
    with pytest.raises(ValueError, match="mode"):
        decode_batch(torch.zeros(1, 2, 3), [2], mode="viterbi")


def test_transcribe_batch_matches_greedy_on_the_model_output():
    from otalign.models.asr import CTCModel
    from otalign.text.tokenizer import CharTokenizer

    from otalign.decode.search import transcribe_batch

    torch.manual_seed(0)
    tok = CharTokenizer()
    model = CTCModel(tok.vocab_size, "tiny", num_layers=1).eval()
    feats, lengths = torch.randn(2, 120, 80), torch.tensor([120, 80])
    texts = transcribe_batch(model, tok, feats, lengths)
    with torch.no_grad():
        out = model(feats, lengths)
    assert texts == [tok.decode(ids) for ids in ctc_greedy(out.log_probs, out.out_lengths)]
    assert len(transcribe_batch(model, tok, feats, lengths, mode="beam", beam=4)) == 2
