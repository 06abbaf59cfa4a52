"""Detection metrics on hand-built plans whose answers are worked out by hand."""

import math

import numpy as np
import pytest
import torch

from otalign.align.metrics import (
    aggregate_metrics,
    batch_metrics,
    frame_intervals,
    span_frame_mask,
    token_frame_mask,
    utterance_metrics,
)

# 12 frames of 40 ms. "hello" owns frames 2-5, "world" frames 8-9.
# Silence on frames 0-1 and 6-7, noise on 10-11.
WORD_SPANS = [(0.08, 0.24), (0.32, 0.40)]
WORD_INDEX = [0, 1, 1]  # tokens: hello | wor ##ld
NONSPEECH = [
    {"kind": "silence", "start": 0.0, "end": 0.08},
    {"kind": "silence", "start": 0.24, "end": 0.32},
    {"kind": "noise", "start": 0.40, "end": 0.48},
]
T = 12


def perfect_plan() -> np.ndarray:
    plan = np.zeros((T, 3))
    plan[2:6, 0] = 1 / 12  # hello spread on its 4 frames
    plan[8, 1] = 1 / 3  # wor on the first frame of world
    plan[9, 2] = 1 / 3  # ##ld on the second
    return plan


def test_frame_intervals_are_40ms_encoder_frames():
    times = frame_intervals(3)
    np.testing.assert_allclose(times, [[0.0, 0.04], [0.04, 0.08], [0.08, 0.12]])


def test_frame_belongs_to_span_when_overlap_is_at_least_half_a_frame():
    mask = span_frame_mask([(0.02, 0.06), (0.03, 0.07), (0.08, 0.24)], num_frames=8)
    assert mask[0].tolist() == [True, True, False, False, False, False, False, False]  # 20 ms each: exactly half
    assert mask[1].tolist() == [False, True, False, False, False, False, False, False]  # 10 ms / 30 ms
    assert np.nonzero(mask[2])[0].tolist() == [2, 3, 4, 5]


def test_span_shorter_than_half_a_frame_gets_the_frame_holding_its_midpoint():
    mask = span_frame_mask([(0.041, 0.05), (0.5, 0.6)], num_frames=4)
    assert np.nonzero(mask[0])[0].tolist() == [1]
    assert not mask[1].any()  # after the last frame: no frame


def test_wordpieces_inherit_their_word_frames():
    mask = token_frame_mask(WORD_INDEX, WORD_SPANS, T)
    assert mask.shape == (T, 3)
    assert np.nonzero(mask[:, 0])[0].tolist() == [2, 3, 4, 5]
    assert np.nonzero(mask[:, 1])[0].tolist() == [8, 9]
    assert (mask[:, 1] == mask[:, 2]).all()


def test_word_index_out_of_range_raises():
    with pytest.raises(ValueError, match="word_index"):
        token_frame_mask([0, 2], WORD_SPANS, T)


def test_perfect_plan_scores_one_everywhere():
    m = utterance_metrics(perfect_plan(), WORD_INDEX, WORD_SPANS, NONSPEECH)
    assert m.precision == pytest.approx(1.0)
    assert m.token_recall == 1.0
    assert m.coverage == 1.0
    assert m.f1 == pytest.approx(1.0)
    assert m.mass_outside_words == 0.0
    assert m.mass_on_nonspeech == 0.0
    # hello: frames 2-5 = [0.08, 0.24) exactly; world's profile covers 8-9 = [0.32, 0.40) exactly
    assert m.boundary_error_ms == pytest.approx(0.0)


