"""POT 0.9.7 is the oracle. Each valid sub-problem of a randomised padded batch is compared with
POT run on the unpadded slice, in fp64, to <= 1e-6.

POT's ``sinkhorn_unbalanced(method='sinkhorn')`` accepts ``reg_m = inf`` (its exponent
``fi = reg_m / (reg_m + reg)`` becomes 1), so infinite rho values are compared directly, and it
updates rows first from ``u = v = 1`` like ours: plans agree iterate for iterate, which is why
the unbalanced comparisons use a fixed iteration count (``stopThr=0``). ``ot.sinkhorn`` updates
columns first, so the balanced comparison runs both to convergence.
"""
from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from otalign.ot import solve

from .conftest import INF, random_padded_batch

RHO = st.one_of(st.just(INF), st.floats(1e-3, 1e3).map(lambda x: float(f"{x:.3g}")))
TOLERANCE = 1e-6


def _pot_unbalanced(a, b, cost, eps, rho_rows, rho_cols, reference, n_iter):
    plan, log = ot.unbalanced.sinkhorn_unbalanced(
        a, b, cost, reg=eps, reg_m=(rho_rows, rho_cols), reg_type="kl" if reference == "product" else "entropy",
        method="sinkhorn", numItermax=n_iter, stopThr=0.0, log=True,
    )
    return plan, log


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 7)),
    eps=st.sampled_from([0.05, 0.1, 0.3, 1.0]),
    rho_rows=RHO,
    rho_cols=RHO,
    reference=st.sampled_from(["product", "ones"]),
    custom_weights=st.booleans(),
)
def test_unbalanced_matches_pot_on_each_padded_item(seed, shape, eps, rho_rows, rho_cols, reference, custom_weights):
    batch, max_rows, max_cols = shape
    data = random_padded_batch(seed, batch, max_rows, max_cols)
    rng = np.random.default_rng(seed + 1)
    row_weights = col_weights = None
    if custom_weights:  # unnormalised positive weights; padding gets garbage that must be ignored
        row_weights = torch.from_numpy(rng.uniform(0.2, 1.5, size=(batch, max_rows)))
        col_weights = torch.from_numpy(rng.uniform(0.2, 1.5, size=(batch, max_cols)))
    n_iter = 30
    options = dict(eps=eps, rho_rows=rho_rows, rho_cols=rho_cols, reference=reference, max_iter=n_iter)
    if custom_weights and rho_rows == INF and rho_cols == INF:
        # unequal masses have no balanced plan: refused, unless asked to normalise
        with pytest.raises(ValueError, match="normalize"):
            solve(data.cost, data.row_mask, data.col_mask, row_weights, col_weights, **options)
        return
    res = solve(data.cost, data.row_mask, data.col_mask, row_weights, col_weights, **options)
    assert res.n_iter == n_iter
    for item in range(batch):
        t, n = data.row_lengths[item], data.col_lengths[item]
        a = np.full(t, 1.0 / t) if row_weights is None else row_weights[item, :t].numpy()
        b = np.full(n, 1.0 / n) if col_weights is None else col_weights[item, :n].numpy()
        plan, log = _pot_unbalanced(a, b, data.valid_slice(item), eps, rho_rows, rho_cols, reference, n_iter)
        np.testing.assert_allclose(res.plan[item, :t, :n].numpy(), plan, atol=TOLERANCE, rtol=0)
        # potentials are translated along (f + t, g - t) after the loop, which POT does not do:
        # compare the translation-invariant sums f_i + g_j
        ours = res.row_potential[item, :t, None] + res.col_potential[item, None, :n]
        np.testing.assert_allclose(ours.numpy(), eps * (log["logu"][:, None] + log["logv"][None, :]), atol=TOLERANCE, rtol=0)
        assert (res.plan[item, t:, :] == 0).all() and (res.plan[item, :, n:] == 0).all()


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 7)),
    eps=st.sampled_from([0.25, 0.5, 1.0]),
    reference=st.sampled_from(["product", "ones"]),
)
def test_balanced_matches_pot_sinkhorn_at_convergence(seed, shape, eps, reference):
    """Costs in [0, 1] and eps >= 0.25 keep Sinkhorn's contraction rate (tanh(max C / 2 eps)
    <= 0.97 per iteration, Franklin & Lorenz) fast enough to converge to 1e-12: near-permutation
    plans (small eps) converge sublinearly and would test patience, not correctness."""
    batch, max_rows, max_cols = shape
    data = random_padded_batch(seed, batch, max_rows, max_cols, cost_scale=1.0)
    res = solve(data.cost, data.row_mask, data.col_mask, eps=eps, reference=reference, max_iter=5000, tol=1e-12)
    assert bool(res.converged.all())
    for item in range(batch):
        t, n = data.row_lengths[item], data.col_lengths[item]
        plan = ot.sinkhorn(np.full(t, 1.0 / t), np.full(n, 1.0 / n), data.valid_slice(item), eps, numItermax=20000, stopThr=1e-14)
        np.testing.assert_allclose(res.plan[item, :t, :n].numpy(), plan, atol=TOLERANCE, rtol=0)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 7)),
    eps=st.sampled_from([0.05, 0.1, 0.5]),
    mass_fraction=st.floats(0.05, 1.0),
    reference=st.sampled_from(["product", "ones"]),
)
def test_partial_matches_pot_entropic_partial_wasserstein(seed, shape, eps, mass_fraction, reference):
    """POT's partial OT regularises with sum P log P (R = 1); with R = a ⊗ b the same plan is
    POT's on the cost ``C - eps log(a_i b_j)`` (the mass terms are constant once sum P = m)."""
    batch, max_rows, max_cols = shape
    data = random_padded_batch(seed, batch, max_rows, max_cols)
    n_iter = 40
    mass = float(f"{mass_fraction:.3f}")
    res = solve(data.cost, data.row_mask, data.col_mask, eps=eps, partial_mass=mass, reference=reference, max_iter=n_iter)
    for item in range(batch):
        t, n = data.row_lengths[item], data.col_lengths[item]
        a, b = np.full(t, 1.0 / t), np.full(n, 1.0 / n)
        cost = data.valid_slice(item)
        if reference == "product":
            cost = cost - eps * np.log(a[:, None] * b[None, :])
        pot_mass = min(mass, a.sum(), b.sum())  # sum(np.full(6, 1/6)) < 1 by one ulp; POT rejects m = 1
        plan = ot.partial.entropic_partial_wasserstein(a, b, cost, reg=eps, m=pot_mass, numItermax=n_iter)
        np.testing.assert_allclose(res.plan[item, :t, :n].numpy(), plan, atol=TOLERANCE, rtol=0)
        assert res.transported_mass[item].item() == pytest.approx(mass, abs=1e-9)


