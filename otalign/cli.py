"""Command-line front end: ``otalign <command> ...``.

Every command is a thin wrapper around a library function, so a recipe can call the same code
from Python. Heavy imports happen inside the handlers so ``otalign --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path


def _floats(text: str) -> list[float]:
    return [math.inf if v.strip().lower() in {"inf", "infinity"} else float(v) for v in text.split(",") if v.strip()]


# ----------------------------------------------------------------------------- data
def cmd_synth(args: argparse.Namespace) -> int:
    from otalign.data.synth import synthesize_corpus
    summary = synthesize_corpus(args.out_dir, size=args.size, num_utterances=args.num_utterances,
                                num_dev=args.num_dev, num_test=args.num_test, seed=args.seed, jobs=args.jobs,
                                imbalanced_fraction=args.imbalanced_fraction, progress=not args.no_progress)
    print(json.dumps({k: summary[k] for k in ("out_dir", "counts", "hours") if k in summary}, indent=2, default=str))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from otalign.data import asterisk, importers
    if args.corpus == "asterisk":
        summary = asterisk.prepare_asterisk(args.paths[0], sounds_dir=args.sounds_dir, strict=args.strict,
                                            limit=args.limit)
    elif args.corpus == "cmvn":
        from otalign.data.features import GlobalCMVN
        _need(args, 2, "MANIFEST OUT_JSON")
        GlobalCMVN.from_manifest(args.paths[0]).save(args.paths[1])
        summary = {"cmvn": args.paths[1]}
    elif args.corpus in ("kaldi", "librispeech"):
        _need(args, 2, "SRC OUT_MANIFEST")
        reader = importers.import_kaldi if args.corpus == "kaldi" else importers.import_librispeech
        summary = reader(args.paths[0], args.paths[1], strict=args.strict, allow_multichannel=args.allow_multichannel)
    else:
        _need(args, 3, "TRANSCRIPT WAV_ROOT OUT_MANIFEST")
        summary = importers.import_aishell(args.paths[0], args.paths[1], args.paths[2], strict=args.strict,
                                           allow_multichannel=args.allow_multichannel)
    print(json.dumps(summary, indent=2, default=str) if isinstance(summary, dict) else summary)
    return 0


def _need(args: argparse.Namespace, count: int, usage: str) -> None:
    if len(args.paths) != count:
        raise ValueError(f"prepare {args.corpus} expects {usage}, got {len(args.paths)} path(s)")


# ----------------------------------------------------------------------------- train / decode
def cmd_train(args: argparse.Namespace) -> int:
    from otalign.train.config import load_config
    from otalign.train.trainer import run
    config = load_config(args.config, args.set)
    run(config, resume=args.resume, overwrite=args.overwrite, force=args.force,
        progress=False if args.no_progress else None)
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from otalign.decode.recipe import decode_manifest
    for manifest in args.data:
        report = decode_manifest(args.ckpt, manifest, args.out, method=args.method, beam=args.beam,
                                 threads=args.threads, lm_path=args.lm, lm_weight=args.lm_weight,
                                 feature_cache_dir=args.feature_cache_dir or str(Path(args.out) / "cache" / "fbank"),
                                 strict=args.strict)
        print(f"[decode] {manifest}: CER {100 * report.cer:.2f}%  WER {100 * report.wer:.2f}%  "
              f"({report.num_utts} utterances, RTF {report.rtf:.4f}) -> {args.out}")
    return 0


def cmd_lm(args: argparse.Namespace) -> int:
    from otalign.data.manifest import read_manifest
    from otalign.decode.lm import train_char_ngram_arpa
    held_out = {u.text for manifest in args.exclude for u in read_manifest(manifest)}
    texts = [u.text for manifest in args.data for u in read_manifest(manifest)]
    kept = [t for t in texts if t not in held_out]
    # a held-out sentence in the LM's text would score the test set on what it has seen
    print(f"[lm] {len(texts)} transcripts from {len(args.data)} manifest(s); {len(texts) - len(kept)} also in "
          f"--exclude manifests, left out")
    path = train_char_ngram_arpa(kept, args.out, order=args.order, discount=args.discount)
    print(f"[lm] character {args.order}-gram on {len(kept)} transcripts -> {path} "
          f"(decode with --method beam --lm {path})")
    return 0


# ----------------------------------------------------------------------------- alignment
def cmd_align(args: argparse.Namespace) -> int:
    from otalign.align.report import align_command
    encode_fn = None
    if args.ckpt:
        if args.synthetic:
            raise ValueError("--ckpt and --synthetic exclude each other")
        if not args.data:
            raise ValueError("--ckpt needs --data, a manifest with ground-truth word spans")
        from otalign.train.system import System
        encode_fn = System.load(args.ckpt).encode_fn()
    elif not args.synthetic:
        raise ValueError("give --ckpt (a trained model) or --synthetic (the setting that needs no training)")
    result = align_command(ckpt=args.ckpt, manifest=args.data, out_dir=args.out, aligners=args.aligners.split(","),
                           rhos=_floats(args.rho), epsilons=_floats(args.eps), synthetic=args.synthetic,
                           num_utterances=args.num_utterances, partial_masses=_floats(args.partial_mass),
                           order_weights=_floats(args.order_weight), num_heatmaps=args.num_heatmaps,
                           encode_fn=encode_fn)
    print(f"[align] report written to {args.out}")
    return 0 if result is not None else 1


# ----------------------------------------------------------------------------- bench / experiment
def cmd_bench(args: argparse.Namespace) -> int:
    import importlib
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    module = importlib.import_module(f"bench.{args.what}")
    return module.main(args.rest) or 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from otalign.train.experiment import run_experiment
    run_experiment(args.config, only=args.only, dry_run=args.dry_run, report_only=args.report_only,
                   seeds=args.seeds, benchmarks=args.benchmarks, jobs=args.jobs, overrides=args.set)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from otalign.train.demo import run_demo
    return run_demo(args.out, corpus=args.corpus, overrides=args.set, progress=False if args.no_progress else None)


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from otalign import __version__

    parser = argparse.ArgumentParser(prog="otalign", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"otalign {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="synthesize an English corpus with ground-truth word timings (eSpeak NG)")
    p.add_argument("out_dir", help="output directory (train/dev/test_clean/test_noisy.jsonl + 16 kHz wavs)")
    p.add_argument("--size", default="demo", choices=["tiny", "demo", "bench"],
                   help="tiny 40/8/8, demo 1500/150/150 (~2 h train), bench 3000/300/300 (~3.9 h train) utterances")
    p.add_argument("--num-utterances", type=int, default=None, help="train utterances (overrides --size); 100 h+ works")
    p.add_argument("--num-dev", type=int, default=None)
    p.add_argument("--num-test", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--imbalanced-fraction", type=float, default=0.5,
                   help="fraction of train/dev utterances given silence and noise (test_noisy: all)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="turn an existing corpus into otalign manifests (the source is never modified)",
                       description="asterisk OUT_DIR | kaldi DATA_DIR OUT_MANIFEST | librispeech ROOT OUT_MANIFEST | "
                                   "aishell TRANSCRIPT WAV_ROOT OUT_MANIFEST | cmvn MANIFEST OUT_JSON")
    p.add_argument("corpus", choices=["asterisk", "kaldi", "librispeech", "aishell", "cmvn"])
    p.add_argument("paths", nargs="+", help="see the description")
    p.add_argument("--sounds-dir", default=None, help="asterisk: the sounds folder (default: the Debian package's)")
    p.add_argument("--limit", type=int, default=None, help="asterisk: only the first N prompts")
    p.add_argument("--strict", action="store_true", help="bad utterances are errors, not counted skips")
    p.add_argument("--allow-multichannel", action="store_true", help="downmix multichannel audio instead of skipping it")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a Conformer-CTC model with PLM knowledge transfer")
    p.add_argument("--config", required=True, help="YAML recipe, e.g. conf/demo.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set transfer.rho_frames=0.5 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in exp_dir from its newest readable epoch_N.pt; refused if the config "
                        "differs in a key that changes the model or data (the keys are named)")
    p.add_argument("--overwrite", action="store_true",
                   help="exp_dir holds an earlier run: delete its checkpoints, avg.pt, cmvn.json, config and "
                        "tensorboard logs first (nothing outside exp_dir, no other file in it)")
    p.add_argument("--force", action="store_true",
                   help="with --resume: resume although the config differs (the differences are recorded in "
                        "config.history.yaml)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (also: OTALIGN_PROGRESS=0; they are off when stderr is not a terminal)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("decode", help="CTC decoding and CER/WER scoring")
    p.add_argument("--ckpt", required=True, help="avg.pt (inference export) or epoch_N.pt")
    p.add_argument("--data", required=True, nargs="+", help="manifest(s) to decode")
    p.add_argument("--out", required=True, help="directory for hypotheses, error files and results")
    p.add_argument("--method", choices=["greedy", "beam"], default="greedy")
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lm", default=None, help="character n-gram ARPA LM (needs --method beam and flashlight-text)")
    p.add_argument("--lm-weight", type=float, default=0.5)
    p.add_argument("--strict", action="store_true",
                   help="stop at the first bad manifest line or audio file; by default each is skipped, counted and listed in *.results.json")
    p.add_argument("--feature-cache-dir", default=None,
                   help="fbank cache (default: OUT/cache/fbank, never the current folder; pass the training "
                        "config's data.feature_cache_dir to share it with training)")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("lm", help="a character n-gram ARPA LM from manifests' transcripts, for decode --lm")
    p.add_argument("--data", required=True, nargs="+", help="manifest(s) whose transcripts train the LM")
    p.add_argument("--exclude", nargs="*", default=[],
                   help="held-out manifest(s), e.g. dev and test: their sentences are left out of the LM text")
    p.add_argument("--out", required=True, help="the ARPA file to write")
    p.add_argument("--order", type=int, default=6)
    p.add_argument("--discount", type=float, default=0.5, help="absolute discount, in (0, 1)")
    p.set_defaults(func=cmd_lm)

    p = sub.add_parser("align", help="alignment-as-detection metrics, heatmaps and precision-recall sweeps")
    p.add_argument("--ckpt", help="a training checkpoint (epoch_N.pt) whose adapter gives the acoustic states")
    p.add_argument("--data", help="manifest with ground-truth word spans")
    p.add_argument("--out", required=True, help="directory for the metrics (JSON, CSV), heatmaps and PR plots")
    p.add_argument("--aligners", default="ot,tot,uot,partial",
                   help="comma-separated aligners to compare: ot, tot, uot, partial, tuot (uot + order prior: "
                        "the --rho and --order-weight grids crossed)")
    p.add_argument("--rho", default="0.003,0.01,0.03,0.1,0.3,1,10", help="comma-separated rho_frames values for uot")
    p.add_argument("--eps", default="0.02,0.05", help="comma-separated eps values")
    p.add_argument("--partial-mass", default="0.4,0.5,0.6,0.8", help="comma-separated total masses for partial")
    p.add_argument("--order-weight", default="0.1,1", help="comma-separated temporal-order weights for tot and tuot")
    p.add_argument("--num-heatmaps", type=int, default=2, help="utterances drawn as heatmaps")
    p.add_argument("--synthetic", action="store_true", help="the setting that needs no training")
    p.add_argument("--num-utterances", type=int, default=32,
                   help="utterances evaluated (--synthetic: generated; --ckpt: the first N of --data)")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("bench", help="benchmarks: solver | data | decode | train | teacher | whisper | whisper_train")
    p.add_argument("what", choices=["solver", "data", "decode", "train", "teacher", "whisper", "whisper_train"],
                   help="which benchmark (bench/<what>.py; `otalign bench <what> --help` lists its options)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("experiment", help="the grid that tests the paper's claim; resumable")
    p.add_argument("--config", default="conf/experiment.yaml",
                   help="the grid: systems x seeds x benchmarks (conf/experiment_smoke.yaml is a 2-run version)")
    p.add_argument("--only", default=None, help="comma-separated system names to run")
    p.add_argument("--seeds", default=None, help="comma-separated seeds to run")
    p.add_argument("--benchmarks", default=None, help="comma-separated benchmark names to run")
    p.add_argument("--dry-run", action="store_true", help="list the runs and which are done")
    p.add_argument("--report-only", action="store_true", help="regenerate docs/results.md from results/")
    p.add_argument("--jobs", type=int, default=None, help="runs at once, one process each (default: the config's jobs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the experiment YAML (dotted, value parsed as YAML), repeatable: "
                        "e.g. --set base.model.frontend=whisper-base --set results_dir=results/whisper_base")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("demo", help="the whole path on the embedded corpus: synth, train (uot), decode, score")
    p.add_argument("--out", default="exp/demo",
                   help="the demo's own exp_dir: an interrupted demo resumes; a run there under another "
                        "config is replaced (rerunning the demo always succeeds)")
    p.add_argument("--corpus", default="data/demo", help="where the demo corpus is (synthesized if absent)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of conf/demo.yaml, e.g. --set model.frontend=whisper-tiny.en (repeatable)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (also: OTALIGN_PROGRESS=0; they are off when stderr is not a terminal)")
    p.set_defaults(func=cmd_demo)
    return parser


def _one_line(error: BaseException) -> str:
    """The error as one line: its message with newlines folded; an OSError as 'reason: file'."""
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.strerror or type(error).__name__}: {error.filename}"
    else:
        text = str(error).strip() or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines)


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    """What bad input raises: every ValueError (ConfigError, CheckpointError, ExpDirError, the data
    layer's AudioError/ManifestError, UnicodeDecodeError), a missing/unreadable file, bad YAML."""
    errors: list[type[BaseException]] = [ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                                         PermissionError]
    try:
        import yaml
        errors.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover - yaml is a dependency
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (see :func:`_bad_input_errors`) ends in ONE line on stderr,
    ``otalign <cmd>: error: ...``, and exit status 2, never a Python traceback; an interrupt in 130.
    Anything else is a bug and keeps its traceback."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _bad_input_errors() as error:
        print(f"otalign {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"otalign {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
