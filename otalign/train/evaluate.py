"""Alignment evaluation of a *trained* system against ground-truth word timings.

This sits in ``train`` because it needs every layer below it: the training checkpoint (encoder +
adapter + aligner), the feature pipeline, the PLM cache and the detection metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from otalign.align.metrics import aggregate_metrics, utterance_metrics
from otalign.data.dataset import SpeechDataset, collate_batch
from otalign.data.features import GlobalCMVN
from otalign.data.manifest import Utterance
from otalign.models.export import CheckpointError, load_checkpoint
from otalign.text.teacher import teacher_from_config
from otalign.text.tokenizer import tokenizer_from_dict
from otalign.train.config import TrainConfig, _from_dict
from otalign.train.trainer import Trainable, build_teacher, build_trainable


def load_trainable(ckpt_path: str | Path) -> tuple[Trainable, TrainConfig, GlobalCMVN | None]:
    """Rebuild the training module (ASR + adapter + aligner) of an ``epoch_N.pt`` checkpoint."""
    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    if "trainable" not in ckpt:
        raise CheckpointError(f"{ckpt_path} is not a training checkpoint (epoch_N.pt); an inference export "
                              f"(avg.pt) has no adapter or aligner to evaluate")
    missing = [k for k in ("config", "tokenizer") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt_path} is incomplete: it lacks {', '.join(map(repr, missing))}")
    try:
        config = _from_dict(TrainConfig, ckpt["config"], "")
    except ValueError as error:
        raise CheckpointError(f"checkpoint {ckpt_path} holds a config this version cannot read: {error}") from None
    plm_width = None
    if config.transfer.aligner != "none":
        plm_width = teacher_from_config(config.teacher).width
    vocab_size = tokenizer_from_dict(ckpt["tokenizer"], source=str(ckpt_path)).vocab_size
    trainable = build_trainable(config, vocab_size, plm_width)
    try:
        trainable.load_state_dict(ckpt["trainable"])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {ckpt_path}: its weights do not fit its config "
                              f"({str(error).strip().splitlines()[0][:200]})") from None
    trainable.eval()
    cmvn = GlobalCMVN.from_dict(ckpt["cmvn"]) if ckpt.get("cmvn") else None
    return trainable, config, cmvn


def make_encode_fn(trainable: Trainable, config: TrainConfig, cmvn: GlobalCMVN | None
                   ) -> Callable[[list[Utterance]], tuple[torch.Tensor, torch.Tensor]]:
    """``encode_fn(utterances) -> (adapted states (B,T,D_plm), mask (B,T))`` for ``otalign align --ckpt``."""
    if trainable.transfer is None or trainable.transfer.adapter is None:
        raise ValueError("this checkpoint was trained without an aligner (transfer.aligner=none): "
                         "it has no adapter into the PLM space to align with")

    @torch.no_grad()
    def encode(utterances: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
        dataset = SpeechDataset(utterances, cache_dir=config.data.feature_cache_dir, cmvn=cmvn)
        batch = collate_batch([dataset[i] for i in range(len(utterances))])
        out = trainable.asr(batch["feats"], batch["feat_lengths"])
        adapted = trainable.transfer.adapter(out.states) * out.mask[..., None]
        return adapted, out.mask
    return encode


@torch.no_grad()
def alignment_metrics(trainable: Trainable, config: TrainConfig, cmvn: GlobalCMVN | None,
                      utterances: list[Utterance], batch_size: int = 16) -> dict[str, float]:
    """Detection metrics of the system's own aligner on utterances that carry word timings."""
    if trainable.transfer is None:
        return {}
    scored = [u for u in utterances if u.words]
    if not scored:
        raise ValueError("alignment metrics need utterances with ground-truth word spans (manifest 'words')")
    teacher = build_teacher(config)
    dataset = SpeechDataset(scored, cache_dir=config.data.feature_cache_dir, cmvn=cmvn)
    per_utterance = []
    for start in range(0, len(scored), batch_size):
        chunk = list(range(start, min(start + batch_size, len(scored))))
        batch = collate_batch([dataset[i] for i in chunk])
        plm = teacher.get(batch["texts"])
        out = trainable.asr(batch["feats"], batch["feat_lengths"])
        transferred = trainable.transfer(out.states, out.mask, plm.states.float(), plm.mask)
        for row, index in enumerate(chunk):
            utt = scored[index]
            frames, tokens = int(out.mask[row].sum()), int(plm.mask[row].sum())
            plan = transferred.plan[row, :frames, :tokens]
            nonspeech = [span.to_dict() for span in utt.nonspeech or []]
            per_utterance.append(utterance_metrics(plan, plm.word_index[row, :tokens], utt.words, nonspeech))
    metrics = aggregate_metrics(per_utterance)
    # Utterances without word timings cannot be scored; count them rather than drop them silently.
    metrics["num_without_word_spans"] = len(utterances) - len(scored)
    if metrics["num_without_word_spans"]:
        print(f"[align] {metrics['num_without_word_spans']} of {len(utterances)} utterances have no word "
              f"spans and were not scored")
    return metrics
