"""The solver's fast paths are invisible: the NumPy loop (``solve(_numpy_loop=...)``), the shared
kernel of unpadded batches (``solve(_share_kernel=...)``) and the torch loop with two kernels give the same plan,
potentials and value as a plain log-domain Sinkhorn written out here, in every variant, with
and without padding, and the same gradients."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import otalign.ot.solver as solver_module
from otalign.ot import solve

from .conftest import INF, random_padded_batch

PATHS = list(itertools.product([True, False], [True, False]))  # (numpy loop, shared kernel)
PATH_IDS = [f"{'numpy' if n else 'torch'}-{'shared' if s else 'two-kernels'}" for n, s in PATHS]
VARIANTS = [
    dict(rho_rows=0.3),  # semi-relaxed, the training problem
    dict(),  # balanced
    dict(rho_rows=0.3, rho_cols=2.0),  # fully unbalanced
    dict(rho_rows=3.0, reference="ones"),
]


def path_options(numpy_loop: bool, share: bool) -> dict:
    """solve's private arguments that choose a path."""
    return dict(_numpy_loop=numpy_loop, _share_kernel=share)


@pytest.fixture
def path(request):
    """solve's keyword arguments for the path ``request.param = (numpy loop, shared kernel)``."""
    return path_options(*request.param)


