"""`make demo` / `otalign demo`: the whole path on the embedded corpus, in about 10 minutes on 2 cores.

synthesize (eSpeak NG, skipped if present) -> train the tiny Conformer-CTC with semi-relaxed UOT
transfer (resumes if interrupted) -> decode clean and noisy test sets -> score -> alignment plots.
"""

from __future__ import annotations

import time
from pathlib import Path

from otalign.train.config import load_config

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "demo.yaml"


def run_demo(out: str = "exp/demo", corpus: str = "data/demo", overrides: list[str] | None = None,
             corpus_size: str = "demo", progress: bool | None = None) -> int:
    """Run the demo; ``overrides`` are ``--set`` items applied on top of conf/demo.yaml.

    Rerunning it always succeeds: ``out`` is the demo's own exp_dir, so a finished or interrupted
    demo there is resumed (a finished one only re-averages), and a run there under another config
    (an edited conf/demo.yaml, other ``overrides``) is replaced, with the changed keys printed.
    ``progress``: progress bars (None: only when stderr is a terminal, or as OTALIGN_PROGRESS says).
    """
    from otalign.data.synth import synthesize_corpus
    from otalign.decode.recipe import decode_manifest
    from otalign.train.checkpoint import ExpDirError
    from otalign.train.trainer import check_exp_dir, progress_enabled, run

    started = time.time()
    progress = progress_enabled(progress)
    corpus_dir = Path(corpus)
    if not (corpus_dir / "train.jsonl").exists():
        print(f"[demo] 1/4 synthesizing the demo corpus into {corpus_dir} (eSpeak NG)")
        synthesize_corpus(corpus_dir, size=corpus_size, seed=0, progress=progress)
    else:
        print(f"[demo] 1/4 corpus already at {corpus_dir}")

    manifests = [f"data.train_manifests=[{corpus_dir}/train.jsonl]", f"data.dev_manifest={corpus_dir}/dev.jsonl",
                 f"data.test_manifests={{test_clean: {corpus_dir}/test_clean.jsonl, "
                 f"test_noisy: {corpus_dir}/test_noisy.jsonl}}"]
    config = load_config(DEMO_CONFIG, [f"exp_dir={out}", *manifests, *(overrides or [])])
    model = "tiny Conformer-CTC" if config.model.frontend == "fbank" else f"{config.model.frontend} CTC"
    print(f"[demo] 2/4 training {model} + {config.transfer.aligner} transfer (rho_frames={config.transfer.rho_frames}) "
          f"for {config.optim.epochs} epochs -> {out}")
    try:
        check_exp_dir(config, resume=True, overwrite=False, force=False)
        overwrite = False
    except ExpDirError as refusal:
        print(f"[demo] {out} holds a run that cannot be resumed, so it is replaced: {refusal}")
        overwrite = True
    final = run(config, resume=not overwrite, overwrite=overwrite, progress=progress)

    print("[demo] 3/4 decoding (CTC greedy) and scoring")
    scores = {}
    for name, manifest in config.data.test_manifests.items():
        report = decode_manifest(final, manifest, Path(out) / "decode", feature_cache_dir=config.data.feature_cache_dir)
        scores[name] = report

    print("[demo] 4/4 alignment as detection: heatmaps and precision-recall sweep")
    plots_dir = Path(out) / "alignment"
    try:
        from otalign.align.report import align_command
        from otalign.train.checkpoint import rank_checkpoints
        from otalign.train.system import System
        best = rank_checkpoints(out)[0]["epoch"]
        best_ckpt = Path(out) / f"epoch_{best}.pt"
        system = System.load(best_ckpt)
        # the encode function carries the checkpoint's own teacher (model, layer, centring) and frame
        # length, so the trained plots score against the targets the model was trained on
        align_command(ckpt=str(best_ckpt), manifest=config.data.test_manifests["test_noisy"], out_dir=str(plots_dir / "trained"),
                      aligners=["ot", "uot", "partial"], rhos=[0.1, 1.0], epsilons=[config.transfer.eps],
                      synthetic=False, num_utterances=8, encode_fn=system.encode_fn())
        print(f"[demo] trained-model alignment report: {plots_dir / 'trained'}")
        align_command(ckpt=None, manifest=None, out_dir=str(plots_dir / "synthetic"), aligners=["ot", "uot", "partial"],
                      rhos=[0.01, 0.03, 0.1, 0.3, 1.0], epsilons=[0.05], synthetic=True, num_utterances=16)
    except Exception as error:  # the plots are a bonus of the demo: report, don't hide, a failure
        print(f"[demo] alignment plots failed: {type(error).__name__}: {error}")

    print("\n[demo] results (CTC greedy, held-out synthetic speech, voices unseen in training):")
    for name, report in scores.items():
        print(f"  {name:12s} CER {100 * report.cer:5.1f}%   WER {100 * report.wer:5.1f}%   ({report.num_utts} utterances)")
    print(f"\n[demo] done in {(time.time() - started) / 60:.1f} min")
    print(f"  checkpoints : {out}/epoch_*.pt (+ .json metrics), inference model {final}")
    print(f"  logs        : {out}/tensorboard  (tensorboard --logdir {out}/tensorboard)")
    print(f"  decoding    : {out}/decode/*.results.txt, *.errors.txt")
    print(f"  plots       : {plots_dir}/")
    print("  commands    : .venv/bin/otalign --help  (or `source .venv/bin/activate`, then `otalign ...`)")
    return 0
