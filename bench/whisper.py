"""Whisper front end speed at 1 thread: frozen-bottom cache extraction and a trainable-top + CTC step.

``OMP_NUM_THREADS=1 .venv/bin/python bench/whisper.py [--runs 3] [--seconds 5]``; results in docs/frontends.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from otalign.data.whisper_features import WhisperFrontend
from otalign.models.whisper import load_whisper_encoder


def speech(seconds: float) -> np.ndarray:
    from otalign.data.synth import synthesize_utterance

    x = np.zeros(0, np.float32)
    text = "the quick brown fox jumps over the lazy dog and opens the door"
    while x.size < seconds * 16000:
        x = np.concatenate([x, synthesize_utterance(text, "en-us", "m3", 170, 50)["samples"]])
    return x[: int(seconds * 16000)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    x = speech(args.seconds)
    fe = WhisperFrontend(80)
    t = []
    for _ in range(args.runs):
        t0 = time.perf_counter(); feats = fe(x, 16000); t.append(time.perf_counter() - t0)
    print(f"log-mel: {statistics.median(t) / args.seconds:.4f} s per s of audio")
    for name in ("whisper-tiny.en", "whisper-base"):
        probe, _ = load_whisper_encoder(name, 3000)
        for k in (probe.num_layers - 1, probe.num_layers - 2):
            enc, info = load_whisper_encoder(name, 3000, freeze_layers=k)
            ext = []
            for _ in range(args.runs):
                t0 = time.perf_counter(); bottom = enc.bottom_numpy(fe(x, 16000)); ext.append(time.perf_counter() - t0)
            head = torch.nn.Linear(info.d_model, 32)
            params = [p for p in enc.parameters() if p.requires_grad] + list(head.parameters())
            opt = torch.optim.AdamW(params, 1e-4)
            states = torch.from_numpy(bottom)[None]
            mask = torch.ones(1, states.shape[1], dtype=torch.bool)
            target = torch.randint(1, 32, (1, int(args.seconds * 12)))
            step = []
            for _ in range(args.runs + 1):
                t0 = time.perf_counter()
                out, m = enc.forward_top(states, mask)
                lp = head(out).log_softmax(-1).transpose(0, 1)
                loss = torch.nn.functional.ctc_loss(lp, target, m.sum(1), torch.tensor([target.shape[1]]))
                opt.zero_grad(); loss.backward(); opt.step()
                step.append(time.perf_counter() - t0)
            print(f"{name} k={k}: load {info.load_seconds:.2f} s, cache extraction "
                  f"{statistics.median(ext) / args.seconds:.4f} s per s of audio, top+CTC step "
                  f"{statistics.median(step[1:]):.3f} s per {args.seconds:g} s clip")


if __name__ == "__main__":
    main()
