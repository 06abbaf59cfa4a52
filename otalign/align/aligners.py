"""Frame-to-token aligners behind one interface.

Every aligner maps (already adapted) acoustic states to one acoustic vector per PLM token::

    aligner(enc_states (B,T,D), enc_mask (B,T), plm_states (B,N,D), plm_mask (B,N))
        -> AlignOutput(aligned (B,N,D), plan (B,T,N) or None, aux_losses {name: scalar})

``enc_states`` are the encoder states *after* the adapter (width D = the PLM width; the
:class:`~otalign.align.transfer.KnowledgeTransfer` module applies the adapter). Rows of a plan are
frames, columns tokens, and a plan is exactly zero on padding.

Aligners (:func:`build_aligner` names):

- ``none``: no alignment (plain CTC). Returns zeros and no plan; KnowledgeTransfer skips it.
- ``ot``: balanced entropic OT (OT-CAKT), ``rho_rows = rho_cols = inf``.
- ``tot``: balanced OT plus the temporal-order prior ``order_weight * |i/T - j/N|`` (TOT-CAKT).
- ``uot``: the paper's semi-relaxed UOT: tokens hard (``rho_cols = inf``, so every token receives
  exactly its mass ``b_j = 1/N``), frames KL-relaxed with ``rho_frames`` (small rho = frames may
  shed mass = silence/noise stays unmatched; rho -> inf recovers ``ot``).
- ``partial``: partial OT moving total mass ``partial_mass`` (m <= 1, P1 <= a, P^T 1 <= b).
- ``tuot``: ``uot`` plus ``tot``'s temporal-order prior: frames may still shed mass, and the
  prior says where along the utterance each token's frames should lie.
- ``attention``: N positional queries cross-attend to the frames (Deng et al. 2022).
- ``cif``: continuous integrate-and-fire with a quantity loss (Dong & Xu 2020; Deng et al. 2022).

OT aligners use the cosine cost ``C_ij = 1 - cos(h_i, z_j)`` and pool the frames with the plan::

    aligned_j = sum_i P_ij h_i / sum_i P_ij

The division is guarded: a token whose column mass is below ``min_token_mass`` (only possible
under ``partial``, or on padding) gets the zero vector and no gradient through the ratio.

Gradients: by default they flow through both ``h`` in the pooling and the plan ``P(C(h))``
(``grad="implicit"``, the default, differentiates the converged plan exactly through the adjoint
of the fixed point; ``grad="unrolled"`` back-propagates through every solver iteration;
``grad="last_step"`` only through the last one, a biased approximation: see ``otalign.ot.solve``).
``detach_plan=True`` treats the plan as a constant weighting (gradients reach ``h`` only through
the pooling); that is the cheapest and the most stable option, at the price of not teaching the
encoder to make the alignment itself sharper.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "AlignOutput",
    "Aligner",
    "NoAligner",
    "OTAligner",
    "AttentionAligner",
    "CIFAligner",
    "ALIGNER_NAMES",
    "OT_ALIGNER_NAMES",
    "ALIGNERS",
    "AlignerSpec",
    "AlignerConfig",
    "build_aligner",
    "pool_with_plan",
]

@dataclass(frozen=True)
class AlignerSpec:
    """One entry of the registry: ``family`` says which class implements it; ``knob`` is the option
    a sweep varies and a report prints beside the name (None: the aligner has none);
    ``also_varies`` are further options a sweep crosses with the knob's values."""

    family: str
    knob: str | None
    summary: str
    also_varies: tuple[str, ...] = ()

    @property
    def options(self) -> tuple[str, ...]:
        """The knob and ``also_varies``: the aligner-specific options it reads."""
        return ((self.knob,) if self.knob else ()) + self.also_varies