def log_domain_sinkhorn(cost: torch.Tensor, eps: float, n_iter: int, rho_rows: float = INF, rho_cols: float = INF, reference: str = "product"):
    """The textbook log-domain iteration on one unpadded (T,N) fp64 problem with uniform weights
    (rows first, both potentials starting at 0, POT's order): returns (plan, phi, psi)."""
    n_rows, n_cols = cost.shape
    log_a = torch.full((n_rows,), -math.log(n_rows), dtype=cost.dtype)
    log_b = torch.full((n_cols,), -math.log(n_cols), dtype=cost.dtype)
    log_kernel = -cost / eps + ((log_a[:, None] + log_b[None, :]) if reference == "product" else 0.0)
    lam_rows = 1.0 if math.isinf(rho_rows) else rho_rows / (rho_rows + eps)
    lam_cols = 1.0 if math.isinf(rho_cols) else rho_cols / (rho_cols + eps)
    phi, psi = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for _ in range(n_iter):
        phi = lam_rows * (log_a - torch.logsumexp(log_kernel + psi[None, :], 1))
        psi = lam_cols * (log_b - torch.logsumexp(log_kernel + phi[:, None], 0))
    return torch.exp(log_kernel + phi[:, None] + psi[None, :]), phi, psi


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS, indirect=True)
@pytest.mark.parametrize("kwargs", VARIANTS, ids=["semi-relaxed", "balanced", "unbalanced", "ones"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_every_path_is_the_log_domain_iteration_in_fp64(path, kwargs, padded):
    eps, n_iter = 0.05, 40
    data = random_padded_batch(21, 4, 17, 6)
    if padded:
        res = solve(data.cost, data.row_mask, data.col_mask, eps=eps, max_iter=n_iter, **path, **kwargs)
        slices = [(item, data.row_lengths[item], data.col_lengths[item]) for item in range(4)]
        cost = data.cost
    else:
        cost = data.cost[:, :17, :6].nan_to_num(1.0)  # item 0 is full-size; fill the others' padding
        res = solve(cost, eps=eps, max_iter=n_iter, **path, **kwargs)
        slices = [(item, 17, 6) for item in range(4)]
    assert bool(torch.isfinite(res.plan).all() and torch.isfinite(res.value).all())
    for item, t, n in slices:
        plan, phi, psi = log_domain_sinkhorn(cost[item, :t, :n], eps, n_iter, **kwargs)
        torch.testing.assert_close(res.plan[item, :t, :n], plan, atol=1e-12, rtol=1e-9)
        assert float(res.plan[item, t:].abs().sum() + res.plan[item, :, n:].abs().sum()) == 0.0
        if not kwargs:
            # balanced: no translation after the loop, the potentials are the iterate's
            torch.testing.assert_close(res.row_potential[item, :t], eps * phi, atol=1e-10, rtol=0)
            torch.testing.assert_close(res.col_potential[item, :n], eps * psi, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kwargs", VARIANTS[:3], ids=["semi-relaxed", "balanced", "unbalanced"])
def test_fast_paths_are_as_accurate_in_fp32(kwargs):
    """fp32 at the operating point (eps 0.05, cosine costs in [0, 2], 100 iterations) against the
    fp64 solution: every path rounds differently, and every one is within 5e-6 of the largest
    plan entry, 1e-6 in the value and 2e-6 in the potentials (measured: 1.4-2.6e-6, 0.5-1.4e-7
    and 1.2-10e-7 on all four paths alike)."""
    torch.manual_seed(3)
    frames, tokens = torch.randn(8, 120, 32), torch.randn(8, 20, 32)
    from otalign.ot import cosine_cost

    cost = cosine_cost(frames, tokens)
    exact = solve(cost.double(), eps=0.05, max_iter=100, **path_options(False, False), **kwargs)
    scale = float(exact.plan.abs().max())
    for numpy_loop, share in PATHS:
        res = solve(cost, eps=0.05, max_iter=100, **path_options(numpy_loop, share), **kwargs)
        assert bool(torch.isfinite(res.plan).all())
        assert float((res.plan.double() - exact.plan).abs().max()) <= 5e-6 * scale, (numpy_loop, share)
        assert float((res.value.double() - exact.value).abs().max()) <= 1e-6, (numpy_loop, share)
        assert float((res.col_potential.double() - exact.col_potential).abs().max()) <= 2e-6, (numpy_loop, share)


def test_shared_kernel_is_refused_where_a_column_is_far_from_every_row():
    """A token whose best frame is 60 eps-units worse than that frame's best token makes the
    shared kernel's column maximum e^-60 < e^-3D: the solver builds the second kernel instead,
    and the plan is still the log-domain iteration's, without NaN or Inf, in fp32 and fp64."""
    data = random_padded_batch(5, 2, 12, 5)
    cost = data.cost[:, :12, :5].nan_to_num(1.0)
    cost[:, :, 2] += 3.0  # eps 0.05: 60 units
    for dtype in (torch.float64, torch.float32):
        with torch.no_grad():
            problem = solver_module._make_problem(cost.to(dtype), None, None, None, None, 0.05, 0.3, INF, None, 0.0, "product", False)
            steps = solver_module._UnbalancedSteps(problem, solver_module._Numerics(solver_module._ANCHOR_THRESHOLD[dtype]))
        if dtype == torch.float32:
            assert steps.kernel.col_kernel_t is not steps.kernel.row_kernel
        res = solve(cost.to(dtype), eps=0.05, rho_rows=0.3, max_iter=60)
        assert bool(torch.isfinite(res.plan).all() and torch.isfinite(res.value).all())
        for item in range(2):
            plan, _, _ = log_domain_sinkhorn(cost[item], 0.05, 60, rho_rows=0.3)
            torch.testing.assert_close(res.plan[item].double(), plan, atol=1e-12 if dtype == torch.float64 else 1e-6, rtol=1e-9 if dtype == torch.float64 else 1e-4)
    # the ordinary case shares it
    with torch.no_grad():
        problem = solver_module._make_problem(data.cost[:, :12, :5].nan_to_num(1.0), None, None, None, None, 0.05, 0.3, INF, None, 0.0, "product", False)
        steps = solver_module._UnbalancedSteps(problem, solver_module._Numerics(solver_module._ANCHOR_THRESHOLD[torch.float64]))
    assert steps.kernel.col_kernel_t is steps.kernel.row_kernel


@pytest.mark.parametrize("eps", [1e-3, 1e-2])
def test_small_eps_and_large_costs_stay_finite_on_every_path(eps):
    """|C|/eps up to 2.2e4 (costs in [20, 22] at eps 1e-3): re-anchoring keeps every output
    finite on every path; in fp64 the paths agree to 1e-10 of the largest plan entry (rounding
    the exponent alone is |C|/eps * 2^-52 = 5e-12 relative here; measured 2e-12), and in
    fp32 each is as close to the fp64 plan as the torch two-kernel path is (measured 1.6-1.7e-5
    at eps 1e-2 and 1.35e-4 at eps 1e-3, of a largest entry 0.12: the cost's fp32 rounding)."""
    data = random_padded_batch(8, 3, 30, 8)
    cost = data.cost[:, :30, :8].nan_to_num(1.0) + 20.0
    results = {}
    for dtype, (numpy_loop, share) in itertools.product((torch.float64, torch.float32), PATHS):
        res = solve(cost.to(dtype), eps=eps, rho_rows=0.3, max_iter=200, **path_options(numpy_loop, share))
        assert bool(torch.isfinite(res.plan).all() and torch.isfinite(res.value).all() and torch.isfinite(res.row_potential).all())
        results[dtype, numpy_loop, share] = res.plan.double()
    exact = results[torch.float64, False, False]
    scale = float(exact.max())
    torch_error = float((results[torch.float32, False, False] - exact).abs().max())
    for (dtype, numpy_loop, share), plan in results.items():
        error = float((plan - exact).abs().max())
        if dtype == torch.float64:
            assert error <= 1e-10 * scale, (numpy_loop, share)
        else:
            assert error <= 1.5 * torch_error + 1e-7 * scale, (numpy_loop, share, error, torch_error)


@pytest.mark.parametrize("grad", ["implicit", "unrolled", "last_step"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_gradients_do_not_depend_on_the_path(grad, padded):
    data = random_padded_batch(31, 3, 11, 5)
    torch.manual_seed(0)
    probe = torch.randn(3, 11, 5, dtype=torch.float64)
    masks = (data.row_mask, data.col_mask) if padded else (None, None)
    base = data.cost if padded else data.cost.nan_to_num(1.0)
    grads = []
    for numpy_loop, share in PATHS:
        cost = base.clone().requires_grad_(True)
        res = solve(cost, *masks, eps=0.05, rho_rows=0.3, max_iter=50, grad=grad, **path_options(numpy_loop, share))
        loss = (res.plan * probe.nan_to_num(0.0)).sum() + res.value.sum()
        (gradient,) = torch.autograd.grad(loss, cost)
        assert bool(torch.isfinite(gradient).all())
        grads.append(gradient)
    for gradient in grads[:-1]:
        torch.testing.assert_close(gradient, grads[-1], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kwargs", VARIANTS, ids=["semi-relaxed", "balanced", "unbalanced", "ones"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_implicit_gradient_from_the_kernels_equals_the_log_kernel_one(kwargs, padded):
    """The adjoint's softmaxes from the loop's kernels (the fast path) and from the log-kernel
    (the fallback when a potential is far from its anchor) give the same gradient."""
    data = random_padded_batch(41, 3, 13, 6)
    masks = (data.row_mask, data.col_mask) if padded else (None, None)
    base = data.cost if padded else data.cost.nan_to_num(1.0)
    torch.manual_seed(2)
    probe = torch.randn(3, 13, 6, dtype=torch.float64)
    row_weights = torch.rand(3, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).add(0.5)
    grads = []
    for from_kernels in (True, False):
        cost = base.clone().requires_grad_(True)
        weights = row_weights.clone().requires_grad_(True)
        res = solve(cost, *masks, weights, eps=0.05, max_iter=300, normalize=not kwargs, _adjoint_from_kernels=from_kernels, **kwargs)
        loss = (res.plan * probe).sum() + res.value.sum() + res.col_potential.sum()
        grads.append(torch.autograd.grad(loss, (cost, weights)))
    for fast, slow in zip(*grads):
        assert bool(torch.isfinite(fast).all())
        torch.testing.assert_close(fast, slow, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", [dict(rho_rows=0.3), dict(), dict(rho_rows=3.0, rho_cols=0.5), dict(rho_rows=1.0, tol=1e-4)], ids=["semi-relaxed", "balanced", "unbalanced", "tol"])
def test_in_place_numpy_step_is_bit_identical(monkeypatch, dtype, kwargs):
    """``_UnbalancedSteps._step_in_place`` (reused buffers) gives exactly the numbers of the
    allocating NumPy step, re-anchoring included (a low anchor threshold forces it)."""
    generator = torch.Generator().manual_seed(16)
    cost = (torch.rand(4, 37, 9, generator=generator) * 2).to(dtype)
    outputs = []
    for in_place in (True, False):
        monkeypatch.setattr(solver_module._UnbalancedSteps, "in_place", in_place)
        res = solve(cost, eps=0.02, max_iter=120, _anchor_threshold=2.0, **kwargs)
        outputs.append((res.plan, res.row_potential, res.col_potential, res.value, res.error, res.converged, torch.tensor(res.n_iter)))
    for fast, slow in zip(*outputs):
        assert torch.equal(fast, slow)


def test_non_finite_cost_found_by_the_aminmax_pass():
    """NaN/Inf on a valid cell is named (the finiteness check is the aminmax pass), with or
    without the order prior; padded NaN is ignored."""
    cost = torch.rand(3, 8, 5)
    for bad in (math.nan, math.inf, -math.inf):
        broken = cost.clone()
        broken[1, 2, 3] = bad
        for order_weight in (0.0, 0.5):
            with pytest.raises(ValueError, match=r"NaN or Inf on valid entries of batch item\(s\) \[1\]"):
                solve(broken, order_weight=order_weight)
        row_mask = torch.ones(3, 8, dtype=torch.bool)
        row_mask[1, 2] = False
        assert bool(torch.isfinite(solve(broken, row_mask, rho_rows=1.0).plan).all())
    with pytest.raises(ValueError, match="overflows"):
        solve(torch.full((1, 4, 3), 3e38), order_weight=1e38, eps=1.0)
