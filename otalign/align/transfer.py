"""Knowledge transfer from a frozen PLM: adapter + aligner + transfer loss (training only).

For a batch of encoder states ``e`` (B, T, enc_dim) and PLM token states ``z`` (B, N, plm_dim)::

    h        = Adapter(e)                                  (B, T, plm_dim), zeroed on padded frames
    aligned  = aligner(h, enc_mask, z, plm_mask).aligned   (B, N, plm_dim)
    L_KT     = mean over valid tokens j of  1 - cos(aligned_j, z_j)      (loss="cosine")
               or mean over valid tokens of  ||aligned_j - z_j||^2 / D    (loss="mse")
    L_aux    = sum_k aux_weight_k * aux_losses[k]          (CIF's quantity loss)

The training loss is ``L_CTC + lambda * (L_KT + L_aux)``; lambda lives in the training config.
The module is not part of the exported recogniser.

Edge cases (documented and tested):

- **utterances with zero tokens** (empty transcript) or zero frames contribute no term to the KT
  mean; they are counted in ``TransferOutput.num_empty_utterances``. If the whole batch has no
  valid token the KT loss is an exact 0 that is still connected to the graph (DDP needs every
  parameter to receive a gradient, even a zero one).
- **more tokens than frames**: no special case. Under ``ot``/``tot``/``uot`` the token marginal is
  hard, so every token still receives its full mass ``b_j = 1/N`` (several tokens share a frame);
  ``cif`` splits a frame between tokens the same way; ``attention`` is unaffected.
- **padding**: padded frames and tokens carry no mass and give no loss term; no NaN arises in
  the forward pass or the backward pass (tested with padded batches).
- aligner ``none``: no adapter, no parameters, ``kt_loss = aux_loss = 0`` and ``plan = None``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from otalign.align.aligners import ALIGNER_NAMES, AlignerConfig, AlignOutput, build_aligner

__all__ = ["KnowledgeTransfer", "TransferOutput", "token_cosine_loss"]


class TransferOutput(NamedTuple):
    """Result of :class:`KnowledgeTransfer`.

    Attributes:
        kt_loss: scalar, mean over valid tokens of the per-token transfer loss.
        aux_loss: scalar, weighted sum of the aligner's auxiliary losses (0 if none).
        plan: (B, T, N) frame-to-token weights, or ``None`` (aligner ``none``).
        aligned: (B, N, plm_dim) aligned acoustic vectors, or ``None`` (aligner ``none``).
        num_tokens: number of tokens that entered the KT mean.
        num_empty_utterances: utterances that had no valid token or no valid frame.
        aux_losses: the unweighted auxiliary losses by name (for logging).
        solver: the OT aligner's convergence report (``AlignOutput.solver``); empty otherwise.
    """

    kt_loss: Tensor
    aux_loss: Tensor
    plan: Tensor | None
    aligned: Tensor | None
    num_tokens: int
    num_empty_utterances: int
    aux_losses: dict[str, Tensor]
    solver: dict[str, float] = {}


def token_cosine_loss(aligned: Tensor, target: Tensor, min_norm: float = 1e-12) -> Tensor:
    """Per-token ``1 - cos(aligned_j, target_j)``, (B, N); a zero vector gives cos = 0, finite gradient."""
    a = aligned / aligned.norm(dim=-1, keepdim=True).clamp_min(min_norm)
    b = target / target.norm(dim=-1, keepdim=True).clamp_min(min_norm)
    return 1.0 - (a * b).sum(dim=-1)


def token_infonce_loss(aligned: Tensor, target: Tensor, token_mask: Tensor, temperature: float = 0.1,
                       min_norm: float = 1e-12) -> Tensor:
    """Per-token InfoNCE, (B, N): ``-log softmax_m(cos(aligned_n, target_m) / temperature)[n]`` over
    the valid tokens m of the same utterance. Unlike the cosine loss it rewards a pooled vector
    only for being closer to its own token than to the utterance's other tokens, which a flat
    plan (every token pooling the same frames) cannot achieve."""
    a = aligned / aligned.norm(dim=-1, keepdim=True).clamp_min(min_norm)
    b = target / target.norm(dim=-1, keepdim=True).clamp_min(min_norm)
    logits = torch.einsum("bnd,bmd->bnm", a, b) / temperature
    logits = logits.masked_fill(~token_mask[:, None, :], torch.finfo(logits.dtype).min)
    log_probs = logits.log_softmax(dim=-1)
    return -log_probs.diagonal(dim1=1, dim2=2)


class KnowledgeTransfer(nn.Module):
    """Adapter + aligner + transfer loss.

    Args:
        aligner_name: one of ``none, ot, tot, uot, partial, attention, cif``, or an
            :class:`~otalign.align.aligners.AlignerConfig` holding the name and every option.
        enc_dim: width of the acoustic encoder states.
        plm_dim: width of the PLM states (the adapter's output width).
        loss: ``cosine`` (default), ``mse`` or ``infonce`` (:func:`token_infonce_loss`).
        temperature: the InfoNCE temperature.
        adapter_hidden: hidden width of a 2-layer MLP adapter; ``None`` = linear adapter.
        adapter_dropout: dropout inside the adapter.
        aux_weights: weight of each auxiliary loss by name (default ``{"quantity": 1.0}``).
        **aligner_options: passed to :func:`otalign.align.aligners.build_aligner`
            (``eps, n_iter, rho_frames, partial_mass, order_weight, grad, detach_plan, ...``).
    """

    def __init__(
        self,
        aligner_name: str | AlignerConfig,
        enc_dim: int,
        plm_dim: int,
        loss: str = "cosine",
        adapter_hidden: int | None = None,
        adapter_dropout: float = 0.1,
        aux_weights: dict[str, float] | None = None,
        temperature: float = 0.1,
        **aligner_options,
    ) -> None:
        super().__init__()
        if isinstance(aligner_name, AlignerConfig):
            if aligner_options:
                raise ValueError("give the aligner's options in its AlignerConfig, not as keywords too")
            aligner_config, aligner_name = aligner_name, aligner_name.name
        elif aligner_name not in ALIGNER_NAMES:
            raise ValueError(f"aligner_name must be one of {ALIGNER_NAMES}, got {aligner_name!r}")
        else:
            aligner_config = None
        if loss not in ("cosine", "mse", "infonce"):
            raise ValueError(f"loss must be 'cosine', 'mse' or 'infonce', got {loss!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.aligner_name, self.loss, self.plm_dim = aligner_name, loss, plm_dim
        self.temperature = float(temperature)
        self.aux_weights = {"quantity": 1.0, **(aux_weights or {})}
        self.aligner = (aligner_config.build(plm_dim) if aligner_config is not None
                        else build_aligner(aligner_name, dim=plm_dim, **aligner_options))
        if aligner_name == "none":
            self.adapter = None
        else:
            from otalign.models.adapter import Adapter

            self.adapter = Adapter(enc_dim, plm_dim, hidden=adapter_hidden, dropout=adapter_dropout)

    @property
    def enabled(self) -> bool:
        return self.aligner_name != "none"

    def forward(self, enc_states: Tensor, enc_mask: Tensor, plm_states: Tensor, plm_mask: Tensor) -> TransferOutput:
        """Compute the transfer loss for a padded batch (masks are bool, True = valid)."""
        zero = enc_states.new_zeros(())
        has_frames = enc_mask.any(dim=1)
        valid = plm_mask & has_frames[:, None]
        num_empty = int((~valid.any(dim=1)).sum())
        if not self.enabled:
            return TransferOutput(zero, zero, None, None, int(valid.sum()), num_empty, {})
        if plm_states.shape[-1] != self.plm_dim:
            raise ValueError(f"plm_states width {plm_states.shape[-1]} != plm_dim {self.plm_dim}")
        adapted = self.adapter(enc_states)
        adapted = torch.where(enc_mask[..., None], adapted, torch.zeros_like(adapted))
        out: AlignOutput = self.aligner(adapted, enc_mask, plm_states.to(adapted.dtype), plm_mask)
        if self.loss == "cosine":
            per_token = token_cosine_loss(out.aligned, plm_states.to(out.aligned.dtype))
        elif self.loss == "infonce":
            per_token = token_infonce_loss(out.aligned, plm_states.to(out.aligned.dtype), valid, self.temperature)
        else:
            per_token = (out.aligned - plm_states.to(out.aligned.dtype)).pow(2).mean(dim=-1)
        # where(), not multiply: a NaN/inf on a padded token must not survive as 0 * NaN
        per_token = torch.where(valid, per_token, torch.zeros_like(per_token))
        num_tokens = int(valid.sum())
        kt_loss = per_token.sum() / max(num_tokens, 1)
        aux_loss = zero
        for name, value in out.aux_losses.items():
            aux_loss = aux_loss + self.aux_weights.get(name, 1.0) * value
        return TransferOutput(kt_loss, aux_loss, out.plan, out.aligned, num_tokens, num_empty, dict(out.aux_losses),
                              dict(out.solver))
