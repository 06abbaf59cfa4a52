"""The stopping rule of ``solve``: ``max_iter``, ``min_iter``, ``check_every`` and ``tol``. One
residual (``TransportResult.error``) against one tolerance decides both when the loop stops and
``converged``; the arguments are validated with errors that name them."""
from __future__ import annotations

import pytest
import torch

from otalign.ot import solve

from .conftest import random_padded_batch

VARIANTS = {
    "balanced": dict(),
    "semi-relaxed": dict(rho_rows=0.3),
    "unbalanced": dict(rho_rows=0.3, rho_cols=2.0),
    "partial": dict(partial_mass=0.7),
}


def _problem(seed: int = 3):
    data = random_padded_batch(seed, 3, 9, 5)
    return data.cost, data.row_mask, data.col_mask


@pytest.mark.slow
@pytest.mark.parametrize("grad", ["implicit", "unrolled", "last_step", None], ids=["implicit", "unrolled", "last_step", "no-grad"])
@pytest.mark.parametrize("kwargs", VARIANTS.values(), ids=VARIANTS.keys())
def test_the_early_stop_and_converged_use_one_residual_and_one_tol(kwargs, grad):
    """The run stops at the first check where every item's ``error <= tol``, so it reports
    ``converged`` all True there, and a run cut at any earlier check reports it not all True."""
    cost, row_mask, col_mask = _problem()
    tol, check_every, max_iter = 1e-7, 3, 2000
    options = dict(eps=0.1, tol=tol, check_every=check_every, **kwargs)

    def run(n: int):
        leaf = cost.clone().requires_grad_(grad is not None)
        with torch.set_grad_enabled(grad is not None):
            return solve(leaf, row_mask, col_mask, max_iter=n, grad=grad or "implicit", **options)

    # last_step adds its one differentiable iteration after the loop's
    extra = 1 if grad == "last_step" else 0
    res = run(max_iter)
    assert res.n_iter < max_iter and (res.n_iter - extra) % check_every == 0
    assert bool(res.converged.all()) and float(res.error.max()) <= tol
    if extra:
        return
    checks = range(check_every, res.n_iter, check_every)
    # the loop stopped at the first check it passed: every earlier check failed on some item
    for n in list(checks)[-3:]:
        earlier = run(n)
        assert earlier.n_iter == n
        assert not bool(earlier.converged.all()) and float(earlier.error.max()) > tol, n


def test_without_tol_the_loop_runs_max_iter_and_converged_uses_the_default_tol():
    cost, row_mask, col_mask = _problem()
    for dtype, default in ((torch.float64, 1e-6), (torch.float32, 1e-5)):
        res = solve(cost.to(dtype), row_mask, col_mask, eps=0.1, rho_rows=0.3, max_iter=700)
        assert res.n_iter == 700
        torch.testing.assert_close(res.converged, res.error <= default, rtol=0, atol=0)
        assert bool(res.converged.all())
        short = solve(cost.to(dtype), row_mask, col_mask, eps=0.1, rho_rows=0.3, max_iter=5)
        assert short.n_iter == 5 and not bool(short.converged.all())


def test_checks_start_at_min_iter_on_multiples_of_check_every():
    """A tol that every iterate meets stops the loop at the first check: iteration 10 with the
    defaults, ``check_every`` when set, and the first multiple of it ``>= min_iter``."""
    cost, row_mask, col_mask = _problem()
    loose = dict(eps=0.1, rho_rows=0.3, tol=1e3, max_iter=100)
    assert solve(cost, row_mask, col_mask, **loose).n_iter == 10
    assert solve(cost, row_mask, col_mask, check_every=1, **loose).n_iter == 1
    assert solve(cost, row_mask, col_mask, check_every=7, **loose).n_iter == 7
    assert solve(cost, row_mask, col_mask, check_every=1, min_iter=37, **loose).n_iter == 37
    assert solve(cost, row_mask, col_mask, check_every=10, min_iter=37, **loose).n_iter == 40
    assert solve(cost, row_mask, col_mask, check_every=30, min_iter=70, **loose).n_iter == 90
    # no check before max_iter: it runs to the end
    assert solve(cost, row_mask, col_mask, check_every=1, min_iter=100, **loose).n_iter == 100
    for grad in ("implicit", "unrolled"):
        leaf = cost.clone().requires_grad_(True)
        assert solve(leaf, row_mask, col_mask, check_every=1, min_iter=37, grad=grad, **loose).n_iter == 37
    # last_step runs the loop to at most max_iter - 1, then its one differentiable iteration
    leaf = cost.clone().requires_grad_(True)
    assert solve(leaf, row_mask, col_mask, check_every=1, min_iter=37, grad="last_step", **loose).n_iter == 38


def test_the_default_stopping_rule_is_the_explicit_one():
    cost, row_mask, col_mask = _problem()
    implicit = solve(cost, row_mask, col_mask, eps=0.1, rho_rows=0.3, tol=1e-6, max_iter=300)
    explicit = solve(cost, row_mask, col_mask, eps=0.1, rho_rows=0.3, tol=1e-6, max_iter=300, check_every=10, min_iter=1)
    assert implicit.n_iter == explicit.n_iter
    assert torch.equal(implicit.plan, explicit.plan) and torch.equal(implicit.converged, explicit.converged)


@pytest.mark.parametrize("name, value", [
    ("max_iter", 0), ("max_iter", 2.0), ("max_iter", True), ("max_iter", "10"),
    ("min_iter", 0), ("min_iter", -1), ("min_iter", 1.5), ("min_iter", False),
    ("check_every", 0), ("check_every", 10.0), ("check_every", True), ("check_every", None),
])
def test_counts_must_be_ints_of_at_least_one(name, value):
    cost, row_mask, col_mask = _problem()
    with pytest.raises(ValueError, match=f"{name} must be an int >= 1"):
        solve(cost, row_mask, col_mask, **{name: value})


@pytest.mark.parametrize("value", [0.0, -1e-3, float("nan"), "1e-3"])
def test_tol_must_be_none_or_positive(value):
    cost, row_mask, col_mask = _problem()
    with pytest.raises(ValueError, match="tol must be"):
        solve(cost, row_mask, col_mask, tol=value)


def test_min_iter_beyond_max_iter_is_refused():
    cost, row_mask, col_mask = _problem()
    with pytest.raises(ValueError, match="min_iter must be <= max_iter"):
        solve(cost, row_mask, col_mask, max_iter=10, min_iter=11)


@pytest.mark.parametrize("name, value, message", [
    ("_anchor_threshold", 0.0, "_anchor_threshold must be > 0"),
    ("_anchor_threshold", "big", "_anchor_threshold must be a real number"),
    ("_numpy_loop", 1, "_numpy_loop must be a bool"),
    ("_share_kernel", None, "_share_kernel must be a bool"),
    ("_hand_written_reverse", "yes", "_hand_written_reverse must be a bool"),
    ("_adjoint_from_kernels", 0, "_adjoint_from_kernels must be a bool"),
])
def test_private_arguments_are_validated_too(name, value, message):
    cost, row_mask, col_mask = _problem()
    with pytest.raises(ValueError, match=message):
        solve(cost, row_mask, col_mask, **{name: value})
