"""Cost matrices between acoustic frames (rows) and linguistic tokens (columns)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cosine_cost", "temporal_order_cost"]


def cosine_cost(x: Tensor, y: Tensor, *, min_norm: float = 1e-12) -> Tensor:
    r"""Cosine cost ``C_ij = 1 - cos(x_i, y_j)``, values in [0, 2].

    Args:
        x: (B, T, D) or (T, D) frame vectors.
        y: (B, N, D) or (N, D) token vectors (same leading shape as ``x``).
        min_norm: norms are clamped from below by this, so an all-zero (padding) vector gives
            cos = 0 (cost 1) and a finite gradient instead of 0/0.

    Returns:
        (B, T, N) or (T, N) cost, same dtype as the inputs.
    """
    if x.dim() not in (2, 3) or y.dim() != x.dim():
        raise ValueError(f"x and y must both be (B,T,D)/(B,N,D) or (T,D)/(N,D); got x {tuple(x.shape)}, y {tuple(y.shape)}")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must have the same feature size D; got x {tuple(x.shape)}, y {tuple(y.shape)}")
    if x.dim() == 3 and x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y batch sizes differ: {x.shape[0]} vs {y.shape[0]}")
    # clamp_min after the norm (not an epsilon inside the sqrt) keeps d/dx exact for non-zero x;
    # torch's norm backward is 0 (not NaN) at the zero vector.
    x_unit = x / x.norm(dim=-1, keepdim=True).clamp_min(min_norm)
    y_unit = y / y.norm(dim=-1, keepdim=True).clamp_min(min_norm)
    return 1.0 - x_unit @ y_unit.transpose(-1, -2)


def temporal_order_cost(
    row_mask: Tensor,
    col_mask: Tensor,
    *,
    normalise: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""Temporal-order (TOT) cost: distance of a cell from the diagonal of its own sub-problem.

    With ``T_b``, ``N_b`` the valid lengths of item b and cell-centre positions
    ``p_i = (i + 1/2) / T_b``, ``q_j = (j + 1/2) / N_b`` (both in (0, 1))::

        l_ij = |p_i - q_j|                                     (normalise=False, values in [0, 1))
        l_ij = |p_i - q_j| / sqrt(1/T_b^2 + 1/N_b^2)           (normalise=True: Su & Hua 2017's
                                                                 distance to the diagonal)

    ``solve(..., order_weight=w)`` adds ``w * l`` (the default, un-normalised form) to the cost,
    so neighbouring frames go to neighbouring tokens (TOT-CAKT). The Gaussian prior of Su & Hua is
    the same as a cost term ``l^2 / (2 sigma^2)`` with the normalised ``l``, up to the
    entropic scale: pass ``(temporal_order_cost(..., normalise=True) ** 2) / (2 * sigma**2) * eps``
    added to your cost yourself if you want that form.

    Args:
        row_mask: (B, T) or (T,) bool, True = valid frame. Valid entries must come first
            (a prefix), as produced by padding; positions count valid entries only.
        col_mask: (B, N) or (N,) bool, True = valid token.
        normalise: divide by ``sqrt(1/T_b^2 + 1/N_b^2)`` (see above).
        dtype: output dtype.

    Returns:
        (B, T, N) or (T, N) cost, exactly 0 on padding.
    """
    if row_mask.dtype != torch.bool or col_mask.dtype != torch.bool:
        raise ValueError("row_mask and col_mask must be bool tensors")
    if row_mask.dim() != col_mask.dim() or row_mask.dim() not in (1, 2):
        raise ValueError(f"row_mask and col_mask must both be (B,T)/(B,N) or (T,)/(N,); got {tuple(row_mask.shape)}, {tuple(col_mask.shape)}")
    squeeze = row_mask.dim() == 1
    if squeeze:
        row_mask, col_mask = row_mask[None], col_mask[None]
    if row_mask.shape[0] != col_mask.shape[0]:
        raise ValueError(f"row_mask and col_mask batch sizes differ: {row_mask.shape[0]} vs {col_mask.shape[0]}")
    n_rows = row_mask.sum(-1, keepdim=True).to(dtype).clamp_min(1)  # (B,1)
    n_cols = col_mask.sum(-1, keepdim=True).to(dtype).clamp_min(1)
    # cumsum-1 = index among the valid entries, so masks need not be prefixes for the maths
    row_pos = (row_mask.to(dtype).cumsum(-1) - 0.5) / n_rows  # (B,T)
    col_pos = (col_mask.to(dtype).cumsum(-1) - 0.5) / n_cols  # (B,N)
    order = (row_pos[:, :, None] - col_pos[:, None, :]).abs()
    if normalise:
        order = order / torch.sqrt(n_rows.reciprocal() ** 2 + n_cols.reciprocal() ** 2)[:, :, None]
    order = torch.where(row_mask[:, :, None] & col_mask[:, None, :], order, torch.zeros((), dtype=dtype, device=order.device))
    return order[0] if squeeze else order
