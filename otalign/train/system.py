"""``System``: one object that owns a trained recognizer and its transfer.

A system is everything one otalign model is: the front end (fbank + CMVN statistics, or a Whisper
encoder on its log-mel), the encoder and CTC head (``CTCModel``), the adapter and aligner of the
knowledge transfer (``KnowledgeTransfer``, training only), the PLM teacher behind its cache, the
tokenizer, and the training config that says how they were built. It is made in one of two ways:

    system = System.from_config(config, tokenizer, cmvn)   # a new system, before training
    system = System.load("exp/demo/epoch_4.pt")            # a trained one

and every command goes through it: ``otalign train`` builds one, ``align --ckpt``, the demo's plots
and the experiment's alignment scores load one, and ``decode`` reads the recognizer part.

Two checkpoint kinds, as icefall keeps them:

- a **training checkpoint** (``epoch_N.pt``): the whole system (``"trainable"``: CTC model under
  ``asr.`` and the transfer under ``transfer.``) plus the optimizer and scheduler state, the epoch,
  the config, the tokenizer and the CMVN statistics; ``System.load`` restores the whole system;
- an **inference checkpoint** (``avg.pt``, ``otalign.models.export``): the recognizer only, no PLM
  and no aligner; ``System.load`` gives a system whose ``transfer`` is None, which can transcribe
  but not align.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from otalign.align.transfer import KnowledgeTransfer
from otalign.data.dataset import SpeechDataset
from otalign.data.features import GlobalCMVN
from otalign.data.manifest import Utterance
from otalign.models.asr import CTCModel
from otalign.models.export import FORMAT, CheckpointError, inference_model_from_state, load_checkpoint
from otalign.text.cache import TeacherCache, targets_from_config
from otalign.text.tokenizer import Tokenizer, tokenizer_from_dict
from otalign.train.config import TrainConfig, _from_dict, aligner_config, to_dict

__all__ = ["System", "Trainable", "build_trainable", "make_dataset"]


# ----------------------------------------------------------------------------- the parts
class Trainable(nn.Module):
    """The CTC model plus, during training only, the adapter+aligner of the knowledge transfer."""

    def __init__(self, asr: CTCModel, transfer: KnowledgeTransfer | None, layer: int | None = None,
                 from_bottom: bool = False):
        super().__init__()
        self.asr = asr
        self.transfer = transfer
        self.layer = layer
        """Encoder layer the adapter reads (None = the encoder output)."""
        self.from_bottom = from_bottom
        """Inputs are the cached states of a frozen Whisper bottom, not log-mel."""

    def encode(self, feats, feat_lengths, with_layer: bool = False):
        return self.asr(feats, feat_lengths, layer=self.layer if with_layer else None, from_bottom=self.from_bottom)

    def forward(self, feats, feat_lengths, targets, target_lengths, plm_states=None, plm_mask=None):
        """The training loss: CTC (mean over the utterances CTC can score) and, with PLM states, the
        transfer. Also returns what validation reads: the log-probabilities and per-utterance CTC."""
        transfer_on = self.transfer is not None and plm_states is not None
        out = self.encode(feats, feat_lengths, with_layer=transfer_on and self.layer is not None)
        ctc_per_utt, ctc_valid = self.asr.ctc_loss(out.log_probs, out.out_lengths, targets, target_lengths)
        zero = out.log_probs.new_zeros(())
        ctc = ctc_per_utt[ctc_valid].sum() / ctc_valid.sum().clamp(min=1)
        kt, aux, solver = zero, zero, {}
        if transfer_on:
            states = out.layer_states if out.layer_states is not None else out.states
            transferred = self.transfer(states, out.mask, plm_states, plm_mask)
            kt, aux, solver = transferred.kt_loss, transferred.aux_loss, transferred.solver
        return {"ctc": ctc, "kt": kt, "aux": aux, "ctc_invalid": (~ctc_valid).sum(), "solver": solver,
                "ctc_per_utt": ctc_per_utt, "ctc_valid": ctc_valid, "log_probs": out.log_probs,
                "out_lengths": out.out_lengths}


def build_trainable(config: TrainConfig, vocab_size: int, plm_width: int | None, with_transfer: bool = True) -> Trainable:
    """The one place a model is built from a config: the CTC model (``CTCModel.config_from_train``)
    and, with an aligner and ``with_transfer``, the adapter and aligner of the transfer."""
    asr = CTCModel(**CTCModel.config_from_train(to_dict(config)["model"], vocab_size))
    transfer = None
    t = config.transfer
    if t.aligner != "none" and with_transfer:
        if plm_width is None:
            raise ValueError("a PLM width is needed for transfer.aligner != 'none'")
        transfer = KnowledgeTransfer(aligner_config(t), asr.d_model, plm_width, loss=t.loss,
                                     adapter_hidden=t.adapter_hidden, adapter_dropout=t.adapter_dropout,
                                     aux_weights={"quantity": t.quantity_weight}, temperature=t.temperature)
    return Trainable(asr, transfer, layer=t.layer, from_bottom=asr.freeze_layers > 0)


def make_dataset(utterances, config: TrainConfig, cmvn: GlobalCMVN | None, train: bool = False, epoch_seed: int = 0,
                 state_cache=None, trainable: Trainable | None = None) -> SpeechDataset:
    """The dataset a trainable reads, as configured: fbank (+CMVN) or Whisper log-mel, or, when the
    Whisper bottom is frozen, its cached states (``state_cache``, or made from ``trainable``)."""
    if state_cache is None and trainable is not None and trainable.from_bottom:
        state_cache = trainable.asr.encoder.make_bottom_cache(config.data.whisper_cache_dir)
    speeds = (0.9, 1.0, 1.1) if train and config.data.speed_perturb else (1.0,)
    return SpeechDataset(utterances, cache_dir=config.data.feature_cache_dir, cmvn=cmvn,
                         spec_augment=train and config.data.spec_augment, speed_factors=speeds, seed=epoch_seed,
                         frontend=config.model.frontend, state_cache=state_cache)




@dataclass
class System:
    """A recognizer and its transfer. ``trainable.asr`` is the recognizer (front end, encoder, CTC
    head); ``trainable.transfer`` the adapter and aligner (None for plain CTC or an inference
    checkpoint); ``teacher`` the PLM targets the transfer was trained against (built on first use,
    from ``config.teacher``: the one path training and every evaluation share)."""

    config: TrainConfig
    trainable: Trainable
    tokenizer: Tokenizer
    cmvn: GlobalCMVN | None = None
    source: str = "<new>"
    kind: str = "new"
    """'new' (from_config), 'training' (a training checkpoint) or 'inference' (an export: no transfer)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Provenance of a loaded system: the training git hash, epoch(s) and the training config as stored."""
    _teacher: TeacherCache | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: TrainConfig, tokenizer: Tokenizer, cmvn: GlobalCMVN | None = None,
                    teacher: TeacherCache | None = None) -> "System":
        """A new (untrained) system as ``config`` describes it; the PLM teacher is loaded when the
        config has an aligner (its width sizes the adapter) unless one is given."""
        if config.transfer.aligner != "none" and teacher is None:
            teacher = targets_from_config(config.teacher)
        width = teacher.teacher.width if teacher is not None else None
        trainable = build_trainable(config, tokenizer.vocab_size, width)
        return cls(config, trainable, tokenizer, cmvn, _teacher=teacher)

    @classmethod
    def load(cls, path: str | Path, recognizer_only: bool = False) -> "System":
        """A trained system from a training checkpoint (the whole system) or an inference export
        (the recognizer only: ``transfer`` is None). ``recognizer_only``: of a training checkpoint
        too, load only the recognizer (what decoding needs: no PLM is loaded, no aligner built).
        A damaged, foreign or incomplete file is one ``CheckpointError`` naming it."""
        path = Path(path)
        state = load_checkpoint(path)
        if isinstance(state, dict) and "trainable" in state:
            return cls._from_training_state(state, path, recognizer_only)
        if isinstance(state, dict) and (state.get("format") == FORMAT or {"model", "model_config"} <= set(state)):
            return cls._from_inference_state(state, path)
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is neither an otalign training checkpoint nor an inference model ({keys})")

    @classmethod
    def _from_training_state(cls, state: dict[str, Any], path: Path, recognizer_only: bool) -> "System":
        missing = [k for k in ("config", "tokenizer") if k not in state]
        if missing:
            raise CheckpointError(f"checkpoint {path} is incomplete: it lacks {', '.join(map(repr, missing))}")
        try:
            config = _from_dict(TrainConfig, state["config"], "")
        except ValueError as error:
            raise CheckpointError(f"checkpoint {path} holds a config this version cannot read: {error}") from None
        tokenizer = tokenizer_from_dict(state["tokenizer"], source=str(path))
        cmvn = GlobalCMVN.from_dict(state["cmvn"]) if state.get("cmvn") else None
        weights = state["trainable"]
        if recognizer_only:
            system = cls(config, build_trainable(config, tokenizer.vocab_size, None, with_transfer=False), tokenizer, cmvn)
            weights = {k: v for k, v in weights.items() if not k.startswith("transfer.")}
        else:
            system = cls.from_config(config, tokenizer, cmvn)
        try:
            system.trainable.load_state_dict(weights)
        except RuntimeError as error:
            raise CheckpointError(f"checkpoint {path}: its weights do not fit its config "
                                  f"({str(error).strip().splitlines()[0][:200]})") from None
        system.trainable.eval()
        system.source, system.kind = str(path), "training"
        system.meta = {k: state[k] for k in ("git_hash", "epoch", "config") if k in state}
        return system

    @classmethod
    def _from_inference_state(cls, state: dict[str, Any], path: Path) -> "System":
        inference = inference_model_from_state(state, source=str(path))
        meta = inference.meta or {}
        config = _from_dict(TrainConfig, meta["config"], "") if isinstance(meta.get("config"), dict) else TrainConfig()
        config.transfer.aligner = "none"  # an inference model carries no adapter or aligner
        # the model's own config says how its input is read, whatever the stored training config says
        model = inference.config
        config.model.frontend = model.get("frontend", "fbank")
        config.model.freeze_layers, config.model.pool = int(model.get("freeze_layers", 0)), int(model.get("pool", 1))
        trainable = Trainable(inference.model, None, from_bottom=False)
        cmvn = GlobalCMVN.from_dict(inference.cmvn) if inference.cmvn else None
        return cls(config, trainable.eval(), inference.tokenizer, cmvn, str(path), "inference", dict(meta))

    # ------------------------------------------------------------------ parts
    @property
    def asr(self) -> CTCModel:
        return self.trainable.asr

    @property
    def frame_s(self) -> float:
        """Seconds per encoder frame (0.04 for the fbank Conformer, 0.02 for Whisper)."""
        return float(self.asr.frame_s)

    @property
    def teacher(self) -> TeacherCache | None:
        """The PLM targets of ``config.teacher`` (None without an aligner)."""
        if self._teacher is None and self.trainable.transfer is not None:
            self._teacher = targets_from_config(self.config.teacher)
        return self._teacher

    def dataset(self, utterances: Sequence[Utterance], train: bool = False, epoch_seed: int = 0):
        """The utterances as this system reads them (its front end, CMVN, frozen-bottom cache)."""
        return make_dataset(list(utterances), self.config, self.cmvn, train, epoch_seed, trainable=self.trainable)

    # ------------------------------------------------------------------ use
    @torch.no_grad()
    def transcribe(self, utterances: Sequence[Utterance], batch_size: int = 16) -> list[str]:
        """Greedy CTC transcripts, one per utterance (the recognizer alone: no PLM, no aligner)."""
        from otalign.data.dataset import collate_batch
        from otalign.decode.search import ctc_greedy

        self.trainable.eval()
        dataset = self.dataset(utterances)
        texts: list[str] = []
        for start in range(0, len(dataset), batch_size):
            batch = collate_batch([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            out = self.trainable.encode(batch["feats"], batch["feat_lengths"])
            texts += [self.tokenizer.decode(ids) for ids in ctc_greedy(out.log_probs, out.out_lengths)]
        return texts

    def alignment_metrics(self, utterances: Sequence[Utterance], batch_size: int = 16) -> dict[str, float]:
        """Detection metrics of the system's own aligner against the utterances' word timings."""
        from otalign.train.evaluate import alignment_metrics

        self._require_transfer("alignment metrics")
        return alignment_metrics(self.trainable, self.config, self.cmvn, list(utterances), batch_size, self.teacher)

    def alignment_plans(self, utterances: Sequence[Utterance], batch_size: int = 16):
        """The system's own aligner's plan of each utterance (``evaluate.UtterancePlan``s, in order)."""
        from otalign.train.evaluate import alignment_plans

        self._require_transfer("alignment plans")
        return alignment_plans(self.trainable, self.config, self.cmvn, list(utterances), batch_size, self.teacher)

    def encode_fn(self):
        """``encode_fn(utterances) -> (adapted states, mask)`` for ``otalign align --ckpt``, carrying
        ``frame_s`` and ``targets()`` (this system's teacher)."""
        from otalign.train.evaluate import make_encode_fn

        self._require_transfer("alignment")
        encode = make_encode_fn(self.trainable, self.config, self.cmvn)
        encode.targets = lambda: self.teacher
        return encode

    def export(self, path: str | Path, **meta: Any) -> dict[str, Any]:
        """Write the inference checkpoint (recognizer only) of this system to ``path``."""
        from otalign.models.export import export_inference_model

        return export_inference_model({"model": self.trainable.state_dict(), "model_config": self.asr.config,
                                       "tokenizer": self.tokenizer.to_dict(),
                                       "cmvn": self.cmvn.to_dict() if self.cmvn else None,
                                       "config": to_dict(self.config), **meta}, path)

    def _require_transfer(self, what: str) -> None:
        if self.trainable.transfer is None:
            why = ("an inference model holds the recognizer only" if self.kind == "inference"
                   else "it was trained without one (transfer.aligner = none)" if self.config.transfer.aligner == "none"
                   else "it was loaded with recognizer_only=True")
            raise ValueError(f"{what} needs the adapter and aligner, and {self.source} has none ({why}): "
                             f"load a training checkpoint (epoch_N.pt) of a run with an aligner")
