"""Training-step cost of each aligner relative to plain CTC, on the same batch (issue 4 target).

One step = forward + backward + optimizer step of the tiny Conformer-CTC (+ adapter + aligner).
PLM states are computed once before timing (training reads them from the cache), so the ratio
measures only what the aligner adds. Features are random fbank-shaped tensors: step time does
not depend on their values. Median over ``--repeats`` round-robin rounds after ``--warmup`` rounds.
``--subsampling-channels 64,32`` also crosses the aligners with widths of the subsampling
convolutions (the experiment's budget knob); ratios are then against plain CTC at the first width.

    python -m bench.train [--batch 16] [--seconds 6] [--threads 2] [--aligners none,uot,ot,...]
                          [--subsampling-channels 64,32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def _sentences(count: int) -> list[str]:
    base = ["the quick brown fox jumps over the lazy dog near the river bank",
            "she sells sea shells by the sea shore every summer morning",
            "a journey of a thousand miles begins with a single step forward",
            "all that glitters is not gold and all who wander are not lost"]
    return [base[i % len(base)] for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0, help="utterance duration")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--aligners", default="none,uot,ot,tot,partial,attention,cif")
    parser.add_argument("--n-iter", type=int, default=30)
    parser.add_argument("--subsampling-channels", default="",
                        help="comma-separated widths of the subsampling convolutions (default: the preset's)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from otalign.text.teacher import PLMTeacher
    from otalign.text.tokenizer import CharTokenizer
    from otalign.train.config import load_config
    from otalign.train.trainer import build_trainable, encode_targets

    tokenizer = CharTokenizer()
    texts = _sentences(args.batch)
    teacher = PLMTeacher()
    plm = teacher.encode(texts)
    frames = int(args.seconds * 100)
    torch.manual_seed(0)
    feats = torch.randn(args.batch, frames, 80)
    feat_lengths = torch.full((args.batch,), frames, dtype=torch.long)
    feat_lengths[1::2] = int(frames * 0.8)  # ragged, as real batches are
    targets, target_lengths = encode_targets(tokenizer, texts)

    # Round-robin over aligners, one step each per round, so that load changes on this shared
    # machine hit every aligner alike; medians per aligner over the timed rounds.
    widths = [int(w) for w in args.subsampling_channels.split(",") if w.strip()] or [None]
    systems = {}
    for width in widths:
        for aligner in args.aligners.split(","):
            overrides = [f"transfer.aligner={aligner}", f"transfer.n_iter={args.n_iter}"]
            if width is not None:
                overrides.append(f"model.overrides={{subsampling_channels: {width}}}")
            config = load_config(None, overrides)
            trainable = build_trainable(config, tokenizer.vocab_size, teacher.width)
            name = aligner if width is None else f"{aligner}, {width} ch"
            systems[name] = (trainable, torch.optim.AdamW(trainable.parameters(), lr=1e-4))
    times: dict[str, list[float]] = {name: [] for name in systems}
    for round_index in range(args.warmup + args.repeats):
        for aligner, (trainable, optimizer) in systems.items():
            start = time.perf_counter()
            losses = trainable(feats, feat_lengths, targets, target_lengths, plm.states, plm.mask)
            loss = losses["ctc"] + 0.3 * (losses["kt"] + losses["aux"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if round_index >= args.warmup:
                times[aligner].append(time.perf_counter() - start)
    rows = [(aligner, statistics.median(values)) for aligner, values in times.items()]
    for aligner, seconds in rows:
        print(f"{aligner:10s} median step {seconds * 1000:7.1f} ms", file=sys.stderr)

    base = next((seconds for name, seconds in rows if name.split(",")[0] == "none"), None)  # first width's
    print(f"\nB={args.batch}, {args.seconds:g} s utterances, tiny preset, {args.threads} threads, "
          f"n_iter={args.n_iter}, median of {args.repeats} steps\n")
    print("| aligner | step (ms) | ratio vs plain CTC |")
    print("|---|---|---|")
    for aligner, seconds in rows:
        ratio = f"{seconds / base:.2f}x" if base else "–"
        print(f"| {aligner} | {seconds * 1000:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
