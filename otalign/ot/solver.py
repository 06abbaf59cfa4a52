r"""Batched, masked, log-domain entropic optimal transport: balanced, (semi-)unbalanced, partial.

The whole path of one iteration lives in this file: :func:`solve` validates and builds a
:class:`TransportProblem`, picks a gradient mode (``_run_plain``, ``_run_implicit``,
``_run_unrolled``, ``_run_last_step``) and hands over to :func:`_result`; :func:`_iterate` is the
one loop, and the variant is a parameter (:class:`_UnbalancedSteps` or :class:`_PartialSteps`);
:class:`_StoppingRule` says when it stops and what ``converged`` means (one residual, one tol);
:class:`_Numerics` says how it computes (the fast paths, set by solve's private arguments); :class:`_StabilisedKernel` is the only
place where sums over cells are computed; :class:`_ImplicitSinkhorn` differentiates the converged
map through the adjoint of the fixed point (the default), :class:`_UnrolledSinkhorn` is the
reverse pass of the truncated unbalanced loop; :func:`_translate` removes the potentials' drift
after the loop; :class:`TransportResult` derives marginals and the primal value from the plan.

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

How it is computed (and why it is fast): the log-sum-exps are evaluated exactly as batched
mat-vecs with kernels whose potentials are absorbed at an anchor and renormalised (Schmitzer's
stabilisation); a kernel is rebuilt only when a potential drifts too far from its anchor, so an
iteration costs two ``bmm`` and a few (B,T)/(B,N) vector ops instead of two exp passes over
(B,T,N), at any eps and in fp32 (see :class:`_StabilisedKernel` for the bounds that make it exact).
An unpadded batch uses one kernel for both mat-vecs where its bounds allow
(:meth:`_StabilisedKernel.share_row_kernel`), and on CPU a loop that autograd does not record
(the forward of ``grad="implicit"`` and ``"unrolled"``, and any call without gradients) runs its
vector arithmetic in NumPy on the same memory (:class:`_NumpyVectors`; without a tape, into
buffers reused by every iteration, :meth:`_UnbalancedSteps._step_in_place`). Neither changes a
number beyond rounding, and the buffers change none (``tests/ot/test_fast_paths.py``).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor

try:  # optional: only the CPU fast path of the loop uses it (see _NumpyVectors)
    import numpy as np
except ImportError:  # pragma: no cover - torch works without NumPy
    np = None

from otalign.ot.costs import temporal_order_cost

__all__ = ["solve", "TransportProblem", "TransportResult"]

Reference = Literal["product", "ones"]
GradMode = Literal["implicit", "unrolled", "last_step"]

# Kernel sums stay exact while potentials are within this many units (of eps) of the kernel's
# anchor (see _StabilisedKernel); ``solve(_anchor_threshold=...)`` overrides it (tests lower it
# to force frequent re-anchoring).
_ANCHOR_THRESHOLD = {torch.float32: 10.0, torch.float64: 100.0}
# The stopping rule's defaults (see solve: max_iter, min_iter, check_every, tol)
_CHECK_EVERY = 10
_MIN_ITER = 1
# ``converged`` without an explicit tol: the L1 optimality residual in units of mass
_DEFAULT_TOL = {torch.float32: 1e-5, torch.float64: 1e-6}


@dataclass(frozen=True)
class _Numerics:
    """How the loop computes, never what: every choice here gives the same numbers to rounding
    (``tests/ot/test_fast_paths.py``, ``test_solver.py``). Set by solve's private arguments.

    - ``anchor_threshold``: ``D``, the drift (in units of eps) a kernel's anchor tolerates.
    - ``numpy_loop``: CPU loops that autograd does not record run their vector arithmetic in
      NumPy (:class:`_NumpyVectors`); False: torch throughout.
    - ``share_kernel``: unpadded batches use one stabilised kernel for both mat-vecs where its
      bounds allow (:meth:`_StabilisedKernel.share_row_kernel`); False: two kernels.
    - ``hand_written_reverse``: unrolled gradients of (semi-)unbalanced OT use
      :class:`_UnrolledSinkhorn`'s reverse pass; False: plain autograd through the loop (same
      numbers, ~3x slower backward).
    - ``adjoint_from_kernels``: the implicit adjoint takes its softmaxes from the loop's kernels
      where it can (:meth:`_StabilisedKernel.softmaxes`); False: always from the log-kernel.
    """

    anchor_threshold: float
    numpy_loop: bool = True
    share_kernel: bool = True
    hand_written_reverse: bool = True
    adjoint_from_kernels: bool = True


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
    padded_rows: bool  # some row is masked (lets unpadded batches skip every masking pass)
    padded_cols: bool
    max_scaled_cost: float  # max |C'| / eps over valid cells

    @property
    def cell_mask(self) -> Tensor:
        return self.row_mask[:, :, None] & self.col_mask[:, None, :]

    @property
    def masked_log_kernel(self) -> Tensor:
        """``L`` with -inf on every padded cell (exp gives an exact 0 with a zero gradient)."""
        if not (self.padded_rows or self.padded_cols):
            return self.log_kernel
        return torch.where(self.cell_mask, self.log_kernel, -math.inf)

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
        error: (B,) L1 optimality residual, in units of mass.
            - balanced / unbalanced: ``|P1 - a*exp(-f/rho_rows)|_1 + |P^T1 - b*exp(-g/rho_cols)|_1``
              (``exp(-f/inf) = 1``: a hard marginal's violation), at the translated potentials
              (see ``solve``), so it is as small as the plan's error: about 25-30x the largest
              plan-entry error at eps 0.05, rho 0.3-3. It is 0 exactly at the fixed point (the
              first-order condition of the KL-relaxed marginal is ``P1 = a * exp(-f/rho)``).
            - partial: the KKT residual of ``_partial_error`` (capacity, complementary slackness
              and mass), not feasibility alone.
        n_iter: number of iterations run (a row update plus a column update, plus the mass step
            for partial OT, is one iteration).
        converged: (B,) bool, ``error <= tol``, the residual and tolerance of the loop's early
            stop (see ``solve``'s stopping rule; with ``tol=None``: 1e-6 in fp64, 1e-5 in fp32;
            at eps 0.05, rho 3 in fp64 that is True once every plan entry is within 1e-8 and
            never while the value is off by more than 1e-6, ``tests/ot/test_optimality.py``).
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
        value = (row_marginal * f).sum(-1) + (col_marginal * g).sum(-1) - _eps_mass(p, plan)
        if math.isfinite(p.rho_rows) and p.partial_mass is None:
            value = value + p.rho_rows * _generalised_kl(row_marginal, p.a, p.row_mask)
        if math.isfinite(p.rho_cols) and p.partial_mass is None:
            value = value + p.rho_cols * _generalised_kl(col_marginal, p.b, p.col_mask)
        return value if self.plan.dim() == 3 else value[0]


def _eps_mass(problem: TransportProblem, plan: Tensor) -> Tensor:
    """``eps * (sum P - sum R)``: the mass part of ``eps * KL(P | R)``."""
    return problem.eps * (plan.sum((-2, -1)) - problem.reference_mass)



def _generalised_kl(p: Tensor, q: Tensor, mask: Tensor) -> Tensor:
    """``sum_k p log(p/q) - p + q`` over valid k; 0 log 0 = 0; never log(0) on valid q > 0."""
    safe_p = torch.where(mask & (p > 0), p, torch.ones_like(p))
    safe_q = torch.where(mask, q, torch.ones_like(q))
    terms = torch.where(mask, p * torch.log(safe_p / safe_q) - p + q, torch.zeros_like(p))
    return terms.sum(-1)


# --------------------------------------------------------------------------------------------
# The stabilised kernel: the one place where sums over cells are computed
# --------------------------------------------------------------------------------------------
class _StabilisedKernel:
    r"""Row and column sums of ``exp(L + potentials)`` as batched mat-vecs with anchored kernels.

    Two kernels, each anchored at a (detached) potential ``psi_hat`` / ``phi_hat`` (absorption,
    Schmitzer 2019)::

        row-sum kernel  K_ij = exp(L_ij + psi_hat_j - sigma_i),  sigma_i = max_j (L_ij + psi_hat_j)
        col-sum kernel  H_ij = exp(L_ij + phi_hat_i - tau_j),    tau_j   = max_i (L_ij + phi_hat_i)

    so ``LSE_j (L_ij + psi_j) = sigma_i + log sum_j K_ij exp(psi_j - psi_hat_j)`` exactly. Each
    kernel has a 1 in every row (column), so while ``|psi - psi_hat| <= D`` the sum lies in
    ``[e^-D, N e^D]``: no underflow, no overflow, and entries that underflowed when the kernel was
    built (below e^-87 in fp32) stay negligible (< e^(2D-87) relative). One iteration then costs
    two batched mat-vecs instead of two exp passes over (B,T,N); a kernel is rebuilt (one exp
    pass) only when its anchor has drifted too far.

    Layout (CPU measurements, (32,250,30) fp32): a (1,K)@(K,M) ``bmm`` is ~9x faster than
    (M,K)@(K,1), and a reduction is fast only when the contiguous (last) dimension is the long one
    (amax over N=30 last: 450 us; over N as the middle dim of (B,N,T): 78 us). So both kernels are
    stored (B,N,T), ``K`` as ``row_kernel`` and ``H^T`` as ``col_kernel_t``, and both shifts are
    reduced in that layout. ``H^T u`` is then ``u (H^T)^T``, a mat-vec on a transposed view, which
    BLAS takes as is: NumPy's ``matmul`` measured 16 us for it against 28 us on a (B,T,N) copy of
    ``H``; torch's ``bmm`` 31 against 27 us. The (B,N,T) log-kernel is the only copy made.

    Anchors and shifts are detached. The sums do not depend on them mathematically, and callers
    use ``exp(psi - psi_hat)`` with the same detached ``psi_hat``, so autograd through the kernels
    and the scalings is the exact derivative of the log-domain iteration.

    Padding: padded columns are 0 in ``K`` and padded rows 0 in ``H``, so padding never enters a
    valid sum. Padded rows of ``K`` and padded columns of ``H`` hold finite placeholder values:
    padded entries get finite junk potentials (masked by the caller), never -inf or NaN.
    """

    def __init__(self, problem: TransportProblem, numerics: _Numerics, psi_hat: Tensor, phi_hat: Optional[Tensor] = None, psi_hat_is_zero: bool = False) -> None:
        """Builds ``K`` at ``psi_hat``; ``H`` at ``phi_hat`` now, or later by ``anchor_row_potential``.
        ``psi_hat_is_zero``: the caller made ``psi_hat`` with ``zeros_like`` (no host sync to find out)."""
        self.threshold = threshold = numerics.anchor_threshold
        self.numpy_loop = numerics.numpy_loop
        # the LSE helpers tolerate a larger drift before rebuilding: accuracy is kept up to
        # |drift| = 3 * threshold (fp32: lost terms < e^(60-87) relative)
        self.lse_limit = 3 * threshold
        self.n_rebuilds = 0
        # one kernel for both sums is possible only without padding (see share_row_kernel)
        self.can_share = numerics.share_kernel and not (problem.padded_rows or problem.padded_cols)
        self.shared = False
        self.col_kernel_exact = False  # H has no underflowed entry (a shared K; see share_row_kernel)
        log_kernel_t = _transposed(problem.log_kernel, self.numpy_loop)  # (B,N,T)
        # -inf on the padding each kernel must ignore; the other side keeps finite placeholders
        self.log_k = torch.where(problem.col_mask[:, :, None], log_kernel_t, -math.inf) if problem.padded_cols else log_kernel_t
        self.log_h_t = torch.where(problem.row_mask[:, None, :], log_kernel_t, -math.inf) if problem.padded_rows else log_kernel_t
        self.anchor_col_potential(psi_hat, psi_hat_is_zero)
        if phi_hat is not None:
            self.anchor_row_potential(phi_hat)

    def anchor_col_potential(self, psi_hat: Tensor, is_zero: bool = False) -> None:
        """(Re)build the row-sum kernel ``K`` at column potential ``psi_hat`` (B,N)."""
        self.psi_hat = psi_hat.detach()
        if self.n_rebuilds == 0 and (is_zero or not bool(self.psi_hat.any())):  # the first anchor is usually 0
            self.row_shift = _amax_middle(self.log_k.detach(), self.numpy_loop)
            shifted = self.log_k - self.row_shift[:, None, :]
        else:
            shifted = self.log_k + self.psi_hat[:, :, None]  # (B,N,T), fresh: safe to modify in place
            self.row_shift = _amax_middle(shifted.detach(), self.numpy_loop)  # sigma (B,T); finite: every item has a valid column
            shifted.sub_(self.row_shift[:, None, :])
        self.row_kernel = _exp_(shifted, self.numpy_loop)
        self.n_rebuilds += 1
        if self.shared:  # keep sharing: H^T follows K to its new anchor (else H stays the old K)
            self.share_row_kernel()

    def anchor_row_potential(self, phi_hat: Tensor) -> None:
        """(Re)build the column-sum kernel ``H`` (stored transposed, (B,N,T)) at row potential ``phi_hat`` (B,T)."""
        self.phi_hat = phi_hat.detach()
        shifted = self.log_h_t + self.phi_hat[:, None, :]  # (B,N,T), fresh: safe to modify in place
        self.col_shift = shifted.detach().amax(-1)  # tau (B,N)
        self.col_kernel_t = _exp_(shifted.sub_(self.col_shift[:, :, None]), self.numpy_loop)
        self.n_rebuilds += 1
        self.shared = self.col_kernel_exact = False

    def share_row_kernel(self) -> bool:
        """Make ``H^T`` the row-sum kernel ``K`` itself, if that keeps the sums exact; else False.

        With ``phi_hat = -sigma`` and ``tau = -psi_hat``, ``H_ij = exp(L_ij + phi_hat_i - tau_j)
        = K_ji`` exactly: the second kernel costs no pass over (B,T,N), and both mat-vecs of an
        iteration read the same memory (~10% faster mat-vecs on CPU). ``H`` then lacks the 1 in
        every column that the class docstring's bounds rest on; instead, sharing requires that no
        entry of ``K`` is below ``e^-(U - 5D)`` (``U = -log`` of the smallest normal number: 87 in
        fp32, 708 in fp64; ``D`` = threshold), so nothing underflowed when ``K`` was built and
        every sum is exact to rounding. Then ``|log c_row| <= 2D`` (``_UnbalancedSteps._refresh``)
        keeps ``|log u| <= 3D + log N`` and every column sum above ``e^-(U - 2D + log N)``, the
        log-sum-exp helpers' (drift <= 3D) above ``e^-(U - 2D)``: no underflow. Only without
        padding: ``K``'s padded rows hold placeholders where ``H`` needs zeros, and vice versa.
        When ``K`` is re-anchored, ``H^T`` follows it (``phi_hat`` moves to ``-sigma``; the loop's
        next row update starts from the new anchor), or stays the previous ``K`` if the new one
        fails the test. On the benchmark's cosine costs (250x30, fp32) the smallest entry is
        e^-9 at eps 0.1 and e^-19 at eps 0.05 (shared, for rho 0.03 to 3), e^-93 at eps 0.01
        (two kernels)."""
        if not self.can_share:
            return False
        smallest_normal = torch.finfo(self.row_kernel.dtype).tiny
        with torch.no_grad():
            smallest_entry = float(self.row_kernel.amin())
        if not smallest_entry >= smallest_normal * math.exp(5 * self.threshold):
            return False
        self.phi_hat = -self.row_shift.detach()
        self.col_shift = -self.psi_hat
        self.col_kernel_t = self.row_kernel
        self.shared = self.col_kernel_exact = True
        return True

    def softmaxes(self, phi: Tensor, psi: Tensor, problem: TransportProblem) -> Optional[tuple[Tensor, Tensor]]:
        """``(A^T, B^T)``, both (B,N,T): the row softmax ``A_ij = softmax_j(L_ij + psi_j)`` and
        the column softmax ``B_ij = softmax_i(L_ij + phi_i)``, exactly 0 on padding, from the
        kernels: ``A^T = K v / (K v)`` with ``v = exp(psi - psi_hat)`` and likewise for ``H``.
        Two broadcast products each instead of an exp pass and a reduction over the slow
        dimension. None when a potential is beyond ``lse_limit`` of its anchor (no bound there)."""
        psi_drift, phi_drift = psi - self.psi_hat, phi - self.phi_hat
        if self.drifted(psi_drift, self.lse_limit) or self.drifted(phi_drift, self.lse_limit):
            return None
        v = torch.exp(psi_drift)[:, None, :]
        u = torch.exp(phi_drift)[:, None, :]
        if problem.padded_cols:
            v = torch.where(problem.col_mask[:, None, :], v, 0.0)
        if problem.padded_rows:
            u = torch.where(problem.row_mask[:, None, :], u, 0.0)
        row_sums, col_sums = self.row_sums(v), self.col_sums(u)  # (B,1,T), (B,1,N)
        # padded rows of K (columns of H) hold placeholders: their sums are junk, the rows masked
        inverse_rows = torch.where(problem.row_mask, 1.0 / row_sums[:, 0, :], 0.0) if problem.padded_rows else 1.0 / row_sums[:, 0, :]
        inverse_cols = torch.where(problem.col_mask, 1.0 / col_sums[:, 0, :], 0.0) if problem.padded_cols else 1.0 / col_sums[:, 0, :]
        row_softmax_t = torch.mul(self.row_kernel, v.transpose(1, 2)).mul_(inverse_rows[:, None, :])
        col_softmax_t = torch.mul(self.col_kernel_t, u).mul_(inverse_cols[:, :, None])
        return row_softmax_t, col_softmax_t

    def row_sums(self, v: Tensor) -> Tensor:
        """(B,1,N) ``v = exp(psi - psi_hat)`` -> (B,1,T) ``sum_j K_ij v_j``. Vectors stay (B,1,.)
        in the loop: the views to and from (B,.) would cost as much as the arithmetic."""
        return torch.bmm(v, self.row_kernel)

    def col_sums(self, u: Tensor) -> Tensor:
        """(B,1,T) ``u = exp(phi - phi_hat)`` -> (B,1,N) ``sum_i H_ij u_i``."""
        return torch.bmm(u, self.col_kernel_t.transpose(1, 2))

    def drifted(self, difference: Tensor, limit: float) -> bool:
        """``max |difference| > limit`` (one host sync; on CPU in NumPy, which dispatches ~5x
        faster: abs and max are exact, so the answer is the same, NaN included: both propagate it)."""
        difference = difference.detach()
        if _untracked_cpu(difference, self.numpy_loop):
            return float(np.abs(difference.numpy()).max()) > limit
        return difference.abs().max().item() > limit

    def row_lse(self, psi: Tensor) -> Tensor:
        """(B,N) column potential -> (B,T) ``LSE_j (L_ij + psi_j)`` over valid j."""
        if self.drifted(psi - self.psi_hat, self.lse_limit):
            self.anchor_col_potential(psi)
        return self.row_shift + torch.log(self.row_sums(torch.exp(psi - self.psi_hat)[:, None, :])[:, 0, :])

    def col_lse(self, phi: Tensor) -> Tensor:
        """(B,T) row potential -> (B,N) ``LSE_i (L_ij + phi_i)`` over valid i."""
        if self.drifted(phi - self.phi_hat, self.lse_limit):
            self.anchor_row_potential(phi)
        return self.col_shift + torch.log(self.col_sums(torch.exp(phi - self.phi_hat)[:, None, :])[:, 0, :])

    def marginals(self, phi: Tensor, psi: Tensor, problem: TransportProblem) -> tuple[Tensor, Tensor]:
        """``P 1`` and ``P^T 1`` of ``P = exp(L + phi + psi)``, 0 on padding, without changing the
        anchors (an iterate stored relative to them stays valid). Two mat-vecs while the
        potentials are within ``lse_limit`` of the anchors (always, for the Sinkhorn iterate);
        otherwise a direct log-sum-exp over (B,N,T), which is slower but exact."""
        psi_drift, phi_drift = psi - self.psi_hat, phi - self.phi_hat
        if self.drifted(psi_drift, self.lse_limit):
            row_lse = (self.log_k + psi[:, :, None]).logsumexp(1)
        else:
            row_lse = self.row_shift + torch.log(self.row_sums(torch.exp(psi_drift)[:, None, :])[:, 0, :])
        if self.drifted(phi_drift, self.lse_limit):
            col_lse = (self.log_h_t + phi[:, None, :]).logsumexp(-1)
        else:
            col_lse = self.col_shift + torch.log(self.col_sums(torch.exp(phi_drift)[:, None, :])[:, 0, :])
        log_row_marginal, log_col_marginal = phi + row_lse, psi + col_lse
        # padding's junk may overflow exp: -inf before the exp gives exact zeros with zero gradient
        if problem.padded_rows:
            log_row_marginal = torch.where(problem.row_mask, log_row_marginal, -math.inf)
        if problem.padded_cols:
            log_col_marginal = torch.where(problem.col_mask, log_col_marginal, -math.inf)
        return torch.exp(log_row_marginal), torch.exp(log_col_marginal)


# --------------------------------------------------------------------------------------------
# The steps of each variant, and the one loop
# --------------------------------------------------------------------------------------------
def _untracked_cpu(x: Tensor, numpy_loop: bool) -> bool:
    """``x`` may be handed to NumPy: ``numpy_loop`` (:class:`_Numerics`) and a CPU tensor that
    autograd does not track."""
    return numpy_loop and np is not None and x.device.type == "cpu" and not x.requires_grad


def _exp_(x: Tensor, numpy_loop: bool) -> Tensor:
    """``x.exp_()``; through NumPy (same memory) where allowed, ~2x faster on one CPU core."""
    if _untracked_cpu(x, numpy_loop):
        array = x.numpy()
        np.exp(array, out=array)
        return x
    return x.exp_()


def _amax_middle(x: Tensor, numpy_loop: bool) -> Tensor:
    """``x.amax(1)`` of a (B,N,T) tensor that autograd does not track; in NumPy on CPU where
    allowed (63 against 85 us at 250x30, B=32). A maximum is exact, so both give the same
    numbers (the kernels hold no NaN: costs are checked finite)."""
    if _untracked_cpu(x, numpy_loop):
        return torch.from_numpy(x.numpy().max(axis=1))
    return x.amax(1)


def _transposed(x: Tensor, numpy_loop: bool) -> Tensor:
    """(B,T,N) -> contiguous (B,N,T); NumPy's blocked copy is ~1.7x faster than torch's on CPU."""
    if _untracked_cpu(x, numpy_loop):
        return torch.from_numpy(np.ascontiguousarray(x.numpy().transpose(0, 2, 1)))
    return x.transpose(1, 2).contiguous()


class _TorchVectors:
    """The loop's vector arithmetic in torch: any device, autograd through every op."""

    numpy = False  # whether copies may go through NumPy too (see _transposed)
    matmul = staticmethod(torch.bmm)
    exp = staticmethod(torch.exp)
    log = staticmethod(torch.log)
    exp2 = staticmethod(torch.exp2)
    log2 = staticmethod(torch.log2)

    @staticmethod
    def affine(offset, x, alpha: float):
        """``offset + alpha * x`` (one fused op)."""
        return torch.add(offset, x, alpha=alpha)

    @staticmethod
    def transpose(x):
        """(B,M,K) -> (B,K,M) view."""
        return x.transpose(1, 2)

    @staticmethod
    def transposed_kernel(kernel: Tensor):
        """(B,N,T) kernel -> (B,T,N) for ``(1,T)@(T,N)`` mat-vecs: a contiguous copy for torch's
        ``bmm`` (faster than on the transposed view)."""
        return _transposed(kernel, False)

    @staticmethod
    def concatenate(vectors: list):
        """(B,1,M) vectors -> (B,n,M)."""
        return torch.cat(vectors, 1)

    @staticmethod
    def scaled_product(offset, x, y, value: float):
        """``offset + value * x * y`` (``offset`` None: 0)."""
        if offset is None:
            return torch.mul(x, y) if value == 1.0 else torch.mul(x, y).mul_(value)
        return torch.addcmul(offset, x, y, value=value)

    @staticmethod
    def max_abs(x) -> float:
        return x.detach().abs().max().item()

    @staticmethod
    def detach(x):
        return x.detach()

    @staticmethod
    def array(tensor: Tensor):
        return tensor

    @staticmethod
    def tensor(x) -> Tensor:
        return x


