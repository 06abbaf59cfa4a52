"""The solver's gradient modes against finite differences of the converged map (fp64).

``implicit`` must be the derivative of the converged map in every variant; ``unrolled`` is the
derivative of the truncated iteration (checked by gradcheck in test_solver.py); ``last_step`` is a
biased approximation, and these tests pin that it is one."""
from __future__ import annotations

import pytest
import torch

from otalign.ot import cosine_cost, solve

INF = float("inf")
# every variant the solver has: balanced, semi-relaxed, fully unbalanced (both references),
# partial, temporal-order prior, and weights
VARIANTS = {
    "balanced": dict(),
    "semi_relaxed": dict(rho_rows=0.3),
    "semi_relaxed_small_rho": dict(rho_rows=0.03),
    "semi_relaxed_columns": dict(rho_cols=0.5),
    "unbalanced": dict(rho_rows=0.3, rho_cols=2.0),
    "unbalanced_entropy": dict(rho_rows=0.5, rho_cols=1.0, reference="ones"),
    "partial": dict(partial_mass=0.6),
    "order_prior": dict(rho_rows=0.3, order_weight=0.5),
}


def _batch(seed: int = 0, batch: int = 3, rows: int = 9, cols: int = 5):
    generator = torch.Generator().manual_seed(seed)
    row_mask = torch.ones(batch, rows, dtype=torch.bool)
    row_mask[1, 6:] = False
    col_mask = torch.ones(batch, cols, dtype=torch.bool)
    col_mask[2, 3:] = False
    cost = torch.rand(batch, rows, cols, dtype=torch.float64, generator=generator) * 2
    probe = torch.randn(batch, rows, cols, dtype=torch.float64, generator=generator)
    direction = torch.randn(batch, rows, cols, dtype=torch.float64, generator=generator)
    return cost, row_mask, col_mask, probe, direction


def _converged_loss(cost, row_mask, col_mask, probe, grad="implicit", row_weights=None, col_weights=None, **kwargs):
    res = solve(cost, row_mask, col_mask, row_weights, col_weights, eps=0.1, max_iter=20000, tol=1e-14, grad=grad, **kwargs)
    assert bool(res.converged.all()), res.error
    return (res.plan * probe).sum() + res.value.sum() + res.row_potential[:, 0].sum()


def _directional_fd(fn, x: torch.Tensor, direction: torch.Tensor, step: float = 1e-5) -> float:
    with torch.no_grad():
        return float((fn(x + step * direction) - fn(x - step * direction)) / (2 * step))


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_implicit_gradient_of_the_cost_matches_finite_differences(variant):
    kwargs = VARIANTS[variant]
    cost, row_mask, col_mask, probe, direction = _batch()
    # the row potential's level is a gauge in balanced OT: keep the loss gauge-invariant there
    loss = (lambda c: _converged_loss(c, row_mask, col_mask, probe, **kwargs)) if variant not in ("balanced", "partial") else (
        lambda c: (lambda r: (r.plan * probe).sum() + r.value.sum())(solve(c, row_mask, col_mask, eps=0.1, max_iter=20000, tol=1e-14, **kwargs)))
    leaf = cost.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss(leaf), leaf)
    analytic = float((gradient * direction).sum())
    numeric = _directional_fd(loss, cost, direction)
    assert abs(analytic - numeric) <= 1e-8 * max(1.0, abs(numeric)), (analytic, numeric)
    assert torch.isfinite(gradient).all()
    padded = ~(row_mask[:, :, None] & col_mask[:, None, :])
    assert bool((gradient[padded] == 0).all())


