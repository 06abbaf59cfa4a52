"""Training recipe: Conformer-CTC plus PLM knowledge transfer through a frame-to-token aligner.

Read top to bottom, as in icefall: distributed set-up -> data -> model -> checkpoints ->
compute_loss -> validate -> train_one_epoch -> run. The same ``run`` serves one process or many
(``torchrun --nproc_per_node=K -m otalign.cli train ...``: gloo on CPU, nccl on GPU).

    L = L_CTC + lambda * (L_KT + aligner auxiliary losses, e.g. CIF's quantity loss)

The PLM never runs inside the loop: token states are computed once into an on-disk cache.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from otalign.data.dataset import BucketBatchSampler, SpeechDataset, collate_batch
from otalign.data.features import GlobalCMVN
from otalign.data.manifest import SkipCounter, read_manifest
from otalign.decode.scoring import git_hash, score
from otalign.decode.search import ctc_greedy
from otalign.models.export import export_inference_model, load_checkpoint
from otalign.text.cache import TeacherCache, targets_from_config
from otalign.text.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer
from otalign.train.checkpoint import (ExpDirError, average_checkpoints, clear_run, newest_readable_checkpoint,
                                      rank_checkpoints, run_artifacts, save_checkpoint)
from otalign.train.config import (RESUME_NEUTRAL_KEYS, OptimConfig, TrainConfig, config_differences, read_yaml,
                                  save_config, to_dict)
from otalign.train.config import validate as validate_config
from otalign.train.system import System, Trainable, build_trainable, make_dataset  # noqa: F401


def progress_enabled(flag: bool | None = None) -> bool:
    """Whether to draw progress bars: ``flag`` if given (``--no-progress``), else the environment's
    ``OTALIGN_PROGRESS`` (0/1), else only when stderr is a terminal (so a log file stays small)."""
    if flag is not None:
        return bool(flag)
    env = os.environ.get("OTALIGN_PROGRESS", "").strip().lower()
    if env in {"0", "false", "no", "off"}:
        return False
    if env in {"1", "true", "yes", "on"}:
        return True
    return sys.stderr.isatty()


# ----------------------------------------------------------------------------- distributed set-up
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistInfo:
    """Join the process group that torchrun describes in the environment; single process otherwise."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        # Rank 0 computes CMVN and the PLM cache while the others wait at a barrier: on a large
        # corpus that outlasts the default 30-minute collective timeout.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=4))
    return DistInfo(rank, world, local_rank, device)


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- data
def load_manifests(paths: list[str], strict: bool) -> list:
    """The utterances of several manifests; an id listed in two of them is refused, naming both
    files (it would otherwise be trained on twice)."""
    utterances, first_seen = [], {}
    for path in paths:
        for utt in read_manifest(path, strict=strict, check_files=True):
            if utt.id in first_seen:
                raise ValueError(f"utterance id {utt.id!r} is in both {first_seen[utt.id]} and {path}: "
                                 f"give each utterance once")
            first_seen[utt.id] = path
            utterances.append(utt)
    return utterances


def drop_long_training_utterances(utterances: list, max_seconds: float | None) -> list:
    """``data.max_train_seconds``: the training utterances within it; each one skipped is named
    and counted (SkipCounter), never dropped silently."""
    if max_seconds is None:
        return utterances
    counter = SkipCounter(f"data.train_manifests (data.max_train_seconds={max_seconds:g})")
    kept = []
    for utt in utterances:
        if utt.duration > max_seconds:
            counter.skip(f"utterance {utt.id!r}", f"{utt.duration:.1f} s is longer than {max_seconds:g} s",
                         "longer than max_train_seconds")
        else:
            kept.append(utt)
    counter.kept = len(kept)
    print(f"[train] {counter.summary()}")
    if not kept:
        raise ValueError(f"data.max_train_seconds={max_seconds:g} skips every training utterance")
    return kept