class _NumpyVectors(_TorchVectors):
    """The same arithmetic in NumPy on views of the same CPU memory, for loops without autograd.

    Why: at (32,250,30) fp32 on one core, NumPy's stacked ``matmul`` is ~1.2x faster than
    ``torch.bmm`` for the (1,K)@(K,M) mat-vecs and its ``exp``/``log`` ~2x faster on (B,T)
    vectors, and each op dispatches in ~1 us instead of ~3 us: one iteration measured ~60 us
    against ~90 us (``bench/solver.py``). Chosen automatically by :func:`_vectors_for`."""

    numpy = True

    @staticmethod
    def affine(offset, x, alpha: float):
        out = np.multiply(x, alpha)
        out += offset
        return out

    @staticmethod
    def transpose(x):
        return x.transpose(0, 2, 1)

    @staticmethod
    def transposed_kernel(kernel: Tensor):
        """A view: NumPy's ``matmul`` hands it to BLAS as transposed (16 against 28 us on a
        copy at 250x30, B=32, see _StabilisedKernel), and no copy is made."""
        return kernel.detach().numpy().transpose(0, 2, 1)

    @staticmethod
    def concatenate(vectors: list):
        return np.concatenate(vectors, 1)

    @staticmethod
    def scaled_product(offset, x, y, value: float):
        out = np.multiply(x, y)
        if value != 1.0:
            out *= value
        if offset is not None:
            out += offset
        return out

    @staticmethod
    def max_abs(x) -> float:
        return float(np.abs(x).max())

    @staticmethod
    def detach(x):
        return x

    @staticmethod
    def array(tensor: Tensor):
        return tensor.detach().numpy()  # only ever given tensors that autograd does not track

    @staticmethod
    def tensor(x) -> Tensor:
        return torch.from_numpy(x)


