"""Does translating the potentials inside the loop (translation-invariant Sinkhorn, Séjourné,
Vialard and Peyré 2023) reach a given plan accuracy in fewer iterations than otalign's loop,
which translates once after it?

    python -m bench.solver_translation     # ~1 min; prints a markdown table

A plain fp64 log-domain prototype of both loops (the same updates as otalign.ot.solve, POT's
reg_type='kl'), on cosine costs B=8, T=120, N=20, eps 0.05; the reference plan is otalign's at
20,000 iterations. Counts the iterations until every plan entry is within 1e-8 of it.
"""
from __future__ import annotations

import math

import torch

from otalign.ot import cosine_cost, solve


def _iterations_to(cost: torch.Tensor, eps: float, rho_rows: float, rho_cols: float, reference: torch.Tensor, in_loop: bool, limit: int = 5000, accuracy: float = 1e-8) -> int:
    batch, rows, cols = cost.shape
    log_a, log_b = torch.full((batch, rows), -math.log(rows), dtype=cost.dtype), torch.full((batch, cols), -math.log(cols), dtype=cost.dtype)
    log_kernel = -cost / eps + log_a[:, :, None] + log_b[:, None, :]
    lam_rows = 1.0 if math.isinf(rho_rows) else rho_rows / (rho_rows + eps)
    lam_cols = 1.0 if math.isinf(rho_cols) else rho_cols / (rho_cols + eps)
    inverse_reach = (0 if math.isinf(rho_rows) else eps / rho_rows) + (0 if math.isinf(rho_cols) else eps / rho_cols)
    phi, psi = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for iteration in range(1, limit + 1):
        phi = lam_rows * (log_a - (log_kernel + psi[:, None, :]).logsumexp(-1))
        psi = lam_cols * (log_b - (log_kernel + phi[:, :, None]).logsumexp(1))
        if in_loop:  # the optimal translation along (phi + t, psi - t), as after otalign's loop
            row_term = log_a if math.isinf(rho_rows) else log_a - phi * (eps / rho_rows)
            col_term = log_b if math.isinf(rho_cols) else log_b - psi * (eps / rho_cols)
            shift = (row_term.logsumexp(-1) - col_term.logsumexp(-1)) / inverse_reach
            phi, psi = phi + shift[:, None], psi - shift[:, None]
        plan = (log_kernel + phi[:, :, None] + psi[:, None, :]).exp()
        if float((plan - reference).abs().max()) <= accuracy:
            return iteration
    return limit


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    cost = cosine_cost(torch.randn(8, 120, 32, dtype=torch.float64, generator=generator), torch.randn(8, 20, 32, dtype=torch.float64, generator=generator))
    eps = 0.05
    print("| rho_rows | rho_cols | iterations to 1e-8, otalign's loop | translation inside the loop |")
    print("|---|---|---|---|")
    for rho_rows, rho_cols in ((0.01, math.inf), (0.03, math.inf), (0.3, math.inf), (3.0, math.inf), (0.03, 0.03), (0.3, 0.3), (3.0, 3.0)):
        reference = solve(cost, eps=eps, rho_rows=rho_rows, rho_cols=rho_cols, max_iter=20000).plan
        counts = [_iterations_to(cost, eps, rho_rows, rho_cols, reference, in_loop) for in_loop in (False, True)]
        print(f"| {rho_rows} | {rho_cols} | {counts[0]} | {counts[1]} |", flush=True)


if __name__ == "__main__":
    main()