def check_whisper_durations(utterances, config: TrainConfig, where: str, remedy: str = "") -> None:
    """A Whisper encoder takes at most 30 s: refuse longer utterances up front, by name, before
    any caching (they are never truncated). ``remedy``: a further way out, appended to the message."""
    if config.model.frontend == "fbank":
        return
    from otalign.data.whisper_features import MAX_WHISPER_SECONDS

    long = [u for u in utterances if u.duration > MAX_WHISPER_SECONDS]
    if long:
        named = ", ".join(f"{u.id!r} ({u.duration:.1f} s)" for u in long[:5])
        raise ValueError(f"{where}: {len(long)} utterance(s) are longer than the {MAX_WHISPER_SECONDS} s window of "
                         f"{config.model.frontend}: {named}{' ...' if len(long) > 5 else ''}; split them into "
                         f"segments (manifest offset/duration){remedy}")


class BatchMaker:
    """The loaders' ``collate_fn``: batches arrive complete, with padded features, CTC targets and,
    given a teacher, the PLM states of their texts (read from its cache)."""

    def __init__(self, tokenizer: Tokenizer, teacher: TeacherCache | None = None):
        self.tokenizer, self.teacher = tokenizer, teacher

    def __call__(self, items: list[dict]) -> dict:
        batch = collate_batch(items)
        batch["targets"], batch["target_lengths"] = encode_targets(self.tokenizer, batch["texts"])
        if self.teacher is not None:
            plm = self.teacher.get(batch["texts"])
            batch["plm_states"], batch["plm_mask"] = plm.states.float(), plm.mask
        return batch


def make_loader(utterances, config: TrainConfig, cmvn: GlobalCMVN | None, train: bool, info: DistInfo,
                collate: BatchMaker, state_cache=None) -> DataLoader:
    """Built once per run; `seed_epoch` reseeds it every epoch."""
    dataset = make_dataset(utterances, config, cmvn, train, config.seed, state_cache)
    sampler = BucketBatchSampler([u.duration for u in utterances], max_seconds=config.data.max_batch_seconds,
                                 shuffle=train, seed=config.seed, num_replicas=info.world_size, rank=info.rank)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0)


def seed_epoch(loader: DataLoader, config: TrainConfig, epoch: int, info: DistInfo) -> None:
    """Seed an epoch: its batch order (the sampler) and its random draws per utterance (speed
    factor, SpecAugment masks: the dataset's seed), different per epoch and per rank."""
    loader.batch_sampler.set_epoch(epoch)
    loader.dataset.seed = config.seed * 1000 + epoch + 7919 * info.rank


def compute_cmvn(utterances, config: TrainConfig, progress: bool = True) -> GlobalCMVN:
    """Global CMVN over the training set (fills the feature cache as a side effect)."""
    dataset = SpeechDataset(utterances, cache_dir=config.data.feature_cache_dir)
    return GlobalCMVN.from_features(dataset.features(i) for i in tqdm(range(len(dataset)), desc="cmvn/fbank",
                                                                      disable=not progress))


def build_tokenizer(config: TrainConfig, train_utts, exp_dir: Path, info: DistInfo) -> Tokenizer:
    """Characters, or SentencePiece units trained once (rank 0) on the training texts and saved."""
    if config.model.units == "char":
        return CharTokenizer()
    path = exp_dir / "tokenizer.json"
    if info.is_main and not path.exists():
        SentencePieceTokenizer.train([u.text for u in train_utts], vocab_size=config.model.sentencepiece_vocab).save(path)
    barrier(info)
    return load_tokenizer(path)


