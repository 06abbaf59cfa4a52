"""Decoding real-time factor and training throughput of a Conformer-CTC preset (default: tiny).

    python bench/decode.py [--preset tiny] [--minutes 3] [--utt-s 10] [--train-batch-s 60]

What is measured (the model is randomly initialised: timing does not depend on the weights, and
the audio is white noise at 16 kHz: fbank and encoder cost do not depend on the content):

1. Greedy decoding RTF on 1 thread (torch.set_num_threads(1)), one utterance at a time:
   a. model forward + greedy search, from precomputed 80-dim fbank;
   b. the same plus fbank extraction (kaldi-native-fbank, 25 ms / 10 ms) from 16 kHz samples.
   Also prefix beam search (beam 10) on the same log-probs, for reference.
2. Training throughput on 2 threads (``--train-threads``): forward + CTC loss + backward + AdamW
   step on one batch of about ``--train-batch-s`` seconds of audio, as x real time (audio s / wall s).
   On a loaded machine (1-min load above the core count) 2 OpenMP threads wait on each other
   and can be slower than 1: compare with ``--train-threads 1``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository's otalign importable
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def fbank(samples: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = sample_rate
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = 80
    f = knf.OnlineFbank(opts)
    f.accept_waveform(sample_rate, (samples * 32768.0).tolist())
    f.input_finished()
    return np.stack([f.get_frame(i) for i in range(f.num_frames_ready)])


def bench_decode(preset: str, minutes: float, utt_s: float, beam_utts: int, seed: int, overrides: dict | None = None) -> dict:
    from otalign.decode.search import ctc_greedy, ctc_prefix_beam_search
    from otalign.models.asr import CTCModel

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CTCModel(29, preset=preset, **(overrides or {})).eval()
    n_utts = max(1, round(minutes * 60 / utt_s))
    audio = [0.1 * rng.standard_normal(int(utt_s * 16000)).astype(np.float32) for _ in range(n_utts)]
    audio_s = sum(len(a) for a in audio) / 16000

    with torch.inference_mode():
        feats0 = torch.from_numpy(fbank(audio[0])).float()[None]
        model(feats0, torch.tensor([feats0.shape[1]]))  # warm-up (allocator, kernels)

        t_fbank = t_model = 0.0
        log_probs = []
        for a in audio:
            t0 = time.perf_counter()
            f = torch.from_numpy(fbank(a)).float()[None]
            t1 = time.perf_counter()
            out = model(f, torch.tensor([f.shape[1]]))
            ctc_greedy(out.log_probs, out.out_lengths)
            t2 = time.perf_counter()
            t_fbank += t1 - t0
            t_model += t2 - t1
            log_probs.append(out.log_probs[0])
    t0 = time.perf_counter()
    for lp in log_probs[:beam_utts]:
        ctc_prefix_beam_search(lp, beam=10)
    t_beam = time.perf_counter() - t0
    beam_audio_s = min(beam_utts, n_utts) * utt_s
    return {
        "preset": preset,
        "overrides": overrides or {},
        "params": sum(p.numel() for p in model.parameters()),
        "threads": 1,
        "audio_s": audio_s,
        "utterance_s": utt_s,
        "rtf_greedy_from_fbank": t_model / audio_s,
        "rtf_greedy_with_fbank": (t_model + t_fbank) / audio_s,
        "rtf_fbank_only": t_fbank / audio_s,
        "rtf_beam10_search_only": t_beam / beam_audio_s,
        "beam_audio_s": beam_audio_s,
    }


def bench_train(preset: str, batch_s: float, utt_s: float, steps: int, seed: int, overrides: dict | None = None,
                threads: int = 2) -> dict:
    from otalign.models.asr import CTCModel

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = CTCModel(29, preset=preset, **(overrides or {})).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B = max(1, round(batch_s / utt_s))
    T = int(utt_s * 100)
    feats = torch.randn(B, T, 80)
    lengths = torch.full((B,), T)
    S = int(utt_s * 12)  # ~12 characters per second of speech
    targets = torch.randint(1, 29, (B, S))
    target_lengths = torch.full((B,), S)
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        out = model(feats, lengths)
        loss, valid = model.ctc_loss(out.log_probs, out.out_lengths, targets, target_lengths)
        opt.zero_grad()
        (loss.sum() / valid.sum().clamp(min=1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if step > 0:  # step 0 is warm-up
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    return {
        "preset": preset,
        "overrides": overrides or {},
        "threads": threads,
        "batch": f"{B} x {utt_s:g} s",
        "batch_audio_s": B * utt_s,
        "step_s_median": step_s,
        "x_real_time": B * utt_s / step_s,
    }


def _parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--set expects KEY=VALUE, got {text!r}")
    if value.lower() in ("none", "null"):
        return key, None
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def _load_average() -> float | None:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--minutes", type=float, default=3.0, help="audio decoded for the RTF")
    p.add_argument("--utt-s", type=float, default=10.0, help="utterance length (s)")
    p.add_argument("--beam-utts", type=int, default=3, help="utterances for the beam-search timing")
    p.add_argument("--train-batch-s", type=float, default=60.0)
    p.add_argument("--train-utt-s", type=float, default=7.5)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--train-threads", type=int, default=2)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model override, e.g. --set subsampling_channels=144 (VALUE: int, float or none)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    overrides = dict(_parse_override(s) for s in args.set)

    results = {"load_average_before": _load_average(),
               "decode": bench_decode(args.preset, args.minutes, args.utt_s, args.beam_utts, args.seed, overrides)}
    d = results["decode"]
    print(f"[{d['preset']} {overrides or ''}, {d['params'] / 1e6:.2f}M params, random init] greedy decoding on 1 thread, "
          f"{d['audio_s']:.0f} s of audio in {d['utterance_s']:g}-s utterances:")
    print(f"  RTF model+greedy (fbank precomputed): {d['rtf_greedy_from_fbank']:.4f}")
    print(f"  RTF fbank+model+greedy:               {d['rtf_greedy_with_fbank']:.4f}  (fbank alone {d['rtf_fbank_only']:.4f})")
    print(f"  RTF prefix beam search (beam 10), search only: {d['rtf_beam10_search_only']:.4f}")
    if not args.skip_train:
        results["train"] = bench_train(args.preset, args.train_batch_s, args.train_utt_s, args.train_steps, args.seed,
                                       overrides, args.train_threads)
        t = results["train"]
        print(f"training (fwd+CTC+bwd+AdamW, {t['threads']} threads, batch {t['batch']}): "
              f"{t['step_s_median']:.2f} s/step = {t['x_real_time']:.1f}x real time")
    results["load_average_after"] = _load_average()
    print(f"1-min load average before/after: {results['load_average_before']} / {results['load_average_after']} "
          "(the machine's 2 cores are shared: a load above 2 slows every number here)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