if np is not None:
    _NumpyVectors.matmul = staticmethod(np.matmul)
    _NumpyVectors.exp = staticmethod(np.exp)
    _NumpyVectors.log = staticmethod(np.log)
    _NumpyVectors.exp2 = staticmethod(np.exp2)
    _NumpyVectors.log2 = staticmethod(np.log2)


def _vectors_for(problem: TransportProblem, numpy_loop: bool):
    """NumPy for CPU loops that autograd does not record (the forward of every gradient mode
    but ``last_step``'s final step and plain-autograd unrolling) if ``numpy_loop``, torch otherwise."""
    tracked = _tracked(problem)
    if numpy_loop and np is not None and problem.log_kernel.device.type == "cpu" and not tracked:
        return _NumpyVectors
    return _TorchVectors


@dataclass
class _ScalingState:
    """Unbalanced/balanced iterate: ``phi = u_anchor + log u``, ``psi = v_anchor + log_v``."""

    u: Tensor  # (B,1,T) (a NumPy array in a NumPy loop, see _NumpyVectors)
    u_anchor: Tensor  # (B,T), detached
    log_v: Tensor  # (B,1,N) (likewise)
    v_anchor: Tensor  # (B,N), detached


class _UnbalancedSteps:
    r"""Generalised Sinkhorn (balanced when lam = 1) in scaling form on the stabilised kernel::

        phi <- lam_rows (log a - LSE_j [L + psi])          psi <- lam_cols (log b - LSE_i [L + phi])

    With ``v = exp(psi - psi_hat)``, ``u = exp(phi - phi_hat)`` this is, exactly::

        u = c_row * (K v)^(-lam_rows),       c_row = exp(lam_rows (log a - sigma) - phi_hat)
        v = c_col * (H^T u)^(-lam_cols),     c_col = exp(lam_cols (log b - tau) - psi_hat)

    i.e. two mat-vecs, one exp/log pair on the T side (none when lam_rows = 1) per iteration.
    Bounds that keep it exact (D = ``threshold``): ``|log v| <= D`` is checked every iteration on
    the small N side (in log form, so nothing overflows before the check) and ``K`` re-anchored
    when violated; ``|log c_row| <= D`` is enforced whenever a kernel changes (by re-anchoring
    ``phi_hat = lam_rows (log a - sigma)``, where ``c_row = 1``). Then ``K v`` lies in
    ``[e^-D, N e^D]`` and ``|log u| <= 2D + log N``, which keeps ``H^T u`` exact too.
    """

    in_place = True  # NumPy loops without a tape use _step_in_place (tests switch it off to compare)

    def __init__(self, problem: TransportProblem, numerics: _Numerics, psi_hat: Optional[Tensor] = None) -> None:
        self.problem = problem
        self.threshold = numerics.anchor_threshold
        self.lam_rows = problem.lam_rows
        self.lam_cols = problem.lam_cols
        self.tape: Optional[list] = None
        self.ops = _vectors_for(problem, numerics.numpy_loop)
        self._unchecked_left = 0  # iterations whose drift check may be skipped (see _needs_check)
        self._buffers = None  # _step_in_place's reused vectors
        self._previous_log_v = self.ops.array(torch.zeros_like(problem.log_b)[:, None, :])
        psi_hat_is_zero = psi_hat is None
        if psi_hat is None:
            psi_hat = torch.zeros_like(problem.log_b)
        self.kernel = _StabilisedKernel(problem, numerics, psi_hat, psi_hat_is_zero=psi_hat_is_zero)
        if not self.kernel.share_row_kernel():
            self.kernel.anchor_row_potential(self.lam_rows * (problem.log_a - self.kernel.row_shift))
        self._refresh()

    def _refresh(self) -> None:
        """Recompute ``c_row``, ``log c_col`` after a kernel changed (keeping |log c_row| <= D).
        Kept as (B,1,T) / (B,1,N), the loop's vector shape."""
        p, k = self.problem, self.kernel
        log_c_row = self.lam_rows * (p.log_a - k.row_shift) - k.phi_hat
        # an H without underflowed entries (a shared K) tolerates 2D, see share_row_kernel
        if k.drifted(log_c_row, 2 * self.threshold if k.col_kernel_exact else self.threshold):
            k.anchor_row_potential(self.lam_rows * (p.log_a - k.row_shift))
            log_c_row = self.lam_rows * (p.log_a - k.row_shift) - k.phi_hat  # 0 in value, keeps grad to log a
        ops = self.ops
        self.log_c_row = ops.array(log_c_row[:, None, :])
        self.c_row = ops.exp(self.log_c_row)
        self.log2_c_row = self.log_c_row * (1 / math.log(2))
        self.log_c_col = ops.array((self.lam_cols * (p.log_b - k.col_shift) - k.psi_hat)[:, None, :])
        # the kernels as the loop's arrays (views, no copy)
        self.row_kernel, self.col_kernel = ops.array(k.row_kernel), ops.transpose(ops.array(k.col_kernel_t))

    def initial_state(self) -> _ScalingState:
        k, ops = self.kernel, self.ops
        return _ScalingState(ops.array(torch.ones_like(k.phi_hat)[:, None, :]), k.phi_hat, ops.array(torch.zeros_like(k.psi_hat)[:, None, :]), k.psi_hat)

    def step(self, state: _ScalingState) -> _ScalingState:
        k, ops = self.kernel, self.ops
        if ops.numpy and self.tape is None and self.in_place:
            return self._step_in_place(state)
        v = ops.exp(state.log_v)
        row_sums = ops.matmul(v, self.row_kernel)  # K v, see _StabilisedKernel.row_sums
        if self.lam_rows == 1.0:
            u = self.c_row / row_sums
        else:  # 2^(log2 c - lam log2 s): fewer ops than c * s^-lam (pow is slow on CPU), and
            # NumPy's base-2 exp/log take 4.5 us on (32,250) fp32 against 7.5 us for base e
            u = ops.exp2(ops.affine(self.log2_c_row, ops.log2(row_sums), -self.lam_rows))
        u_anchor = k.phi_hat
        col_sums = ops.matmul(u, self.col_kernel)  # H^T u
        if self.tape is not None:  # what _UnrolledSinkhorn.backward needs: vectors, kernel references
            self.tape.append((k.row_kernel, k.col_kernel_t, v, row_sums, u, col_sums))
        if self.lam_cols == 1.0:
            log_v = self.log_c_col - ops.log(col_sums)
        else:
            log_v = ops.affine(self.log_c_col, ops.log(col_sums), -self.lam_cols)
        if self._needs_check(log_v):
            k.anchor_col_potential(k.psi_hat + ops.tensor(log_v)[:, 0, :])
            log_v = log_v - ops.detach(log_v)  # 0 in value, keeps the autograd path
            self._previous_log_v = ops.detach(log_v) * 0
            self._refresh()
        return _ScalingState(u, u_anchor, log_v, k.psi_hat)

    def _step_in_place(self, state: _ScalingState) -> _ScalingState:
        """``step`` of a NumPy loop without a tape: the same operations in the same order, written
        into five (B,1,.) buffers reused by every iteration instead of a fresh array per op (~1 us
        an iteration at 250x30; bit-identical, ``tests/ot/test_fast_paths.py``). The returned
        state's ``u`` and ``log_v`` are buffers, valid until the next step: the loop reads each
        state before it steps again, and ``_needs_check`` copies what it keeps."""
        k = self.kernel
        if self._buffers is None:
            batch, _, n_rows = self.c_row.shape
            dtype, n_cols = self.c_row.dtype, self.log_c_col.shape[-1]
            self._buffers = tuple(np.empty((batch, 1, length), dtype=dtype) for length in (n_cols, n_rows, n_rows, n_cols, n_cols))
        v, row_sums, u, col_sums, log_v = self._buffers
        np.exp(state.log_v, out=v)
        np.matmul(v, self.row_kernel, out=row_sums)
        if self.lam_rows == 1.0:
            np.divide(self.c_row, row_sums, out=u)
        else:  # exp2(log2 c - lam log2 s), as in step
            np.log2(row_sums, out=row_sums)
            np.multiply(row_sums, -self.lam_rows, out=row_sums)
            row_sums += self.log2_c_row
            np.exp2(row_sums, out=u)
        u_anchor = k.phi_hat
        np.matmul(u, self.col_kernel, out=col_sums)
        np.log(col_sums, out=col_sums)
        if self.lam_cols == 1.0:
            np.subtract(self.log_c_col, col_sums, out=log_v)
        else:
            np.multiply(col_sums, -self.lam_cols, out=log_v)
            log_v += self.log_c_col
        if self._needs_check(log_v):
            k.anchor_col_potential(k.psi_hat + torch.from_numpy(log_v)[:, 0, :])
            log_v = log_v - log_v  # 0, a fresh array (the buffer is rewritten next step)
            self._previous_log_v = log_v * 0
            self._refresh()
        return _ScalingState(u, u_anchor, log_v, k.psi_hat)

    def _needs_check(self, log_v: Tensor) -> bool:
        """``max |log v| > D``, without looking when it provably cannot be.

        Sinkhorn's map is a contraction in the sup norm (LSE is 1-Lipschitz, lam <= 1), so the
        change of psi per iteration, ``delta``, never grows: after a check that finds drift ``d``
        the drift stays ``<= d + k * delta`` for ``k`` more iterations, and those checks (a host
        sync each) are skipped."""
        if self._unchecked_left > 0:
            self._unchecked_left -= 1
            return False
        log_v = self.ops.detach(log_v)
        drift = self.ops.max_abs(log_v)
        if not math.isfinite(drift):
            # only a cost/eps beyond what the dtype can resolve gets here (finite inputs, checked)
            raise ValueError(f"cost / eps overflows {log_v.dtype} inside the iteration (max |cost| / eps = {self.problem.max_scaled_cost:.3g}); rescale cost, raise eps or use float64")
        if drift > self.threshold:
            return True
        change = self.ops.max_abs(log_v - self._previous_log_v)
        # a copy where log_v is a buffer of _step_in_place (rewritten by the next step)
        self._previous_log_v = log_v.copy() if self._buffers is not None else log_v
        # 1% and one iteration of margin for rounding in the log-sum-exps
        self._unchecked_left = min(50, int((self.threshold - drift) / (1.01 * change + 1e-6)) - 1)
        return False

    def potentials(self, state: _ScalingState) -> tuple[Tensor, Tensor]:
        """-> (phi, psi) as (B,T), (B,N), unmasked (padding holds finite junk)."""
        u, log_v = self.ops.tensor(state.u), self.ops.tensor(state.log_v)
        return state.u_anchor + torch.log(u[:, 0, :]), state.v_anchor + log_v[:, 0, :]

    def residual(self, state: _ScalingState) -> Tensor:
        """(B,) optimality residual (``TransportResult.error``, and the stopping rule's) of the
        iterate, after the optimal translation (``_translate``), so that it measures the plan and
        not the slow drift of the potentials along ``(f + t, g - t)``."""
        return self.error(state, *_translate(self.problem, *self.potentials(state)))

    def error(self, state: _ScalingState, phi: Tensor, psi: Tensor, scaled: Optional[tuple] = None) -> Tensor:
        """``residual`` given the iterate's translated potentials (``_result`` has them, and
        their ``_scaled_potentials``: passing those saves recomputing them, same numbers)."""
        return _unbalanced_error(self.problem, self.kernel, phi, psi, scaled)