def encode_targets(tokenizer: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [torch.tensor(tokenizer.encode(text), dtype=torch.long) for text in texts]
    lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
    padded = nn.utils.rnn.pad_sequence(ids, batch_first=True) if ids else torch.zeros(0, 0, dtype=torch.long)
    return padded, lengths


# ----------------------------------------------------------------------------- loss and schedule
def kt_weight(config: TrainConfig, epoch_progress: float) -> float:
    """lambda: 0 during the CTC-only warm start (``start_epoch`` epochs), then linearly warmed up
    over ``weight_warmup_epochs`` (epoch_progress counts from 0)."""
    progress = epoch_progress - config.transfer.start_epoch
    if progress < 0:
        return 0.0
    warm = config.transfer.weight_warmup_epochs
    scale = 1.0 if warm <= 0 else min(1.0, progress / warm)
    return config.transfer.weight * scale


def transfer_eps(config: TrainConfig, epoch_progress: float) -> float:
    """eps of the OT aligners: ``eps_start`` decreasing geometrically to ``eps`` over the first
    ``eps_anneal_epochs`` epochs of the transfer (after the warm start), then ``eps``."""
    t = config.transfer
    if t.eps_start is None:
        return t.eps
    fraction = min(1.0, max(0.0, epoch_progress - t.start_epoch) / t.eps_anneal_epochs)
    return t.eps_start * (t.eps / t.eps_start) ** fraction


def param_groups(trainable: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups: the pre-trained Whisper layers at ``optim.pretrained_lr`` (when set),
    everything else that trains (head, adapter, a from-scratch encoder) at ``optim.lr``."""
    trained = [p for p in trainable.parameters() if p.requires_grad]
    if optim.pretrained_lr is None:
        return [{"params": trained, "lr": optim.lr}]
    # WhisperAcousticEncoder keeps the converted weights under .encoder; nothing else of ours is pre-trained
    pretrained_ids = {id(p) for p in trainable.asr.encoder.encoder.parameters()}
    groups = [{"params": [p for p in trained if id(p) in pretrained_ids], "lr": optim.pretrained_lr},
              {"params": [p for p in trained if id(p) not in pretrained_ids], "lr": optim.lr}]
    return [g for g in groups if g["params"]]


def lr_lambda(config: TrainConfig):
    warmup = max(1, config.optim.warmup_steps)

    def factor(step: int) -> float:
        step = max(1, step)
        if step < warmup:
            return step / warmup
        return math.sqrt(warmup / step) if config.optim.schedule == "noam" else 1.0
    return factor


def compute_loss(trainable: nn.Module, batch: dict, device: torch.device, transfer: bool = True) -> dict[str, Any]:
    """The training loss of a complete batch (:class:`BatchMaker`); ``transfer=False`` leaves the
    transfer out (the warm start, validation)."""
    plm = (batch["plm_states"].to(device), batch["plm_mask"].to(device)) if transfer and "plm_states" in batch \
        else (None, None)
    return trainable(batch["feats"].to(device), batch["feat_lengths"].to(device), batch["targets"].to(device),
                     batch["target_lengths"].to(device), *plm)


@torch.no_grad()
def validate(trainable: Trainable, loader: DataLoader, tokenizer: Tokenizer, info: DistInfo) -> dict[str, float]:
    """Dev CTC loss (the training loss without the transfer) and greedy CER, computed on each
    rank's shard and reduced across ranks."""
    trainable.eval()
    loss_sum, count = 0.0, 0
    refs, hyps = {}, {}
    for batch in loader:
        out = compute_loss(trainable, batch, info.device, transfer=False)
        loss_sum += out["ctc_per_utt"][out["ctc_valid"]].sum().item()
        count += int(out["ctc_valid"].sum())
        for uid, text, ids in zip(batch["ids"], batch["texts"], ctc_greedy(out["log_probs"], out["out_lengths"])):
            refs[uid], hyps[uid] = text, tokenizer.decode(ids)
    trainable.train()
    report = score(refs, hyps)
    totals = torch.tensor([loss_sum, count, report.cer * max(report.ref_chars, 1), report.ref_chars],
                          dtype=torch.float64)
    if info.world_size > 1:
        dist.all_reduce(totals)
    return {"dev_loss": totals[0].item() / max(totals[1].item(), 1),
            "dev_cer": totals[2].item() / max(totals[3].item(), 1)}


# alignment_metrics key -> epoch sidecar key
DEV_ALIGNMENT_KEYS = {"micro_precision": "dev_align_precision", "micro_token_recall": "dev_align_token_recall",
                      "micro_mass_on_nonspeech": "dev_align_mass_on_nonspeech",
                      "micro_plan_entropy": "dev_align_plan_entropy"}


def dev_alignment(trainable: Trainable, config: TrainConfig, cmvn: GlobalCMVN | None,
                  dev_utts: list, teacher: TeacherCache | None = None) -> dict[str, float]:
    """The aligner's detection metrics on the first ``dev_alignment_utterances`` dev utterances that
    carry word timings, against ground truth (otalign.train.evaluate.alignment_metrics): whether the
    plans sharpen onto the words while training. Empty without an aligner or word timings."""
    if trainable.transfer is None or config.dev_alignment_utterances == 0:
        return {}
    timed = [u for u in dev_utts if u.words][: config.dev_alignment_utterances]
    if not timed:
        return {}
    from otalign.train.evaluate import alignment_metrics  # evaluate builds on this module

    trainable.eval()
    try:
        metrics = alignment_metrics(trainable, config, cmvn, timed, teacher=teacher)
    finally:
        trainable.train()
    return {ours: metrics[theirs] for theirs, ours in DEV_ALIGNMENT_KEYS.items()}


# ----------------------------------------------------------------------------- one epoch
@dataclass
class EpochState:
    epoch: int = 1
    step: int = 0
    bad_batches: int = 0


def train_one_epoch(model: nn.Module, trainable: Trainable, loader: DataLoader, optimizer, scheduler,
                    config: TrainConfig, state: EpochState, info: DistInfo, writer,
                    progress: bool = True) -> dict[str, float]:
    """One pass over the loader. ``model`` is what the step runs (the DDP wrapper under torchrun),
    ``trainable`` the module itself (its aligner's eps is annealed here)."""
    model.train()
    totals = {"loss": 0.0, "ctc": 0.0, "kt": 0.0, "aux": 0.0, "batches": 0, "audio_s": 0.0,
              "ctc_invalid": 0, "bad_batches": 0, "solver_max_error": math.nan, "solver_converged": 0.0,
              "solver_batches": 0}
    start = time.time()
    bar = tqdm(loader, desc=f"epoch {state.epoch}", disable=not (info.is_main and progress), dynamic_ncols=True)
    num_batches = max(1, len(loader))
    for index, batch in enumerate(bar):
        weight = kt_weight(config, state.epoch - 1 + index / num_batches)
        if config.transfer.eps_start is not None and hasattr(trainable.transfer.aligner, "eps"):
            trainable.transfer.aligner.eps = transfer_eps(config, state.epoch - 1 + index / num_batches)
        # During the warm start the transfer is not computed at all (no solver time, no adapter grads).
        losses = compute_loss(model, batch, info.device, transfer=weight > 0)
        loss = losses["ctc"] + weight * (losses["kt"] + losses["aux"])
        # Every rank must take the same decision, or DDP's gradient all-reduce would hang.
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0])
        if info.world_size > 1:
            dist.all_reduce(bad)
        if bad.item() > 0:
            state.bad_batches += 1
            totals["bad_batches"] += 1
            optimizer.zero_grad(set_to_none=True)
            if info.is_main:
                tqdm.write(f"[train] skipped batch {index} of epoch {state.epoch}: non-finite loss "
                           f"({state.bad_batches}/{config.optim.max_bad_batches} allowed)")
            if state.bad_batches >= config.optim.max_bad_batches:
                raise RuntimeError(f"training aborted: {state.bad_batches} batches had a NaN/Inf loss "
                                   f"(optim.max_bad_batches={config.optim.max_bad_batches}); lower optim.lr "
                                   f"or check the data")
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        state.step += 1
        totals["loss"] += loss.item()
        for key in ("ctc", "kt", "aux"):
            totals[key] += float(losses[key].detach())
        totals["ctc_invalid"] += int(losses["ctc_invalid"])
        if losses["solver"]:
            totals["solver_max_error"] = max(losses["solver"]["max_error"], totals["solver_max_error"]) \
                if totals["solver_batches"] else losses["solver"]["max_error"]
            totals["solver_converged"] += losses["solver"]["converged"]
            totals["solver_batches"] += 1
        totals["batches"] += 1
        totals["audio_s"] += sum(u.duration for u in batch["utterances"])
        speed = totals["audio_s"] / max(time.time() - start, 1e-9) * info.world_size
        bar.set_postfix(loss=f"{loss.item():.3f}", kt=f"{float(losses['kt'].detach()):.3f}", xRT=f"{speed:.0f}")
        if writer is not None and state.step % config.log_every == 0:
            writer.add_scalar("train/loss", loss.item(), state.step)
            writer.add_scalar("train/ctc", float(losses["ctc"].detach()), state.step)
            writer.add_scalar("train/kt", float(losses["kt"].detach()), state.step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[-1], state.step)  # the optim.lr group
            if len(optimizer.param_groups) > 1:
                writer.add_scalar("train/pretrained_lr", scheduler.get_last_lr()[0], state.step)
            if losses["solver"]:
                writer.add_scalar("train/solver_max_error", losses["solver"]["max_error"], state.step)
    batches = max(1, totals["batches"])
    elapsed = time.time() - start
    return {"train_loss": totals["loss"] / batches, "train_ctc": totals["ctc"] / batches,
            "train_kt": totals["kt"] / batches, "train_aux": totals["aux"] / batches,
            "epoch_time_s": elapsed, "audio_s": totals["audio_s"] * info.world_size,
            "x_real_time": totals["audio_s"] * info.world_size / max(elapsed, 1e-9),
            "ctc_impossible_skipped": totals["ctc_invalid"], "nan_batches_skipped": totals["bad_batches"],
            # the OT solver's largest residual in the epoch and the fraction of batch items converged
            # (nan without an OT aligner or during the warm start)
            "train_solver_max_error": totals["solver_max_error"],
            "train_solver_converged": (totals["solver_converged"] / totals["solver_batches"]
                                       if totals["solver_batches"] else math.nan)}


