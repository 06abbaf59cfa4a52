"""Data benchmark: eSpeak NG corpus synthesis and fbank extraction speed, as x real time.

    python bench/data.py                      # measure, print, and rewrite "## Data" in docs/benchmarks.md
    python bench/data.py --runs 1 --no-write  # quick look

Synthesis: ``synthesize_corpus`` end to end (text pool, babble bank, worker pool, eSpeak,
resampling, imbalance, wav + manifest writing) with ``--jobs`` workers; x real time = seconds of
audio written / wall seconds. Features: ``load_audio`` + ``compute_fbank`` over the synthesised
wavs in one process (one core); x real time = audio seconds / wall seconds. Medians over ``--runs``.
Targets (issue 3): synthesis >= 100x, features >= 200x real time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otalign.data.features import compute_fbank, load_audio  # noqa: E402
from otalign.data.manifest import read_manifest  # noqa: E402
from otalign.data.synth import synthesize_corpus  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def bench_synthesis(work: Path, num_utterances: int, jobs: int, runs: int) -> tuple[list[dict], Path]:
    results = []
    for run in range(runs):
        out = work / f"synth{run}"
        shutil.rmtree(out, ignore_errors=True)
        summary = synthesize_corpus(out, num_utterances=num_utterances, num_dev=20, num_test=20, seed=run,
                                    jobs=jobs, progress=False)
        results.append(summary)
    return results, work / "synth0"


def _fbank_file(path: str) -> float:
    samples, rate = load_audio(path)
    compute_fbank(samples, rate)
    return samples.size / rate


def bench_features(corpus: Path, runs: int, jobs: int = 1) -> list[tuple[float, float]]:
    """(audio seconds, wall seconds) per run of load + fbank over the train wavs with ``jobs`` processes."""
    paths = [u.audio_filepath for u in read_manifest(corpus / "train.jsonl", verbose=False).utterances]
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        if jobs == 1:
            audio_s = sum(_fbank_file(p) for p in paths)
        else:
            with multiprocessing.get_context("forkserver").Pool(jobs) as pool:
                audio_s = sum(pool.map(_fbank_file, paths, chunksize=16))
        out.append((audio_s, time.perf_counter() - started))
    return out


def _section(synth: list[dict], feats: list[tuple[float, float]], feats_parallel: list[tuple[float, float]],
             args: argparse.Namespace) -> str:
    synth_runs = [s["x_real_time"] for s in synth]
    synth_x = statistics.median(synth_runs)
    feat_x = statistics.median(a / t for a, t in feats)
    audio_h = statistics.median(s["audio_s"] for s in synth) / 3600
    wall = statistics.median(s["elapsed_s"] for s in synth)
    lines = [
        "## Data",
        "",
        f"Measured by `python bench/data.py --runs {args.runs} --num-utterances {args.num_utterances} "
        f"--jobs {args.jobs}` on {time.strftime('%Y-%m-%d')} ({platform.machine()}, {os.cpu_count()} cores, "
        "shared with other jobs: treat as a lower bound). Medians over runs.",
        "",
        "| what | x real time | target | detail |",
        "|---|---|---|---|",
        f"| corpus synthesis, end to end, {args.jobs} workers | {synth_x:.0f}x | >= 100x | "
        f"{audio_h:.2f} h of audio (train+dev+test_clean+test_noisy) in {wall:.1f} s per run; "
        f"runs: {', '.join(f'{x:.0f}x' for x in synth_runs)} |",
        f"| fbank (load + 80-dim kaldi-native-fbank), 1 process | {feat_x:.0f}x | >= 200x | "
        f"{feats[0][0] / 60:.1f} min of 16 kHz audio; runs: {', '.join(f'{a / t:.0f}x' for a, t in feats)} |",
        f"| fbank (load + fbank), {args.jobs} processes | {statistics.median(a / t for a, t in feats_parallel):.0f}x "
        f"| >= 200x | same audio, pool start-up included; runs: "
        f"{', '.join(f'{a / t:.0f}x' for a, t in feats_parallel)} |",
        "",
        "Synthesis time includes the fixed start-up cost (fork server and workers importing numpy/scipy, "
        "parsing the fortune files, building the babble bank: about 5 s), so small corpora show a lower "
        "rate than large ones. The machine is shared: expect +-40% from run to run with the load "
        "from other jobs (one run at a load average of ~5.5 measured 138x synthesis, 147x fbank).",
        "",
    ]
    return "\n".join(lines)


def write_section(section: str, path: Path = DOCS) -> None:
    """Replace (or add) the ``## Data`` section of ``path``, leaving other sections alone."""
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n\n"
    pattern = re.compile(r"^## Data\n.*?(?=^## |\Z)", flags=re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--num-utterances", type=int, default=600, help="train utterances per synthesis run")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not edit docs/benchmarks.md")
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="otalign-bench-data-"))
    try:
        synth, corpus = bench_synthesis(work, args.num_utterances, args.jobs, args.runs)
        feats = bench_features(corpus, args.runs)
        feats_parallel = bench_features(corpus, args.runs, args.jobs)
        load = os.getloadavg()[0]
        section = _section(synth, feats, feats_parallel, args).replace(
            "shared with other jobs", f"1-min load average {load:.1f} at the end, shared with other jobs")
        print(section)
        if not args.no_write:
            write_section(section)
            print(f"wrote the ## Data section of {DOCS}")
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
