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
from otalign.train.system import System
from otalign.train.trainer import run
from tests.train.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # every test reads a checkpoint its module fixture trains

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
    from otalign.train.evaluate import make_encode_fn

    trained = System.load(layer0_ckpt)
    trainable, config, cmvn = trained.trainable, trained.config, trained.cmvn
    encode_fn = make_encode_fn(trainable, config, cmvn)
    assert encode_fn.targets().layer == 0 and encode_fn.frame_s == trainable.asr.frame_s
    align_command(None, str(tiny_corpus / "test_noisy.jsonl"), str(tmp_path), encode_fn=encode_fn, **ALIGN)
    _assert_layer0_targets(captured["examples"])


def test_a_bare_encode_fn_with_a_ckpt_reads_the_teacher_from_the_stored_config(layer0_ckpt, tiny_corpus,
                                                                               tmp_path, captured):
    from otalign.train.evaluate import make_encode_fn

    trained = System.load(layer0_ckpt)
    inner = make_encode_fn(trained.trainable, trained.config, trained.cmvn)

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
    trained = System.load(layer0_ckpt)
    trainable, config, cmvn = trained.trainable, trained.config, trained.cmvn
    manifest = str(tiny_corpus / "test_noisy.jsonl")
    align_command(None, manifest, str(tmp_path), encode_fn=evaluate.make_encode_fn(trainable, config, cmvn), **ALIGN)
    assert {e.frame_s for e in captured["examples"]} == {0.02}

    frame_lengths, teachers = [], []
    real_metrics, real_targets = evaluate.utterance_metrics, evaluate.targets_from_config
    monkeypatch.setattr(evaluate, "utterance_metrics",
                        lambda *a, **k: frame_lengths.append(k.get("frame_s")) or real_metrics(*a, **k))
    monkeypatch.setattr(evaluate, "targets_from_config", lambda c: teachers.append(real_targets(c)) or teachers[-1])
    metrics = evaluate.alignment_metrics(trainable, config, cmvn, list(read_manifest(manifest))[:3])
    assert metrics["num_tokens"] > 0
    assert set(frame_lengths) == {0.02}
    assert [t.layer for t in teachers] == [0]


# ----------------------------------------------------------------------------- a non-default teacher
NON_DEFAULT_TEACHER = ["teacher.layer=1-2", "teacher.center=true"]


@pytest.fixture(scope="module")
def mean12_centred(tiny_corpus, tmp_path_factory):
    """A checkpoint trained on the centred mean of MiniLM layers 1 and 2, and the targets training
    handed to the model: text -> the (n, D) states of its tokens."""
    from otalign.train import trainer

    exp = tmp_path_factory.mktemp("mean12_centred")
    seen: dict[str, torch.Tensor] = {}
    real = trainer.compute_loss

    def spy(model, batch, device, transfer=True):
        def forward(feats, feat_lengths, targets, target_lengths, plm_states, plm_mask):
            if plm_states is not None:
                for text, states, mask in zip(batch["texts"], plm_states, plm_mask):
                    seen[text] = states[: int(mask.sum())].detach().clone()
            return model(feats, feat_lengths, targets, target_lengths, plm_states, plm_mask)
        return real(forward, batch, device, transfer)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "compute_loss", spy)
        run(load_config(None, tiny_overrides(tiny_corpus, exp, epochs=1) + NON_DEFAULT_TEACHER + ["average_best=1"]))
    assert seen, "training never handed targets to the model"
    return exp / "epoch_1.pt", seen


def test_training_evaluation_and_align_ckpt_use_the_same_non_default_targets(mean12_centred, tiny_corpus,
                                                                               tmp_path, captured):
    """Training, ``alignment_metrics`` and ``otalign align --ckpt`` score against the same states for a
    checkpoint trained with ``teacher.layer: "1-2"`` and ``teacher.center: true``; each is also checked
    against the states computed here from the PLM, so a path that built a default teacher (last layer,
    not centred), dropped the centring or the layer range fails."""
    import otalign.train.evaluate as evaluate
    from otalign.cli import main
    from otalign.text.teacher import center_per_utterance

    ckpt, training = mean12_centred
    manifest = tiny_corpus / "train.jsonl"  # the texts training saw, so the three paths can be compared
    utterances = [u for u in read_manifest(manifest) if u.words][:4]
    texts = [u.text for u in utterances]
    assert set(texts) <= set(training), "training saw every train utterance"

    # alignment_metrics from the checkpoint: the targets its transfer receives
    trained = System.load(ckpt)
    trainable, config, cmvn = trained.trainable, trained.config, trained.cmvn
    assert config.teacher.layer == [1, 2] and config.teacher.center is True
    metric_targets = {}

    def record(module, args):
        _, _, plm_states, plm_mask = args
        for index, (states, mask) in enumerate(zip(plm_states, plm_mask)):
            metric_targets[texts[index]] = states[: int(mask.sum())].detach().clone()

    hook = trainable.transfer.register_forward_pre_hook(record)
    try:
        evaluate.alignment_metrics(trainable, config, cmvn, utterances, batch_size=len(utterances))
    finally:
        hook.remove()

    # otalign align --ckpt: the targets of the examples it scores
    assert main(["align", "--ckpt", str(ckpt), "--data", str(manifest), "--out", str(tmp_path / "align"),
                 "--aligners", "uot", "--rho", "1", "--eps", "0.1", "--num-utterances", str(len(utterances)),
                 "--num-heatmaps", "0"]) == 0
    align_targets = {e.text: e.token_states for e in captured["examples"]}
    assert list(align_targets) == texts and list(metric_targets) == texts

    # computed here: the mean of hidden states 1 and 2, rounded as the cache stores them, centred
    layers = PLMTeacher().encode_all_layers(texts)
    mean12 = ((layers[1].states + layers[2].states) / 2).half().float()
    expected = center_per_utterance(mean12, layers[1].mask)
    wrong = {"the default teacher (last layer, raw)": layers[-1].states,
             "layers 1-2 without centring": mean12,
             "the last layer, centred": center_per_utterance(layers[-1].states, layers[-1].mask)}
    for b, text in enumerate(texts):
        n = int(layers[1].mask[b].sum())
        for path, states in (("training", training[text]), ("alignment_metrics", metric_targets[text]),
                             ("align --ckpt", align_targets[text])):
            assert states.shape == (n, expected.shape[-1]), (path, text)
            torch.testing.assert_close(states, training[text], atol=1e-6, rtol=0, msg=f"{path} vs training")
            torch.testing.assert_close(states, expected[b, :n], atol=2e-3, rtol=0, msg=f"{path}: {text!r}")
            for name, other in wrong.items():
                assert not torch.allclose(states, other[b, :n], atol=0.05), f"{path} scored against {name}"
