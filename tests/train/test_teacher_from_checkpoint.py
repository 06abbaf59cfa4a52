"""A trained system is scored against the teacher it was trained with (issue 17, section 2).

`otalign align --ckpt` and the demo's trained plots used to build a default `PLMTeacher()` (the last
MiniLM layer) whatever the checkpoint was trained on; the demo trains on layer 0. Here a tiny model is
trained on layer-0 targets, and every evaluation path must score its plans against layer-0 states,
with the frame length the model reports.
"""

import pytest
import torch

import otalign.align.sweep as sweep_module
from otalign.align.sweep import align_command
from otalign.data.manifest import read_manifest
from otalign.models.asr import CTCModel
from otalign.text.teacher import PLMTeacher
from otalign.train.config import load_config
from otalign.train.trainer import run
from tests.train.conftest import tiny_overrides

ALIGN = dict(aligners=["uot"], rhos=[1.0], epsilons=[0.1], num_utterances=3, num_heatmaps=0, n_iter=10)


@pytest.fixture(scope="module")
def layer0_ckpt(tiny_corpus, tmp_path_factory):
    exp = tmp_path_factory.mktemp("layer0")
    run(load_config(None, tiny_overrides(tiny_corpus, exp, epochs=1) + ["teacher.layer=0", "average_best=1"]))
    return exp / "epoch_1.pt"


@pytest.fixture
def captured(monkeypatch):
    """The examples `align_command` hands to the report, instead of writing it."""
    seen = {}

    def capture(out_dir, examples, *args, **kwargs):
        seen["examples"] = list(examples)
        return {"rows": []}

    monkeypatch.setattr(sweep_module, "run_alignment_report", capture)
    return seen


def _assert_layer0_targets(examples):
    texts = [e.text for e in examples]
    layer0 = PLMTeacher(layer=0).encode(texts)
    last = PLMTeacher().encode(texts)
    for b, e in enumerate(examples):
        n = int(layer0.mask[b].sum())
        assert e.token_states.shape[0] == n
        torch.testing.assert_close(e.token_states, layer0.states[b, :n], atol=2e-2, rtol=2e-2)  # fp16 cache
        assert not torch.allclose(e.token_states, last.states[b, :n], atol=0.1), "scored against the last layer"


def test_otalign_align_ckpt_scores_against_the_checkpoint_teacher(layer0_ckpt, tiny_corpus, tmp_path, captured):
    from otalign.cli import main

    assert main(["align", "--ckpt", str(layer0_ckpt), "--data", str(tiny_corpus / "test_noisy.jsonl"),
                 "--out", str(tmp_path / "align"), "--aligners", "uot", "--rho", "1", "--eps", "0.1",
                 "--num-utterances", "3", "--num-heatmaps", "0"]) == 0
    _assert_layer0_targets(captured["examples"])


def test_the_demo_call_without_ckpt_takes_the_teacher_from_the_encode_fn(layer0_ckpt, tiny_corpus, tmp_path,
                                                                          captured):
    from otalign.train.evaluate import load_trainable, make_encode_fn

    trainable, config, cmvn = load_trainable(layer0_ckpt)
    encode_fn = make_encode_fn(trainable, config, cmvn)
    assert encode_fn.targets().layer == 0 and encode_fn.frame_s == trainable.asr.frame_s
    align_command(None, str(tiny_corpus / "test_noisy.jsonl"), str(tmp_path), encode_fn=encode_fn, **ALIGN)
    _assert_layer0_targets(captured["examples"])


def test_a_bare_encode_fn_with_a_ckpt_reads_the_teacher_from_the_stored_config(layer0_ckpt, tiny_corpus,
                                                                               tmp_path, captured):
    from otalign.train.evaluate import load_trainable, make_encode_fn

    inner = make_encode_fn(*load_trainable(layer0_ckpt))

    def bare(utterances):  # an encode_fn from elsewhere: no targets, no frame_s
        return inner(utterances)

    manifest = str(tiny_corpus / "test_noisy.jsonl")
    align_command(str(layer0_ckpt), manifest, str(tmp_path), encode_fn=bare, frame_s=0.04, **ALIGN)
    _assert_layer0_targets(captured["examples"])
    with pytest.raises(ValueError, match="teacher it was trained with"):
        align_command(None, manifest, str(tmp_path), encode_fn=bare, frame_s=0.04, **ALIGN)
    with pytest.raises(ValueError, match="frame length"):
        align_command(str(layer0_ckpt), manifest, str(tmp_path), encode_fn=bare, **ALIGN)


def test_every_evaluation_path_takes_the_frame_length_from_the_model(layer0_ckpt, tiny_corpus, tmp_path,
                                                                      captured, monkeypatch):
    import otalign.train.evaluate as evaluate

    monkeypatch.setattr(CTCModel, "frame_s", property(lambda self: 0.02))
    trainable, config, cmvn = evaluate.load_trainable(layer0_ckpt)
    manifest = str(tiny_corpus / "test_noisy.jsonl")
    align_command(None, manifest, str(tmp_path), encode_fn=evaluate.make_encode_fn(trainable, config, cmvn), **ALIGN)
    assert {e.frame_s for e in captured["examples"]} == {0.02}

    frame_lengths, teachers = [], []
    real_metrics, real_targets = evaluate.utterance_metrics, evaluate.checkpoint_targets
    monkeypatch.setattr(evaluate, "utterance_metrics",
                        lambda *a, **k: frame_lengths.append(k.get("frame_s")) or real_metrics(*a, **k))
    monkeypatch.setattr(evaluate, "checkpoint_targets", lambda c: teachers.append(real_targets(c)) or teachers[-1])
    metrics = evaluate.alignment_metrics(trainable, config, cmvn, list(read_manifest(manifest))[:3])
    assert metrics["num_tokens"] > 0
    assert set(frame_lengths) == {0.02}
    assert [t.layer for t in teachers] == [0]
