"""Cost builders: cosine and temporal-order."""
from __future__ import annotations

import math

import torch

from otalign.ot import cosine_cost, temporal_order_cost


def test_cosine_cost_is_one_minus_cosine_and_in_range():
    torch.manual_seed(0)
    x, y = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    cost = cosine_cost(x, y)
    expected = 1 - torch.nn.functional.cosine_similarity(x[:, :, None, :], y[:, None, :, :], dim=-1)
    torch.testing.assert_close(cost, expected)
    assert cost.shape == (2, 5, 3) and bool((cost >= 0).all()) and bool((cost <= 2 + 1e-12).all())


def test_cosine_cost_of_zero_padding_vectors_has_finite_gradient():
    x = torch.randn(1, 4, 6, dtype=torch.float64)
    x[0, 3] = 0
    x.requires_grad_(True)
    y = torch.randn(1, 2, 6, dtype=torch.float64)
    (grad,) = torch.autograd.grad(cosine_cost(x, y).sum(), x)
    assert bool(torch.isfinite(grad).all())


def test_temporal_order_cost_uses_each_items_valid_lengths():
    row_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    col_mask = torch.tensor([[True, True], [True, False]])
    order = temporal_order_cost(row_mask, col_mask, dtype=torch.float64)
    rows = (torch.arange(4) + 0.5) / 4
    cols = (torch.arange(2) + 0.5) / 2
    torch.testing.assert_close(order[0], (rows[:, None] - cols[None, :]).abs().double())
    torch.testing.assert_close(order[1, :2, 0], torch.tensor([0.25, 0.25], dtype=torch.float64))
    assert bool((order[1, 2:] == 0).all()) and bool((order[1, :, 1] == 0).all())
    normalised = temporal_order_cost(row_mask, col_mask, normalise=True, dtype=torch.float64)
    torch.testing.assert_close(normalised[0], order[0] / math.sqrt(1 / 16 + 1 / 4))
