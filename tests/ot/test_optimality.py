"""Optimality certificates, not only agreement with POT (POT's ``sinkhorn`` and
``sinkhorn_stabilized`` are wrong in places): at a reported convergence the KKT residual and the
duality gap are zero, the value is exact, and partial OT's ``converged`` means optimal."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from otalign.ot import cosine_cost, solve

from .conftest import INF, random_padded_batch

RHO = st.sampled_from([INF, 0.05, 0.3, 3.0])


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    positive = p > 0
    return float((p[positive] * np.log(p[positive] / q[positive])).sum() - p.sum() + q.sum())


def _primal(plan, cost, a, b, eps, rho_rows, rho_cols, reference) -> float:
    """The objective, written independently of the solver, on one unpadded item."""
    reference_measure = np.outer(a, b) if reference == "product" else np.ones_like(plan)
    value = float((cost * plan).sum()) + eps * _kl(plan, reference_measure)
    if math.isfinite(rho_rows):
        value += rho_rows * _kl(plan.sum(1), a)
    if math.isfinite(rho_cols):
        value += rho_cols * _kl(plan.sum(0), b)
    return value


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 8)),
    eps=st.sampled_from([0.05, 0.1, 0.5]),
    rho_rows=RHO,
    rho_cols=RHO,
    reference=st.sampled_from(["product", "ones"]),
)
def test_converged_unbalanced_items_carry_a_certificate(seed, shape, eps, rho_rows, rho_cols, reference):
    data = random_padded_batch(seed, *shape)
    res = solve(data.cost, data.row_mask, data.col_mask, eps=eps, rho_rows=rho_rows, rho_cols=rho_cols, reference=reference, max_iter=5000, tol=1e-11)
    for item in np.flatnonzero(res.converged.numpy()):
        t, n = data.row_lengths[item], data.col_lengths[item]
        plan = res.plan[item, :t, :n].numpy()
        f, g = res.row_potential[item, :t].numpy(), res.col_potential[item, :n].numpy()
        a, b = np.full(t, 1 / t), np.full(n, 1 / n)
        cost = data.valid_slice(item)
        # KKT: stationarity (the plan's Gibbs form) and the relaxed marginals' first-order conditions
        reference_measure = np.outer(a, b) if reference == "product" else np.ones((t, n))
        np.testing.assert_allclose(plan, reference_measure * np.exp((f[:, None] + g[None, :] - cost) / eps), rtol=1e-9, atol=1e-14)
        row_target = a if rho_rows == INF else a * np.exp(-f / rho_rows)
        col_target = b if rho_cols == INF else b * np.exp(-g / rho_cols)
        kkt = np.abs(plan.sum(1) - row_target).sum() + np.abs(plan.sum(0) - col_target).sum()
        assert kkt <= 1e-10
        # duality gap: the primal objective of the plan against the dual value the solver reports
        gap = _primal(plan, cost, a, b, eps, rho_rows, rho_cols, reference) - float(res.value[item])
        assert abs(gap) <= 1e-8 * max(1.0, abs(float(res.value[item]))), gap


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 3), st.integers(2, 14), st.integers(2, 9)),
    eps=st.sampled_from([0.05, 0.1, 0.3]),
    mass_fraction=st.floats(0.2, 0.95),
)
@pytest.mark.slow
def test_converged_partial_items_carry_a_certificate(seed, shape, eps, mass_fraction):
    data = random_padded_batch(seed, *shape)
    res = solve(data.cost, data.row_mask, data.col_mask, eps=eps, partial_mass=mass_fraction, max_iter=20000, tol=1e-11)
    for item in np.flatnonzero(res.converged.numpy()):
        t, n = data.row_lengths[item], data.col_lengths[item]
        plan = res.plan[item, :t, :n].numpy()
        a, b = np.full(t, 1 / t), np.full(n, 1 / n)
        row_marginal, col_marginal = plan.sum(1), plan.sum(0)
        # feasibility
        assert (row_marginal <= a + 1e-10).all() and (col_marginal <= b + 1e-10).all()
        assert abs(plan.sum() - mass_fraction) <= 1e-10
        # optimality: the capacity multipliers are <= 0 and vanish on slack rows/columns, so the
        # plan is the Gibbs kernel scaled by min(1, ...) exactly; equivalently the complementary-
        # slackness gap <P1 - a, x> + <P^T1 - b, y> is 0. Recover x, y from the plan itself.
        reference_measure = np.outer(a, b)
        log_ratio = np.log(plan / reference_measure) + data.valid_slice(item) / eps  # = x_i + y_j + z
        x = log_ratio[:, 0] - log_ratio[0, 0]  # up to a constant per side; fix the constants below
        y = log_ratio[0, :] - log_ratio[0, 0]
        np.testing.assert_allclose(log_ratio, log_ratio[0, 0] + x[:, None] + y[None, :], atol=1e-8)
        # each side's multipliers are determined up to a shift; the right shift makes the largest 0
        x, y = x - x.max(), y - y.max()
        slack_rows, slack_cols = a - row_marginal, b - col_marginal
        assert np.abs(slack_rows * x).sum() <= 1e-8 and np.abs(slack_cols * y).sum() <= 1e-8


@pytest.mark.slow
def test_partial_converged_means_optimal_not_only_feasible():
    """The audit's failure: feasibility residual 2e-15 while the plan was 1e-4 from the optimum.
    With the optimality residual (default tol 1e-6 in fp64, in units of mass), every item called
    converged is within 1e-6 of the optimum in every cell."""
    far = 0
    for seed in range(4):
        cost = torch.rand(2, 60, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2
        for eps, mass in ((0.02, 0.5), (0.05, 0.3), (0.05, 0.9)):
            optimum = solve(cost, eps=eps, partial_mass=mass, max_iter=100000, tol=1e-13)
            if not bool(optimum.converged.all()):
                continue
            for iterations in (5, 20, 100, 400):
                res = solve(cost, eps=eps, partial_mass=mass, max_iter=iterations)
                distance = (res.plan - optimum.plan).abs().amax((1, 2))
                far += int((res.converged & (distance > 1e-6)).sum())
                assert bool(((distance > 1e-5) <= ~res.converged).all())  # far from it => not converged
    assert far == 0


def test_unbalanced_value_and_convergence_track_the_plan():
    """Issue 16's target at the operating point (eps 0.05, rho 3): ``converged`` is True once the
    plan is within 1e-8, and never while the value is off by more than 1e-6."""
    torch.manual_seed(0)
    cost = cosine_cost(torch.randn(8, 120, 16, dtype=torch.float64), torch.randn(8, 20, 16, dtype=torch.float64))
    for rho in (0.03, 0.3, 3.0):
        optimum = solve(cost, eps=0.05, rho_rows=rho, max_iter=5000)
        for iterations in (10, 20, 30, 45, 60, 100, 200):
            res = solve(cost, eps=0.05, rho_rows=rho, max_iter=iterations)
            plan_error = (res.plan - optimum.plan).abs().amax((1, 2))
            value_error = (res.value - optimum.value).abs()
            assert bool((res.converged | (plan_error > 1e-8)).all()), (rho, iterations, res.error)
            assert bool((~res.converged | (value_error <= 1e-6)).all()), (rho, iterations, value_error)
            # the value is as exact as the plan, not as the slow drift of the potentials
            assert bool((value_error <= 10 * plan_error + 1e-12).all()), (rho, iterations)


def test_unnormalised_weights_give_the_exact_value():
    """The audit saw the value off by 330 with an exact plan (weights summing to ~100)."""
    generator = torch.Generator().manual_seed(0)
    cost = torch.rand(2, 30, 8, dtype=torch.float64, generator=generator)
    row_weights = torch.rand(2, 30, dtype=torch.float64, generator=generator) * 7
    col_weights = torch.rand(2, 8, dtype=torch.float64, generator=generator) * 20
    short = solve(cost, None, None, row_weights, col_weights, eps=0.05, rho_rows=3.0, max_iter=200)
    optimum = solve(cost, None, None, row_weights, col_weights, eps=0.05, rho_rows=3.0, max_iter=20000, tol=1e-12)
    torch.testing.assert_close(short.plan, optimum.plan, atol=1e-9, rtol=0)
    torch.testing.assert_close(short.value, optimum.value, atol=1e-7, rtol=1e-9)
    for item in range(2):
        plan = optimum.plan[item].numpy()
        primal = _primal(plan, cost[item].numpy(), row_weights[item].numpy(), col_weights[item].numpy(), 0.05, 3.0, INF, "product")
        assert primal == pytest.approx(float(optimum.value[item]), rel=1e-9)


def test_huge_eps_gives_the_limit_value():
    """eps -> inf: the plan tends to R = a b^T and the value to <R, C> (was -2.8e14 at eps 1e30)."""
    cost = torch.rand(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    limit = float(cost.mean())
    for eps in (1e6, 1e30):
        res = solve(cost, eps=eps, max_iter=50)
        assert float(res.value) == pytest.approx(limit, abs=0.02)


# ---------------------------------------------------------------- balanced masses
def test_balanced_ot_with_unequal_masses_is_refused_unless_normalised():
    cost = torch.rand(2, 5, 3, dtype=torch.float64)
    row_weights, col_weights = torch.ones(2, 5, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"sum\(row_weights\) == sum\(col_weights\).*\[0, 1\].*normalize=True"):
        solve(cost, row_weights=row_weights, col_weights=col_weights)
    res = solve(cost, row_weights=row_weights, col_weights=col_weights, normalize=True, max_iter=2000, tol=1e-12)
    torch.testing.assert_close(res.col_marginal, torch.full((2, 3), 5 / 3, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(res.row_marginal, torch.ones(2, 5, dtype=torch.float64), atol=1e-10, rtol=0)
    # a relaxed marginal needs no equal masses
    assert bool(torch.isfinite(solve(cost, row_weights=row_weights, col_weights=col_weights, rho_rows=1.0).plan).all())


# ---------------------------------------------------------------- argument types and devices
@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(eps="0.1"), "eps"),
        (dict(eps=True), "eps"),
        (dict(eps=torch.tensor([0.1, 0.2])), "per-item eps"),
        (dict(rho_rows="1"), "rho_rows"),
        (dict(max_iter=10.0), "max_iter"),
        (dict(tol="1e-6"), "tol"),
        (dict(normalize=1), "normalize"),
        (dict(row_mask=torch.ones(1, 4, dtype=torch.bool)), r"row_mask has shape \(1, 4\); for a 2-D cost"),
        (dict(col_mask=torch.ones(3, 1, dtype=torch.bool)), r"col_mask has shape \(3, 1\)"),
    ],
)
def test_bad_arguments_of_a_2d_problem_are_named(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        solve(torch.rand(4, 3, dtype=torch.float64), **kwargs)


def test_numpy_and_scalar_tensor_arguments_are_numbers():
    cost = torch.rand(4, 3, dtype=torch.float64)
    expected = solve(cost, eps=0.1, rho_rows=0.5, max_iter=10)
    got = solve(cost, eps=np.float64(0.1), rho_rows=torch.tensor(0.5), max_iter=np.int64(10))
    torch.testing.assert_close(got.plan, expected.plan, atol=0, rtol=0)


def test_a_mask_on_another_device_is_named_not_moved():
    cost = torch.rand(2, 4, 3)
    with pytest.raises(ValueError, match="row_mask is on meta"):
        solve(cost, row_mask=torch.ones(2, 4, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match="col_weights is on meta"):
        solve(cost, col_weights=torch.ones(2, 3, device="meta"))


@pytest.mark.parametrize("eps", [0.05, 1e-30])
def test_a_finite_cost_that_overflows_the_dtype_is_named(eps):
    cost = torch.rand(2, 4, 3)
    cost[1, 2, 1] = 1e36
    with pytest.raises(ValueError, match=r"cost / eps overflows torch.float32 on batch item\(s\) \[(0, )?1\]"):
        solve(cost, eps=eps)
    cost[1, 2, 1] = 1e5  # |C| / eps = 2e6 at eps 0.05: within what float32 resolves
    if eps == 0.05:
        assert bool(torch.isfinite(solve(cost, eps=eps, max_iter=5).plan).all())
