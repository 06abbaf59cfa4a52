"""Shared helpers for the otalign.ot tests: random padded batches and their unpadded slices."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch

INF = float("inf")


@dataclass
class PaddedBatch:
    cost: torch.Tensor  # (B,T,N) with garbage on padding
    row_mask: torch.Tensor
    col_mask: torch.Tensor
    row_lengths: list[int]
    col_lengths: list[int]

    def valid_slice(self, item: int) -> np.ndarray:
        return self.cost[item, : self.row_lengths[item], : self.col_lengths[item]].numpy()


def random_padded_batch(seed: int, batch: int, max_rows: int, max_cols: int, *, dtype=torch.float64, cost_scale: float = 2.0, padding_value: float = float("nan")) -> PaddedBatch:
    """Costs in [0, cost_scale] on valid cells; padded cells hold ``padding_value`` (NaN by
    default, to prove padding never leaks)."""
    rng = np.random.default_rng(seed)
    row_lengths = [int(rng.integers(1, max_rows + 1)) for _ in range(batch)]
    col_lengths = [int(rng.integers(1, max_cols + 1)) for _ in range(batch)]
    row_lengths[0], col_lengths[0] = max_rows, max_cols  # the padded shape is attained
    cost = torch.full((batch, max_rows, max_cols), padding_value, dtype=dtype)
    row_mask = torch.zeros(batch, max_rows, dtype=torch.bool)
    col_mask = torch.zeros(batch, max_cols, dtype=torch.bool)
    for item, (t, n) in enumerate(zip(row_lengths, col_lengths)):
        cost[item, :t, :n] = torch.from_numpy(rng.uniform(0, cost_scale, size=(t, n))).to(dtype)
        row_mask[item, :t] = True
        col_mask[item, :n] = True
    return PaddedBatch(cost, row_mask, col_mask, row_lengths, col_lengths)


@pytest.fixture(autouse=True)
def _quiet_pot():
    # POT warns on reg_type='entropy' (matrix c overwritten): expected, not a problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
