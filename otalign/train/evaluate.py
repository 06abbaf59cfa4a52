"""Alignment evaluation of a *trained* system against ground-truth word timings.

This sits in ``train`` because it needs every layer below it: the training checkpoint (encoder +
adapter + aligner), the feature pipeline, the PLM cache and the detection metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from otalign.align.metrics import aggregate_metrics, utterance_metrics
from otalign.data.dataset import collate_batch
from otalign.data.features import GlobalCMVN
from otalign.data.manifest import Utterance
from otalign.text.cache import TeacherCache, targets_from_config
from otalign.train.config import TrainConfig
from otalign.train.trainer import Trainable, make_dataset


def _adapter_inputs(trainable: Trainable, feats: torch.Tensor, feat_lengths: torch.Tensor):
    """The encoder output and the states the KT adapter reads (the output of ``transfer.layer``
    where the trainable has one, else the encoder output), as in training."""
    encode = getattr(trainable, "encode", None)
    layer = getattr(trainable, "layer", None)
    if callable(encode):
        out = encode(feats, feat_lengths, with_layer=layer is not None)
    else:
        out = trainable.asr(feats, feat_lengths)
    states = getattr(out, "layer_states", None)
    return out, (out.states if states is None else states)


def make_encode_fn(trainable: Trainable, config: TrainConfig, cmvn: GlobalCMVN | None
                   ) -> Callable[[list[Utterance]], tuple[torch.Tensor, torch.Tensor]]:
    """``encode_fn(utterances) -> (adapted states (B,T,D_plm), mask (B,T))`` for ``otalign align --ckpt``.

    The function carries what scoring its output needs, so no caller can pair it with the wrong
    teacher or frame rate: ``encode_fn.frame_s`` (the model's seconds per frame) and
    ``encode_fn.targets()`` (``targets_from_config(config.teacher)``: the teacher the checkpoint was
    trained with, never a default one).
    """
    if trainable.transfer is None or trainable.transfer.adapter is None:
        raise ValueError("this checkpoint was trained without an aligner (transfer.aligner=none): "
                         "it has no adapter into the PLM space to align with")

    @torch.no_grad()
    def encode(utterances: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
        dataset = make_dataset(utterances, config, cmvn, trainable=trainable)
        batch = collate_batch([dataset[i] for i in range(len(utterances))])
        out, states = _adapter_inputs(trainable, batch["feats"], batch["feat_lengths"])
        adapted = trainable.transfer.adapter(states) * out.mask[..., None]
        return adapted, out.mask

    encode.frame_s = float(trainable.asr.frame_s)
    encode.targets = lambda: targets_from_config(config.teacher)
    encode.teacher_config = config.teacher
    return encode


@dataclass
class UtterancePlan:
    """One utterance's plan from the system's own aligner, with what scoring it needs."""

    utterance: Utterance
    plan: torch.Tensor
    """(frames, tokens): valid encoder frames x the teacher's tokens."""
    word_index: torch.Tensor
    """(tokens,): the whitespace word of each token (-1: special tokens)."""
    frame_s: float


@torch.no_grad()
def alignment_plans(trainable: Trainable, config: TrainConfig, cmvn: GlobalCMVN | None,
                    utterances: Sequence[Utterance], batch_size: int = 16,
                    teacher: TeacherCache | None = None) -> Iterator[UtterancePlan]:
    """The aligner's plan of each utterance, in order, as in training (the adapter reads
    ``transfer.layer``; ``teacher`` as in :func:`alignment_metrics`)."""
    if trainable.transfer is None:
        raise ValueError("this system was trained without an aligner (transfer.aligner=none): it has no plans")
    if teacher is None:
        teacher = targets_from_config(config.teacher)
    frame_s = float(trainable.asr.frame_s)
    utterances = list(utterances)
    dataset = make_dataset(utterances, config, cmvn, trainable=trainable)
    for start in range(0, len(utterances), batch_size):
        chunk = list(range(start, min(start + batch_size, len(utterances))))
        batch = collate_batch([dataset[i] for i in chunk])
        plm = teacher.get(batch["texts"])
        out, states = _adapter_inputs(trainable, batch["feats"], batch["feat_lengths"])
        transferred = trainable.transfer(states, out.mask, plm.states.float(), plm.mask)
        for row, index in enumerate(chunk):
            frames, tokens = int(out.mask[row].sum()), int(plm.mask[row].sum())
            yield UtterancePlan(utterances[index], transferred.plan[row, :frames, :tokens],
                                plm.word_index[row, :tokens], frame_s)


def alignment_metrics(trainable: Trainable, config: TrainConfig, cmvn: GlobalCMVN | None,
                      utterances: list[Utterance], batch_size: int = 16,
                      teacher: TeacherCache | None = None) -> dict[str, float]:
    """Detection metrics of the system's own aligner on utterances that carry word timings.

    ``teacher``: the targets, ``None`` = ``targets_from_config(config.teacher)`` (a caller that
    already holds them, such as the trainer's per-epoch dev check, passes its own to skip a PLM load;
    they must be built by ``targets_from_config`` from the same config).
    Frames are ``trainable.asr.frame_s`` long."""
    if trainable.transfer is None:
        return {}
    scored = [u for u in utterances if u.words]
    if not scored:
        raise ValueError("alignment metrics need utterances with ground-truth word spans (manifest 'words')")
    per_utterance = [
        utterance_metrics(item.plan, item.word_index, item.utterance.words,
                          [span.to_dict() for span in item.utterance.nonspeech or []], frame_s=item.frame_s)
        for item in alignment_plans(trainable, config, cmvn, scored, batch_size, teacher)]
    metrics = aggregate_metrics(per_utterance)
    # Utterances without word timings cannot be scored; count them rather than drop them silently.
    metrics["num_without_word_spans"] = len(utterances) - len(scored)
    if metrics["num_without_word_spans"]:
        print(f"[align] {metrics['num_without_word_spans']} of {len(utterances)} utterances have no word "
              f"spans and were not scored")
    return metrics