@dataclass
class _DykstraState:
    """Partial-OT iterate ``P = exp(L + x_i + y_j + z)`` and Dykstra's corrections (the logs of
    POT's ``q1, q2, q3`` in ``entropic_partial_wasserstein``)."""

    x: Tensor  # (B,T)
    y: Tensor  # (B,N)
    z: Tensor  # (B,) total-mass shift
    alpha: Tensor  # (B,T)
    beta: Tensor  # (B,N)
    gamma: Tensor  # (B,)

    def detached(self) -> "_DykstraState":
        return _DykstraState(self.x.detach(), self.y.detach(), self.z.detach(), self.alpha.detach(), self.beta.detach(), self.gamma.detach())


class _PartialSteps:
    r"""Entropic partial OT by Dykstra's KL projections (Benamou et al. 2015, prop. 5; POT
    ``entropic_partial_wasserstein``), in log domain on the stabilised kernel::

        x <- min(log a - LSE_j [L + y + z], x + alpha)      alpha <- (x_old + alpha) - x      (P1 <= a)
        y <- min(log b - z - LSE_i [L + x], y + beta)       beta  <- (y_old + beta) - y       (P^T1 <= b)
        z <- log m - LSE_j [y_j + LSE_i [L + x]]            gamma <- (z_old + gamma) - z      (sum P = m)

    Started like POT from ``K * m / sum K`` (``z = log m - LSE(L)``) and zero corrections.
    """

    def __init__(self, problem: TransportProblem, numerics: _Numerics, psi_hat: Optional[Tensor] = None, phi_hat: Optional[Tensor] = None) -> None:
        self.problem = problem
        self.log_mass = math.log(problem.partial_mass)
        psi_hat = torch.zeros_like(problem.log_b) if psi_hat is None else psi_hat
        phi_hat = torch.zeros_like(problem.log_a) if phi_hat is None else phi_hat
        self.kernel = _StabilisedKernel(problem, numerics, psi_hat, phi_hat)

    def initial_state(self) -> _DykstraState:
        p = self.problem
        total = p.masked_log_kernel.flatten(1).logsumexp(-1)
        zeros_rows, zeros_cols = torch.zeros_like(p.log_a), torch.zeros_like(p.log_b)
        return _DykstraState(zeros_rows, zeros_cols, self.log_mass - total, zeros_rows, zeros_cols, torch.zeros_like(total))

    def step(self, state: _DykstraState) -> _DykstraState:
        p, k = self.problem, self.kernel
        z = state.z[:, None]
        x_shifted = state.x + state.alpha
        x = torch.minimum(p.log_a - k.row_lse(state.y + z), x_shifted)
        alpha = x_shifted - x
        col_lse = k.col_lse(x)
        y_shifted = state.y + state.beta
        y = torch.minimum(p.log_b - z - col_lse, y_shifted)
        beta = y_shifted - y
        z_shifted = state.z + state.gamma
        valid_terms = torch.where(p.col_mask, y + col_lse, -math.inf) if p.padded_cols else y + col_lse
        z_new = self.log_mass - valid_terms.logsumexp(-1)
        return _DykstraState(x, y, z_new, alpha, beta, z_shifted - z_new)

    def potentials(self, state: _DykstraState) -> tuple[Tensor, Tensor]:
        """-> (x, y + z), unmasked (padding holds finite junk)."""
        return state.x, state.y + state.z[:, None]

    def residual(self, state: _DykstraState) -> Tensor:
        """(B,) optimality residual (``TransportResult.error``, and the stopping rule's) of the
        iterate (see ``_partial_error``)."""
        return _partial_error(self.problem, self.kernel, state.x, state.y, state.z)

    def error(self, state: _DykstraState, phi: Tensor, psi: Tensor, scaled: Optional[tuple] = None) -> Tensor:
        """``residual``: a function of the state alone (``phi, psi`` are its potentials)."""
        return self.residual(state)


def _masked(values: Tensor, mask: Tensor, padded: bool) -> Tensor:
    return torch.where(mask, values, 0.0) if padded else values


@dataclass(frozen=True)
class _StoppingRule:
    """When the loop stops, and what ``converged`` means (solve's ``max_iter``, ``min_iter``,
    ``check_every``, ``tol``): one residual (``steps.residual``, which is also
    ``TransportResult.error``) against one tolerance, for both."""

    max_iter: int
    min_iter: int
    check_every: int
    tol: Optional[float]

    def checks_at(self, done: int) -> bool:
        """Whether the residual is checked after iteration ``done`` (1-based)."""
        return self.tol is not None and done >= self.min_iter and done % self.check_every == 0

    def converged(self, error: Tensor) -> Tensor:
        """(B,) bool: ``error <= tol`` (``tol=None``: ``_DEFAULT_TOL`` of the dtype)."""
        return error <= (self.tol if self.tol is not None else _DEFAULT_TOL[error.dtype])


def _stopping_rule(max_iter, min_iter, check_every, tol) -> _StoppingRule:
    max_iter, min_iter, check_every = (_count(value, name) for value, name in ((max_iter, "max_iter"), (min_iter, "min_iter"), (check_every, "check_every")))
    if min_iter > max_iter:
        raise ValueError(f"min_iter must be <= max_iter, got min_iter={min_iter} and max_iter={max_iter}")
    if tol is not None:
        tol = _number(tol, "tol")
        if not tol > 0:
            raise ValueError(f"tol must be None or > 0, got {tol}")
    return _StoppingRule(max_iter, min_iter, check_every, tol)


def _iterate(steps, state, rule: _StoppingRule, n_iter: Optional[int] = None):
    """The one loop: ``n_iter`` (default ``rule.max_iter``) steps of the variant, or fewer: it
    stops after iteration ``k`` once every item's ``steps.residual <= rule.tol``, where ``k`` is
    a multiple of ``rule.check_every`` and ``>= rule.min_iter`` (``rule.checks_at``; a check
    costs two mat-vecs, from the kernel marginals). -> (state, iterations run)."""
    n_iter = rule.max_iter if n_iter is None else n_iter
    done = 0
    while done < n_iter:
        state = steps.step(state)
        done += 1
        if done < n_iter and rule.checks_at(done):  # after the last iteration a check changes nothing
            with torch.no_grad():  # marginals() leaves the anchors alone, so the iterate stays valid
                converged = bool(rule.converged(steps.residual(state)).all())
            if converged:
                break
    return state, done


