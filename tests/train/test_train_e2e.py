"""End to end on real synthesized speech and the real PLM: train, resume, average, decode, evaluate."""

import json
import math

import pytest
import torch

from otalign.train import trainer
from otalign.train.config import load_config
from otalign.train.trainer import run
from tests.train.conftest import cer_from_files, tiny_overrides


@pytest.mark.slow
def test_uot_training_learns_resumes_averages_and_decodes(tiny_corpus, tmp_path):
    exp = tmp_path / "uot"
    # one epoch, then --resume to two: the second call must continue, not restart
    run(load_config(None, tiny_overrides(tiny_corpus, exp, epochs=1)), resume=True)
    first = json.loads((exp / "epoch_1.json").read_text())
    final = run(load_config(None, tiny_overrides(tiny_corpus, exp, epochs=3)), resume=True)
    sidecars = [json.loads((exp / f"epoch_{e}.json").read_text()) for e in (1, 2, 3)]
    assert sidecars[0] == first, "resume must not rewrite finished epochs"
    assert sidecars[2]["step"] > sidecars[1]["step"] > first["step"] > 0
    assert sidecars[2]["train_loss"] < sidecars[0]["train_loss"]
    assert all(m["train_kt"] > 0 for m in sidecars), "uot transfer loss must be active"
    assert all(math.isfinite(m["dev_loss"]) for m in sidecars)

    export = torch.load(final, weights_only=False)
    assert not any("transfer" in k or "adapter" in k or "aligner" in k for k in export["state_dict"])
    assert len(json.loads((exp / "avg.json").read_text())["averaged_epochs"]) == 2

    from otalign.decode.recipe import decode_manifest
    report = decode_manifest(final, tiny_corpus / "test_clean.jsonl", tmp_path / "decode",
                             feature_cache_dir=str(tiny_corpus / "fbank_cache"))
    assert report.num_utts == 8
    assert report.cer == pytest.approx(cer_from_files(tiny_corpus / "test_clean.jsonl",
                                                      tmp_path / "decode" / "test_clean.hyp.txt"), abs=1e-12)
    assert (tmp_path / "decode" / "test_clean.errors.txt").read_text().strip()
    header = (tmp_path / "decode" / "test_clean.results.txt").read_text()
    assert "git" in header.lower()

    # The checkpoint's own aligner, rebuilt from epoch_3.pt, scores the dev words as training's
    # end-of-epoch check did (same weights, same teacher, same frames).
    from otalign.data.manifest import read_manifest
    from otalign.train.system import System
    from otalign.train.trainer import DEV_ALIGNMENT_KEYS
    trained = System.load(exp / "epoch_3.pt")
    dev = [u for u in read_manifest(tiny_corpus / "dev.jsonl") if u.words][: trained.config.dev_alignment_utterances]
    metrics = trained.alignment_metrics(dev)
    assert metrics["num_tokens"] > 0
    for theirs, ours in DEV_ALIGNMENT_KEYS.items():
        assert metrics[theirs] == pytest.approx(sidecars[2][ours], rel=1e-5, abs=1e-6), ours



def test_nan_losses_are_skipped_counted_then_abort(tiny_corpus, tmp_path, monkeypatch):
    real = trainer.compute_loss

    def poisoned(*args, **kwargs):  # fault injection: the real loss, turned NaN
        losses = real(*args, **kwargs)
        losses["ctc"] = losses["ctc"] * float("nan")
        return losses

    monkeypatch.setattr(trainer, "compute_loss", poisoned)
    config = load_config(None, tiny_overrides(tiny_corpus, tmp_path / "nan", aligner="none", epochs=1)
                         + ["optim.max_bad_batches=2"])
    with pytest.raises(RuntimeError, match="NaN/Inf loss"):
        run(config)


@pytest.mark.slow
def test_sentencepiece_units_train_export_and_decode(tiny_corpus, tmp_path):
    exp = tmp_path / "sp"
    overrides = tiny_overrides(tiny_corpus, exp, aligner="none", epochs=1) + [
        "model.units=sentencepiece", "model.sentencepiece_vocab=60"]
    final = run(load_config(None, overrides))
    export = torch.load(final, weights_only=False)
    assert export["tokenizer"]["kind"] == "sentencepiece"
    assert export["model_config"]["vocab_size"] > 29  # more than the 28 characters + blank
    from otalign.decode.recipe import decode_manifest
    report = decode_manifest(final, tiny_corpus / "test_clean.jsonl", tmp_path / "decode",
                             feature_cache_dir=str(tiny_corpus / "fbank_cache"))
    assert report.num_utts == 8

