"""``System``: one object owns a trained recognizer and its transfer; both checkpoint kinds load."""

from __future__ import annotations

import pytest
import torch

from otalign.data.manifest import read_manifest
from otalign.models.export import CheckpointError
from otalign.train.config import load_config
from otalign.train.system import System
from otalign.train.trainer import run
from tests.train.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # trains a tiny system (about 5 s)


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    exp = tmp_path_factory.mktemp("system") / "uot"
    overrides = tiny_overrides(tiny_corpus, exp, epochs=1) + ["teacher.layer=1-2", "teacher.center=true"]
    final = run(load_config(None, overrides))
    return exp, final


def test_a_training_checkpoint_restores_the_whole_system(trained, tiny_corpus):
    exp, _ = trained
    system = System.load(exp / "epoch_1.pt")
    assert system.kind == "training" and system.trainable.transfer is not None
    assert system.config.teacher.layer == [1, 2] and system.config.teacher.center
    # the teacher comes from the checkpoint's config, never a default one
    assert system.teacher.teacher.layer == [1, 2] and system.teacher.center
    saved = torch.load(exp / "epoch_1.pt", weights_only=True)["trainable"]
    assert all(torch.equal(saved[k], v) for k, v in system.trainable.state_dict().items())
    utterances = list(read_manifest(tiny_corpus / "test_noisy.jsonl"))[:4]
    metrics = system.alignment_metrics(utterances)
    assert metrics["num_utterances"] == 4 and metrics["num_tokens"] > 0
    assert system.encode_fn().frame_s == system.frame_s == 0.04


def test_alignment_plans_are_the_aligners_per_utterance_and_batch_independent(trained, tiny_corpus):
    exp, _ = trained
    system = System.load(exp / "epoch_1.pt")
    utterances = list(read_manifest(tiny_corpus / "test_noisy.jsonl"))[:4]
    together = list(system.alignment_plans(utterances, batch_size=4))
    alone = [item for u in utterances for item in system.alignment_plans([u], batch_size=1)]
    assert [item.utterance.id for item in together] == [u.id for u in utterances]
    tokens = system.teacher.get([u.text for u in utterances]).mask.sum(dim=1)
    for item, single, n_tokens in zip(together, alone, tokens):
        frames = item.plan.shape[0]
        assert item.plan.shape == (frames, int(n_tokens)) and item.word_index.shape == (int(n_tokens),)
        assert abs(frames * item.frame_s - item.utterance.duration) < 2 * item.frame_s
        # padding to the batch's longest utterance changes nothing (masked encoder and solver)
        torch.testing.assert_close(item.plan, single.plan, atol=1e-5, rtol=1e-4)
        # semi-relaxed uot: the token marginal is hard, so every token carries its share of mass
        torch.testing.assert_close(item.plan.sum(dim=0), item.plan.sum(dim=0).mean().expand(int(n_tokens)),
                                   atol=1e-3, rtol=1e-2)


def test_an_inference_checkpoint_is_the_recognizer_only(trained, tiny_corpus, tmp_path):
    exp, final = trained
    full, export = System.load(exp / "epoch_1.pt"), System.load(final)
    assert export.kind == "inference" and export.trainable.transfer is None
    utterances = list(read_manifest(tiny_corpus / "test_clean.jsonl"))[:3]
    assert len(export.transcribe(utterances)) == 3
    with pytest.raises(ValueError, match="inference model holds the recognizer only"):
        export.alignment_metrics(utterances)
    # exporting the loaded training system gives the recognizer of the training checkpoint
    full.export(tmp_path / "again.pt")
    again = System.load(tmp_path / "again.pt")
    assert again.transcribe(utterances) == full.transcribe(utterances)


def test_a_foreign_file_is_one_error_naming_it(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"foreign.pt is (not|neither) an otalign"):
        System.load(path)


def test_decoding_loads_the_recognizer_of_a_training_checkpoint_without_the_plm(trained, tiny_corpus, monkeypatch):
    import otalign.train.system as system_module

    exp, _ = trained
    full = System.load(exp / "epoch_1.pt")
    monkeypatch.setattr(system_module, "targets_from_config",
                        lambda *a: pytest.fail("recognizer_only must not load the PLM teacher"))
    recognizer = System.load(exp / "epoch_1.pt", recognizer_only=True)
    assert recognizer.kind == "training" and recognizer.trainable.transfer is None
    assert recognizer.meta["epoch"] == 1 and "config" in recognizer.meta
    full_asr = full.asr.state_dict()
    assert all(torch.equal(full_asr[k], v) for k, v in recognizer.asr.state_dict().items())
    utterances = list(read_manifest(tiny_corpus / "test_clean.jsonl"))[:3]
    assert recognizer.transcribe(utterances) == full.transcribe(utterances)
    with pytest.raises(ValueError, match="recognizer_only=True"):
        recognizer.alignment_metrics(utterances)