class _UnrolledSinkhorn(torch.autograd.Function):
    r"""Unrolled differentiation of the scaling iteration, with a hand-written reverse pass.

    Autograd through the loop would differentiate every ``bmm`` w.r.t. its kernel separately: one
    (B,T,N) outer product and one (B,T,N) accumulation per mat-vec, 2 x ``n_iter`` of them. The
    reverse pass below is the same chain rule, but it collects the vectors of all iterations that
    used one kernel and forms that kernel's gradient with one batched GEMM. Per iteration it costs
    two mat-vecs, like the forward; the tape holds only (B,T)/(B,N) vectors per iteration.

    Reverse of one iteration (bars are gradients; ``s = K v``, ``w = H^T u``, ``lv = log v``)::

        lv = log c_col - lam_cols log w     ->  w_bar = -lam_cols lv_bar / w,   (log c_col)_bar += lv_bar
        w = H^T u                           ->  u_bar = H w_bar,                H_bar += u ⊗ w_bar
        log u = log c_row - lam_rows log s  ->  s_bar = -lam_rows lu_bar / s,   (log c_row)_bar += lu_bar
        s = K v                             ->  v_bar = K^T s_bar,              K_bar += v ⊗ s_bar

    with ``lu_bar = u * u_bar`` and the previous ``lv_bar = v * v_bar``. Kernels
    ``K = exp(log_k + psi_hat - sigma)`` (anchors and shifts are constants) give
    ``L_bar = K * K_bar + H * H_bar`` (both summed in the kernels' (B,N,T) layout, transposed
    back once); ``log c_row = lam_rows (log a - sigma)
    - phi_hat`` gives ``(log a)_bar = lam_rows * sum of (log c_row)_bar``, and likewise for b.
    Re-anchoring ``lv <- lv - detach(lv)`` has derivative one, so it is invisible here.
    """

    @staticmethod
    def forward(ctx, log_kernel: Tensor, log_a: Tensor, log_b: Tensor, run: "_LoopRun") -> tuple[Tensor, Tensor]:
        steps = run.steps
        steps.tape = []
        state, run.n_iter = _iterate(steps, steps.initial_state(), run.rule)
        run.state = state
        tape, steps.tape = steps.tape, None
        ctx.tape = tape
        ctx.lam_rows, ctx.lam_cols = steps.lam_rows, steps.lam_cols
        ctx.ops = steps.ops
        phi, psi = steps.potentials(state)
        return phi, psi

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, phi_bar: Tensor, psi_bar: Tensor):
        lam_rows, lam_cols = ctx.lam_rows, ctx.lam_cols
        # the reverse loop uses the forward loop's arithmetic (NumPy on CPU, see _NumpyVectors)
        ops = ctx.ops
        # In the loop below ``col_sums_hat`` is w_bar itself (the factor -lam_cols applied on the
        # short N side) and s_bar = -lam_rows * s_hat: that factor is folded into
        # ``scaled_product`` and applied once to the K gradient's GEMM at the end.
        log_v_bar = ops.array(psi_bar[:, None, :].contiguous())  # vectors are (B,1,.) like in the loop
        last_phi_bar = ops.array(phi_bar[:, None, :].contiguous())
        log_a_bar, log_b_bar = ops.array(torch.zeros_like(phi_bar[:, None, :])), ops.array(torch.zeros_like(psi_bar[:, None, :]))
        # per kernel (by identity): the (vector, hat-gradient) pairs, for one GEMM each
        row_kernel_terms: dict[int, tuple[Tensor, list, list]] = {}
        col_kernel_terms: dict[int, tuple[Tensor, list, list]] = {}
        # the reverse mat-vecs: H w_bar is (1,N)@(N,T) on the stored H^T; K^T s_bar is
        # (1,T)@(T,N) on K transposed (see _TorchVectors.transposed_kernel)
        transposed: dict[int, object] = {}  # K^T by id(K)
        arrays: dict[int, object] = {}  # H^T by id(H^T) (the same tensor as a K when shared)
        last = len(ctx.tape) - 1
        for position in range(last, -1, -1):
            row_kernel, col_kernel_t, v, row_sums, u, col_sums = ctx.tape[position]
            if id(row_kernel) not in transposed:
                transposed[id(row_kernel)] = ops.transposed_kernel(row_kernel)
            if id(col_kernel_t) not in arrays:
                arrays[id(col_kernel_t)] = ops.array(col_kernel_t)
            log_b_bar += log_v_bar
            col_sums_hat = log_v_bar / col_sums
            col_sums_hat *= -lam_cols  # w_bar itself: the factor is cheaper on the N side
            terms = col_kernel_terms.setdefault(id(col_kernel_t), (col_kernel_t, [], []))
            terms[1].append(col_sums_hat)
            terms[2].append(u)
            # log_u_bar = u * (H w_bar) (+ phi_bar for the last iterate: phi = phi_hat + log u)
            log_u_bar = ops.scaled_product(last_phi_bar if position == last else None, u, ops.matmul(col_sums_hat, arrays[id(col_kernel_t)]), 1.0)
            log_a_bar += log_u_bar
            row_sums_hat = log_u_bar / row_sums
            terms = row_kernel_terms.setdefault(id(row_kernel), (row_kernel, [], []))
            terms[1].append(v)
            terms[2].append(row_sums_hat)
            log_v_bar = ops.scaled_product(None, v, ops.matmul(row_sums_hat, transposed[id(row_kernel)]), -lam_rows)
        del transposed, arrays

        log_a_bar, log_b_bar = ops.tensor(log_a_bar), ops.tensor(log_b_bar)

        def outer_sum(vectors: list, hats: list, value: float) -> Tensor:
            """``value * sum_t vectors_t ⊗ hats_t``: (B,M,n) @ (B,n,K), one batched GEMM."""
            stacked_vectors = ops.concatenate(vectors)
            if value != 1.0:
                stacked_vectors *= value
            return ops.tensor(ops.matmul(ops.transpose(stacked_vectors), ops.concatenate(hats)))

        log_kernel_bar = None
        if ctx.needs_input_grad[0]:
            log_kernel_bar_t = None  # (B,N,T)
            for row_kernel, vectors, hats in row_kernel_terms.values():
                # K_bar = sum_t v_t ⊗ s_bar_t = -lam_rows V^T S_hat: (B,N,n) @ (B,n,T), V^T as a view
                term = outer_sum(vectors, hats, -lam_rows).mul_(row_kernel)
                log_kernel_bar_t = term if log_kernel_bar_t is None else log_kernel_bar_t.add_(term)
            for col_kernel_t, hats, vectors in col_kernel_terms.values():
                # H^T_bar = sum_t w_bar_t ⊗ u_t = W_bar^T U, in the same (B,N,T) layout
                log_kernel_bar_t.add_(outer_sum(hats, vectors, 1.0).mul_(col_kernel_t))
            log_kernel_bar = _transposed(log_kernel_bar_t, ops.numpy)
        return log_kernel_bar, (log_a_bar * lam_rows)[:, 0, :], (log_b_bar * lam_cols)[:, 0, :], None


@dataclass
class _LoopRun:
    """Non-tensor arguments of :class:`_UnrolledSinkhorn` and :class:`_ImplicitSinkhorn` (and
    where they report the final state and ``n_iter``)."""

    steps: object  # _UnbalancedSteps | _PartialSteps
    rule: _StoppingRule
    numerics: _Numerics
    n_iter: int = 0
    state: object = None


