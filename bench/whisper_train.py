"""Cost of a cached-frontend training step: uot (and ot) against plain CTC on the same encoder.

Issue 17's target: with the Whisper bottom frozen and cached, a training step with the uot
transfer costs <= 1.25x a CTC step. The steps are the trainer's own (``build_trainable``,
``compute_loss``, AdamW, clipping) on real batches of the bench corpus (40 s duration budget, as
conf/experiment_whisper.yaml), with the real PLM targets; the systems are interleaved run by run
so that machine load hits them alike, and the ratio is taken per run before the median.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.whisper_train [--runs 7] [--batches 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from otalign.data.dataset import BucketBatchSampler
from otalign.data.manifest import read_manifest
from otalign.text.cache import targets_from_config
from otalign.train.config import load_config
from otalign.train.trainer import (BatchMaker, DistInfo, build_tokenizer, build_trainable, compute_loss,
                                   make_dataset)

SYSTEMS = {"ctc": ["transfer.aligner=none"], "uot": ["transfer.aligner=uot", "transfer.rho_frames=0.3"],
           "ot": ["transfer.aligner=ot"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--batches", type=int, default=4, help="batches per timed run")
    ap.add_argument("--frontend", default="whisper-tiny.en")
    ap.add_argument("--freeze-layers", type=int, default=3)
    ap.add_argument("--manifest", default="data/bench3h/train.jsonl")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    common = [f"model.frontend={args.frontend}", f"model.freeze_layers={args.freeze_layers}",
              "data.whisper_cache_dir=exp/cache/whisper", "teacher.cache_dir=exp/cache/plm", "teacher.layer=4",
              "transfer.eps=0.05", "transfer.n_iter=30", "transfer.grad=implicit", "data.spec_augment=false",
              f"data.train_manifests=[{args.manifest}]"]
    utts = list(read_manifest(args.manifest))[:400]
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    systems = {}
    for name, extra in SYSTEMS.items():
        config = load_config(None, common + extra)
        tokenizer = build_tokenizer(config, utts, None, info)
        teacher = targets_from_config(config.teacher) if config.transfer.aligner != "none" else None
        torch.manual_seed(0)
        trainable = build_trainable(config, tokenizer.vocab_size, teacher.teacher.width if teacher else None)
        optimizer = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=1e-4)
        systems[name] = (config, tokenizer, teacher, trainable, optimizer)
    config0, _, _, trainable0, _ = systems["ctc"]
    dataset = make_dataset(utts, config0, None, trainable=trainable0)
    sampler = BucketBatchSampler([u.duration for u in utts], max_seconds=40, shuffle=True, seed=0)
    chosen = [b for b, _ in zip(sampler, range(args.batches))]
    audio = sum(utts[i].duration for b in chosen for i in b)
    batches = {}
    for name, (_, tokenizer, teacher, _, _) in systems.items():  # complete batches, as the trainer's loaders make them
        if teacher is not None:
            teacher.precompute([utts[i].text for b in chosen for i in b], progress=False)
        batches[name] = [BatchMaker(tokenizer, teacher)([dataset[i] for i in b]) for b in chosen]

    def step(name: str) -> float:
        config, tokenizer, teacher, trainable, optimizer = systems[name]
        trainable.train()
        start = time.perf_counter()
        for batch in batches[name]:
            losses = compute_loss(trainable, batch, torch.device("cpu"))
            loss = losses["ctc"] + config.transfer.weight * (losses["kt"] + losses["aux"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable.parameters(), config.optim.grad_clip)
            optimizer.step()
        return time.perf_counter() - start

    for name in systems:  # warm-up
        step(name)
    times = {name: [] for name in systems}
    for _ in range(args.runs):
        for name in systems:
            times[name].append(step(name))
    print(f"{args.frontend}, freeze_layers={args.freeze_layers}, {args.batches} batches of <= 40 s "
          f"({audio:.0f} s of audio, {sum(len(b) for b in chosen)} utterances), 1 thread, "
          f"{args.runs} interleaved runs")
    print("| system | median s per step | x real time | step / ctc step (median of per-run ratios) |")
    print("|---|---|---|---|")
    for name, values in times.items():
        ratio = statistics.median(v / c for v, c in zip(values, times["ctc"]))
        median = statistics.median(values)
        print(f"| {name} | {median / args.batches:.3f} | {audio / median:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