def test_precision_is_the_mass_fraction_inside_the_right_spans():
    plan = perfect_plan()
    plan[0, 0] = 0.1  # hello leaks on silence
    plan[10, 2] = 0.2  # ##ld leaks on noise
    plan[3, 1] = 0.1  # wor lands inside hello: a word span, but the wrong one
    m = utterance_metrics(plan, WORD_INDEX, WORD_SPANS, NONSPEECH)
    total = 1.0 + 0.1 + 0.2 + 0.1
    assert m.precision == pytest.approx(1.0 / total)
    assert m.mass_outside_words == pytest.approx(0.3 / total)
    assert m.mass_on_nonspeech == pytest.approx(0.3 / total)
    assert m.mass_on_silence == pytest.approx(0.1 / total)
    assert m.mass_on_noise == pytest.approx(0.2 / total)


def test_token_recall_counts_tokens_whose_peak_frame_is_in_span():
    plan = perfect_plan()
    plan[10, 2] = 0.5  # ##ld now peaks on noise
    m = utterance_metrics(plan, WORD_INDEX, WORD_SPANS, NONSPEECH)
    assert m.token_recall == pytest.approx(2 / 3)
    p = (1.0) / 1.5
    assert m.f1 == pytest.approx(2 * p * (2 / 3) / (p + 2 / 3))


def test_token_without_mass_is_a_miss():
    plan = perfect_plan()
    plan[:, 1] = 0.0
    m = utterance_metrics(plan, WORD_INDEX, WORD_SPANS, NONSPEECH)
    assert m.token_recall == pytest.approx(2 / 3)
    assert m.coverage == pytest.approx(2 / 3)


def test_coverage_needs_x_of_the_token_mass_in_span():
    plan = np.zeros((T, 3))
    plan[2, 0], plan[0, 0] = 0.6, 0.4  # 60 % in span: covered at 0.5, not at 0.7
    plan[8, 1], plan[1, 1] = 0.4, 0.6  # 40 %: peak outside, not covered at 0.5
    plan[9, 2] = 1.0
    at_half = utterance_metrics(plan, WORD_INDEX, WORD_SPANS, NONSPEECH, coverage_level=0.5)
    at_07 = utterance_metrics(plan, WORD_INDEX, WORD_SPANS, NONSPEECH, coverage_level=0.7)
    assert at_half.coverage == pytest.approx(2 / 3)
    assert at_07.coverage == pytest.approx(1 / 3)
    assert at_half.token_recall == pytest.approx(2 / 3)


def test_boundary_error_uses_first_and_last_frame_above_half_maximum():
    plan = np.zeros((T, 3))
    # hello: profile 0.1 on frame 1 (below half max 0.2), peak 0.4 on 3, 0.3 on 6 (above half)
    plan[1, 0], plan[3, 0], plan[6, 0] = 0.1, 0.4, 0.3
    # world: wor on 8 and ##ld on 9 -> the word profile covers frames 8-9 exactly
    plan[8, 1], plan[9, 2] = 0.5, 0.5
    m = utterance_metrics(plan, WORD_INDEX, WORD_SPANS, NONSPEECH)
    # hello predicted [0.12, 0.28) vs [0.08, 0.24): 40 ms at both ends; world: 0 ms
    assert m.start_error_ms == pytest.approx((40 + 0) / 2)
    assert m.end_error_ms == pytest.approx((40 + 0) / 2)
    assert m.boundary_error_ms == pytest.approx(20.0)
    # a lower threshold admits frame 1: hello start error becomes 40 ms (0.04 vs 0.08)
    low = utterance_metrics(plan, WORD_INDEX, WORD_SPANS, NONSPEECH, boundary_threshold=0.2)
    assert low.start_error_ms == pytest.approx((40 + 0) / 2)
    assert low.word_start_errors_ms[0] == pytest.approx(40.0)