# --------------------------------------------------------------------------------------------
# Implicit differentiation: the adjoint of the fixed point, on one stored log-kernel
# --------------------------------------------------------------------------------------------
def _softmax_middle(logits: Tensor) -> Tensor:
    """Softmax over dim 1 of a (B,M,K) tensor whose padded slices may be all -inf (-> zeros).
    Dim 1 is the fast reduction in this layout (see _StabilisedKernel)."""
    shift = logits.amax(1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    weights = (logits - shift).exp_()
    total = weights.sum(1, keepdim=True)
    return weights.div_(torch.where(total > 0, total, torch.ones_like(total)))


def _unbalanced_adjoint(problem: TransportProblem, phi: Tensor, psi: Tensor, phi_bar: Tensor, psi_bar: Tensor, kernel: Optional["_StabilisedKernel"] = None, numpy_loop: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    r"""Vector-Jacobian product of the converged map ``(L, log a, log b) -> (phi, psi)``.

    The fixed point is ``F = 0`` with ``F_1 = phi - lam_r (log a - LSE_j[L + psi])`` and
    ``F_2 = psi - lam_c (log b - LSE_i[L + phi])``. Its Jacobian in (phi, psi) is
    ``[[I, lam_r A], [lam_c B^T, I]]`` with the row softmax ``A = softmax_j(L + psi)`` (T,N) and
    the column softmax ``B = softmax_i(L + phi)`` (T,N). The adjoint ``J^T w = (phi_bar, psi_bar)``
    reduces, by eliminating ``w_1 = phi_bar - lam_c B w_2``, to one N x N system::

        (I - lam_r lam_c A^T B) w_2 = psi_bar - lam_r A^T phi_bar

    ``A^T B`` is column-stochastic, so for ``lam_r lam_c < 1`` the system is non-singular with
    condition ``<= (1 + lam) / (1 - lam)``. Balanced OT (``lam = 1``) has the gauge ``(phi + t,
    psi - t)``; its left null vector is the valid-column indicator ``m``, and ``+ m m^T / n`` makes
    the system non-singular without changing the solution of a gauge-invariant loss (the plan,
    the value). Then ``L_bar = -(lam_r A w_1 1^T + lam_c B 1 w_2^T)``,
    ``(log a)_bar = lam_r w_1``, ``(log b)_bar = lam_c w_2``.

    Cost: both softmaxes from the loop's stabilised ``kernel`` (two broadcast products each, see
    :meth:`_StabilisedKernel.softmaxes`; from the log-kernel when it cannot give them), one
    (B,N,T)@(B,T,N) GEMM and a batched N x N solve; memory: the kernel(s) and three (B,T,N)
    tensors, whatever the number of forward iterations. Padding (and zero
    weights) are exact zeros of both softmaxes, so nothing there is divided by zero.
    """
    lam_r, lam_c = problem.lam_rows, problem.lam_cols
    softmaxes = None if kernel is None else kernel.softmaxes(phi, psi, problem)
    if softmaxes is None:  # from the log-kernel: exact at any potentials, but ~10x slower on CPU
        log_kernel = problem.masked_log_kernel
        row_softmax_t = _softmax_middle(log_kernel.transpose(1, 2) + psi[:, :, None])  # A^T (B,N,T)
        col_softmax_t = _softmax_middle(log_kernel + phi[:, :, None]).transpose(1, 2)  # B^T (B,N,T), a view
    else:
        row_softmax_t, col_softmax_t = softmaxes
    coupling = torch.bmm(row_softmax_t, col_softmax_t.transpose(1, 2))  # A^T B (B,N,N)
    n_cols = coupling.shape[-1]
    system = torch.eye(n_cols, dtype=coupling.dtype, device=coupling.device).expand_as(coupling) - (lam_r * lam_c) * coupling
    if lam_r * lam_c == 1.0:
        valid = problem.col_mask.to(coupling.dtype)
        system = system + valid[:, :, None] * valid[:, None, :] / valid.sum(-1)[:, None, None]
    rhs = psi_bar - lam_r * torch.bmm(row_softmax_t, phi_bar[:, :, None])[:, :, 0]
    w_cols = torch.linalg.solve(system, rhs)
    w_rows = phi_bar - lam_c * torch.bmm(w_cols[:, None, :], col_softmax_t)[:, 0, :]
    # L_bar^T = -(lam_r A^T w_rows + lam_c B^T w_cols), in the (B,N,T) layout, transposed once;
    # in place on the softmaxes (fresh here, not needed any more): a fresh (B,T,N) tensor costs
    # its page faults, ~0.3 ms each on the benchmark machine
    log_kernel_bar_t = col_softmax_t.mul_(w_cols[:, :, None] * -lam_c)
    log_kernel_bar_t.sub_(row_softmax_t.mul_(lam_r * w_rows[:, None, :]))
    return _transposed(log_kernel_bar_t, numpy_loop), lam_r * _masked(w_rows, problem.row_mask, problem.padded_rows), lam_c * _masked(w_cols, problem.col_mask, problem.padded_cols)


def _partial_adjoint(problem: TransportProblem, x: Tensor, y: Tensor, z: Tensor, phi_bar: Tensor, psi_bar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Vector-Jacobian product of the converged partial-OT map ``(L, log a, log b) -> (x, y + z)``.

    Dykstra's iteration keeps ``x + alpha = 0`` (and likewise for y), so its fixed point is::

        x = min(0, log a - LSE_j[L + y + z])     y = min(0, log b - z - LSE_i[L + x])
        z = log m - LSE_ij[L + x + y]

    Away from degenerate points the active sets are locally constant: a tight row (``x_i < 0``,
    ``P1_i = a_i``) obeys the smooth equation, a slack row has ``x_i = 0``. The Jacobian of the
    (T + N + 1) equations is assembled densely and its transpose solved per item; this is exact
    but costs O((T+N)^3) per item, so partial OT is not the cheap path.
    """
    batch, n_rows, n_cols = problem.log_kernel.shape
    dtype, device = x.dtype, x.device
    log_kernel = problem.masked_log_kernel
    row_softmax = _softmax_middle((log_kernel + y[:, None, :]).transpose(1, 2)).transpose(1, 2)  # (B,T,N), rows sum to 1
    col_softmax = _softmax_middle(log_kernel + x[:, :, None])  # (B,T,N), columns sum to 1
    log_plan = log_kernel + x[:, :, None] + (y + z[:, None])[:, None, :]
    plan_share = torch.softmax(log_plan.flatten(1), -1).view_as(log_plan)  # P / sum P
    tight_rows = (problem.row_mask & (x < 0)).to(dtype)
    tight_cols = (problem.col_mask & (y < 0)).to(dtype)
    size = n_rows + n_cols + 1
    jacobian = torch.eye(size, dtype=dtype, device=device).repeat(batch, 1, 1)
    rows, cols = slice(0, n_rows), slice(n_rows, n_rows + n_cols)
    jacobian[:, rows, cols] = tight_rows[:, :, None] * row_softmax
    jacobian[:, rows, -1] = tight_rows
    jacobian[:, cols, rows] = tight_cols[:, :, None] * col_softmax.transpose(1, 2)
    jacobian[:, cols, -1] = tight_cols
    jacobian[:, -1, rows] = plan_share.sum(-1)
    jacobian[:, -1, cols] = plan_share.sum(1)
    psi_bar = _masked(psi_bar, problem.col_mask, problem.padded_cols)
    rhs = torch.cat([phi_bar, psi_bar, psi_bar.sum(-1, keepdim=True)], -1)
    adjoint = torch.linalg.solve(jacobian.transpose(1, 2), rhs)
    w_rows, w_cols, w_mass = adjoint[:, rows], adjoint[:, cols], adjoint[:, -1]
    log_kernel_bar = -(row_softmax * (tight_rows * w_rows)[:, :, None] + col_softmax * (tight_cols * w_cols)[:, None, :] + plan_share * w_mass[:, None, None])
    return log_kernel_bar, tight_rows * w_rows, tight_cols * w_cols


class _ImplicitSinkhorn(torch.autograd.Function):
    """Runs the loop without a tape and differentiates its end point by the implicit function
    theorem (``_unbalanced_adjoint`` / ``_partial_adjoint``): exact for the converged map, with
    memory that does not depend on the number of iterations."""

    @staticmethod
    def forward(ctx, log_kernel: Tensor, log_a: Tensor, log_b: Tensor, run: "_LoopRun") -> tuple[Tensor, Tensor]:
        steps = run.steps
        run.state, run.n_iter = _iterate(steps, steps.initial_state(), run.rule)
        ctx.problem = steps.problem
        if steps.problem.partial_mass is None:
            phi, psi = steps.potentials(run.state)
            ctx.save_for_backward(phi, psi)
            ctx.kernel = steps.kernel  # its softmaxes at (phi, psi) are two products away
            ctx.from_kernels = run.numerics.adjoint_from_kernels
            return phi, psi
        ctx.save_for_backward(run.state.x, run.state.y, run.state.z)
        return steps.potentials(run.state)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, phi_bar: Tensor, psi_bar: Tensor):
        if ctx.problem.partial_mass is None:
            kernel = ctx.kernel if ctx.from_kernels else None
            grads = _unbalanced_adjoint(ctx.problem, *ctx.saved_tensors, phi_bar, psi_bar, kernel=kernel, numpy_loop=ctx.kernel.numpy_loop)
        else:
            grads = _partial_adjoint(ctx.problem, *ctx.saved_tensors, phi_bar, psi_bar)
        return (*grads, None)


# --------------------------------------------------------------------------------------------
# Outputs: translation, plan, residuals, value
# --------------------------------------------------------------------------------------------
def _translate(problem: TransportProblem, phi: Tensor, psi: Tensor) -> tuple[Tensor, Tensor]:
    r"""Removes the drift of unbalanced potentials along ``(f + t, g - t)``, which leaves the plan
    unchanged but converges at the slow rate ``lam_r lam_c`` (Séjourné, Vialard and Peyré 2023).

    The dual objective along that line is maximised in closed form: ``dD/dt = 0`` gives
    ``<a, e^{-(f+t)/rho_r}> = <b, e^{-(g-t)/rho_c}>``, i.e.
    ``t = log(<a, e^{-f/rho_r}> / <b, e^{-g/rho_c}>) / (1/rho_r + 1/rho_c)`` (``e^{-f/inf} = 1``).
    At the fixed point ``t = 0``, so this is exact and does not change the converged map; before
    it, it makes ``value``, the potentials and ``error`` as accurate as the plan. Balanced OT (a
    true gauge) and ``rho = 0`` (a potential pinned at 0) are left as they are.
    """
    rho_r, rho_c = problem.rho_rows, problem.rho_cols
    if problem.partial_mass is not None or (math.isinf(rho_r) and math.isinf(rho_c)) or rho_r == 0 or rho_c == 0:
        return phi, psi
    eps = problem.eps

    def log_mass(log_w: Tensor, potential: Tensor, rho: float, mask: Tensor, padded: bool) -> Tensor:
        terms = log_w if math.isinf(rho) else log_w - potential * (eps / rho)
        # a mask without padding would select every term: skip the no-op where
        return (torch.where(mask, terms, -math.inf) if padded else terms).logsumexp(-1)

    inverse_reach = (0.0 if math.isinf(rho_r) else eps / rho_r) + (0.0 if math.isinf(rho_c) else eps / rho_c)
    shift = (log_mass(problem.log_a, phi, rho_r, problem.row_mask, problem.padded_rows) - log_mass(problem.log_b, psi, rho_c, problem.col_mask, problem.padded_cols)) / inverse_reach
    return phi + shift[:, None], psi - shift[:, None]


def _plan(problem: TransportProblem, phi: Tensor, psi: Tensor, numpy_loop: bool) -> Tensor:
    """``P = exp(L + phi + psi)``; -inf in the masked kernel makes padding an exact 0 (zero
    gradient, whatever the junk potentials there)."""
    log_plan = torch.add(phi[:, :, None], psi[:, None, :])  # fresh tensor (outer sum first: ~20% faster)
    return _exp_(log_plan.add_(problem.masked_log_kernel), numpy_loop)


def _scaled_potentials(problem: TransportProblem, phi: Tensor, psi: Tensor) -> tuple:
    """``(f, g, -f / rho_rows, -g / rho_cols)`` with ``f = eps * phi``, ``g = eps * psi`` masked;
    an exponent is None where its rho is infinite or 0. The residual and the dual value both use
    them (``_result`` computes them once for both)."""
    f = _masked(problem.eps * phi, problem.row_mask, problem.padded_rows)
    g = _masked(problem.eps * psi, problem.col_mask, problem.padded_cols)
    row_exponent = -f / problem.rho_rows if math.isfinite(problem.rho_rows) and problem.rho_rows > 0 else None
    col_exponent = -g / problem.rho_cols if math.isfinite(problem.rho_cols) and problem.rho_cols > 0 else None
    return f, g, row_exponent, col_exponent


def _unbalanced_error(problem: TransportProblem, kernel: _StabilisedKernel, phi: Tensor, psi: Tensor, scaled: Optional[tuple] = None) -> Tensor:
    """See ``TransportResult.error`` (balanced / unbalanced). ``scaled``: ``_scaled_potentials``
    of ``phi, psi`` if the caller has them."""
    row_marginal, col_marginal = kernel.marginals(phi, psi, problem)
    _, _, row_exponent, col_exponent = _scaled_potentials(problem, phi, psi) if scaled is None else scaled
    row_target, col_target = problem.a, problem.b
    if math.isfinite(problem.rho_rows):
        row_target = problem.a * torch.exp(row_exponent) if problem.rho_rows > 0 else row_marginal
    if math.isfinite(problem.rho_cols):
        col_target = problem.b * torch.exp(col_exponent) if problem.rho_cols > 0 else col_marginal
    return (row_marginal - row_target).abs().sum(-1) + (col_marginal - col_target).abs().sum(-1)


def _partial_error(problem: TransportProblem, kernel: _StabilisedKernel, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    r"""Optimality residual of a partial-OT iterate, in units of mass.

    The KKT conditions (``x, y <= 0``; ``P1 <= a``, ``P^T1 <= b``, ``sum P = m``; a row with
    ``x_i < 0`` is tight) hold exactly when the iterate is a fixed point of every block update.
    One more row update would move the row marginal to ``min(P1 e^{-x}, a)``; the residual is the
    mass that each update would move::

        |P1 - min(P1 e^{-x}, a)|_1 + |P^T1 - min(P^T1 e^{-y}, b)|_1 + |sum P - m|

    It is 0 exactly at the optimum and, unlike feasibility alone, it sees a plan that is
    feasible but not optimal.
    """
    row_marginal, col_marginal = kernel.marginals(x, y + z[:, None], problem)
    x = _masked(x, problem.row_mask, problem.padded_rows)
    y = _masked(y, problem.col_mask, problem.padded_cols)
    after_rows = torch.minimum(row_marginal * torch.exp(-x), problem.a)
    after_cols = torch.minimum(col_marginal * torch.exp(-y), problem.b)
    return (row_marginal - after_rows).abs().sum(-1) + (col_marginal - after_cols).abs().sum(-1) + (row_marginal.sum(-1) - problem.partial_mass).abs()


def _in_the_large_eps_limit(problem: TransportProblem) -> bool:
    """``max |C| / eps`` below sqrt(machine epsilon): the kernel cannot resolve the cost any more
    (``-C/eps`` is lost next to ``log R``), the potentials carry only rounding noise, and any
    formula with ``eps * (something of order noise)`` in it (the dual's mass term, ``eps KL``)
    returns noise times eps (-2.8e14 at eps = 1e30). There ``P = R (1 + O(C/eps))`` and the value
    is ``<C, P> + O(|C|^2 / eps)``, i.e. ``<C, P>`` to ``sqrt(machine epsilon)`` relative."""
    return problem.max_scaled_cost < math.sqrt(torch.finfo(problem.cost.dtype).eps)


def _dual_value(problem: TransportProblem, total_mass: Tensor, scaled: tuple) -> Tensor:
    """``D(f, g)`` (see ``TransportResult.value``) from ``scaled = _scaled_potentials(...)``."""
    f, g, row_exponent, col_exponent = scaled

    def conjugate_term(weights: Tensor, potential: Tensor, rho: float, exponent: Optional[Tensor]) -> Tensor:
        if math.isinf(rho):
            return (weights * potential).sum(-1)
        if rho == 0:
            return torch.zeros_like(potential[:, 0])
        return -rho * (weights * torch.expm1(exponent)).sum(-1)  # exponent = -potential / rho

    return conjugate_term(problem.a, f, problem.rho_rows, row_exponent) + conjugate_term(problem.b, g, problem.rho_cols, col_exponent) - problem.eps * (total_mass - problem.reference_mass)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _number(value, name: str) -> float:
    """A real scalar (Python, NumPy or a one-element tensor) as float; strings and bools are
    refused, and so is a per-item tensor (lam = rho / (rho + eps) is one number per call)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)} (per-item {name} is not supported: solve items with different {name} in separate calls)")
        return float(value.item())
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def _count(value, name: str) -> int:
    """An int >= 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _check_mask(mask: Optional[Tensor], name: str, shape: tuple[int, int], device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {shape} (batch size and length must match cost)")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but cost is on {device}; move it (otalign never moves inputs silently)")
    return mask


def _weights(weights: Optional[Tensor], name: str, mask: Tensor, dtype: torch.dtype, all_valid: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """-> (mask, w, log w) with w zero and log w zero on padding; zero weights count as padding.
    ``all_valid``: the mask is all True by construction (two fills instead of ten small ops)."""
    if weights is None and all_valid:
        length = mask.shape[-1]
        return mask, torch.full(mask.shape, 1.0 / length, dtype=dtype, device=mask.device), torch.full(mask.shape, -math.log(length), dtype=dtype, device=mask.device)
    if weights is None:
        counts = mask.sum(-1, keepdim=True).clamp_min(1).to(dtype)
        w = torch.where(mask, 1.0 / counts, 0.0).to(dtype)
        log_w = torch.where(mask, -torch.log(counts), 0.0).to(dtype)
        return mask, w, log_w
    if not isinstance(weights, Tensor) or tuple(weights.shape) != tuple(mask.shape):
        raise ValueError(f"{name} must be a tensor of shape {tuple(mask.shape)}, got {getattr(weights, 'shape', type(weights))}")
    if weights.device != mask.device:
        raise ValueError(f"{name} is on {weights.device} but cost is on {mask.device}; move it (otalign never moves inputs silently)")
    weights = weights.to(dtype=dtype)
    valid_weights = torch.where(mask, weights, 0.0)
    if not bool(torch.isfinite(valid_weights).all()) or bool((valid_weights < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative on valid entries")
    mask = mask & (weights > 0)
    w = torch.where(mask, weights, 0.0)
    log_w = torch.where(mask, torch.log(torch.where(mask, weights, 1.0)), 0.0)
    return mask, w, log_w


def _check_rho(rho, name: str) -> float:
    rho = _number(rho, name)
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
    normalize: bool,
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
    eps = _number(eps, "eps")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    rho_rows = _check_rho(rho_rows, "rho_rows")
    rho_cols = _check_rho(rho_cols, "rho_cols")
    if reference not in ("product", "ones"):
        raise ValueError(f"reference must be 'product' or 'ones', got {reference!r}")
    order_weight = _number(order_weight, "order_weight")
    if not (math.isfinite(order_weight) and order_weight >= 0):
        raise ValueError(f"order_weight must be finite and >= 0, got {order_weight}")
    if partial_mass is not None:
        partial_mass = _number(partial_mass, "partial_mass")
        if not (0 < partial_mass <= 1):
            raise ValueError(f"partial_mass must be in (0, 1], got {partial_mass}")
        if math.isfinite(rho_rows) or math.isfinite(rho_cols):
            raise ValueError("partial_mass cannot be combined with finite rho_rows/rho_cols (partial OT has hard inequality marginals)")
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize must be a bool, got {normalize!r}")

    device, dtype = cost.device, cost.dtype
    row_mask_given, col_mask_given = row_mask is not None, col_mask is not None
    row_mask = _check_mask(row_mask, "row_mask", (batch, n_rows), device)
    col_mask = _check_mask(col_mask, "col_mask", (batch, n_cols), device)
    row_mask, a, log_a = _weights(row_weights, "row_weights", row_mask, dtype, all_valid=not row_mask_given)
    col_mask, b, log_b = _weights(col_weights, "col_weights", col_mask, dtype, all_valid=not col_mask_given)
    for name, mask, given in (("row_mask/row_weights", row_mask, row_mask_given or row_weights is not None), ("col_mask/col_weights", col_mask, col_mask_given or col_weights is not None)):
        if not given:  # all valid by construction: no host sync needed
            continue
        empty = (~mask.any(-1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"{name}: batch item(s) {empty} have no valid entry with positive weight")
    if math.isinf(rho_rows) and math.isinf(rho_cols) and partial_mass is None and (row_weights is not None or col_weights is not None):
        # balanced OT needs sum a = sum b; otherwise no plan exists and any "value" is meaningless
        mass_a, mass_b = a.sum(-1), b.sum(-1)
        unequal = ((mass_a - mass_b).abs() > (1e-5 if dtype == torch.float32 else 1e-10) * torch.maximum(mass_a, mass_b)).nonzero().flatten().tolist()
        if unequal and not normalize:
            raise ValueError(f"balanced OT (rho_rows = rho_cols = inf) needs sum(row_weights) == sum(col_weights), but they differ on batch item(s) {unequal[:10]}; pass normalize=True to rescale col_weights to the row mass, or relax a marginal (finite rho)")
        if normalize:
            b = b * (mass_a / mass_b)[:, None]
            log_b = torch.where(col_mask, log_b + torch.log(mass_a / mass_b)[:, None], 0.0)
            col_weights = b  # the kernel below takes the log weights explicitly
    padded_rows = (row_mask_given or row_weights is not None) and not bool(row_mask.all())
    padded_cols = (col_mask_given or col_weights is not None) and not bool(col_mask.all())
    cell_mask = row_mask[:, :, None] & col_mask[:, None, :] if (padded_rows or padded_cols) else None
    if partial_mass is not None:
        too_much = ((a.sum(-1) < partial_mass * (1 - 1e-6)) | (b.sum(-1) < partial_mass * (1 - 1e-6))).nonzero().flatten().tolist()
        if too_much:
            raise ValueError(f"partial_mass {partial_mass} exceeds min(sum a, sum b) for batch item(s) {too_much}")

    if cell_mask is not None:
        cost = torch.where(cell_mask, cost, 0.0)  # padding may hold anything (even NaN): drop it here
    given_cost = cost
    if order_weight > 0:  # a finite prior: NaN and Inf stay where they are
        cost = cost + order_weight * temporal_order_cost(row_mask, col_mask, dtype=dtype)
    # NaN/Inf: min and max propagate NaN and see +-Inf, so the one aminmax pass below (needed for
    # max_scaled_cost anyway) is the finiteness check; the exact per-item check runs only if it fails
    smallest, largest = torch.aminmax(cost.detach())  # one pass, no (B,T,N) temporary
    smallest, largest = float(smallest), float(largest)
    if not (math.isfinite(smallest) and math.isfinite(largest)):
        bad = (~torch.isfinite(given_cost.detach())).flatten(1).any(-1).nonzero().flatten().tolist()
        if bad:  # else a finite cost overflowed with the prior added: the overflow error below
            raise ValueError(f"cost has NaN or Inf on valid entries of batch item(s) {bad}")
    if reference == "product" and row_weights is None and col_weights is None:
        # uniform weights: log a_i + log b_j = -log(T_b N_b) on valid cells, one pass over (B,T,N)
        # (padded cells get the same finite placeholder)
        if row_mask_given or col_mask_given:
            counts = row_mask.sum(-1).to(dtype) * col_mask.sum(-1).to(dtype)
        else:  # all valid: the same (B,) tensor of T * N in one op (both correctly rounded)
            counts = torch.full((batch,), float(n_rows * n_cols), dtype=dtype, device=device)
        log_reference = -torch.log(counts)
        log_kernel = torch.add(log_reference[:, None, None], cost, alpha=-1.0 / eps)
    else:
        log_kernel = cost * (-1.0 / eps)  # fresh tensor: the in-place adds below are safe for autograd
        if reference == "product":
            log_kernel.add_(log_a[:, :, None]).add_(log_b[:, None, :])
    # A finite cost / eps can still be beyond the dtype (1e36 / 0.05 in fp32): the log-domain
    # iteration adds and subtracts numbers of size |C|/eps, so once |C|/eps * machine epsilon
    # exceeds 1 the plan's entries are wrong by more than a factor e (or overflow to NaN).
    max_scaled_cost = max(-smallest, largest) / eps
    if not max_scaled_cost * torch.finfo(dtype).eps <= 1.0:
        scaled = cost.detach().abs().flatten(1).amax(-1) / eps
        bad = (~(scaled * torch.finfo(dtype).eps <= 1.0)).nonzero().flatten().tolist()
        raise ValueError(f"cost / eps overflows {dtype} on batch item(s) {bad[:10]}: max |cost| / eps = {max_scaled_cost:.3g}, "
                         f"beyond the {1 / torch.finfo(dtype).eps:.2g} that {dtype} resolves; rescale cost, raise eps or use float64")
    return TransportProblem(cost, log_kernel, row_mask, col_mask, a, b, log_a, log_b, eps, rho_rows, rho_cols, partial_mass, reference, padded_rows, padded_cols, max_scaled_cost)


# --------------------------------------------------------------------------------------------
# Gradient modes: each runs the loop and returns (phi, psi, steps, state, n_iter)
# --------------------------------------------------------------------------------------------
def _tracked(problem: TransportProblem) -> bool:
    """Autograd records operations on the problem's inputs."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in (problem.log_kernel, problem.log_a, problem.log_b))


def _steps_for(problem: TransportProblem, numerics: _Numerics):
    return (_UnbalancedSteps if problem.partial_mass is None else _PartialSteps)(problem, numerics)


def _detached(problem: TransportProblem) -> TransportProblem:
    return dataclasses.replace(problem, log_kernel=problem.log_kernel.detach(), log_a=problem.log_a.detach(), log_b=problem.log_b.detach())


def _run_plain(problem: TransportProblem, rule: _StoppingRule, numerics: _Numerics):
    """No gradient wanted, or unrolling through plain autograd (partial OT, or
    ``hand_written_reverse=False``): autograd (if any) records the loop."""
    steps = _steps_for(problem, numerics)
    state, n_iter = _iterate(steps, steps.initial_state(), rule)
    return (*steps.potentials(state), steps, state, n_iter)


def _run_detached(problem: TransportProblem, rule: _StoppingRule, numerics: _Numerics, make_steps, function):
    """The loop on a detached copy of the problem; ``function`` (an autograd Function) returns its
    end point and supplies the backward pass."""
    with torch.no_grad():
        steps = make_steps(_detached(problem), numerics)
    run = _LoopRun(steps, rule, numerics)
    phi, psi = function.apply(problem.log_kernel, problem.log_a, problem.log_b, run)
    return phi, psi, steps, run.state, run.n_iter


def _run_implicit(problem: TransportProblem, rule: _StoppingRule, numerics: _Numerics):
    """:class:`_ImplicitSinkhorn` differentiates the loop's end point."""
    return _run_detached(problem, rule, numerics, _steps_for, _ImplicitSinkhorn)


def _run_unrolled(problem: TransportProblem, rule: _StoppingRule, numerics: _Numerics):
    """(Semi-)unbalanced OT: :class:`_UnrolledSinkhorn` supplies the exact reverse pass."""
    return _run_detached(problem, rule, numerics, _UnbalancedSteps, _UnrolledSinkhorn)


def _run_last_step(problem: TransportProblem, rule: _StoppingRule, numerics: _Numerics):
    """Iterations 1..n-1 without autograd, then one differentiable iteration."""
    with torch.no_grad():
        steps = _steps_for(problem, numerics)
        state, n_iter = _iterate(steps, steps.initial_state(), rule, rule.max_iter - 1)
        phi, psi = steps.potentials(state)
    # one differentiable iteration from the detached iterate, on kernels rebuilt with autograd
    if problem.partial_mass is None:
        steps = _UnbalancedSteps(problem, numerics, psi_hat=psi)
        state = steps.initial_state()  # v = 1 at psi_hat = psi: the detached iterate (the row step needs only psi)
    else:
        steps = _PartialSteps(problem, numerics, psi_hat=psi, phi_hat=phi)
        state = state.detached()
    state = steps.step(state)
    return (*steps.potentials(state), steps, state, n_iter + 1)


_GRADIENT_MODES = {"implicit": _run_implicit, "unrolled": _run_unrolled, "last_step": _run_last_step}


def _gradient_mode(problem: TransportProblem, grad: str, numerics: _Numerics):
    """The ``_run_*`` function that computes ``grad`` for this problem."""
    if not _tracked(problem):
        return _run_plain
    if grad == "unrolled" and (problem.partial_mass is not None or not numerics.hand_written_reverse):
        return _run_plain
    return _GRADIENT_MODES[grad]


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
    normalize: bool = False,
    max_iter: int = 100,
    tol: Optional[float] = None,
    check_every: int = _CHECK_EVERY,
    min_iter: int = _MIN_ITER,
    grad: GradMode = "implicit",
    _anchor_threshold: Optional[float] = None,
    _numpy_loop: bool = True,
    _share_kernel: bool = True,
    _hand_written_reverse: bool = True,
    _adjoint_from_kernels: bool = True,
) -> TransportResult:
    r"""Entropic (unbalanced / partial) optimal transport between frames (rows) and tokens (columns).

    Solves, for every batch item independently and over its valid cells only::

        min_{P >= 0}  <C', P> + eps KL(P | R) + rho_rows KL(P 1 | a) + rho_cols KL(P^T 1 | b)
        C' = C + order_weight * temporal_order_cost(row_mask, col_mask)

    - ``rho_rows = rho_cols = inf``: balanced OT (OT-CAKT); needs ``sum a = sum b``;
    - ``rho_cols = inf``, finite ``rho_rows``: semi-relaxed UOT (the paper's model: every token
      gets its mass ``b``, frames of silence/noise may shed mass; smaller ``rho_rows`` sheds more);
    - both finite: fully unbalanced OT;
    - ``partial_mass = m``: partial OT ``min <C',P> + eps KL(P|R)`` s.t. ``P1 <= a``,
      ``P^T1 <= b``, ``sum P = m`` (rho must stay infinite). With ``reference="ones"`` this is
      POT's ``ot.partial.entropic_partial_wasserstein``.

    Iterations are log-domain Sinkhorn (see the module docstring) computed through a stabilised
    kernel (:class:`_StabilisedKernel`), identical to POT's ``sinkhorn_knopp_unbalanced`` /
    ``entropic_partial_wasserstein`` iterate for iterate, but without under/overflow at any eps.
    Unbalanced potentials are then translated optimally (:func:`_translate`), which leaves the
    plan unchanged and makes ``value``, the potentials and ``error`` as exact as the plan.
    Padding costs nothing in accuracy: each batch item gives the plan POT gives on its unpadded
    slice.

    Precision: fp64 plans agree with a certified Newton solver to ~1e-10 at convergence (an
    independent audit). fp32 is stable (no NaN/Inf at any eps) but not exact: on uniform costs in
    [0, 2] (semi-relaxed, rho 0.3) the largest plan difference to fp64 measured 6e-9 at eps 0.1
    and 5e-7 at eps 0.001 (``bench/solver_gradients.py``), but the audit found up to 1.1e-2 at
    eps < 0.01 on other problems: use float64 when eps is small and the plan itself matters.

    Args:
        cost: (B,T,N) or (T,N) float32/float64 cost. Values on padded cells are ignored (may be
            anything, NaN included); NaN/Inf on a valid cell, or a cost / eps that overflows the
            dtype, raises ValueError.
        row_mask, col_mask: (B,T), (B,N) bool (``(T,)``, ``(N,)`` for a 2-D cost), True = valid,
            on the cost's device. Default all valid.
        row_weights, col_weights: ``a``, ``b`` (B,T), (B,N) non-negative. Default uniform over valid
            entries (each sums to 1). A zero weight counts as padding (no log(0) anywhere).
        eps: entropic regularisation (> 0), in cost units; one number per call.
        rho_rows, rho_cols: marginal relaxation strengths in cost units, >= 0; ``inf`` = hard.
            ``lam = rho / (rho + eps)`` is POT's exponent ``fi`` and OTT's ``tau``.
        partial_mass: total mass ``m`` in (0, 1] for partial OT (``<= min(sum a, sum b)``).
        order_weight: strength (cost units) of the temporal-order prior, 0 = off.
        reference: ``"product"``: ``R = a ⊗ b`` (POT ``reg_type='kl'``); ``"ones"``: ``R = 1``
            (entropy; POT ``reg_type='entropy'``, OTT's convention). Balanced plans coincide.
        normalize: balanced OT only: rescale ``col_weights`` so that ``sum b = sum a`` instead of
            raising ValueError when the masses differ.
        max_iter, min_iter, check_every, tol: the stopping rule (ints >= 1; ``tol`` None or
            > 0). The loop runs at most ``max_iter`` iterations, exactly this many when ``tol is
            None``. With ``tol`` it checks, after every iteration ``k`` that is a multiple of
            ``check_every`` and ``>= min_iter``, whether every item's ``error <= tol`` (the
            residual of ``TransportResult.error``, from two mat-vecs), and stops if so (OTT's
            ``inner_iterations`` and ``min_iterations``). With the defaults (``check_every=10``,
            ``min_iter=1``) the first check is after iteration 10. The same residual and the
            same ``tol`` give ``converged`` (``tol=None``: 1e-5 in fp32, 1e-6 in fp64), so a run
            that stopped early has ``converged`` all True (``grad="last_step"`` runs its one
            differentiable iteration after the loop's). ``min_iter <= max_iter``.
        grad: how gradients flow to ``cost``/weights:
            - ``"implicit"`` (default): the implicit-function gradient of the converged map,
              from the adjoint of the fixed point (:func:`_unbalanced_adjoint`: one N x N
              solve per item; :func:`_partial_adjoint`: one (T+N+1) solve). Exact at
              convergence (to ~1e-10 against finite differences in fp64) in every variant;
              memory does not depend on ``max_iter``; NaN-free on padding and zero weights.
              Before convergence it is the converged map's gradient taken at the iterate.
            - ``"unrolled"``: the exact derivative of the truncated iteration (the returned plan
              is a function of C, and you get its Jacobian). For balanced/unbalanced OT the
              reverse pass is hand-written (:class:`_UnrolledSinkhorn`): it stores two (B,T) and
              two (B,N) vectors per iteration plus one kernel pair per re-anchoring, so memory
              grows with ``max_iter``. Partial OT unrolls through plain autograd.
            - ``"last_step"``: a biased approximation, kept for comparison. Iterations 1..n-1
              run without autograd and only the last one is differentiated: the first term of
              the implicit gradient's Neumann series. Its bias does not shrink with more
              iterations: the relative error of ``d<W,P>/dC`` at eps 0.05 measured 9-21% on
              cosine costs and 7-28% on uniform costs (rho 0.03-3), identical at 30 and 4,000
              iterations (``bench/solver_gradients.py``; an audit found 6-11% and 31-61%). For
              partial OT even the gradient of ``value`` is off (64% in the audit), since the
              envelope argument does not hold for its primal value.

    The private arguments (``_anchor_threshold``, ``_numpy_loop``, ``_share_kernel``,
    ``_hand_written_reverse``, ``_adjoint_from_kernels``) choose how the loop computes, never what (:class:`_Numerics`):
    tests use them to compare the fast paths with the plain ones.

    Returns:
        :class:`TransportResult` (batch dimension dropped for a 2-D ``cost``).

    Raises:
        ValueError: naming the argument, for wrong shapes, types, devices or batch sizes, a
            stopping rule outside the ranges above,
            NaN/Inf costs, ``eps <= 0``, ``rho < 0``, ``partial_mass`` outside (0, 1],
            balanced OT with unequal masses, or a batch item whose rows or columns are all masked.
    """
    if grad not in _GRADIENT_MODES:
        raise ValueError(f"grad must be one of {sorted(_GRADIENT_MODES)}, got {grad!r}")
    rule = _stopping_rule(max_iter, min_iter, check_every, tol)
    squeeze = isinstance(cost, Tensor) and cost.dim() == 2
    cost, row_mask, col_mask, row_weights, col_weights = _batched(cost, row_mask, col_mask, row_weights, col_weights)
    problem = _make_problem(cost, row_mask, col_mask, row_weights, col_weights, eps, rho_rows, rho_cols, partial_mass, order_weight, reference, normalize)
    numerics = _numerics(problem, _anchor_threshold, _numpy_loop, _share_kernel, _hand_written_reverse, _adjoint_from_kernels)
    phi, psi, steps, state, n_iter = _gradient_mode(problem, grad, numerics)(problem, rule, numerics)
    phi, psi = _translate(problem, phi, psi)
    return _result(problem, steps, state, phi, psi, n_iter, rule, numerics, squeeze)


def _batched(cost, row_mask, col_mask, row_weights, col_weights) -> tuple:
    """A 2-D cost (T,N) and its (T,)/(N,) masks and weights as a batch of one; others as given."""
    if not (isinstance(cost, Tensor) and cost.dim() == 2):
        return cost, row_mask, col_mask, row_weights, col_weights
    for name, tensor, length in (("row_mask", row_mask, cost.shape[0]), ("col_mask", col_mask, cost.shape[1]), ("row_weights", row_weights, cost.shape[0]), ("col_weights", col_weights, cost.shape[1])):
        if isinstance(tensor, Tensor) and tuple(tensor.shape) != (length,):
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}; for a 2-D cost of shape {tuple(cost.shape)} it must be ({length},)")
    return (cost[None], *(None if t is None else (t[None] if isinstance(t, Tensor) else t) for t in (row_mask, col_mask, row_weights, col_weights)))


