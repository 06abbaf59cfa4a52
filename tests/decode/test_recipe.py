import json

import numpy as np
import pytest
import soundfile as sf
import torch

from otalign.data.dataset import SpeechDataset
from otalign.data.espeak import ESpeak
from otalign.data.features import GlobalCMVN
from otalign.decode.recipe import decode_manifest
from otalign.decode.search import transcribe_batch
from otalign.models.asr import CTCModel
from otalign.text.tokenizer import CharTokenizer

TEXTS = {"u1": "hello world", "u2": "the cat sat on the mat", "u3": "one two"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three real eSpeak utterances, a manifest, and a tiny (untrained) model saved two ways."""
    root = tmp_path_factory.mktemp("corpus")
    engine = ESpeak()
    lines = []
    for uid, text in TEXTS.items():
        raw = engine.synthesize(text)
        sf.write(root / f"{uid}.wav", raw.samples, raw.sample_rate)
        lines.append(json.dumps({"id": uid, "audio_filepath": f"{uid}.wav",
                                 "duration": len(raw.samples) / raw.sample_rate, "text": text}))
    (root / "test_clean.jsonl").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    tok = CharTokenizer()
    model = CTCModel(tok.vocab_size, "tiny", num_layers=1).eval()
    cmvn = {"mean": [5.0] * 80, "std": [3.0] * 80, "num_frames": 1}
    torch.save({"model": model.state_dict(), "model_config": model.config, "tokenizer": tok.to_dict(),
                "cmvn": cmvn, "git_hash": "trainhash"}, root / "avg.pt")
    config = {"model": {"preset": "tiny", "dropout": 0.1, "overrides": {"num_layers": 1}}}
    torch.save({"trainable": {f"asr.{k}": v for k, v in model.state_dict().items()} | {"transfer.adapter.w": torch.ones(2)},
                "config": config, "tokenizer": tok.to_dict(), "cmvn": cmvn, "epoch": 1}, root / "epoch_1.pt")
    return root, model, tok, cmvn


def test_decode_writes_hyps_errors_results_consistent_with_the_model(corpus, tmp_path):
    root, model, tok, cmvn = corpus
    report = decode_manifest(root / "avg.pt", root / "test_clean.jsonl", tmp_path, feature_cache_dir=None,
                             batch_size=2)
    assert report.num_utts == 3 and report.rtf > 0 and report.feature_rtf > 0
    hyps = dict(line.split("\t") for line in (tmp_path / "test_clean.hyp.txt").read_text().splitlines())
    assert set(hyps) == set(TEXTS)
    # the same model run by hand on the same CMVN-normalised features gives the same text
    stats = GlobalCMVN(np.array(cmvn["mean"]), np.array(cmvn["std"]))
    ds = SpeechDataset(str(root / "test_clean.jsonl"), cmvn=stats)
    for i in range(len(ds)):
        item = ds[i]
        expected = transcribe_batch(model, tok, item["feats"][None], torch.tensor([item["feats"].shape[0]]))[0]
        assert hyps[item["id"]] == expected
    errors = (tmp_path / "test_clean.errors.txt").read_text().splitlines()
    assert len(errors) == 1 + 3
    results = (tmp_path / "test_clean.results.txt").read_text()
    assert "# git: " in results and '"train_git_hash": "trainhash"' in results and "rtf: " in results
    data = json.loads((tmp_path / "test_clean.results.json").read_text())
    assert data["cer"] == pytest.approx(report.cer) and data["num_utts"] == 3


def test_training_checkpoint_decodes_like_the_export_and_beam_files_are_separate(corpus, tmp_path):
    root, *_ = corpus
    decode_manifest(root / "avg.pt", root / "test_clean.jsonl", tmp_path / "a", feature_cache_dir=None)
    decode_manifest(root / "epoch_1.pt", root / "test_clean.jsonl", tmp_path / "b", feature_cache_dir=None)
    assert (tmp_path / "a" / "test_clean.hyp.txt").read_text() == (tmp_path / "b" / "test_clean.hyp.txt").read_text()
    decode_manifest(root / "avg.pt", root / "test_clean.jsonl", tmp_path / "a", method="beam", beam=4,
                    feature_cache_dir=None)
    assert (tmp_path / "a" / "test_clean.beam4.results.txt").is_file()


def test_missing_checkpoint_is_reported(corpus, tmp_path):
    root, *_ = corpus
    with pytest.raises(ValueError, match="nope.pt"):
        decode_manifest(tmp_path / "nope.pt", root / "test_clean.jsonl", tmp_path)
