"""`otalign decode`: decode a manifest with an exported model, score it, write the result files.

Outputs in ``out_dir``, per manifest ``<name>`` (the manifest's file stem):
    <name>.hyp.txt      ``id<TAB>hypothesis`` per utterance
    <name>.errors.txt   per-utterance errors (otalign.decode.scoring.write_error_file)
    <name>.results.txt  CER/WER, counts, RTF, with a header recording the config and git hash
    <name>.results.json the same numbers, machine-readable
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from otalign.data.dataset import SpeechDataset, collate
from otalign.data.features import GlobalCMVN
from otalign.data.manifest import read_manifest
from otalign.decode.scoring import RealTimeFactor, ScoreReport, git_hash, score, write_error_file, write_results
from otalign.decode.search import decode_batch
from otalign.models.export import load_inference_model


def decode_manifest(ckpt: str | Path, manifest: str | Path, out_dir: str | Path, method: str = "greedy",
                    beam: int = 10, threads: int = 1, batch_size: int = 16,
                    feature_cache_dir: str | None = "exp/cache/fbank") -> ScoreReport:
    """Decode every utterance of ``manifest`` with the inference model at ``ckpt`` and score it.

    RTF counts model forward + search time (features come from the on-disk cache; the feature
    extraction speed is reported separately by ``otalign bench data``).
    """
    if threads > 0:
        torch.set_num_threads(threads)
    inference = load_inference_model(ckpt)
    cmvn = GlobalCMVN.from_dict(inference.config["cmvn"]) if inference.config.get("cmvn") else None
    utterances = read_manifest(manifest)
    dataset = SpeechDataset(utterances, cache_dir=feature_cache_dir, cmvn=cmvn)
    order = sorted(range(len(utterances)), key=lambda i: utterances[i].duration)
    refs, hyps = {}, {}
    rtf = RealTimeFactor()
    for start in range(0, len(order), batch_size):
        batch = collate([dataset[i] for i in order[start:start + batch_size]])
        begin = time.perf_counter()
        with torch.inference_mode():
            out = inference.model(batch["feats"], batch["feat_lengths"])
            best = decode_batch(out.log_probs, out.out_lengths, mode=method, beam=beam)
        rtf.add(time.perf_counter() - begin, float(batch["durations"].sum()))
        for uid, text, ids in zip(batch["ids"], batch["texts"], best):
            refs[uid], hyps[uid] = text, inference.tokenizer.decode(ids)

    report = score(refs, hyps)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = Path(manifest).stem
    (out_dir / f"{name}.hyp.txt").write_text("".join(f"{uid}\t{hyps[uid]}\n" for uid in sorted(hyps)))
    write_error_file(out_dir / f"{name}.errors.txt", refs, hyps)
    config = {"ckpt": str(ckpt), "manifest": str(manifest), "method": method, "beam": beam,
              "threads": threads, "train_config": inference.config.get("train_config", {})}
    commit = git_hash()
    write_results(out_dir / f"{name}.results.txt", report, config, commit, rtf=rtf.rtf)
    (out_dir / f"{name}.results.json").write_text(json.dumps(
        {**report.as_dict(), "rtf": rtf.rtf, "git_hash": commit, "config": config}, indent=2, default=str))
    return report
