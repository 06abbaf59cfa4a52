"""`otalign decode`: decode a manifest with a trained model, score it, write the result files.

Outputs in ``out_dir``, per manifest ``<name>`` (the manifest's file stem) and search ``<tag>``
(empty for greedy, ``.beam10`` for prefix beam search with beam 10, ``.beam10_lm`` with the LM):

    <name><tag>.hyp.txt       ``id<TAB>hypothesis`` per utterance, sorted by id
    <name><tag>.errors.txt    per-utterance errors (otalign.decode.scoring.write_error_file)
    <name><tag>.results.txt   CER/WER, counts, RTF, with a header recording the config and git hash
    <name><tag>.results.json  the same numbers, machine-readable

RTF counts model forward + search time over audio duration on ``threads`` threads; getting the
features (fbank, or reading them from the feature cache) is timed apart as ``feature_rtf``.
Utterances are decoded in batches of similar duration (the encoder is padding-invariant, so
batching does not change any hypothesis); with an LM the search runs per utterance.

The model comes from :class:`otalign.train.system.System` (``System.load(ckpt, recognizer_only=True)``),
the one place a checkpoint becomes a model: this recipe is a command, and sits with the CLI above
``System``; the search and scoring beside it (``decode.search``, ``decode.scoring``) are libraries
that everything may use.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from otalign.data.dataset import SpeechDataset, collate_batch
from otalign.data.features import AudioError
from otalign.data.manifest import read_manifest
from otalign.decode.scoring import RealTimeFactor, ScoreReport, git_hash, score, write_error_file, write_results
from otalign.decode.search import decode_batch

if TYPE_CHECKING:
    from otalign.train.system import System


def load_recognizer(ckpt: "str | os.PathLike | System") -> "System":
    """The recognizer of an inference export, the trainer's ``avg.pt`` or a training ``epoch_N.pt``
    (``System.load(..., recognizer_only=True)``: no PLM is loaded, no aligner built); a System is
    taken as it is."""
    from otalign.train.system import System

    return ckpt if isinstance(ckpt, System) else System.load(ckpt, recognizer_only=True)


UNDER_OUT_DIR = type("UnderOutDir", (), {"__repr__": lambda self: "OUT_DIR/cache/fbank"})()
"""The default ``feature_cache_dir`` of :func:`decode_manifest`: ``<out_dir>/cache/fbank``, as the CLI
(never a folder relative to wherever the caller happens to run)."""


def decode_manifest(
    ckpt: "str | os.PathLike | System",
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    method: str = "greedy",
    beam: int = 10,
    threads: int | None = 1,
    batch_size: int = 16,
    feature_cache_dir: str | os.PathLike | None | object = UNDER_OUT_DIR,
    lm_path: str | os.PathLike | None = None,
    lm_weight: float = 0.5,
    sil_score: float = 0.0,
    token_threshold: float | None = None,
    strict: bool = False,
) -> ScoreReport:
    """Decode every utterance of ``manifest``, score it, and write the four files (module docstring).

    Args:
        ckpt: inference export, ``avg.pt`` or ``epoch_N.pt``, or a loaded ``System`` (see
            :func:`load_recognizer`).
        method: ``"greedy"`` or ``"beam"`` (prefix beam search with ``beam``).
        threads: torch threads while decoding (restored afterwards); None or 0 keeps the current.
        batch_size: utterances per forward pass (sorted by duration).
        feature_cache_dir: the fbank cache, e.g. the training config's ``data.feature_cache_dir`` to
            share it with training; by default ``<out_dir>/cache/fbank`` (never the current folder);
            None: compute, do not cache.
        lm_path: an ARPA character LM (:func:`otalign.decode.lm.train_char_ngram_arpa`); with it,
            ``method="beam"`` uses flashlight's LM beam search with ``lm_weight``/``sil_score``.
        token_threshold: optional per-frame pruning of the prefix beam search (log-prob).
        strict: stop at the first bad manifest line or audio file (one ValueError naming the
            utterance and file). By default each is skipped, counted and recorded: the results
            files give ``num_lines`` (non-blank manifest lines), ``num_decoded``, ``num_skipped``
            and every skipped line or utterance with its reason, so the scores never cover an
            unstated subset.

    Returns the :class:`ScoreReport` with ``rtf`` and ``feature_rtf`` filled in.
    """
    if method not in ("greedy", "beam"):
        raise ValueError(f"method must be 'greedy' or 'beam', got {method!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if lm_path is not None and method != "beam":
        raise ValueError("an LM (lm_path) needs method='beam'")
    system = load_recognizer(ckpt)
    model, tokenizer = system.asr, system.tokenizer
    result = read_manifest(manifest, strict=strict)
    utterances = list(result.utterances)
    skipped = [{"where": where, "reason": reason} for where, reason in result.skipped]
    if not utterances:
        raise ValueError(f"manifest {manifest} has no usable utterance ({len(skipped)} line(s) skipped)")
    if feature_cache_dir is UNDER_OUT_DIR:
        feature_cache_dir = Path(out_dir) / "cache" / "fbank"
    # the whole recognizer on its own input (log-mel for Whisper, never a training cache of its bottom)
    dataset = SpeechDataset(utterances, cache_dir=feature_cache_dir, cmvn=system.cmvn, frontend=system.config.model.frontend)
    lm_decoder = None
    if lm_path is not None:
        from otalign.decode.lm import LMBeamDecoder

        lm_decoder = LMBeamDecoder(tokenizer, lm_path, lm_weight=lm_weight, sil_score=sil_score, beam=beam)
    tag = "" if method == "greedy" else f".beam{beam}" + ("_lm" if lm_decoder is not None else "")

    previous_threads = torch.get_num_threads()
    if threads is not None and threads > 0:
        torch.set_num_threads(threads)
    rtf, feature_rtf = RealTimeFactor(), RealTimeFactor()
    refs: dict[str, str] = {}
    hyps: dict[str, str] = {}
    order = sorted(range(len(utterances)), key=lambda i: utterances[i].duration)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            audio_s = sum(utterances[i].duration for i in chunk)
            with feature_rtf.measure(audio_s):
                items = []
                for i in chunk:
                    try:
                        items.append(dataset[i])
                    except AudioError as error:  # one bad file must not stop the others
                        if strict:
                            named = str(error).startswith(f"utterance {utterances[i].id!r}")  # the dataset names it
                            raise ValueError(str(error) if named else f"utterance {utterances[i].id!r} "
                                             f"({utterances[i].audio_filepath}): {error}") from error
                        skipped.append({"where": f"utterance {utterances[i].id!r}", "reason": f"{type(error).__name__}: {error}"})
                if not items:
                    continue
                batch = collate_batch(items)
            with rtf.measure(audio_s), torch.inference_mode():
                out = model(batch["feats"], batch["feat_lengths"])
                lengths = out.out_lengths.tolist()
                if lm_decoder is not None:
                    best = [lm_decoder.decode(out.log_probs[b, :n]) for b, n in enumerate(lengths)]
                else:
                    best = decode_batch(out.log_probs, lengths, mode=method, beam=beam, blank=tokenizer.blank_id,
                                        token_threshold=token_threshold)
            for uid, text, ids in zip(batch["ids"], batch["texts"], best):
                refs[uid], hyps[uid] = text, tokenizer.decode(ids)
    finally:
        torch.set_num_threads(previous_threads)

    if not refs:
        raise ValueError(f"manifest {manifest}: no utterance could be decoded ({len(skipped)} skipped: {skipped[0]['where']}: {skipped[0]['reason']})")
    report = replace(score(refs, hyps), rtf=rtf.rtf, feature_rtf=feature_rtf.rtf)
    coverage = {"num_lines": len(utterances) + len(result.skipped), "num_decoded": len(refs), "num_skipped": len(skipped)}
    if skipped:
        print(f"decode: CER over {len(refs)} of {coverage['num_lines']} utterances of {manifest}; {len(skipped)} skipped "
              f"(first: {skipped[0]['where']}: {skipped[0]['reason']}); all are listed in the results files", file=sys.stderr)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (Path(manifest).name.removesuffix(".jsonl").removesuffix(".json") + tag)
    Path(f"{stem}.hyp.txt").write_text("".join(f"{uid}\t{hyps[uid]}\n" for uid in sorted(hyps)), encoding="utf-8")
    write_error_file(f"{stem}.errors.txt", refs, hyps)
    config = {
        "ckpt": system.source, "manifest": str(manifest), "method": method, "beam": beam if method == "beam" else None,
        "lm": str(lm_path) if lm_path else None, "lm_weight": lm_weight if lm_path else None,
        "threads": threads, "batch_size": batch_size, "model_config": model.config, "cmvn": system.cmvn is not None,
        "train_git_hash": system.meta.get("git_hash"), "train_config": system.meta.get("config"),
        "audio_s": round(rtf.audio_s, 3), "decode_s": round(rtf.decode_s, 3), "feature_s": round(feature_rtf.decode_s, 3),
        **coverage, "skipped": skipped,
    }
    commit = git_hash()
    write_results(f"{stem}.results.txt", report, config, commit)
    Path(f"{stem}.results.json").write_text(
        json.dumps({**report.as_dict(), **coverage, "skipped": skipped, "git_hash": commit, "config": config}, indent=2, default=str) + "\n"
    )
    return report