@pytest.mark.parametrize("rho_rows", [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3])
def test_semi_relaxed_matches_pot_across_rho_rows(rho_rows):
    data = random_padded_batch(7, 3, 12, 5)
    res = solve(data.cost, data.row_mask, data.col_mask, eps=0.1, rho_rows=rho_rows, max_iter=200)
    for item in range(3):
        t, n = data.row_lengths[item], data.col_lengths[item]
        plan, _ = _pot_unbalanced(np.full(t, 1 / t), np.full(n, 1 / n), data.valid_slice(item), 0.1, rho_rows, INF, "product", 200)
        np.testing.assert_allclose(res.plan[item, :t, :n].numpy(), plan, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("rho", [(INF, INF), (0.5, INF), (0.3, 2.0)])
@pytest.mark.parametrize("reference", ["product", "ones"])
def test_value_is_the_objective_of_pots_plan_at_convergence(rho, reference):
    """The dual value equals the primal objective (generalised KL) of POT's converged plan.
    (POT's own ``log['total_cost']`` omits the KL mass terms, so we evaluate the objective here.)"""
    rho_rows, rho_cols = rho
    data = random_padded_batch(3, 2, 8, 5)
    eps = 0.2
    res = solve(data.cost, data.row_mask, data.col_mask, eps=eps, rho_rows=rho_rows, rho_cols=rho_cols, reference=reference, max_iter=3000, tol=1e-13)
    for item in range(2):
        t, n = data.row_lengths[item], data.col_lengths[item]
        a, b, cost = np.full(t, 1 / t), np.full(n, 1 / n), data.valid_slice(item)
        plan, _ = _pot_unbalanced(a, b, cost, eps, rho_rows, rho_cols, reference, 3000)

        def kl(p, q):
            return float(np.sum(p * np.log(p / q) - p + q))

        ref = np.outer(a, b) if reference == "product" else np.ones_like(plan)
        objective = float(np.sum(cost * plan)) + eps * kl(plan, ref)
        if math.isfinite(rho_rows):
            objective += rho_rows * kl(plan.sum(1), a)
        if math.isfinite(rho_cols):
            objective += rho_cols * kl(plan.sum(0), b)
        assert res.value[item].item() == pytest.approx(objective, abs=1e-8)
        assert res.primal_value[item].item() == pytest.approx(objective, abs=1e-8)
