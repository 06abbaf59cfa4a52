"""Conformer-CTC recogniser: encoder + linear CTC head over characters or SentencePiece units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from otalign.models.conformer import ConformerEncoder

# Every architecture hyperparameter in one place.
#   tiny : the 2-core CPU demo model, 4 x 144, 4 heads, FFN 576, kernel 15: 2.15M parameters with 29
#          characters. Its subsampling convolutions are 64 channels wide instead of d_model: at 144
#          they took ~70% of a training step on CPU; 64 halves the step time (bench/decode.py).
#   small: the common ESPnet/WeNet Conformer (12 x 256, 4 heads, FFN 2048, kernel 15, subsampling
#          convolutions d_model wide), 32.7M parameters.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(input_dim=80, d_model=144, num_layers=4, num_heads=4, ff_dim=576, conv_kernel=15, dropout=0.1,
                 subsampling_channels=64),
    "small": dict(input_dim=80, d_model=256, num_layers=12, num_heads=4, ff_dim=2048, conv_kernel=15, dropout=0.1,
                  subsampling_channels=None),
}


@dataclass
class ModelOutput:
    """Forward output. states: (B, T', D) encoder states (zero on padding); mask: (B, T') bool True =
    valid; log_probs: (B, T', V) log-softmax of the CTC head; out_lengths: (B,) valid frames;
    layer_states: (B, T', D) states of the layer asked for, or None."""

    states: torch.Tensor
    mask: torch.Tensor
    log_probs: torch.Tensor
    out_lengths: torch.Tensor
    layer_states: torch.Tensor | None = None
    """The states of the encoder layer asked for (``forward(..., layer=k)``), else None."""


def ctc_min_frames(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Fewest frames a CTC path needs for each target: S + (number of adjacent repeats).

    A repeated label (the two l's of "hello") needs a blank between its copies, so "hello" needs
    6 frames, not 5.
    """
    if targets.dim() != 2:
        raise ValueError(f"targets must be padded (B, S), got {tuple(targets.shape)}")
    S = targets.shape[1]
    if S < 2:
        return target_lengths.clone()
    pos = torch.arange(1, S, device=targets.device)[None, :]
    repeats = (targets[:, 1:] == targets[:, :-1]) & (pos < target_lengths[:, None])
    return target_lengths + repeats.sum(dim=1)


WHISPER_FRONTENDS = ("whisper-tiny.en", "whisper-base")


class CTCModel(nn.Module):
    """Acoustic encoder + ``Linear(d_model, vocab_size)`` CTC head; blank = 0.

    ``frontend="fbank"`` (default): the Conformer of a preset from :data:`PRESETS`, trained from
    scratch on 80-dim fbank; ``CTCModel(vocab_size, preset="tiny", num_layers=6)`` overrides any of
    the preset's keys. ``frontend="whisper-tiny.en" | "whisper-base"``: a pre-trained Whisper
    encoder converted from its PyPI package (otalign.models.whisper) on Whisper log-mel input, its
    bottom ``freeze_layers`` blocks frozen, ``pool`` = 2 for 40 ms frames; ``dropout`` then applies
    before the head. ``config`` holds everything needed to rebuild the model.
    """

    def __init__(self, vocab_size: int, preset: str = "tiny", frontend: str = "fbank", freeze_layers: int = 0,
                 pool: int = 1, **overrides: Any) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (blank + one unit), got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.frontend = frontend
        if frontend == "fbank":
            if preset not in PRESETS:
                raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
            unknown = set(overrides) - set(PRESETS[preset])
            if unknown:
                raise ValueError(f"unknown model option(s) {sorted(unknown)}; known: {sorted(PRESETS[preset])}")
            if freeze_layers or pool != 1:
                raise ValueError("freeze_layers and pool apply to Whisper front ends only")
            arch = {**PRESETS[preset], **overrides}
            self.config: dict[str, Any] = {"vocab_size": self.vocab_size, "preset": preset, **arch}
            self.d_model = int(arch["d_model"])
            self.num_layers = int(arch["num_layers"])
            self.encoder = ConformerEncoder(**arch)
            self.head_dropout = nn.Identity()
            self._frame_s = 0.04  # 10 ms fbank hop, 4x convolutional subsampling
        elif frontend in WHISPER_FRONTENDS:
            from otalign.models.whisper import load_whisper_encoder

            unknown = set(overrides) - {"dropout"}
            if unknown:
                raise ValueError(f"unknown model option(s) {sorted(unknown)} for {frontend}; known: ['dropout']")
            dropout = float(overrides.get("dropout", 0.1))
            self.encoder, info = load_whisper_encoder(frontend, freeze_layers=freeze_layers, pool=pool)
            self.config = {"vocab_size": self.vocab_size, "frontend": frontend, "freeze_layers": int(freeze_layers),
                           "pool": int(pool), "dropout": dropout}
            self.d_model = info.d_model
            self.num_layers = info.num_layers
            self.head_dropout = nn.Dropout(dropout)
            self._frame_s = info.frame_s
        else:
            raise ValueError(f"frontend must be 'fbank' or one of {list(WHISPER_FRONTENDS)}, got {frontend!r}")
        self.ctc_head = nn.Linear(self.d_model, vocab_size)

    @classmethod
    def config_from_train(cls, model_section: dict[str, Any], vocab_size: int) -> dict[str, Any]:
        """``CTCModel`` keyword arguments from a training config's ``model`` section (a dict): the one
        rebuild rule that training, export and decoding share."""
        frontend = model_section.get("frontend", "fbank")
        if frontend == "fbank":
            config = {"vocab_size": vocab_size, "preset": model_section["preset"],
                      **dict(model_section.get("overrides") or {})}
        else:
            config = {"vocab_size": vocab_size, "frontend": frontend,
                      "freeze_layers": int(model_section.get("freeze_layers", 0)),
                      "pool": int(model_section.get("pool", 1))}
        if "dropout" in model_section:
            config["dropout"] = model_section["dropout"]
        return config

    @property
    def frame_s(self) -> float:
        """Seconds per encoder output frame: alignment metrics read it here, never from a constant."""
        return self._frame_s

    @property
    def frame_rate_hz(self) -> float:
        return 1.0 / self._frame_s

    @property
    def freeze_layers(self) -> int:
        return int(self.config.get("freeze_layers", 0))

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor, layer: int | None = None,
                from_bottom: bool = False) -> ModelOutput:
        """``feats`` (B, T, 80) fbank or Whisper log-mel with ``feat_lengths`` (B,); with
        ``from_bottom=True`` (Whisper, ``freeze_layers`` > 0) the cached outputs of the frozen
        bottom instead, (B, T', D) with their frame counts. ``layer`` (1-based): also return that
        encoder layer's states as ``ModelOutput.layer_states`` (the transfer's tap)."""
        if from_bottom:
            if self.frontend == "fbank" or not self.freeze_layers:
                raise ValueError("from_bottom needs a Whisper front end with freeze_layers > 0")
            valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < feat_lengths.to(feats.device)[:, None]
            encoded = self.encoder.forward_top(feats, valid, layer)
        else:
            encoded = self.encoder(feats, feat_lengths, layer) if layer is not None else self.encoder(feats, feat_lengths)
        states, mask = encoded[0], encoded[1]
        log_probs = F.log_softmax(self.ctc_head(self.head_dropout(states)).float(), dim=-1)
        return ModelOutput(states, mask, log_probs, mask.sum(dim=1), encoded[2] if layer is not None else None)

    @staticmethod
    def ctc_loss(
        log_probs: torch.Tensor,
        out_lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-utterance CTC negative log-likelihood (nats, summed over the utterance).

        Args:
            log_probs: (B, T', V) log-probabilities. out_lengths: (B,) valid frames.
            targets: (B, S) padded label ids (never 0 = blank at valid positions).
            target_lengths: (B,) valid labels.

        Returns:
            (loss_per_utt (B,), valid (B,) bool). An utterance is impossible (valid=False) when it
            has no frames or fewer frames than :func:`ctc_min_frames`; its loss entry is 0 and
            carries no gradient, so the caller can count it and average over the valid ones.
            An empty target with frames is possible (all-blank path) and stays valid.
        """
        if log_probs.dim() != 3:
            raise ValueError(f"log_probs must be (B, T', V), got {tuple(log_probs.shape)}")
        B = log_probs.shape[0]
        if targets.shape[0] != B or out_lengths.shape != (B,) or target_lengths.shape != (B,):
            raise ValueError(
                f"batch sizes disagree: log_probs {B}, out_lengths {tuple(out_lengths.shape)}, "
                f"targets {tuple(targets.shape)}, target_lengths {tuple(target_lengths.shape)}"
            )
        out_lengths = out_lengths.to(torch.long)
        target_lengths = target_lengths.to(torch.long)
        valid = (out_lengths > 0) & (ctc_min_frames(targets, target_lengths) <= out_lengths)
        loss = log_probs.new_zeros(B)
        idx = valid.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            # Keep the autograd graph connected so callers can always call backward().
            return loss + 0.0 * log_probs.sum(), valid
        sub = F.ctc_loss(
            log_probs[idx].transpose(0, 1).float(),
            targets[idx].to(torch.long),
            out_lengths[idx],
            target_lengths[idx],
            blank=0,
            reduction="none",
            zero_infinity=False,
        )
        return loss.index_put((idx,), sub), valid
