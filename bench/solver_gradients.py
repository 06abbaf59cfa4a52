"""How far ``grad="last_step"`` is from the exact (implicit) gradient, and how far fp32 plans are
from fp64 ones, at the experiment's operating point and on uniform random costs.

    python -m bench.solver_gradients     # ~1 min; prints markdown for docs/benchmarks.md

Relative error of d<W,P>/dC (W a fixed random probe) of last_step against implicit, both on the
same converged or truncated solve; implicit is checked against finite differences in
tests/ot/test_gradients.py. B=8, T=120, N=20, semi-relaxed UOT.
"""
from __future__ import annotations

import torch

from otalign.ot import cosine_cost, solve


def _costs(kind: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if kind == "cosine":
        return cosine_cost(torch.randn(8, 120, 32, dtype=torch.float64, generator=generator), torch.randn(8, 20, 32, dtype=torch.float64, generator=generator))
    return torch.rand(8, 120, 20, dtype=torch.float64, generator=generator) * 2


def _gradient(cost: torch.Tensor, probe: torch.Tensor, grad: str, **kwargs) -> torch.Tensor:
    leaf = cost.clone().requires_grad_(True)
    res = solve(leaf, grad=grad, **kwargs)
    (gradient,) = torch.autograd.grad((res.plan * probe).sum(), leaf)
    return gradient


def main() -> None:
    print("| costs | rho_rows | iterations | last_step relative error of d<W,P>/dC |")
    print("|---|---|---|---|")
    for kind in ("cosine", "uniform"):
        cost = _costs(kind)
        probe = torch.randn(cost.shape, dtype=cost.dtype, generator=torch.Generator().manual_seed(1))
        for rho in (0.03, 0.3, 3.0):
            for iterations in (30, 4000):
                options = dict(eps=0.05, rho_rows=rho, max_iter=iterations)
                exact = _gradient(cost, probe, "implicit", **options)
                approx = _gradient(cost, probe, "last_step", **options)
                print(f"| {kind} | {rho} | {iterations} | {float((approx - exact).norm() / exact.norm()):.3f} |")
    print()
    print("| eps | max |P_fp32 - P_fp64| (uniform costs in [0,2], rho_rows 0.3, 2000 iterations) |")
    print("|---|---|")
    cost = _costs("uniform")
    for eps in (0.1, 0.05, 0.01, 0.005, 0.001):
        plans = [solve(cost.to(dtype), eps=eps, rho_rows=0.3, max_iter=2000).plan.double() for dtype in (torch.float32, torch.float64)]
        print(f"| {eps} | {float((plans[0] - plans[1]).abs().max()):.1e} |")


if __name__ == "__main__":
    main()