# The one list of aligners: names, families and knobs. Config validation, build_aligner, sweeps
# and plots all read it.
ALIGNERS: dict[str, AlignerSpec] = {
    "none": AlignerSpec("none", None, "no transfer (plain CTC)"),
    "ot": AlignerSpec("ot", None, "balanced entropic OT (OT-CAKT)"),
    "tot": AlignerSpec("ot", "order_weight", "balanced OT + temporal-order prior (TOT-CAKT)"),
    "uot": AlignerSpec("ot", "rho_frames", "semi-relaxed UOT: tokens hard, frames KL-relaxed (the paper)"),
    "partial": AlignerSpec("ot", "partial_mass", "partial OT moving total mass m"),
    "tuot": AlignerSpec("ot", "rho_frames", "semi-relaxed UOT + temporal-order prior (order_weight)", ("order_weight",)),
    "attention": AlignerSpec("attention", None, "positional queries cross-attending to the frames"),
    "cif": AlignerSpec("cif", None, "continuous integrate-and-fire with a quantity loss"),
}
ALIGNER_NAMES = tuple(ALIGNERS)
OT_ALIGNER_NAMES = tuple(name for name, spec in ALIGNERS.items() if spec.family == "ot")
GRAD_MODES = ("implicit", "unrolled", "last_step")


