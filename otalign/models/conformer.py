"""Conformer encoder (Gulati et al. 2020) over conv2d-4x-subsampled fbank.

Each block is the macaron sandwich

    x = x + 1/2 FFN(x)
    x = x + MHSA(LN(x))            (key padding mask: padded frames are never attended to)
    x = x + Conv(LN(x))            (pointwise -> GLU -> depthwise k -> LayerNorm -> swish -> pointwise)
    x = x + 1/2 FFN(x)
    x = LN(x)

followed by a final LayerNorm over the stack.

Positional encoding: **absolute sinusoidal** (ESPnet ``abs_pos``), added once after subsampling
and scaled by sqrt(d_model) on the input side. We chose it over relative positional MHSA
(ESPnet/WeNet ``rel_pos``) because it keeps attention a single fused
``scaled_dot_product_attention`` call, which matters for the 2-core CPU budget; the convolution
module already gives every block local relative-position information.

Padding does not leak into valid frames: attention masks padded keys, the depthwise convolution
sees zeros at padded frames (the same zeros its own "same" padding adds after the last frame of
an utterance alone), and the norm is LayerNorm (per frame), not BatchNorm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from otalign.models.subsampling import Conv2dSubsampling4


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class SinusoidalPositionalEncoding(nn.Module):
    """x * sqrt(d) + PE(t), PE(t, 2k) = sin(t / 10000^(2k/d)), PE(t, 2k+1) = cos(...)."""

    def __init__(self, d_model: int, dropout: float, max_len: int = 5000) -> None:
        super().__init__()
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", self._table(max_len), persistent=False)

    def _table(self, max_len: int) -> torch.Tensor:
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, self.d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / self.d_model))
        pe = torch.zeros(max_len, self.d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div[: self.d_model // 2])
        return pe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        if T > self.pe.shape[0]:  # longer than any utterance seen: grow the table
            self.pe = self._table(T).to(self.pe.device)
        return self.dropout(x * math.sqrt(self.d_model) + self.pe[:T].to(x.dtype))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.lin1 = nn.Linear(d_model, ff_dim)
        self.lin2 = nn.Linear(ff_dim, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.lin2(self.dropout(F.silu(self.lin1(self.norm(x))))))


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.attn_dropout = dropout
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_valid[:, None, None, :], dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.dropout(self.out(y.transpose(1, 2).reshape(B, T, D)))


class ConvModule(nn.Module):
    def __init__(self, d_model: int, kernel: int, dropout: float) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd (symmetric 'same' padding), got {kernel}")
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.conv_norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Conv1d(d_model, d_model, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        y = F.glu(self.pointwise_in(self.norm(x).transpose(1, 2)), dim=1)  # (B, D, T)
        y = y.masked_fill(~valid[:, None, :], 0.0)  # padded frames must look like the conv's own zero padding
        y = self.depthwise(y).transpose(1, 2)  # (B, T, D)
        y = F.silu(self.conv_norm(y))
        return self.dropout(self.pointwise_out(y.transpose(1, 2)).transpose(1, 2))


class ConformerBlock(nn.Module):
    def __init__(self, d_model: int, num_heads: int, ff_dim: int, conv_kernel: int, dropout: float) -> None:
        super().__init__()
        self.ff1 = FeedForward(d_model, ff_dim, dropout)
        self.mhsa = MultiHeadSelfAttention(d_model, num_heads, dropout)
        self.conv = ConvModule(d_model, conv_kernel, dropout)
        self.ff2 = FeedForward(d_model, ff_dim, dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        x = x + self.mhsa(x, key_valid)
        x = x + self.conv(x, valid)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x)


class ConformerEncoder(nn.Module):
    """fbank (B, T, input_dim) -> encoder states (B, T', d_model), T' = ((T - 1) // 2 - 1) // 2.

    Args:
        input_dim: fbank bins (80).
        d_model: model width. num_layers: Conformer blocks. num_heads: attention heads.
        ff_dim: hidden width of each macaron FFN. conv_kernel: depthwise kernel (odd).
        dropout: dropout in FFN, attention, conv module and after the positional encoding.
        subsampling_channels: width of the two subsampling convolutions (None = d_model).
    """

    def __init__(
        self,
        input_dim: int = 80,
        d_model: int = 256,
        num_layers: int = 12,
        num_heads: int = 4,
        ff_dim: int = 2048,
        conv_kernel: int = 15,
        dropout: float = 0.1,
        subsampling_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.subsampling = Conv2dSubsampling4(input_dim, d_model, subsampling_channels)
        self.pos_enc = SinusoidalPositionalEncoding(d_model, dropout)
        self.blocks = nn.ModuleList(
            ConformerBlock(d_model, num_heads, ff_dim, conv_kernel, dropout) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(d_model)

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor, layer: int | None = None):
        """Returns (states (B, T', D) with zeros on padding, mask (B, T') bool True = valid), plus,
        when ``layer`` (1-based) is given, the output of that block (the final states for the last)."""
        if feat_lengths.dim() != 1 or feat_lengths.shape[0] != feats.shape[0]:
            raise ValueError(f"feat_lengths must be (B,) = ({feats.shape[0]},), got {tuple(feat_lengths.shape)}")
        # Zero padded fbank frames so that whatever the collate put there cannot reach valid outputs.
        feats = feats.masked_fill(~lengths_to_mask(feat_lengths.to(feats.device), feats.shape[1])[..., None], 0.0)
        x, out_lengths = self.subsampling(feats, feat_lengths)
        valid = lengths_to_mask(out_lengths.to(x.device), x.shape[1])
        # A zero-length utterance would make every attention row all -inf (NaN); let it attend to
        # frame 0 so it stays finite. Its output is masked anyway and CTC flags it as impossible.
        key_valid = valid.clone()
        key_valid[:, 0] = True
        x = self.pos_enc(x)
        tapped = None
        for index, block in enumerate(self.blocks, start=1):
            x = block(x, valid, key_valid)
            if index == layer:
                tapped = x
        x = self.final_norm(x)
        x = x.masked_fill(~valid[..., None], 0.0)
        if layer is None:
            return x, valid
        if not 1 <= layer <= len(self.blocks):
            raise ValueError(f"layer must be in [1, {len(self.blocks)}], got {layer}")
        return x, valid, (x if layer == len(self.blocks) else tapped.masked_fill(~valid[..., None], 0.0))