def _numerics(problem: TransportProblem, anchor_threshold: Optional[float], *flags: bool) -> _Numerics:
    """solve's private arguments, checked (``anchor_threshold=None``: the dtype's default)."""
    if anchor_threshold is None:
        anchor_threshold = _ANCHOR_THRESHOLD[problem.log_kernel.dtype]
    elif not _number(anchor_threshold, "_anchor_threshold") > 0:
        raise ValueError(f"_anchor_threshold must be > 0, got {anchor_threshold!r}")
    for field, flag in zip(dataclasses.fields(_Numerics)[1:], flags):
        if not isinstance(flag, bool):
            raise ValueError(f"_{field.name} must be a bool, got {flag!r}")
    return _Numerics(float(anchor_threshold), *flags)


def _result(problem: TransportProblem, steps, state, phi: Tensor, psi: Tensor, n_iter: int, rule: _StoppingRule, numerics: _Numerics, squeeze: bool) -> TransportResult:
    """The plan, potentials, value and residual at the (translated) potentials ``phi, psi``."""
    plan = _plan(problem, phi, psi, numerics.numpy_loop)
    scaled = _scaled_potentials(problem, phi, psi)  # f, g and the exponents of the residual and the value
    f, g = scaled[0], scaled[1]
    with torch.no_grad():
        # the stopping rule's residual, at phi, psi (the same scaled potentials, detached)
        error = steps.error(state, phi.detach(), psi.detach(), tuple(None if t is None else t.detach() for t in scaled))
    if _in_the_large_eps_limit(problem):
        value = (problem.cost * plan).sum((-2, -1))
    elif problem.partial_mass is None:
        value = _dual_value(problem, plan.sum((-2, -1)), scaled)
    else:
        # <C,P> + eps KL(P|R) = <P, f ⊕ g> - eps (sum P - sum R), since eps log(P/R) = f + g - C
        value = (plan.sum(-1) * f).sum(-1) + (plan.sum(-2) * g).sum(-1) - _eps_mass(problem, plan)
    converged = rule.converged(error)
    if squeeze:
        plan, f, g, value, error, converged = plan[0], f[0], g[0], value[0], error[0], converged[0]
    return TransportResult(plan, f, g, value, error, n_iter, converged, problem)