# ----------------------------------------------------------------------------- the whole run
def _stored_config(exp_dir: Path, map_location) -> tuple[dict | None, str]:
    """The config the run in ``exp_dir`` was started with: its config.yaml, else its newest checkpoint's."""
    path = exp_dir / "config.yaml"
    if path.is_file():
        stored = read_yaml(path)
        if not isinstance(stored, dict):
            raise ExpDirError(f"{path} does not hold a config mapping; --overwrite to start this exp_dir afresh")
        return stored, str(path)
    _, ckpt, _ = newest_readable_checkpoint(exp_dir, map_location=map_location, quarantine=False)
    if ckpt is not None and isinstance(ckpt.get("config"), dict):
        return ckpt["config"], "its newest readable checkpoint"
    return None, ""


def _format_value(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_exp_dir(config: TrainConfig, resume: bool, overwrite: bool, force: bool,
                  map_location="cpu") -> dict[str, tuple]:
    """Refuse, before any expensive work, to train into an exp_dir that would mix two runs.

    * a fresh run (neither ``resume`` nor ``overwrite``) needs an exp_dir without a previous run's
      files (:func:`~otalign.train.checkpoint.run_artifacts`);
    * ``resume`` compares the stored config with ``config`` and refuses on a difference in any key
      that changes the model or its data (all but ``RESUME_NEUTRAL_KEYS``), unless ``force``.

    Returns the differing keys ``{key: (stored, new)}`` (empty for a fresh run). Read-only, so every
    torchrun rank runs it and all of them take the same decision.
    """
    if resume and overwrite:
        raise ExpDirError("--resume and --overwrite exclude each other: continue the run in exp_dir, or replace it")
    exp_dir = Path(config.exp_dir)
    if exp_dir.exists() and not exp_dir.is_dir():
        raise ExpDirError(f"exp_dir {exp_dir} exists and is not a folder")
    existing = run_artifacts(exp_dir)
    if not existing or overwrite:
        return {}
    if not resume:
        names = ", ".join(p.name for p in existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise ExpDirError(f"exp_dir {exp_dir} already holds a training run ({names}): pass --resume to continue "
                          f"it or --overwrite to replace it (or choose another exp_dir)")
    stored, source = _stored_config(exp_dir, map_location)
    if stored is None:
        if force:
            return {}
        raise ExpDirError(f"exp_dir {exp_dir} holds run files but no config.yaml and no readable checkpoint to "
                          f"compare the config with: --overwrite to replace them (or --force to resume anyway)")
    differences = config_differences(stored, config)
    blocking = {k: v for k, v in differences.items() if k not in RESUME_NEUTRAL_KEYS}
    if blocking and not force:
        changes = "; ".join(f"{k}: {_format_value(a)} -> {_format_value(b)}" for k, (a, b) in sorted(blocking.items()))
        raise ExpDirError(f"--resume refused: the config differs from the run in {exp_dir} ({source}) in "
                          f"{len(blocking)} key(s) that change the model or its data: {changes}. "
                          f"Use another exp_dir, --overwrite to replace the run, or --force to resume anyway")
    return differences


def _record_resumption(exp_dir: Path, differences: dict[str, tuple], checkpoint: Path | None,
                       unreadable: list[str], force: bool) -> None:
    """Append one entry to ``config.history.yaml``; config.yaml stays the run's original config."""
    import yaml

    path = exp_dir / "config.history.yaml"
    history = read_yaml(path) if path.exists() else []
    if not isinstance(history, list):
        history = [history]
    history.append({
        "resumed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_hash": git_hash(),
        "from_checkpoint": checkpoint.name if checkpoint is not None else None,
        "forced": bool(force),
        "changed": {k: {"stored": a, "new": b, "changes_model_or_data": k not in RESUME_NEUTRAL_KEYS}
                    for k, (a, b) in sorted(differences.items())},
        "unreadable_checkpoints": unreadable,
    })
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(history, sort_keys=False))
    os.replace(tmp, path)


_CTC_IMPOSSIBLE_NOTE = (
    "[train] ctc_impossible_skipped={n}: {n} training utterance(s) this epoch have fewer encoder frames "
    "(10 ms fbank hop, subsampled 4x) than CTC needs for their label sequence (one frame per unit, plus a "
    "blank between repeated units), so CTC cannot align them; their CTC loss is left out of the batch loss "
    "(the transfer loss still counts). A few are harmless; many mean the audio is too short for its text "
    "(fast speech, a wrong transcript) and are worth a look. This note is printed once per run.")


def run(config: TrainConfig, resume: bool = False, overwrite: bool = False, force: bool = False,
        progress: bool | None = None) -> Path:
    """Train as configured; return the path of the averaged inference checkpoint (``avg.pt``).

    An exp_dir that already holds a run is refused unless ``resume`` (continue it: the config must
    not differ in a key that changes the model or data, unless ``force``) or ``overwrite`` (its run
    files are removed first). ``progress``: draw progress bars (None: see :func:`progress_enabled`).

    Under torchrun every rank returns the path; only rank 0 writes it. A process group that the
    caller set up (``otalign experiment`` trains many runs in one) is left for the caller to close.
    """
    validate_config(config)  # a Python-built config is checked too, before anything is cached
    progress = progress_enabled(progress)
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = setup_distributed()
    differences = check_exp_dir(config, resume, overwrite, force)
    # Read before anything is written: a run refused on a broken manifest leaves no trace in exp_dir.
    train_utts = drop_long_training_utterances(load_manifests(config.data.train_manifests, config.data.strict),
                                               config.data.max_train_seconds)
    dev_utts = load_manifests([config.data.dev_manifest], config.data.strict)
    check_whisper_durations(train_utts, config, "data.train_manifests",
                            ", or skip long training utterances with data.max_train_seconds")
    check_whisper_durations(dev_utts, config, f"data.dev_manifest {config.data.dev_manifest}")
    barrier(info)  # every rank has checked before rank 0 writes anything
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed + info.rank)
    exp_dir = Path(config.exp_dir)
    latest, ckpt = None, None
    if info.is_main:
        if overwrite:
            removed = clear_run(exp_dir)
            if removed:
                print(f"[train] --overwrite: removed the previous run's {len(removed)} file(s) and folder(s) "
                      f"from {exp_dir}")
        exp_dir.mkdir(parents=True, exist_ok=True)
        unreadable: list[str] = []
        if resume:
            latest, ckpt, unreadable = newest_readable_checkpoint(exp_dir, map_location=info.device)
            for problem in unreadable:
                print(f"[train] {problem}; it was renamed *.unreadable and is not resumed from")
        if resume and (exp_dir / "config.yaml").exists():
            _record_resumption(exp_dir, differences, latest, unreadable, force)
            neutral = [k for k in differences if k in RESUME_NEUTRAL_KEYS]
            forced = [k for k in differences if k not in RESUME_NEUTRAL_KEYS]
            if forced:
                print(f"[train] --force: resuming although {', '.join(sorted(forced))} changed "
                      f"(recorded in {exp_dir / 'config.history.yaml'})")
            if neutral:
                print(f"[train] resuming with new {', '.join(sorted(neutral))} (recorded in config.history.yaml)")
        else:
            save_config(config, exp_dir / "config.yaml")
    if info.world_size > 1:
        chosen = [str(latest) if latest is not None else None]
        dist.broadcast_object_list(chosen, src=0)
        if not info.is_main and chosen[0] is not None:
            latest = Path(chosen[0])
            ckpt = load_checkpoint(latest, map_location=info.device)

    tokenizer = build_tokenizer(config, train_utts, exp_dir, info)

    cmvn = None
    if config.data.cmvn and config.model.frontend == "fbank":  # Whisper's log-mel is normalised by its recipe
        cmvn_path = exp_dir / "cmvn.json"
        if info.is_main and not cmvn_path.exists():
            tmp = cmvn_path.with_name(cmvn_path.name + ".tmp")  # atomic: a kill mid-write leaves no half file
            compute_cmvn(train_utts, config, progress=progress).save(tmp)
            os.replace(tmp, cmvn_path)
        barrier(info)
        cmvn = GlobalCMVN.load(cmvn_path)

    teacher = None
    if config.transfer.aligner != "none":
        teacher = targets_from_config(config.teacher)
        if info.is_main:
            teacher.precompute([u.text for u in train_utts], progress=progress)
        barrier(info)

    system = System.from_config(config, tokenizer, cmvn, teacher)
    trainable = system.trainable.to(info.device)
    state_cache = None
    if trainable.from_bottom:
        state_cache = trainable.asr.encoder.make_bottom_cache(config.data.whisper_cache_dir)
        if info.is_main:  # each frozen-bottom state is computed once, before training, by rank 0
            for utt in tqdm(train_utts + dev_utts, desc=f"cache/{config.model.frontend} bottom "
                            f"{config.model.freeze_layers} layers", disable=not progress):
                state_cache.states(utt)
        barrier(info)
    model: nn.Module = trainable
    if info.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            trainable, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(param_groups(trainable, config.optim), weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    state = EpochState()

    if ckpt is not None:
        trainable.load_state_dict(ckpt["trainable"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = EpochState(epoch=ckpt["epoch"] + 1, step=ckpt["step"], bad_batches=ckpt.get("bad_batches", 0))
        if info.is_main:
            print(f"[train] resumed from {latest} (continuing at epoch {state.epoch})")

    writer = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter
        # On resume, TensorBoard drops the events a killed run logged after this checkpoint's step,
        # so no step is shown twice (the run restarts from the checkpoint, not from where it died).
        writer = SummaryWriter(str(exp_dir / "tensorboard"), purge_step=state.step + 1 if resume else None)
        n_params = sum(p.numel() for p in trainable.asr.parameters())
        n_trained = sum(p.numel() for p in trainable.asr.parameters() if p.requires_grad)
        print(f"[train] {n_params / 1e6:.2f}M ASR parameters ({n_trained / 1e6:.2f}M trained), "
              f"frontend={config.model.frontend}, aligner={config.transfer.aligner}, "
              f"{len(train_utts)} train / {len(dev_utts)} dev utterances, world_size={info.world_size}")

    train_loader = make_loader(train_utts, config, cmvn, True, info, BatchMaker(tokenizer, teacher), state_cache)
    dev_loader = make_loader(dev_utts, config, cmvn, False, info, BatchMaker(tokenizer), state_cache)
    explained_ctc_impossible = False
    while state.epoch <= config.optim.epochs:
        torch.manual_seed(config.seed * 1000 + state.epoch + info.rank)
        seed_epoch(train_loader, config, state.epoch, info)
        metrics = train_one_epoch(model, trainable, train_loader, optimizer, scheduler, config, state, info, writer,
                                  progress=progress)
        metrics.update(validate(trainable, dev_loader, tokenizer, info))
        if info.is_main:
            metrics.update(dev_alignment(trainable, config, cmvn, dev_utts, teacher))
        metrics["step"] = state.step
        if info.is_main:
            checkpoint = {"trainable": trainable.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "epoch": state.epoch, "step": state.step,
                          "bad_batches": state.bad_batches, "config": to_dict(config),
                          "tokenizer": tokenizer.to_dict(), "cmvn": cmvn.to_dict() if cmvn else None,
                          "git_hash": git_hash()}
            # Logged at the global step (the x axis of every tag), so a resume's purge_step covers them too.
            for key in ("train_loss", "train_kt", "dev_loss", "dev_cer", "x_real_time", *DEV_ALIGNMENT_KEYS.values(),
                        "train_solver_max_error", "train_solver_converged"):
                if key in metrics and math.isfinite(metrics[key]):
                    writer.add_scalar(f"epoch/{key}", metrics[key], state.step)
            writer.add_scalar("epoch/epoch", state.epoch, state.step)
            writer.flush()  # before the checkpoint: a kill -9 after it loses no finished epoch's events
            save_checkpoint(exp_dir, state.epoch, checkpoint, metrics, keep=config.keep_checkpoints)
            print(f"[train] epoch {state.epoch}: " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()), flush=True)
            if metrics["ctc_impossible_skipped"] and not explained_ctc_impossible:
                print(_CTC_IMPOSSIBLE_NOTE.format(n=metrics["ctc_impossible_skipped"]), flush=True)
                explained_ctc_impossible = True
        barrier(info)
        state.epoch += 1

    # DDP keeps replicas identical by construction; checking it costs one all-gather and catches
    # a rank that silently diverged (e.g. a skipped step on one rank only).
    digest = torch.tensor([sum(p.detach().double().sum().item() for p in trainable.parameters())])
    digests = [torch.zeros_like(digest) for _ in range(info.world_size)]
    if info.world_size > 1:
        dist.all_gather(digests, digest)
    else:
        digests = [digest]
    final = exp_dir / "avg.pt"
    if info.is_main:
        best = rank_checkpoints(exp_dir)[: max(1, config.average_best)]
        paths = [exp_dir / f"epoch_{m['epoch']}.pt" for m in best]
        averaged = average_checkpoints(paths, key="trainable")
        export_inference_model({"model": averaged, "model_config": trainable.asr.config,
                                "tokenizer": tokenizer.to_dict(), "cmvn": cmvn.to_dict() if cmvn else None,
                                "git_hash": git_hash(), "config": to_dict(config),
                                "averaged_epochs": [m["epoch"] for m in best]}, final)
        (exp_dir / "avg.json").write_text(json.dumps({"averaged_epochs": [m["epoch"] for m in best],
                                                      "world_size": info.world_size,
                                                      "rank_parameter_sums": [d.item() for d in digests]}))
        writer.close()
        print(f"[train] averaged epochs {[m['epoch'] for m in best]} -> {final}")
    barrier(info)
    if info.world_size > 1 and owns_group:
        dist.destroy_process_group()
    return final

