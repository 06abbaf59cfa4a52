"""Adapter from acoustic encoder states to the PLM width (training only; never exported)."""

from __future__ import annotations

import torch
from torch import nn


class Adapter(nn.Module):
    """h -> LayerNorm(W h + b) (``hidden=None``) or LayerNorm(W2 GELU(W1 h)) (2-layer MLP).

    Projects (B, T', in_dim) encoder states to (B, T', out_dim) = the PLM width, where the
    transfer loss compares them with PLM token states. The final LayerNorm puts both sides on a
    comparable scale for the cosine cost.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0 or (hidden is not None and hidden <= 0):
            raise ValueError(f"in_dim, out_dim, hidden must be positive, got {in_dim}, {out_dim}, {hidden}")
        if hidden is None:
            self.proj: nn.Module = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
        else:
            self.proj = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
            )
        self.norm = nn.LayerNorm(out_dim)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if states.shape[-1] != self.in_dim:
            raise ValueError(f"states last dim must be {self.in_dim}, got {tuple(states.shape)}")
        return self.norm(self.proj(states))
