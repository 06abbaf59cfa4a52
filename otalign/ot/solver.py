r"""Batched, masked, log-domain entropic optimal transport: balanced, (semi-)unbalanced, partial.

The whole path of one iteration lives in this file: :func:`solve` builds a
:class:`TransportProblem`, :func:`_iterate` runs the one loop (the variant is a parameter),
:class:`_StabilisedKernel` holds the only place where log-sum-exps are computed, and
:class:`TransportResult` derives marginals and the primal value from the plan.

Notation (rows = frames i < T, columns = tokens j < N, per batch item)::

    min_{P >= 0}  <C, P> + eps * KL(P | R) + rho_rows * KL(P 1 | a) + rho_cols * KL(P^T 1 | b)

``KL(p | q) = sum p log(p/q) - p + q`` (generalised), ``R = a ⊗ b`` (``reference="product"``, POT's
``reg_type='kl'``) or ``R = 1`` (``reference="ones"``, the entropy of POT/OTT). ``rho = inf`` is a
hard marginal. In scaled potentials ``phi = f/eps``, ``psi = g/eps`` and the log-kernel
``L_ij = -C_ij/eps + log R_ij`` the generalised Sinkhorn iteration (Chizat et al. 2018) is::

    phi_i <- lam_rows * (log a_i - LSE_j [L_ij + psi_j])      lam = rho / (rho + eps), 1 if rho = inf
    psi_j <- lam_cols * (log b_j - LSE_i [L_ij + phi_i])
    P_ij   = exp(L_ij + phi_i + psi_j)

which is, iterate for iterate, POT's ``sinkhorn_knopp_unbalanced`` with ``u = exp(phi)``,
``v = exp(psi)`` (rows updated first, both starting at 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor

from otalign.ot.costs import temporal_order_cost

__all__ = ["solve", "TransportProblem", "TransportResult"]

Reference = Literal["product", "ones"]
GradMode = Literal["unrolled", "last_step"]


# --------------------------------------------------------------------------------------------
# Problem
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransportProblem:
    """A validated, batched problem. Padding is encoded by masks; every tensor is finite.

    ``log_kernel`` is ``L = -C/eps + log R`` on valid cells and a finite placeholder on padding
    (padding never enters a sum: the kernels mask it). ``log_a``/``log_b`` are 0 on padding, so
    ``log(0)`` is never taken.
    """

    cost: Tensor  # (B,T,N) cost actually solved (order prior included), 0 on padding
    log_kernel: Tensor  # (B,T,N)
    row_mask: Tensor  # (B,T) bool
    col_mask: Tensor  # (B,N) bool
    a: Tensor  # (B,T), 0 on padding
    b: Tensor  # (B,N), 0 on padding
    log_a: Tensor  # (B,T), 0 on padding
    log_b: Tensor  # (B,N), 0 on padding
    eps: float
    rho_rows: float
    rho_cols: float
    partial_mass: Optional[float]
    reference: str

    @property
    def cell_mask(self) -> Tensor:
        return self.row_mask[:, :, None] & self.col_mask[:, None, :]

    @property
    def lam_rows(self) -> float:
        return 1.0 if math.isinf(self.rho_rows) else self.rho_rows / (self.rho_rows + self.eps)

    @property
    def lam_cols(self) -> float:
        return 1.0 if math.isinf(self.rho_cols) else self.rho_cols / (self.rho_cols + self.eps)

    @property
    def reference_mass(self) -> Tensor:
        """(B,) total mass of the reference measure R over valid cells."""
        if self.reference == "product":
            return self.a.sum(-1) * self.b.sum(-1)
        return self.row_mask.sum(-1).to(self.a.dtype) * self.col_mask.sum(-1).to(self.a.dtype)


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------
@dataclass
class TransportResult:
    """Output of :func:`solve`. For a 2-D input every tensor loses its batch dimension.

    Attributes:
        plan: (B,T,N) transport plan ``P``, exactly 0 on padding.
        row_potential: (B,T) ``f = eps * phi`` (for partial OT: ``eps * x``), 0 on padding.
        col_potential: (B,N) ``g = eps * psi`` (for partial OT: ``eps * (y + z)``, the column
            scaling with the total-mass shift folded in), 0 on padding.
        value: (B,) objective value.
            - balanced / unbalanced: the dual objective at the final potentials,
              ``D(f,g) = F_a(f) + F_b(g) - eps * (sum P - sum R)`` with
              ``F(f) = <a, f>`` if rho = inf else ``-rho * <a, exp(-f/rho) - 1>``.
              Equal to the primal objective at convergence (see ``primal_value``), and by the
              envelope theorem ``d value / d C = P`` there.
            - partial: the primal ``<C,P> + eps * KL(P | R)`` of the returned plan.
        error: (B,) L1 optimality residual of the marginals of the returned plan.
            - balanced / unbalanced: ``|P1 - a*exp(-f/rho_rows)|_1 + |P^T1 - b*exp(-g/rho_cols)|_1``
              (``exp(-f/inf) = 1``: a hard marginal's violation). It is 0 exactly at the fixed
              point (the first-order condition of the KL-relaxed marginal is
              ``P1 = a * exp(-f/rho)``).
            - partial: the constraint violation
              ``|(P1 - a)_+|_1 + |(P^T1 - b)_+|_1 + |sum P - m|``.
        n_iter: number of iterations run (a row update plus a column update, plus the mass step
            for partial OT, is one iteration).
        converged: (B,) bool, ``error <= tol`` (with ``tol=None``: 1e-9 in fp64, 1e-5 otherwise).
        problem: the validated batched problem (used by the derived properties).
    """

    plan: Tensor
    row_potential: Tensor
    col_potential: Tensor
    value: Tensor
    error: Tensor
    n_iter: int
    converged: Tensor
    problem: TransportProblem

    @property
    def row_marginal(self) -> Tensor:
        """``P 1``: (B,T) mass each frame sends."""
        return self.plan.sum(-1)

    @property
    def col_marginal(self) -> Tensor:
        """``P^T 1``: (B,N) mass each token receives."""
        return self.plan.sum(-2)

    @property
    def transported_mass(self) -> Tensor:
        """``sum P``: (B,)."""
        return self.plan.sum((-2, -1))

    @property
    def primal_value(self) -> Tensor:
        """(B,) ``<C,P> + eps KL(P|R) + rho_rows KL(P1|a) + rho_cols KL(P^T1|b)`` of the returned plan
        (hard-marginal and partial-OT constraint terms omitted; see ``error`` for their violation)."""
        p = self.problem
        plan = self.plan if self.plan.dim() == 3 else self.plan[None]
        f = self.row_potential if self.row_potential.dim() == 2 else self.row_potential[None]
        g = self.col_potential if self.col_potential.dim() == 2 else self.col_potential[None]
        row_marginal, col_marginal = plan.sum(-1), plan.sum(-2)
        # eps * sum P log(P/R) = sum P (f_i + g_j - C_ij), exact because log P - log R = (f+g-C)/eps
        value = (row_marginal * f).sum(-1) + (col_marginal * g).sum(-1) - eps_mass(p, plan)
        if math.isfinite(p.rho_rows) and p.partial_mass is None:
            value = value + p.rho_rows * _generalised_kl(row_marginal, p.a, p.row_mask)
        if math.isfinite(p.rho_cols) and p.partial_mass is None:
            value = value + p.rho_cols * _generalised_kl(col_marginal, p.b, p.col_mask)
        return value if self.plan.dim() == 3 else value[0]


def eps_mass(problem: TransportProblem, plan: Tensor) -> Tensor:
    """``eps * (sum P - sum R)``: the mass part of ``eps * KL(P | R)``."""
    return problem.eps * (plan.sum((-2, -1)) - problem.reference_mass)


def _generalised_kl(p: Tensor, q: Tensor, mask: Tensor) -> Tensor:
    """``sum_k p log(p/q) - p + q`` over valid k; 0 log 0 = 0; never log(0) on valid q > 0."""
    safe_p = torch.where(mask & (p > 0), p, torch.ones_like(p))
    safe_q = torch.where(mask, q, torch.ones_like(q))
    terms = torch.where(mask, p * torch.log(safe_p / safe_q) - p + q, torch.zeros_like(p))
    return terms.sum(-1)


# --------------------------------------------------------------------------------------------
# The one place where log-sum-exps are computed
# --------------------------------------------------------------------------------------------
class _StabilisedKernel:
    r"""Row and column log-sum-exps of ``L + potential`` as a stabilised kernel product.

    ``row_lse(psi)_i = LSE_{j valid} (L_ij + psi_j)`` is computed as
    ``sigma_i + log sum_j K_ij exp(psi_j - psi_hat_j)`` with ``K_ij = exp(L_ij + psi_hat_j - sigma_i)``
    and ``sigma_i = max_j (L_ij + psi_hat_j)`` frozen at an anchor ``psi_hat`` (absorption,
    Schmitzer 2019). While ``max |psi - psi_hat| <= threshold`` the sum is at least
    ``exp(-threshold)`` (the anchor's arg-max term) and at most ``N exp(threshold)``: it can
    neither underflow nor overflow, so this is the log-domain iteration computed exactly, but one
    iteration costs a batched mat-vec instead of an exp over (B,T,N). When the potential drifts
    past the threshold the kernel is rebuilt at the current potential (one exp pass).

    ``K`` is kept in two layouts: rows normalised (for ``row_lse``) and columns normalised, stored
    transposed and contiguous (for ``col_lse``), so both products are contiguous mat-vecs.

    The anchor and the shifts are detached: the result does not depend on them mathematically,
    so autograd through ``K`` and ``exp(psi - psi_hat)`` is the exact derivative.
    Padding: padded columns are 0 in the row kernel and padded rows 0 in the column kernel;
    padded rows/columns themselves get finite junk (callers mask it), never -inf.
    """

    def __init__(self, log_kernel: Tensor, row_mask: Tensor, col_mask: Tensor, threshold: float) -> None:
        self.log_kernel = log_kernel
        self.row_mask = row_mask
        self.col_mask = col_mask
        self.threshold = threshold
        self.row_anchor: Optional[Tensor] = None
        self.col_anchor: Optional[Tensor] = None
        self.n_rebuilds = 0

    def _drifted(self, potential: Tensor, anchor: Optional[Tensor]) -> bool:
        if anchor is None:
            return True
        return bool((potential.detach() - anchor).abs().max() > self.threshold)

    def row_lse(self, psi: Tensor) -> Tensor:
        """(B,N) column potential -> (B,T) ``LSE_j (L_ij + psi_j)`` over valid j."""
        if self._drifted(psi, self.row_anchor):
            self.row_anchor = psi.detach().clone()
            shifted = torch.where(self.col_mask[:, None, :], self.log_kernel + self.row_anchor[:, None, :], -math.inf)
            self.row_shift = shifted.detach().amax(-1)  # (B,T), finite: every item has a valid column
            self.row_kernel = torch.exp(shifted - self.row_shift[:, :, None])  # (B,T,N)
            self.n_rebuilds += 1
        scaled = torch.exp(psi - self.row_anchor)  # (B,N) in [e^-thr, e^thr]
        return self.row_shift + torch.log(torch.bmm(self.row_kernel, scaled[:, :, None])[:, :, 0])

    def col_lse(self, phi: Tensor) -> Tensor:
        """(B,T) row potential -> (B,N) ``LSE_i (L_ij + phi_i)`` over valid i."""
        if self._drifted(phi, self.col_anchor):
            self.col_anchor = phi.detach().clone()
            shifted = torch.where(self.row_mask[:, :, None], self.log_kernel + self.col_anchor[:, :, None], -math.inf)
            shifted = shifted.transpose(1, 2)  # (B,N,T)
            self.col_shift = shifted.detach().amax(-1)  # (B,N)
            self.col_kernel = torch.exp(shifted - self.col_shift[:, :, None]).contiguous()  # (B,N,T)
            self.n_rebuilds += 1
        scaled = torch.exp(phi - self.col_anchor)
        return self.col_shift + torch.log(torch.bmm(self.col_kernel, scaled[:, :, None])[:, :, 0])


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
@dataclass
class _State:
    """Scaled potentials. UOT uses phi, psi; partial OT (Dykstra) also the mass shift and the
    three Dykstra corrections (log q1, log q2, log q3 of POT's ``entropic_partial_wasserstein``)."""

    phi: Tensor  # (B,T)
    psi: Tensor  # (B,N)
    mass_shift: Tensor  # (B,) z; 0 for UOT
    row_correction: Tensor  # (B,T) alpha
    col_correction: Tensor  # (B,N) beta
    mass_correction: Tensor  # (B,) gamma

    def detached(self) -> "_State":
        return _State(*(t.detach() for t in (self.phi, self.psi, self.mass_shift, self.row_correction, self.col_correction, self.mass_correction)))


def _initial_state(problem: TransportProblem) -> _State:
    log_kernel = problem.log_kernel
    batch, n_rows, n_cols = log_kernel.shape
    zeros_rows = log_kernel.new_zeros(batch, n_rows)
    zeros_cols = log_kernel.new_zeros(batch, n_cols)
    zeros = log_kernel.new_zeros(batch)
    mass_shift = zeros
    if problem.partial_mass is not None:
        # POT starts from K * m / sum K
        total = torch.where(problem.cell_mask, log_kernel, -math.inf).flatten(1).logsumexp(-1)
        mass_shift = math.log(problem.partial_mass) - total
    return _State(zeros_rows, zeros_cols, mass_shift, zeros_rows, zeros_cols, zeros)


def _step(problem: TransportProblem, kernel: _StabilisedKernel, state: _State) -> _State:
    """One iteration: row update, column update (and, for partial OT, the total-mass step).

    Unbalanced (balanced when lam = 1)::

        phi <- lam_rows (log a - LSE_j [L + psi])          psi <- lam_cols (log b - LSE_i [L + phi])

    Partial OT, Dykstra's KL projections (Benamou et al. 2015, prop. 5; POT
    ``entropic_partial_wasserstein``) with ``P = exp(L + x_i + y_j + z)`` and corrections
    ``alpha, beta, gamma``::

        x <- min(log a - LSE_j [L + y + z], x + alpha)      alpha <- (x_old + alpha) - x      (P1 <= a)
        y <- min(log b - z - LSE_i [L + x], y + beta)       beta  <- (y_old + beta) - y       (P^T1 <= b)
        z <- log m - LSE_j [y_j + LSE_i [L + x]]            gamma <- (z_old + gamma) - z      (sum P = m)
    """
    row_mask, col_mask = problem.row_mask, problem.col_mask
    if problem.partial_mass is None:
        phi = problem.lam_rows * (problem.log_a - kernel.row_lse(state.psi))
        phi = torch.where(row_mask, phi, 0.0)
        psi = problem.lam_cols * (problem.log_b - kernel.col_lse(phi))
        psi = torch.where(col_mask, psi, 0.0)
        return _State(phi, psi, state.mass_shift, state.row_correction, state.col_correction, state.mass_correction)

    z = state.mass_shift[:, None]
    x_shifted = state.phi + state.row_correction
    x = torch.minimum(problem.log_a - kernel.row_lse(state.psi + z), x_shifted)
    x = torch.where(row_mask, x, 0.0)
    alpha = torch.where(row_mask, x_shifted - x, 0.0)
    col_lse = kernel.col_lse(x)
    y_shifted = state.psi + state.col_correction
    y = torch.minimum(problem.log_b - z - col_lse, y_shifted)
    y = torch.where(col_mask, y, 0.0)
    beta = torch.where(col_mask, y_shifted - y, 0.0)
    z_shifted = state.mass_shift + state.mass_correction
    z_new = math.log(problem.partial_mass) - torch.where(col_mask, y + col_lse, -math.inf).logsumexp(-1)
    gamma = z_shifted - z_new
    return _State(x, y, z_new, alpha, beta, gamma)


def _plan(problem: TransportProblem, state: _State) -> Tensor:
    log_plan = problem.log_kernel + state.phi[:, :, None] + (state.psi + state.mass_shift[:, None])[:, None, :]
    cell_mask = problem.cell_mask
    # double where: the exp never sees padding, and padding gets an exact 0 with zero gradient
    return torch.where(cell_mask, torch.exp(torch.where(cell_mask, log_plan, 0.0)), 0.0)


def _error(problem: TransportProblem, plan: Tensor, f: Tensor, g: Tensor) -> Tensor:
    row_marginal, col_marginal = plan.sum(-1), plan.sum(-2)
    if problem.partial_mass is not None:
        return (
            (row_marginal - problem.a).clamp_min(0).sum(-1)
            + (col_marginal - problem.b).clamp_min(0).sum(-1)
            + (plan.sum((-2, -1)) - problem.partial_mass).abs()
        )
    row_target, col_target = problem.a, problem.b
    if math.isfinite(problem.rho_rows):
        row_target = problem.a * torch.exp(-f / problem.rho_rows) if problem.rho_rows > 0 else row_marginal
    if math.isfinite(problem.rho_cols):
        col_target = problem.b * torch.exp(-g / problem.rho_cols) if problem.rho_cols > 0 else col_marginal
    row_error = torch.where(problem.row_mask, (row_marginal - row_target).abs(), 0.0).sum(-1)
    col_error = torch.where(problem.col_mask, (col_marginal - col_target).abs(), 0.0).sum(-1)
    return row_error + col_error


def _dual_value(problem: TransportProblem, plan: Tensor, f: Tensor, g: Tensor) -> Tensor:
    def conjugate_term(weights: Tensor, potential: Tensor, rho: float) -> Tensor:
        if math.isinf(rho):
            return (weights * potential).sum(-1)
        if rho == 0:
            return torch.zeros_like(potential[:, 0])
        return -rho * (weights * torch.expm1(-potential / rho)).sum(-1)

    return conjugate_term(problem.a, f, problem.rho_rows) + conjugate_term(problem.b, g, problem.rho_cols) - eps_mass(problem, plan)


def _iterate(problem: TransportProblem, state: _State, n_iter: int, tol: Optional[float], check_every: int, threshold: float) -> tuple[_State, int]:
    """Run up to ``n_iter`` iterations; with ``tol``, stop once every item's error <= tol
    (checked every ``check_every`` iterations, without gradient)."""
    kernel = _StabilisedKernel(problem.log_kernel, problem.row_mask, problem.col_mask, threshold)
    done = 0
    while done < n_iter:
        state = _step(problem, kernel, state)
        done += 1
        if tol is not None and (done % check_every == 0 or done == n_iter):
            with torch.no_grad():
                plan = _plan(problem, state)
                err = _error(problem, plan, problem.eps * state.phi, problem.eps * (state.psi + state.mass_shift[:, None]))
            if bool((err <= tol).all()):
                break
    return state, done


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _check_mask(mask: Optional[Tensor], name: str, shape: tuple[int, int], device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {shape} (batch size and length must match cost)")
    return mask.to(device)


def _weights(weights: Optional[Tensor], name: str, mask: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """-> (mask, w, log w) with w zero and log w zero on padding; zero weights count as padding."""
    if weights is None:
        counts = mask.sum(-1, keepdim=True).clamp_min(1).to(dtype)
        w = torch.where(mask, 1.0 / counts, 0.0).to(dtype)
        log_w = torch.where(mask, -torch.log(counts), 0.0).to(dtype)
        return mask, w, log_w
    if not isinstance(weights, Tensor) or tuple(weights.shape) != tuple(mask.shape):
        raise ValueError(f"{name} must be a tensor of shape {tuple(mask.shape)}, got {getattr(weights, 'shape', type(weights))}")
    weights = weights.to(device=mask.device, dtype=dtype)
    valid_weights = torch.where(mask, weights, 0.0)
    if not bool(torch.isfinite(valid_weights).all()) or bool((valid_weights < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative on valid entries")
    mask = mask & (weights > 0)
    w = torch.where(mask, weights, 0.0)
    log_w = torch.where(mask, torch.log(torch.where(mask, weights, 1.0)), 0.0)
    return mask, w, log_w


def _check_rho(rho: float, name: str) -> float:
    rho = float(rho)
    if math.isnan(rho) or rho < 0:
        raise ValueError(f"{name} must be >= 0 (inf = hard marginal), got {rho}")
    return rho


def _make_problem(
    cost: Tensor,
    row_mask: Optional[Tensor],
    col_mask: Optional[Tensor],
    row_weights: Optional[Tensor],
    col_weights: Optional[Tensor],
    eps: float,
    rho_rows: float,
    rho_cols: float,
    partial_mass: Optional[float],
    order_weight: float,
    reference: str,
) -> TransportProblem:
    if not isinstance(cost, Tensor):
        raise ValueError(f"cost must be a torch.Tensor, got {type(cost).__name__}")
    if cost.dim() != 3:
        raise ValueError(f"cost must have shape (B,T,N) or (T,N), got {tuple(cost.shape)}")
    if cost.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"cost must be float32 or float64, got {cost.dtype}")
    batch, n_rows, n_cols = cost.shape
    if batch == 0 or n_rows == 0 or n_cols == 0:
        raise ValueError(f"cost must be non-empty, got shape {tuple(cost.shape)}")
    eps = float(eps)
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    rho_rows = _check_rho(rho_rows, "rho_rows")
    rho_cols = _check_rho(rho_cols, "rho_cols")
    if reference not in ("product", "ones"):
        raise ValueError(f"reference must be 'product' or 'ones', got {reference!r}")
    order_weight = float(order_weight)
    if not (math.isfinite(order_weight) and order_weight >= 0):
        raise ValueError(f"order_weight must be finite and >= 0, got {order_weight}")
    if partial_mass is not None:
        partial_mass = float(partial_mass)
        if not (0 < partial_mass <= 1):
            raise ValueError(f"partial_mass must be in (0, 1], got {partial_mass}")
        if math.isfinite(rho_rows) or math.isfinite(rho_cols):
            raise ValueError("partial_mass cannot be combined with finite rho_rows/rho_cols (partial OT has hard inequality marginals)")

    device, dtype = cost.device, cost.dtype
    row_mask = _check_mask(row_mask, "row_mask", (batch, n_rows), device)
    col_mask = _check_mask(col_mask, "col_mask", (batch, n_cols), device)
    row_mask, a, log_a = _weights(row_weights, "row_weights", row_mask, dtype)
    col_mask, b, log_b = _weights(col_weights, "col_weights", col_mask, dtype)
    for name, mask in (("row_mask/row_weights", row_mask), ("col_mask/col_weights", col_mask)):
        empty = (~mask.any(-1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"{name}: batch item(s) {empty} have no valid entry with positive weight")
    cell_mask = row_mask[:, :, None] & col_mask[:, None, :]
    bad = (~torch.isfinite(cost.detach()) & cell_mask).flatten(1).any(-1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"cost has NaN or Inf on valid entries of batch item(s) {bad}")
    if partial_mass is not None:
        too_much = ((a.sum(-1) < partial_mass * (1 - 1e-6)) | (b.sum(-1) < partial_mass * (1 - 1e-6))).nonzero().flatten().tolist()
        if too_much:
            raise ValueError(f"partial_mass {partial_mass} exceeds min(sum a, sum b) for batch item(s) {too_much}")

    cost = torch.where(cell_mask, cost, 0.0)  # padding may hold anything (even NaN): drop it here
    if order_weight > 0:
        cost = cost + order_weight * temporal_order_cost(row_mask, col_mask, dtype=dtype)
    log_kernel = -cost / eps
    if reference == "product":
        log_kernel = log_kernel + log_a[:, :, None] + log_b[:, None, :]
    return TransportProblem(cost, log_kernel, row_mask, col_mask, a, b, log_a, log_b, eps, rho_rows, rho_cols, partial_mass, reference)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def solve(
    cost: Tensor,
    row_mask: Optional[Tensor] = None,
    col_mask: Optional[Tensor] = None,
    row_weights: Optional[Tensor] = None,
    col_weights: Optional[Tensor] = None,
    *,
    eps: float = 0.1,
    rho_rows: float = float("inf"),
    rho_cols: float = float("inf"),
    partial_mass: Optional[float] = None,
    order_weight: float = 0.0,
    reference: Reference = "product",
    max_iter: int = 100,
    tol: Optional[float] = None,
    grad: GradMode = "unrolled",
) -> TransportResult:
    r"""Entropic (unbalanced / partial) optimal transport between frames (rows) and tokens (columns).

    Solves, for every batch item independently and over its valid cells only::

        min_{P >= 0}  <C', P> + eps KL(P | R) + rho_rows KL(P 1 | a) + rho_cols KL(P^T 1 | b)
        C' = C + order_weight * temporal_order_cost(row_mask, col_mask)

    - ``rho_rows = rho_cols = inf``: balanced OT (OT-CAKT);
    - ``rho_cols = inf``, finite ``rho_rows``: semi-relaxed UOT (the paper's model: every token
      gets its mass ``b``, frames of silence/noise may shed mass; smaller ``rho_rows`` sheds more);
    - both finite: fully unbalanced OT;
    - ``partial_mass = m``: partial OT ``min <C',P> + eps KL(P|R)`` s.t. ``P1 <= a``,
      ``P^T1 <= b``, ``sum P = m`` (rho must stay infinite). With ``reference="ones"`` this is
      POT's ``ot.partial.entropic_partial_wasserstein``.

    Iterations are log-domain Sinkhorn (see the module docstring) computed through a stabilised
    kernel (:class:`_StabilisedKernel`), identical to POT's ``sinkhorn_knopp_unbalanced`` /
    ``entropic_partial_wasserstein`` iterate for iterate, but without under/overflow at any eps.

    Args:
        cost: (B,T,N) or (T,N) float32/float64 cost. Values on padded cells are ignored (may be
            anything, NaN included); NaN/Inf on a valid cell raises ValueError.
        row_mask, col_mask: (B,T), (B,N) bool, True = valid. Default all valid.
        row_weights, col_weights: ``a``, ``b`` (B,T), (B,N) non-negative. Default uniform over valid
            entries (each sums to 1). A zero weight counts as padding (no log(0) anywhere).
        eps: entropic regularisation (> 0), in cost units.
        rho_rows, rho_cols: marginal relaxation strengths in cost units, >= 0; ``inf`` = hard.
            ``lam = rho / (rho + eps)`` is POT's exponent ``fi`` and OTT's ``tau``.
        partial_mass: total mass ``m`` in (0, 1] for partial OT (``<= min(sum a, sum b)``).
        order_weight: strength (cost units) of the temporal-order prior, 0 = off.
        reference: ``"product"``: ``R = a ⊗ b`` (POT ``reg_type='kl'``); ``"ones"``: ``R = 1``
            (entropy; POT ``reg_type='entropy'``, OTT's convention). Balanced plans coincide.
        max_iter: iterations to run (>= 1); exactly this many when ``tol is None``.
        tol: stop early once every item's ``error <= tol`` (checked every 10 iterations).
        grad: how gradients flow to ``cost``/weights:
            - ``"unrolled"``: autograd through every iteration, i.e. the exact derivative of the
              truncated iteration (the returned plan is a function of C, and you get its exact
              Jacobian). The stabilised kernel keeps the stored tensors per iteration to vectors,
              but the (B,T,N) kernels are rebuilt (and kept) each time potentials drift.
            - ``"last_step"``: iterations 1..n-1 run without autograd, the potentials are
              detached, and only the last iteration is differentiated. Memory does not grow with
              ``max_iter``. This is an envelope-style approximation: exact for the
              ``value`` at convergence (``d value / d C = P``, envelope theorem; the last step's
              ``d value / d potentials`` is zero at the fixed point), approximate for
              derivatives of the plan itself (it omits the dependence of the incoming potentials
              on ``C``). Forward outputs are identical to ``"unrolled"``.

    Returns:
        :class:`TransportResult` (batch dimension dropped for a 2-D ``cost``).

    Raises:
        ValueError: naming the argument, for wrong shapes or batch sizes, NaN/Inf costs,
            ``eps <= 0``, ``rho < 0``, ``partial_mass`` outside (0, 1], or a batch item whose rows
            or columns are all masked.
    """
    if grad not in ("unrolled", "last_step"):
        raise ValueError(f"grad must be 'unrolled' or 'last_step', got {grad!r}")
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if tol is not None and not (float(tol) > 0):
        raise ValueError(f"tol must be None or > 0, got {tol}")
    squeeze = isinstance(cost, Tensor) and cost.dim() == 2
    if squeeze:
        cost = cost[None]
        row_mask, col_mask, row_weights, col_weights = (None if t is None else (t[None] if isinstance(t, Tensor) else t) for t in (row_mask, col_mask, row_weights, col_weights))
    problem = _make_problem(cost, row_mask, col_mask, row_weights, col_weights, eps, rho_rows, rho_cols, partial_mass, order_weight, reference)

    # kernel products stay exact while potentials drift by <= threshold (in units of eps)
    threshold = 15.0 if problem.log_kernel.dtype == torch.float32 else 100.0
    check_every = 10
    state = _initial_state(problem)
    if grad == "unrolled":
        state, n_iter = _iterate(problem, state, max_iter, tol, check_every, threshold)
    else:
        with torch.no_grad():
            state, n_iter = _iterate(problem, state.detached(), max_iter - 1, tol, check_every, threshold)
        state = _step(problem, _StabilisedKernel(problem.log_kernel, problem.row_mask, problem.col_mask, threshold), state.detached())
        n_iter += 1

    plan = _plan(problem, state)
    f = problem.eps * state.phi
    g = problem.eps * (state.psi + state.mass_shift[:, None])
    g = torch.where(problem.col_mask, g, 0.0)
    with torch.no_grad():
        error = _error(problem, plan, f, g)
    if problem.partial_mass is None:
        value = _dual_value(problem, plan, f, g)
    else:
        # <C,P> + eps KL(P|R) = <P1, f> + <P^T1, g> - eps (sum P - sum R), since eps log(P/R) = f + g - C
        value = (plan.sum(-1) * f).sum(-1) + (plan.sum(-2) * g).sum(-1) - eps_mass(problem, plan)
    converged_tol = tol if tol is not None else (1e-9 if plan.dtype == torch.float64 else 1e-5)
    converged = error <= converged_tol
    if squeeze:
        plan, f, g, value, error, converged = plan[0], f[0], g[0], value[0], error[0], converged[0]
    return TransportResult(plan, f, g, value, error, n_iter, converged, problem)
