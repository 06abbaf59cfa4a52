"""Properties of otalign.ot.solve that do not need an oracle: marginals, padding, gradients,
edge cases, numerical robustness and input validation."""
from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

from otalign.ot import TransportResult, solve, temporal_order_cost

from .conftest import INF, random_padded_batch


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# ---------------------------------------------------------------- marginals and mass shedding
def test_semi_relaxed_columns_sum_to_b():
    data = random_padded_batch(0, 4, 20, 6)
    res = solve(data.cost, data.row_mask, data.col_mask, eps=0.1, rho_rows=0.5, max_iter=50)
    expected = data.col_mask.double() / data.col_mask.sum(-1, keepdim=True)
    torch.testing.assert_close(res.col_marginal, expected, atol=1e-12, rtol=0)


def test_balanced_plan_has_both_marginals_at_convergence():
    data = random_padded_batch(1, 3, 15, 7)
    res = solve(data.cost, data.row_mask, data.col_mask, eps=0.1, max_iter=5000, tol=1e-10)
    assert bool(res.converged.all()) and res.n_iter < 5000
    torch.testing.assert_close(res.row_marginal, data.row_mask.double() / data.row_mask.sum(-1, keepdim=True), atol=1e-9, rtol=0)
    torch.testing.assert_close(res.col_marginal, data.col_mask.double() / data.col_mask.sum(-1, keepdim=True), atol=1e-12, rtol=0)


