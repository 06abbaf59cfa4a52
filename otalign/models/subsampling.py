"""Conv2d 4x subsampling (ESPnet/WeNet ``Conv2dSubsampling4``) and the encoder frame clock.

fbank frames have a 10 ms hop. Two 3x3 convolutions with stride 2 and no padding give

    T' = ((T - 1) // 2 - 1) // 2

encoder frames, and encoder frame i covers [4 i hop, 4 (i + 1) hop) = [0.04 i, 0.04 (i+1)) s.
(Its receptive field is 7 fbank frames starting at 4 i; we use the stride grid as the clock, as
the architecture contract does, so frame times tile the utterance without overlap.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def subsampled_lengths(lengths: torch.Tensor | int) -> torch.Tensor | int:
    """Encoder frames for ``lengths`` fbank frames: ``((lengths - 1) // 2 - 1) // 2``, floored at 0."""
    if isinstance(lengths, torch.Tensor):
        return torch.clamp(((lengths - 1) // 2 - 1) // 2, min=0)
    return max(0, ((int(lengths) - 1) // 2 - 1) // 2)


def encoder_frame_times(num_frames: int, hop_s: float = 0.01, factor: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(start_s, end_s) of each of ``num_frames`` encoder frames: frame i covers [f h i, f h (i+1))."""
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    step = hop_s * factor
    start_s = np.arange(num_frames, dtype=np.float64) * step
    return start_s, start_s + step


class Conv2dSubsampling4(nn.Module):
    """(B, T, in_dim) fbank -> (B, T', d_model): two Conv2d(k=3, s=2) + ReLU, then a Linear.

    ``channels`` is the convolutions' width; ``None`` = ``d_model`` as in ESPnet/WeNet. The second
    convolution costs channels^2 * 9 multiply-adds per output cell, which dominates a small
    encoder's time on CPU (about 70% of a tiny-model training step at 144 channels), so the tiny
    preset uses fewer channels.
    """

    def __init__(self, in_dim: int = 80, d_model: int = 256, channels: int | None = None) -> None:
        super().__init__()
        if in_dim < 7:
            raise ValueError(f"in_dim must be >= 7 for two stride-2 3x3 convolutions, got {in_dim}")
        channels = d_model if channels is None else channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2),
            nn.ReLU(),
        )
        freq_out = ((in_dim - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq_out, d_model)
        self.in_dim = in_dim
        self.d_model = d_model

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (x (B, T', d_model), out_lengths (B,)).

        Padded fbank frames must be zero (the collate convention) for the conv outputs at valid
        positions to be independent of padding: with no conv padding, output frame i reads input
        frames 4i..4i+6 only, all of which are valid when i < T'.
        """
        if feats.dim() != 3 or feats.shape[-1] != self.in_dim:
            raise ValueError(f"feats must be (B, T, {self.in_dim}), got {tuple(feats.shape)}")
        if feats.shape[1] < 7:
            raise ValueError(f"feats has {feats.shape[1]} frames; at least 7 are needed for 4x subsampling")
        x = self.conv(feats.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        return x, subsampled_lengths(feat_lengths)