@dataclass(frozen=True)
class AlignerConfig:
    """Every option of every aligner, with its one default; ``name`` picks the aligner.

    OT aligners read ``eps, n_iter, tol, grad, detach_plan, min_token_mass`` and their knob
    (``rho_frames`` for uot, ``partial_mass`` for partial, ``order_weight`` for tot; tuot
    reads both ``rho_frames`` and ``order_weight``);
    ``attention`` reads ``num_heads, queries, max_tokens, dropout``; ``cif`` reads
    ``kernel_size, scale, min_token_mass``. The others are ignored, so one config can hold them
    all. A training recipe sets them in the ``transfer`` section (``otalign.train.config``).
    """

    name: str = "uot"
    eps: float = 0.1
    n_iter: int = 50
    tol: float | None = None
    grad: str = "implicit"
    rho_frames: float = 1.0
    partial_mass: float = 0.7
    order_weight: float = 1.0
    detach_plan: bool = False
    min_token_mass: float = 1e-8
    num_heads: int = 4
    queries: str = "learned"
    max_tokens: int = 512
    dropout: float = 0.0
    kernel_size: int = 3
    scale: str = "train"

    def __post_init__(self) -> None:
        if self.name not in ALIGNERS:
            raise ValueError(f"aligner must be one of {ALIGNER_NAMES}, got {self.name!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {self.n_iter}")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol must be > 0 or None, got {self.tol}")
        if self.grad not in GRAD_MODES:
            raise ValueError(f"grad must be 'implicit', 'unrolled' or 'last_step', got {self.grad!r}")
        reads = ALIGNERS[self.name].options
        if "rho_frames" in reads and not self.rho_frames > 0:
            raise ValueError(f"rho_frames must be > 0 (inf = balanced), got {self.rho_frames}")
        if "partial_mass" in reads and not 0 < self.partial_mass <= 1:
            raise ValueError(f"partial_mass must be in (0, 1], got {self.partial_mass}")
        if "order_weight" in reads and not self.order_weight >= 0:
            raise ValueError(f"order_weight must be >= 0, got {self.order_weight}")
        if self.queries not in ("learned", "sinusoidal"):
            raise ValueError(f"queries must be 'learned' or 'sinusoidal', got {self.queries!r}")
        if self.scale not in ("train", "always", "never"):
            raise ValueError(f"scale must be 'train', 'always' or 'never', got {self.scale!r}")
        if self.num_heads < 1 or self.max_tokens < 1 or self.kernel_size < 1:
            raise ValueError("num_heads, max_tokens and kernel_size must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.detach_plan and self.family != "ot":
            raise ValueError(f"detach_plan applies to the OT aligners {OT_ALIGNER_NAMES}, not to {self.name!r}")

    @property
    def family(self) -> str:
        return ALIGNERS[self.name].family

    @property
    def knob(self) -> tuple[str, float] | None:
        """``(option, value)`` of the aligner's knob, e.g. ``("rho_frames", 0.3)``; None without one."""
        key = ALIGNERS[self.name].knob
        return None if key is None else (key, getattr(self, key))

    def solver_options(self) -> dict:
        """Keyword arguments of ``otalign.ot.solve`` (besides cost and masks): the one place an
        OT aligner's name and knob become solver options."""
        if self.family != "ot":
            raise ValueError(f"aligner {self.name!r} does not use the OT solver")
        options = dict(eps=self.eps, max_iter=self.n_iter, tol=self.tol, grad=self.grad)
        reads = ALIGNERS[self.name].options
        if "rho_frames" in reads:
            options.update(rho_rows=self.rho_frames, rho_cols=math.inf)
        if "partial_mass" in reads:
            options.update(partial_mass=self.partial_mass)
        if "order_weight" in reads:
            options.update(order_weight=self.order_weight)
        return options

    def build(self, dim: int | None = None, query_init: Tensor | None = None) -> "Aligner":
        """The aligner module; ``dim`` (the PLM width) is needed by ``attention`` and ``cif``."""
        if self.family == "none":
            return NoAligner()
        if self.family == "ot":
            return OTAligner(config=self)
        if dim is None:
            raise ValueError(f"aligner {self.name!r} has parameters: pass dim (the PLM width)")
        if self.family == "attention":
            return AttentionAligner(dim, num_heads=self.num_heads, queries=self.queries, max_tokens=self.max_tokens,
                                    query_init=query_init, dropout=self.dropout)
        return CIFAligner(dim, kernel_size=self.kernel_size, scale=self.scale, min_token_mass=self.min_token_mass)


class AlignOutput(NamedTuple):
    """What every aligner returns.

    Attributes:
        aligned: (B, N, D) one acoustic vector per token; zero on padded tokens.
        plan: (B, T, N) frame-to-token weights (OT plan, attention weights, CIF firing weights),
            zero on padding; ``None`` for ``none``.
        aux_losses: named scalar losses the aligner wants added to the training loss
            (``cif``: ``quantity``); empty for the others.
        solver: the OT aligners' convergence report over the batch (``max_error``: the largest
            marginal/optimality residual of the solve, ``converged``: the fraction of items that
            met the tolerance); empty for the others.
    """

    aligned: Tensor
    plan: Tensor | None
    aux_losses: dict[str, Tensor]
    solver: dict[str, float] = {}


def _check_inputs(enc_states: Tensor, enc_mask: Tensor, plm_states: Tensor, plm_mask: Tensor) -> None:
    if enc_states.dim() != 3 or plm_states.dim() != 3:
        raise ValueError(
            f"enc_states and plm_states must be (B,T,D) and (B,N,D); got {tuple(enc_states.shape)}, "
            f"{tuple(plm_states.shape)}"
        )
    if enc_states.shape[0] != plm_states.shape[0] or enc_states.shape[2] != plm_states.shape[2]:
        raise ValueError(
            f"enc_states {tuple(enc_states.shape)} and plm_states {tuple(plm_states.shape)} must share "
            "batch size and width (apply the adapter first)"
        )
    if enc_mask.shape != enc_states.shape[:2] or enc_mask.dtype != torch.bool:
        raise ValueError(f"enc_mask must be a bool (B,T) tensor, got {enc_mask.dtype} {tuple(enc_mask.shape)}")
    if plm_mask.shape != plm_states.shape[:2] or plm_mask.dtype != torch.bool:
        raise ValueError(f"plm_mask must be a bool (B,N) tensor, got {plm_mask.dtype} {tuple(plm_mask.shape)}")


def pool_with_plan(plan: Tensor, enc_states: Tensor, min_token_mass: float = 1e-8) -> Tensor:
    """aligned_j = sum_i P_ij h_i / sum_i P_ij; zero (and gradient-free ratio) where the mass is tiny."""
    token_mass = plan.sum(dim=1)  # (B, N)
    pooled = plan.transpose(1, 2) @ enc_states  # (B, N, D)
    has_mass = token_mass > min_token_mass
    # where() on a safe denominator: the discarded branch must not produce inf/NaN gradients
    safe_mass = torch.where(has_mass, token_mass, torch.ones_like(token_mass))
    return torch.where(has_mass[..., None], pooled / safe_mass[..., None], torch.zeros_like(pooled))


class Aligner(nn.Module):
    """Base class: subclasses implement ``forward`` with the module-level interface."""

    name = "base"
    has_plan = True

    def forward(self, enc_states: Tensor, enc_mask: Tensor, plm_states: Tensor, plm_mask: Tensor) -> AlignOutput:
        raise NotImplementedError


class NoAligner(Aligner):
    """``none``: plain CTC. Returns zero vectors and no plan (KnowledgeTransfer skips the loss)."""

    name = "none"
    has_plan = False

    def forward(self, enc_states, enc_mask, plm_states, plm_mask) -> AlignOutput:
        return AlignOutput(torch.zeros_like(plm_states), None, {})


class OTAligner(Aligner):
    """``ot`` / ``tot`` / ``uot`` / ``partial`` / ``tuot``: entropic OT on the cosine cost, solved by ``otalign.ot.solve``.

    Args:
        kind: one of ``ot``, ``tot``, ``uot``, ``partial``, ``tuot``.
        eps: entropic regularisation (cost units; the cosine cost lies in [0, 2]).
        n_iter: solver iterations (``max_iter``).
        rho_frames: KL weight on the frame marginal for ``uot`` and ``tuot`` (ignored otherwise).
        partial_mass: total mass m in (0, 1] for ``partial``.
        order_weight: weight of the temporal-order cost for ``tot`` and ``tuot`` (``ot.temporal_order_cost``).
        grad: ``implicit``, ``unrolled`` or ``last_step`` (how the solver differentiates; see ``otalign.ot.solve``).
        detach_plan: stop gradients through the plan (pooling still differentiates w.r.t. h).
        tol: optional early-stopping tolerance passed to the solver.
        min_token_mass: tokens with less column mass get a zero aligned vector.
    """

    def __init__(
        self,
        kind: str = "uot",
        eps: float = AlignerConfig.eps,
        n_iter: int = AlignerConfig.n_iter,
        rho_frames: float = AlignerConfig.rho_frames,
        partial_mass: float = AlignerConfig.partial_mass,
        order_weight: float = AlignerConfig.order_weight,
        grad: str = AlignerConfig.grad,
        detach_plan: bool = False,
        tol: float | None = None,
        min_token_mass: float = AlignerConfig.min_token_mass,
        config: AlignerConfig | None = None,
    ) -> None:
        super().__init__()
        if config is None:
            if kind not in OT_ALIGNER_NAMES:
                raise ValueError(f"kind must be one of {OT_ALIGNER_NAMES}, got {kind!r}")
            config = AlignerConfig(name=kind, eps=float(eps), n_iter=int(n_iter), rho_frames=float(rho_frames),
                                   partial_mass=float(partial_mass), order_weight=float(order_weight), grad=grad,
                                   detach_plan=detach_plan, tol=tol, min_token_mass=min_token_mass)
        elif config.family != "ot":
            raise ValueError(f"OTAligner needs an OT aligner config, got {config.name!r}")
        self.config = config
        self.kind = self.name = config.name
        # eps is read per call: the trainer anneals it (transfer.eps_start)
        self.eps = config.eps
        self.n_iter, self.grad, self.tol = config.n_iter, config.grad, config.tol
        self.rho_frames, self.partial_mass, self.order_weight = config.rho_frames, config.partial_mass, config.order_weight
        self.detach_plan = config.detach_plan
        self.min_token_mass = config.min_token_mass

    def extra_repr(self) -> str:
        extra = "".join(f", {option}={getattr(self, option)}" for option in ALIGNERS[self.kind].options)
        return f"kind={self.kind}, eps={self.eps}, n_iter={self.n_iter}, grad={self.grad}{extra}"

    def solver_options(self) -> dict:
        """Keyword arguments of ``otalign.ot.solve`` for this aligner (``AlignerConfig.solver_options``)."""
        return dataclasses.replace(self.config, eps=self.eps).solver_options()

    def transport_plan(self, enc_states: Tensor, enc_mask: Tensor, plm_states: Tensor, plm_mask: Tensor,
                       report: dict[str, float] | None = None) -> Tensor:
        """The (B, T, N) plan for the cosine cost between frames and tokens; ``report``, when
        given, receives the solve's ``max_error`` and ``converged`` fraction."""
        from otalign.ot import cosine_cost, solve

        cost = cosine_cost(enc_states, plm_states)
        # the solver rejects items without a valid frame or token (an empty transcript): solve the
        # others and give those an all-zero plan
        solvable = enc_mask.any(dim=1) & plm_mask.any(dim=1)
        result = None
        if bool(solvable.all()):
            result = solve(cost, enc_mask, plm_mask, **self.solver_options())
            plan = result.plan
        else:
            plan = cost.new_zeros(cost.shape)
            if bool(solvable.any()):
                index = solvable.nonzero().squeeze(1)
                result = solve(cost[index], enc_mask[index], plm_mask[index], **self.solver_options())
                plan = plan.index_put((index,), result.plan)
        if report is not None and result is not None:
            report["max_error"] = float(result.error.detach().max())
            report["converged"] = float(result.converged.float().mean())
        # the solver zeroes padding already; the mask keeps that true whatever it returns
        return plan * (enc_mask[:, :, None] & plm_mask[:, None, :]).to(plan.dtype)

    def forward(self, enc_states, enc_mask, plm_states, plm_mask) -> AlignOutput:
        _check_inputs(enc_states, enc_mask, plm_states, plm_mask)
        report: dict[str, float] = {}
        plan = self.transport_plan(enc_states, enc_mask, plm_states, plm_mask, report)
        weights = plan.detach() if self.detach_plan else plan
        return AlignOutput(pool_with_plan(weights, enc_states, self.min_token_mass), plan, {}, report)


def sinusoidal_positions(num_positions: int, dim: int, device=None, dtype=torch.float32) -> Tensor:
    """(num_positions, dim) Transformer sinusoidal encodings (Vaswani et al. 2017)."""
    position = torch.arange(num_positions, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table.to(dtype)


class AttentionAligner(Aligner):
    """``attention`` (Deng et al. 2022): N positional queries cross-attend to the frames.

    The query of token j is a position embedding ``q_j`` (``queries="learned"``: a trained table of
    ``max_tokens`` rows, optionally initialised from the PLM's own position-embedding table via
    ``query_init``; ``"sinusoidal"``: fixed encodings passed through a trained linear map). Then
    ``aligned_j = MultiheadAttention(q_j, keys=h, values=h)`` with the padded frames masked out.
    The attention weights (averaged over heads), transposed to (B, T, N), are the "plan": each
    valid token's column sums to 1.

    The queries see only positions, never the PLM states themselves: the target of the transfer
    loss must not leak into its input.
    """

    name = "attention"

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        queries: str = "learned",
        max_tokens: int = 512,
        query_init: Tensor | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if queries not in ("learned", "sinusoidal"):
            raise ValueError(f"queries must be 'learned' or 'sinusoidal', got {queries!r}")
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.queries, self.max_tokens = queries, max_tokens
        if queries == "learned":
            self.query_table = nn.Embedding(max_tokens, dim)
            nn.init.normal_(self.query_table.weight, std=dim**-0.5)
            if query_init is not None:
                if query_init.dim() != 2 or query_init.shape[1] != dim:
                    raise ValueError(f"query_init must be (P, {dim}), got {tuple(query_init.shape)}")
                rows = min(max_tokens, query_init.shape[0])
                with torch.no_grad():
                    self.query_table.weight[:rows] = query_init[:rows]
        else:
            self.register_buffer("query_table_fixed", sinusoidal_positions(max_tokens, dim), persistent=False)
            self.query_proj = nn.Linear(dim, dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)

    def forward(self, enc_states, enc_mask, plm_states, plm_mask) -> AlignOutput:
        _check_inputs(enc_states, enc_mask, plm_states, plm_mask)
        batch, num_tokens, _ = plm_states.shape
        if num_tokens > self.max_tokens:
            raise ValueError(f"{num_tokens} tokens exceed max_tokens={self.max_tokens} of the attention aligner")
        if self.queries == "learned":
            query = self.query_table.weight[:num_tokens]
        else:
            query = self.query_proj(self.query_table_fixed[:num_tokens].to(enc_states.dtype))
        query = query[None].expand(batch, -1, -1)
        # an utterance without frames would make every softmax 0/0: let it attend to frame 0
        # (its outputs are then masked), so no NaN reaches the shared parameters
        key_padding = ~enc_mask
        empty = ~enc_mask.any(dim=1)
        if empty.any():
            key_padding = key_padding.clone()
            key_padding[empty, 0] = False
        aligned, weights = self.attn(query, enc_states, enc_states, key_padding_mask=key_padding,
                                     need_weights=True, average_attn_weights=True)
        valid = plm_mask & ~empty[:, None]
        aligned = aligned * valid[..., None].to(aligned.dtype)
        plan = weights.transpose(1, 2) * (enc_mask[:, :, None] & valid[:, None, :]).to(weights.dtype)
        return AlignOutput(aligned, plan, {})


class CIFAligner(Aligner):
    """``cif``: continuous integrate-and-fire (Dong & Xu 2020), as used by Deng et al. 2022.

    A weight predictor ``alpha_t = sigmoid(Linear(ReLU(Conv1d(h))_t))`` gives each frame a
    firing weight in (0, 1). Token j integrates the frames whose cumulated weight crosses the
    interval [j, j+1): with ``c_t = sum_{s<=t} alpha_s``,

        W_tj = max(0, min(c_t, j + 1) - max(c_{t-1}, j))        (the part of alpha_t given to j)
        aligned_j = sum_t W_tj h_t / sum_t W_tj

    which is exactly integrate-and-fire with the boundary frame split between the two tokens it
    straddles, written in closed form (vectorised, differentiable). ``W`` (B, T, N) is the plan.

    In training (``scale="train"``, the default) the alphas are rescaled so that
    ``sum_t alpha_t = N`` (the number of valid tokens): every token fires exactly once and gets
    total weight 1 (Deng et al.'s teacher forcing). In eval mode the raw alphas are used (tokens
    past ``sum alpha`` get no weight and a zero vector). The quantity loss
    ``|sum_t alpha_t - N|`` (raw alphas, mean over the batch) is returned as ``aux_losses["quantity"]``.
    """

    name = "cif"

    def __init__(self, dim: int, kernel_size: int = 3, scale: str = "train", min_token_mass: float = 1e-8) -> None:
        super().__init__()
        if scale not in ("train", "always", "never"):
            raise ValueError(f"scale must be 'train', 'always' or 'never', got {scale!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)
        self.proj = nn.Linear(dim, 1)
        self.scale, self.min_token_mass = scale, min_token_mass

    def firing_weights(self, enc_states: Tensor, enc_mask: Tensor) -> Tensor:
        """Raw alpha_t in (0, 1), zero on padded frames: (B, T)."""
        frames = enc_states * enc_mask[..., None].to(enc_states.dtype)  # padding must not leak through the conv
        hidden = torch.relu(self.conv(frames.transpose(1, 2))).transpose(1, 2)
        alpha = torch.sigmoid(self.proj(hidden)).squeeze(-1)
        return alpha * enc_mask.to(alpha.dtype)

    def forward(self, enc_states, enc_mask, plm_states, plm_mask) -> AlignOutput:
        _check_inputs(enc_states, enc_mask, plm_states, plm_mask)
        alpha = self.firing_weights(enc_states, enc_mask)
        num_tokens = plm_mask.sum(dim=1).to(alpha.dtype)  # (B,)
        alpha_sum = alpha.sum(dim=1)
        quantity = (alpha_sum - num_tokens).abs().mean()
        if self.scale == "always" or (self.scale == "train" and self.training):
            alpha = alpha * (num_tokens / alpha_sum.clamp_min(1e-6))[:, None]
        cum = alpha.cumsum(dim=1)  # c_t
        prev = cum - alpha  # c_{t-1}
        j = torch.arange(plm_states.shape[1], device=alpha.device, dtype=alpha.dtype)
        upper = torch.minimum(cum[:, :, None], j[None, None, :] + 1)
        lower = torch.maximum(prev[:, :, None], j[None, None, :])
        plan = (upper - lower).clamp_min(0.0)
        plan = plan * (enc_mask[:, :, None] & plm_mask[:, None, :]).to(plan.dtype)
        aligned = pool_with_plan(plan, enc_states, self.min_token_mass)
        return AlignOutput(aligned, plan, {"quantity": quantity})


def build_aligner(name: str, dim: int | None = None, query_init: Tensor | None = None, **options) -> Aligner:
    """Build an aligner by name: ``AlignerConfig(name, **options).build(dim)`` (POT-style plain call).

    Args:
        name: one of :data:`ALIGNER_NAMES`.
        dim: the state width D (the PLM width); required by ``attention`` and ``cif``, which
            have parameters.
        query_init: ``attention`` only, a (max_tokens, D) table to initialise the learned queries.
        **options: fields of :class:`AlignerConfig`; options that belong to another aligner are
            ignored, so one config section can hold them all; an option no aligner knows raises
            ``ValueError``.
    """
    known = {f.name for f in dataclasses.fields(AlignerConfig)} - {"name"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown aligner option(s) {sorted(unknown)} for {name!r}")
    return AlignerConfig(name=name, **options).build(dim, query_init)