def test_smaller_rho_rows_sheds_more_mass_from_high_cost_rows():
    """Frames 0-4 are 'silence' (cost 1.8 to every token), frames 5-14 match some token (cost 0.2)."""
    torch.manual_seed(0)
    cost = torch.full((1, 15, 3), 1.2, dtype=torch.float64)
    cost[0, :5, :] = 1.8
    for frame in range(5, 15):
        cost[0, frame, (frame - 5) * 3 // 10] = 0.2
    silence_mass = []
    for rho_rows in [1e3, 10.0, 1.0, 0.3, 0.1]:
        res = solve(cost, eps=0.05, rho_rows=rho_rows, max_iter=1000)
        silence_mass.append(res.row_marginal[0, :5].sum().item())
        torch.testing.assert_close(res.col_marginal, torch.full((1, 3), 1 / 3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert all(later < earlier for earlier, later in zip(silence_mass, silence_mass[1:])), silence_mass
    assert silence_mass[0] == pytest.approx(5 / 15, abs=1e-2)  # nearly balanced: silence keeps its share
    assert silence_mass[-1] < 0.02  # strongly relaxed: silence sheds almost everything


def test_partial_respects_capacities_and_mass():
    data = random_padded_batch(2, 3, 10, 6)
    res = solve(data.cost, data.row_mask, data.col_mask, eps=0.05, partial_mass=0.4, max_iter=2000, tol=1e-10)
    a = data.row_mask.double() / data.row_mask.sum(-1, keepdim=True)
    b = data.col_mask.double() / data.col_mask.sum(-1, keepdim=True)
    assert bool((res.row_marginal <= a + 1e-9).all()) and bool((res.col_marginal <= b + 1e-9).all())
    torch.testing.assert_close(res.transported_mass, torch.full((3,), 0.4, dtype=torch.float64), atol=1e-12, rtol=0)


def test_order_weight_makes_the_alignment_monotone():
    torch.manual_seed(3)
    cost = torch.rand(1, 40, 6, dtype=torch.float64) * 2
    free = solve(cost, eps=0.05, rho_rows=1.0, max_iter=300)
    ordered = solve(cost, eps=0.05, rho_rows=1.0, max_iter=300, order_weight=20.0)

    def distance_from_diagonal(plan):
        """mean |position of the frame's best token - position of the frame|, both in (0,1)"""
        token_of_frame = plan[0].argmax(-1).double()
        frame_pos = (torch.arange(40, dtype=torch.float64) + 0.5) / 40
        return float(((token_of_frame + 0.5) / 6 - frame_pos).abs().mean())

    assert distance_from_diagonal(ordered.plan) < 0.1 < distance_from_diagonal(free.plan)
    order = temporal_order_cost(torch.ones(1, 40, dtype=torch.bool), torch.ones(1, 6, dtype=torch.bool), dtype=torch.float64)
    torch.testing.assert_close(ordered.problem.cost - free.problem.cost, 20.0 * order)


# ---------------------------------------------------------------- padding and gradients
@pytest.mark.parametrize("grad", ["unrolled", "last_step"])
@pytest.mark.parametrize("kwargs", [dict(), dict(rho_rows=0.5), dict(rho_rows=0.5, rho_cols=2.0), dict(partial_mass=0.5), dict(order_weight=1.0, rho_rows=1.0)])
def test_padding_gives_exact_zeros_and_finite_gradients(grad, kwargs):
    data = random_padded_batch(4, 4, 9, 6)  # NaN on padded cells
    cost = data.cost.clone().requires_grad_(True)
    res = solve(cost, data.row_mask, data.col_mask, eps=0.1, max_iter=30, grad=grad, **kwargs)
    cell_mask = data.row_mask[:, :, None] & data.col_mask[:, None, :]
    assert bool((res.plan[~cell_mask] == 0).all())
    assert bool((res.row_potential[~data.row_mask] == 0).all()) and bool((res.col_potential[~data.col_mask] == 0).all())
    assert _finite(res.plan, res.value, res.error, res.row_potential, res.col_potential)
    loss = (res.plan * torch.nan_to_num(data.cost)).sum() + res.value.sum() + res.row_potential.sum() + res.col_potential.sum()
    (grad_cost,) = torch.autograd.grad(loss, cost)
    assert _finite(grad_cost)
    assert bool((grad_cost[~cell_mask] == 0).all())


def test_gradients_reach_weights_without_nan_through_padding():
    data = random_padded_batch(5, 3, 7, 5)
    row_weights = torch.rand(3, 7, dtype=torch.float64).add(0.1).requires_grad_(True)
    col_weights = torch.rand(3, 5, dtype=torch.float64).add(0.1).requires_grad_(True)
    res = solve(data.cost, data.row_mask, data.col_mask, row_weights, col_weights, eps=0.1, rho_rows=1.0, max_iter=20)
    grads = torch.autograd.grad(res.value.sum() + res.plan.sum(), (row_weights, col_weights))
    assert _finite(*grads)
    assert bool((grads[0][~data.row_mask] == 0).all()) and bool((grads[1][~data.col_mask] == 0).all())


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [dict(), dict(rho_rows=0.7), dict(rho_rows=0.7, rho_cols=3.0, reference="ones"), dict(partial_mass=0.6), dict(order_weight=0.5, rho_rows=0.7)])
def test_unrolled_gradient_passes_gradcheck_fp64(kwargs):
    """Unrolled mode is the exact derivative of the truncated iteration. (last_step is by design
    not the derivative of its forward pass, so gradcheck does not apply to it; see
    test_value_gradient_is_the_plan_at_convergence.)"""
    torch.manual_seed(0)
    row_mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    col_mask = torch.tensor([[True, True, True], [True, True, False]])
    cost = (torch.rand(2, 4, 3, dtype=torch.float64) * 2).requires_grad_(True)

    def plan_and_value(c):
        res = solve(c, row_mask, col_mask, eps=0.3, max_iter=15, grad="unrolled", **kwargs)
        return res.plan, res.value

    assert torch.autograd.gradcheck(plan_and_value, (cost,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("grad", ["unrolled", "last_step"])
@pytest.mark.parametrize("rho_rows", [INF, 0.5])
def test_value_gradient_is_the_plan_at_convergence(grad, rho_rows):
    data = random_padded_batch(6, 3, 8, 5)
    cost = torch.nan_to_num(data.cost).requires_grad_(True)
    res = solve(cost, data.row_mask, data.col_mask, eps=0.2, rho_rows=rho_rows, max_iter=500, grad=grad)
    (grad_cost,) = torch.autograd.grad(res.value.sum(), cost)
    torch.testing.assert_close(grad_cost, res.plan.detach(), atol=1e-8, rtol=0)


def test_last_step_forward_equals_unrolled_forward():
    data = random_padded_batch(8, 3, 10, 4)
    unrolled = solve(data.cost, data.row_mask, data.col_mask, rho_rows=0.4, max_iter=37)
    last = solve(data.cost, data.row_mask, data.col_mask, rho_rows=0.4, max_iter=37, grad="last_step")
    assert last.n_iter == unrolled.n_iter == 37
    torch.testing.assert_close(last.plan, unrolled.plan, atol=1e-14, rtol=0)
    torch.testing.assert_close(last.value, unrolled.value, atol=1e-14, rtol=0)


# ---------------------------------------------------------------- edge cases
@pytest.mark.parametrize("shape", [(3, 12), (1, 5), (6, 1), (1, 1)], ids=["N>T", "T=1", "N=1", "T=N=1"])
@pytest.mark.parametrize("kwargs", [dict(), dict(rho_rows=0.5), dict(partial_mass=0.8)])
def test_degenerate_shapes_match_pot(shape, kwargs):
    t, n = shape
    torch.manual_seed(1)
    cost = torch.rand(t, n, dtype=torch.float64) * 2
    res = solve(cost, eps=0.1, max_iter=40, reference="ones" if "partial_mass" in kwargs else "product", **kwargs)
    assert res.plan.shape == (t, n) and res.value.shape == ()
    a, b = np.full(t, 1 / t), np.full(n, 1 / n)
    if "partial_mass" in kwargs:
        expected = ot.partial.entropic_partial_wasserstein(a, b, cost.numpy(), reg=0.1, m=0.8, numItermax=40)
    else:
        expected = ot.unbalanced.sinkhorn_unbalanced(a, b, cost.numpy(), reg=0.1, reg_m=(kwargs.get("rho_rows", INF), INF), numItermax=40, stopThr=0.0)
    np.testing.assert_allclose(res.plan.numpy(), expected, atol=1e-6, rtol=0)


def test_all_but_one_padded_row():
    data = random_padded_batch(9, 3, 10, 4)
    row_mask = torch.zeros(3, 10, dtype=torch.bool)
    row_mask[:, 0] = True
    cost = data.cost.clone().requires_grad_(True)
    res = solve(cost, row_mask, data.col_mask, eps=0.1, rho_rows=0.5, max_iter=50)
    torch.testing.assert_close(res.col_marginal, data.col_mask.double() / data.col_mask.sum(-1, keepdim=True), atol=1e-12, rtol=0)
    assert bool((res.plan[:, 1:] == 0).all())
    (grad_cost,) = torch.autograd.grad(res.value.sum() + res.plan.sum(), cost)
    assert _finite(grad_cost, res.plan, res.value)


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [dict(), dict(rho_rows=1.0), dict(rho_rows=1e-3), dict(partial_mass=0.5), dict(rho_rows=1.0, reference="ones")])
@pytest.mark.parametrize("grad", ["unrolled", "last_step"])
def test_tiny_eps_in_fp32_stays_finite(kwargs, grad):
    data = random_padded_batch(10, 4, 30, 8, dtype=torch.float32)
    cost = data.cost.clone().requires_grad_(True)
    res = solve(cost, data.row_mask, data.col_mask, eps=1e-3, max_iter=200, grad=grad, **kwargs)
    assert _finite(res.plan, res.value, res.error, res.row_potential, res.col_potential)
    assert res.plan.dtype == torch.float32
    (grad_cost,) = torch.autograd.grad((res.plan * torch.nan_to_num(data.cost)).sum() + res.value.sum(), cost)
    assert _finite(grad_cost)
    if "partial_mass" not in kwargs:
        # hard columns right after the column update; fp32 potentials are ~C/eps = 2000 here, so
        # log P = L + phi + psi cancels to ~2000 * 6e-8 = 1e-4 relative: that is the fp32 floor
        torch.testing.assert_close(res.col_marginal, data.col_mask.float() / data.col_mask.sum(-1, keepdim=True), atol=1e-4, rtol=0)


def test_fp32_agrees_with_fp64():
    data = random_padded_batch(11, 4, 25, 7)
    kwargs = dict(eps=0.1, rho_rows=1.0, max_iter=100)
    res64 = solve(data.cost, data.row_mask, data.col_mask, **kwargs)
    res32 = solve(data.cost.float(), data.row_mask, data.col_mask, **kwargs)
    torch.testing.assert_close(res32.plan.double(), res64.plan, atol=2e-6, rtol=0)
    torch.testing.assert_close(res32.value.double(), res64.value, atol=1e-5, rtol=0)


def test_tolerance_stops_early_and_reports_convergence():
    data = random_padded_batch(12, 2, 10, 5)
    res = solve(data.cost, data.row_mask, data.col_mask, eps=0.2, rho_rows=1.0, max_iter=1000, tol=1e-8)
    assert isinstance(res, TransportResult)
    assert res.n_iter < 1000 and res.n_iter % 10 == 0
    assert bool(res.converged.all()) and bool((res.error <= 1e-8).all())
    short = solve(data.cost, data.row_mask, data.col_mask, eps=0.2, rho_rows=1.0, max_iter=3)
    assert short.n_iter == 3 and not bool(short.converged.all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    data = random_padded_batch(13, 3, 12, 5)
    cpu = solve(data.cost, data.row_mask, data.col_mask, rho_rows=0.5, max_iter=50)
    gpu = solve(data.cost.cuda(), data.row_mask.cuda(), data.col_mask.cuda(), rho_rows=0.5, max_iter=50)
    assert gpu.plan.device.type == "cuda"
    torch.testing.assert_close(gpu.plan.cpu(), cpu.plan, atol=1e-10, rtol=0)


# ---------------------------------------------------------------- bad input
def _cost(batch=2, t=4, n=3):
    return torch.rand(batch, t, n, dtype=torch.float64)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: solve(torch.rand(3)), "cost"),
        (lambda: solve(torch.rand(2, 3, 4, 5)), "cost"),
        (lambda: solve(_cost().int()), "cost"),
        (lambda: solve(_cost(), row_mask=torch.ones(3, 4, dtype=torch.bool)), "row_mask"),
        (lambda: solve(_cost(), col_mask=torch.ones(2, 4, dtype=torch.bool)), "col_mask"),
        (lambda: solve(_cost(), row_mask=torch.ones(2, 4)), "row_mask"),
        (lambda: solve(_cost(), row_weights=torch.ones(2, 5)), "row_weights"),
        (lambda: solve(_cost(), col_weights=-torch.ones(2, 3)), "col_weights"),
        (lambda: solve(_cost().index_put((torch.tensor([1]), torch.tensor([0]), torch.tensor([0])), torch.tensor(math.nan, dtype=torch.float64))), "cost"),
        (lambda: solve(_cost().index_put((torch.tensor([0]), torch.tensor([2]), torch.tensor([1])), torch.tensor(math.inf, dtype=torch.float64))), "cost"),
        (lambda: solve(_cost(), eps=0.0), "eps"),
        (lambda: solve(_cost(), eps=-1.0), "eps"),
        (lambda: solve(_cost(), rho_rows=-0.1), "rho_rows"),
        (lambda: solve(_cost(), rho_cols=float("nan")), "rho_cols"),
        (lambda: solve(_cost(), partial_mass=0.0), "partial_mass"),
        (lambda: solve(_cost(), partial_mass=1.5), "partial_mass"),
        (lambda: solve(_cost(), partial_mass=0.5, rho_rows=1.0), "partial_mass"),
        (lambda: solve(_cost(), reference="uniform"), "reference"),
        (lambda: solve(_cost(), grad="adjoint"), "grad"),
        (lambda: solve(_cost(), max_iter=0), "max_iter"),
        (lambda: solve(_cost(), order_weight=-1.0), "order_weight"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_fully_masked_item_is_named():
    row_mask = torch.ones(3, 4, dtype=torch.bool)
    row_mask[1] = False
    with pytest.raises(ValueError, match=r"row_mask.*\[1\]"):
        solve(_cost(3), row_mask=row_mask)
    col_mask = torch.ones(3, 3, dtype=torch.bool)
    col_mask[2] = False
    with pytest.raises(ValueError, match=r"col_mask.*\[2\]"):
        solve(_cost(3), col_mask=col_mask)


def test_nan_on_padding_is_not_an_error():
    cost = _cost()
    cost[1, 3, :] = math.nan
    row_mask = torch.ones(2, 4, dtype=torch.bool)
    row_mask[1, 3] = False
    assert _finite(solve(cost, row_mask=row_mask).plan)


# ---------------------------------------------------------------- internals that must be invisible
@pytest.mark.parametrize("threshold", [0.5, 100.0], ids=["reanchor-often", "default"])
@pytest.mark.parametrize("kwargs", [dict(), dict(rho_rows=0.3), dict(rho_rows=0.3, rho_cols=2.0, reference="ones"), dict(partial_mass=0.7)])
def test_reanchoring_the_kernel_does_not_change_the_plan(threshold, kwargs):
    """Absorbing potentials into the kernel (Schmitzer's stabilisation) is exact: with the
    threshold forced down to 0.5 (a re-anchor nearly every iteration) the plan still equals POT's."""
    data = random_padded_batch(14, 3, 9, 5)
    eps = 0.05
    res = solve(data.cost, data.row_mask, data.col_mask, eps=eps, max_iter=60, _anchor_threshold=threshold, **kwargs)
    for item in range(3):
        t, n = data.row_lengths[item], data.col_lengths[item]
        a, b = np.full(t, 1 / t), np.full(n, 1 / n)
        if "partial_mass" in kwargs:
            cost = data.valid_slice(item) - eps * np.log(np.outer(a, b))
            expected = ot.partial.entropic_partial_wasserstein(a, b, cost, reg=eps, m=0.7, numItermax=60)
        else:
            expected = ot.unbalanced.sinkhorn_unbalanced(
                a, b, data.valid_slice(item), reg=eps, reg_m=(kwargs.get("rho_rows", INF), kwargs.get("rho_cols", INF)),
                reg_type="kl" if kwargs.get("reference", "product") == "product" else "entropy", numItermax=60, stopThr=0.0)
        np.testing.assert_allclose(res.plan[item, :t, :n].numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("threshold", [0.5, 100.0], ids=["reanchor-often", "default"])
@pytest.mark.parametrize("kwargs", [dict(), dict(rho_rows=0.3), dict(rho_rows=0.3, rho_cols=2.0, reference="ones"), dict(rho_rows=0.3, tol=1e-2)])
def test_hand_written_reverse_pass_equals_autograd(threshold, kwargs):
    data = random_padded_batch(15, 3, 9, 5)
    torch.manual_seed(0)
    probe = torch.randn(3, 9, 5, dtype=torch.float64)
    grads = []
    for hand_written in (True, False):
        cost = data.cost.clone().requires_grad_(True)
        row_weights = torch.rand(3, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).add(0.5).requires_grad_(True)
        # balanced OT needs equal masses: normalize rescales b to the random row mass
        res = solve(cost, data.row_mask, data.col_mask, row_weights, eps=0.05, max_iter=80, grad="unrolled", normalize=not kwargs.get("rho_rows"),
                    _anchor_threshold=threshold, _hand_written_reverse=hand_written, **kwargs)
        if "tol" in kwargs:
            assert res.n_iter < 80  # stopped early: the tape is shorter than max_iter
        loss = (res.plan * probe).sum() + res.value.sum() + (res.row_potential * probe[:, :, 0]).sum() + res.col_potential.sum()
        grads.append(torch.autograd.grad(loss, (cost, row_weights)))
    for hand, auto in zip(*grads):
        torch.testing.assert_close(hand, auto, atol=1e-9, rtol=1e-7)