@pytest.mark.parametrize("variant", ["semi_relaxed", "unbalanced", "partial"])
def test_implicit_gradient_of_the_weights_matches_finite_differences(variant):
    kwargs = VARIANTS[variant]
    cost, row_mask, col_mask, probe, _ = _batch(1)
    generator = torch.Generator().manual_seed(2)
    row_weights = torch.rand(row_mask.shape, dtype=torch.float64, generator=generator) + 0.5
    col_weights = torch.rand(col_mask.shape, dtype=torch.float64, generator=generator) + 0.5
    if variant == "partial":  # the transported mass must fit under both capacities
        row_weights, col_weights = row_weights / row_weights.sum(-1, keepdim=True), col_weights / col_weights.sum(-1, keepdim=True)
    row_direction = torch.randn(row_mask.shape, dtype=torch.float64, generator=generator)
    col_direction = torch.randn(col_mask.shape, dtype=torch.float64, generator=generator)

    def loss(row_w, col_w):
        res = solve(cost, row_mask, col_mask, row_w, col_w, eps=0.1, max_iter=20000, tol=1e-14, **kwargs)
        return (res.plan * probe).sum() + res.value.sum()

    leaves = (row_weights.clone().requires_grad_(True), col_weights.clone().requires_grad_(True))
    row_grad, col_grad = torch.autograd.grad(loss(*leaves), leaves)
    for grad, direction, numeric in (
        (row_grad, row_direction, _directional_fd(lambda w: loss(w, col_weights), row_weights, row_direction, 1e-6)),
        (col_grad, col_direction, _directional_fd(lambda w: loss(row_weights, w), col_weights, col_direction, 1e-6)),
    ):
        analytic = float((grad * direction).sum())
        assert abs(analytic - numeric) <= 1e-7 * max(1.0, abs(numeric)), (analytic, numeric)


def test_implicit_gradient_is_nan_free_on_zero_weights_and_padding():
    """OTT-JAX's implicit differentiation gives NaN here; zero weights count as padding."""
    cost, row_mask, col_mask, probe, _ = _batch(3)
    row_weights = torch.rand(row_mask.shape, dtype=torch.float64) + 0.1
    row_weights[0, :3] = 0.0
    leaf = cost.clone().requires_grad_(True)
    weights = row_weights.clone().requires_grad_(True)
    res = solve(leaf, row_mask, col_mask, weights, eps=0.05, rho_rows=0.3, max_iter=50)
    grads = torch.autograd.grad((res.plan * probe).sum() + res.value.sum(), (leaf, weights))
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert bool((grads[0][0, :3] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_implicit_equals_unrolled_once_the_iteration_has_converged(dtype):
    """Unrolling a converged loop differentiates the same map (its Jacobian has converged too)."""
    cost, row_mask, col_mask, probe, _ = _batch(4)
    cost, probe = cost.to(dtype), probe.to(dtype)
    grads = {}
    for grad in ("implicit", "unrolled"):
        leaf = cost.clone().requires_grad_(True)
        res = solve(leaf, row_mask, col_mask, eps=0.1, rho_rows=0.3, max_iter=400, grad=grad)
        (grads[grad],) = torch.autograd.grad((res.plan * probe).sum(), leaf)
    tolerance = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(grads["implicit"], grads["unrolled"], atol=tolerance, rtol=tolerance)


def test_last_step_is_biased_and_more_iterations_do_not_remove_the_bias():
    """The audit's finding, at the experiment's operating point (eps 0.05, cosine costs)."""
    torch.manual_seed(0)
    frames, tokens = torch.randn(4, 60, 32, dtype=torch.float64), torch.randn(4, 12, 32, dtype=torch.float64)
    cost = cosine_cost(frames, tokens)
    probe = torch.randn_like(cost)
    errors = []
    for iterations in (30, 2000):
        grads = {}
        for grad in ("implicit", "last_step"):
            leaf = cost.clone().requires_grad_(True)
            res = solve(leaf, eps=0.05, rho_rows=0.3, max_iter=iterations, grad=grad)
            (grads[grad],) = torch.autograd.grad((res.plan * probe).sum(), leaf)
        errors.append(float((grads["last_step"] - grads["implicit"]).norm() / grads["implicit"].norm()))
    assert min(errors) > 0.01, errors
    assert abs(errors[0] - errors[1]) < 0.5 * errors[0], errors


def test_implicit_gradient_does_not_store_the_iterations():
    """Memory is flat in max_iter: the autograd graph saves the same bytes at 20 and 2000
    iterations. The same measure sees plain autograd through the loop (partial OT unrolled) grow."""
    cost, row_mask, col_mask, probe, _ = _batch(5)

    def saved_bytes(iterations: int, **kwargs) -> int:
        total = 0
        leaf = cost.clone().requires_grad_(True)

        def pack(tensor):
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            res = solve(leaf, row_mask, col_mask, eps=0.1, max_iter=iterations, **kwargs)
        torch.autograd.grad((res.plan * probe).sum(), leaf)
        return total

    for kwargs in (dict(rho_rows=0.3), dict(partial_mass=0.6)):
        assert saved_bytes(200, **kwargs) == saved_bytes(20, **kwargs)
    assert saved_bytes(200, partial_mass=0.6, grad="unrolled") > 5 * saved_bytes(20, partial_mass=0.6, grad="unrolled")
