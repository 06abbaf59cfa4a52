"""otalign.ot: batched, masked, log-domain entropic optimal transport (balanced, semi-relaxed /
unbalanced, partial, temporal-order prior). Pure tensor maths: imports torch, and NumPy where
installed (CPU loops without autograd run their vector arithmetic in it; torch otherwise).

    from otalign.ot import solve, cosine_cost, temporal_order_cost
    res = solve(cosine_cost(frames, tokens), frame_mask, token_mask, eps=0.1, rho_rows=1.0)
    res.plan  # (B,T,N), zero on padding
"""
from otalign.ot.costs import cosine_cost, temporal_order_cost
from otalign.ot.solver import TransportProblem, TransportResult, solve

__all__ = ["solve", "TransportResult", "TransportProblem", "cosine_cost", "temporal_order_cost"]
