"""Where does a trained aligner put the tokens it misses?

A token is recalled when its plan column peaks inside its own word's span (otalign.align.metrics).
For every missed token this reports which word holds the peak frame, relative to its own
(+1: the next word), or that no word does (silence, noise or a gap), and recall by word duration.

    .venv/bin/python scripts/recall_misses.py CHECKPOINT MANIFEST [--utterances 60] [--csv OUT]

CHECKPOINT is a training checkpoint (epoch_N.pt: it holds the adapter and aligner).
"""

from __future__ import annotations

import argparse
import collections
import csv
import sys
from pathlib import Path

import numpy as np
import torch

from otalign.align.metrics import span_frame_mask
from otalign.data.manifest import read_manifest
from otalign.train.system import System

DURATION_BINS = ((0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, float("inf")))


def offset_label(offset: int | None) -> str:
    if offset is None:
        return "no word (silence, noise or gap)"
    if offset == 0:
        return "own word (recalled)"
    return f"word {offset:+d}" if abs(offset) <= 2 else ("word <= -3" if offset < 0 else "word >= +3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--utterances", type=int, default=60, help="the first N utterances with word timings")
    parser.add_argument("--csv", type=Path, help="write the counts here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    system = System.load(args.checkpoint)
    utterances = [u for u in read_manifest(args.manifest) if u.words][: args.utterances]
    if not utterances:
        sys.exit(f"{args.manifest}: no utterance carries word timings")
    by_offset: collections.Counter = collections.Counter()
    by_duration: collections.Counter = collections.Counter()
    for item in system.alignment_plans(utterances):
        plan = item.plan.double().cpu().numpy()
        word_index = item.word_index.cpu().numpy()
        plan, word_index = plan[:, word_index >= 0], word_index[word_index >= 0]
        spans = [(w.start, w.end) for w in item.utterance.words]
        word_frames = span_frame_mask(spans, plan.shape[0], item.frame_s)  # (words, frames)
        for token, peak in enumerate(plan.argmax(axis=0)):
            own = int(word_index[token])
            holders = np.nonzero(word_frames[:, peak])[0]
            offset = 0 if own in holders else (int(holders[0]) - own if len(holders) else None)
            by_offset[offset_label(offset)] += 1
            duration = spans[own][1] - spans[own][0]
            low, high = next(b for b in DURATION_BINS if b[0] <= duration < b[1])
            by_duration[(f"{low * 1000:.0f}-{high * 1000:.0f} ms", offset == 0)] += 1
    total = sum(by_offset.values())
    rows = [("peak of the token", label, count, count / total) for label, count in by_offset.most_common()]
    for low, high in DURATION_BINS:
        name = f"{low * 1000:.0f}-{high * 1000:.0f} ms"
        hits, misses = by_duration[(name, True)], by_duration[(name, False)]
        rows.append(("recall by word duration", name, hits + misses, hits / max(1, hits + misses)))
    print(f"{len(utterances)} utterances, {total} tokens ({args.manifest})")
    for group, label, count, fraction in rows:
        print(f"{group:24s} {label:32s} {count:6d} {fraction:.3f}")
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["group", "label", "tokens", "fraction"])
            writer.writerows((g, label, c, f"{f:.4f}") for g, label, c, f in rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
