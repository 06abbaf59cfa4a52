import numpy as np
import pytest
import torch

from otalign.models.subsampling import Conv2dSubsampling4, encoder_frame_times, subsampled_lengths


def test_subsampled_lengths_equal_the_real_conv_output_lengths():
    sub = Conv2dSubsampling4(80, 8).eval()
    for T in list(range(7, 60)) + [99, 100, 101, 102, 103, 997, 1000]:
        x, lengths = sub(torch.randn(1, T, 80), torch.tensor([T]))
        assert x.shape[1] == subsampled_lengths(T) == int(lengths[0]), T


def test_subsampled_lengths_tensor_and_int_agree_and_floor_at_zero():
    T = torch.arange(0, 50)
    assert subsampled_lengths(T).tolist() == [subsampled_lengths(int(t)) for t in T]
    assert subsampled_lengths(3) == 0 and subsampled_lengths(7) == 1 and subsampled_lengths(11) == 2


def test_too_short_input_is_rejected():
    with pytest.raises(ValueError, match="at least 7"):
        Conv2dSubsampling4(80, 8)(torch.randn(1, 6, 80), torch.tensor([6]))


def test_encoder_frame_i_covers_forty_ms_from_0_04_i():
    start_s, end_s = encoder_frame_times(5)
    np.testing.assert_allclose(start_s, [0.0, 0.04, 0.08, 0.12, 0.16])
    np.testing.assert_allclose(end_s, [0.04, 0.08, 0.12, 0.16, 0.20])
    np.testing.assert_allclose(end_s[:-1], start_s[1:])


def test_narrow_subsampling_channels_keep_lengths_and_width():
    sub = Conv2dSubsampling4(80, 144, channels=32).eval()
    x, lengths = sub(torch.randn(2, 101, 80), torch.tensor([101, 60]))
    assert x.shape == (2, 24, 144) and lengths.tolist() == [24, 14]
    assert sub.conv[0].out_channels == 32 and sub.out.in_features == 32 * 19