def test_plan_rejects_negative_or_nan_entries():
    plan = perfect_plan()
    plan[0, 0] = -1.0
    with pytest.raises(ValueError, match="non-negative"):
        utterance_metrics(plan, WORD_INDEX, WORD_SPANS)
    plan[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        utterance_metrics(plan, WORD_INDEX, WORD_SPANS)


def test_metrics_do_not_depend_on_total_mass():
    a = utterance_metrics(perfect_plan() + 0.001, WORD_INDEX, WORD_SPANS, NONSPEECH)
    b = utterance_metrics(7.0 * (perfect_plan() + 0.001), WORD_INDEX, WORD_SPANS, NONSPEECH)
    assert a.as_dict() == pytest.approx(b.as_dict())


def test_micro_pools_tokens_and_macro_averages_utterances():
    good = utterance_metrics(perfect_plan(), WORD_INDEX, WORD_SPANS, NONSPEECH)  # 3 tokens, P=R=1
    # one-token utterance with all its mass on silence: P = 0, R = 0
    bad_plan = np.zeros((4, 1))
    bad_plan[0, 0] = 1.0
    bad = utterance_metrics(bad_plan, [0], [(0.08, 0.16)], [("silence", 0.0, 0.08)])
    empty = utterance_metrics(np.zeros((5, 0)), [], [], [])
    agg = aggregate_metrics([good, bad, empty])
    assert agg["num_utterances"] == 3
    assert agg["num_empty_utterances"] == 1
    assert agg["num_tokens"] == 4
    assert agg["micro_precision"] == pytest.approx(3 / 4)  # weighted by token count
    assert agg["macro_precision"] == pytest.approx(1 / 2)
    assert agg["micro_token_recall"] == pytest.approx(3 / 4)
    assert agg["macro_token_recall"] == pytest.approx(1 / 2)
    assert agg["micro_mass_on_silence"] == pytest.approx(1 / 4)
    assert agg["micro_f1"] == pytest.approx(3 / 4)


def test_batch_metrics_strip_padding():
    plans = torch.zeros(2, T + 3, 5)
    plans[0, :T, :3] = torch.tensor(perfect_plan())
    plans[0, T:, :] = 9.0  # garbage on padding must be ignored
    plans[1, :4, :1] = torch.tensor([[0.0], [0.0], [1.0], [0.0]])
    frame_mask = torch.zeros(2, T + 3, dtype=torch.bool)
    frame_mask[0, :T] = True
    frame_mask[1, :4] = True
    token_mask = torch.zeros(2, 5, dtype=torch.bool)
    token_mask[0, :3] = True
    token_mask[1, :1] = True
    word_index = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    per_utt, agg = batch_metrics(plans, frame_mask, token_mask, word_index,
                                 [WORD_SPANS, [(0.08, 0.16)]], [NONSPEECH, []])
    assert per_utt[0].precision == pytest.approx(1.0)
    assert per_utt[1].precision == pytest.approx(1.0)
    assert agg["micro_token_recall"] == 1.0


def test_special_tokens_without_a_word_are_left_out():
    plan = np.zeros((T, 5))
    plan[:, 1:4] = perfect_plan()
    plan[0, 0] = plan[11, 4] = 1.0  # [CLS] and [SEP] columns, on silence/noise
    m = utterance_metrics(plan, [-1] + WORD_INDEX + [-1], WORD_SPANS, NONSPEECH)
    assert m.num_tokens == 3
    assert m.precision == pytest.approx(1.0)


def test_plan_entropy_is_one_for_the_uniform_plan_and_zero_for_one_frame_per_token():
    from otalign.align.metrics import token_plan_entropy

    assert token_plan_entropy(np.full((50, 4), 1 / 200)) == pytest.approx(1.0)
    one_hot = np.zeros((50, 4))
    one_hot[[3, 10, 20, 40], range(4)] = 0.25
    assert token_plan_entropy(one_hot) == pytest.approx(0.0)
    half = np.zeros((50, 1))
    half[:25] = 1.0  # spread over half the frames: log 25 / log 50
    assert token_plan_entropy(half) == pytest.approx(np.log(25) / np.log(50))
    words = [(0.0, 2.0)]
    assert utterance_metrics(one_hot[:, :1], [0], words).plan_entropy == pytest.approx(0.0)
