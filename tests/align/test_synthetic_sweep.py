"""The training-free setting with the real MiniLM: construction, the uot target, sweeps and the report."""

import math

import numpy as np
import pytest
import torch

from otalign.align.metrics import span_frame_mask
from otalign.align.sweep import align_command, best_row, sweep, sweep_configs, write_table
from otalign.align.synthetic import DurationModel, examples_from_manifest, synthetic_examples

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def teacher():
    from otalign.text.teacher import PLMTeacher

    return PLMTeacher()


@pytest.fixture(scope="module")
def examples(teacher):
    return synthetic_examples(12, teacher=teacher, seed=1)


@pytest.mark.slow
def test_synthetic_utterances_have_at_least_30_percent_nonspeech_frames(examples):
    for e in examples:
        assert 1.0 - e.speech_fraction >= 0.3, e.id
        assert e.frame_states.shape == (e.num_frames, e.token_states.shape[1])


@pytest.mark.slow
def test_speech_frames_carry_their_own_wordpiece_state(examples):
    e = examples[0]
    words = span_frame_mask(e.word_spans, e.num_frames, e.frame_s)
    cos = torch.nn.functional.normalize(e.frame_states, dim=1) @ torch.nn.functional.normalize(e.token_states, dim=1).T
    for j in range(e.num_tokens):
        frames = np.nonzero(words[int(e.word_index[j])])[0]
        # the frame most similar to token j lies inside token j's word
        assert int(cos[:, j].argmax()) in frames
    nonspeech = ~words.any(axis=0)
    assert cos[torch.from_numpy(nonspeech)].max() < cos[torch.from_numpy(~nonspeech)].max(dim=1).values.min()


def test_duration_model_rejects_bad_fractions():
    with pytest.raises(ValueError, match="min_nonspeech"):
        DurationModel(min_nonspeech=0.6, max_nonspeech=0.5)


@pytest.mark.slow
def test_uot_at_its_best_rho_reaches_the_detection_target_and_beats_ot(examples):
    rows = sweep(examples, aligners=("ot", "uot"), rhos=(0.01, 0.1, 1.0), epsilons=(0.02,), n_iter=200)
    ot = best_row(rows, "ot")
    uot = best_row(rows, "uot")
    assert uot["precision"] >= 0.9, uot
    assert uot["token_recall"] >= 0.95, uot
    assert uot["precision"] > ot["precision"] + 0.2
    # balanced OT must spread every frame's mass: its precision sits near the speech fraction
    assert abs(ot["precision"] - ot["speech_fraction"]) < 0.1, ot
    # ... and far above chance (every token's mass spread over all frames)
    (chance,) = [r for r in rows if r["aligner"] == "uniform"]
    assert chance["precision"] < 0.5 * ot["precision"]


@pytest.mark.slow
def test_larger_rho_forces_more_mass_onto_nonspeech(examples):
    rows = sweep(examples[:6], aligners=("uot",), rhos=(0.01, 0.3, 3.0), epsilons=(0.05,), n_iter=150)
    nonspeech = [r["mass_on_nonspeech"] for r in sorted(rows, key=lambda r: r["rho_frames"])]
    assert nonspeech[0] < nonspeech[1] < nonspeech[2]


def test_sweep_configs_cover_the_grid():
    configs = sweep_configs(("ot", "tot", "uot", "partial"), rhos=(0.1, 1.0), epsilons=(0.02, 0.1),
                            partial_masses=(0.5,), order_weights=(0.1, 0.3))
    assert len(configs) == 2 * (1 + 2 + 2 + 1)
    assert {c["rho_frames"] for c in configs if c["aligner"] == "uot"} == {0.1, 1.0}
    assert all(math.isinf(c["rho_frames"]) for c in configs if c["aligner"] != "uot")
    with pytest.raises(ValueError, match="training-free"):
        sweep_configs(("cif",), (0.1,), (0.1,))


def test_tuot_sweeps_rho_and_order_weight_crossed_and_builds_what_it_records():
    from otalign.align.sweep import _aligner_for, _panel_label

    configs = sweep_configs(("tuot",), rhos=(0.1, 1.0), epsilons=(0.05,), order_weights=(0.1, 0.3, 1.0))
    assert sorted((c["rho_frames"], c["order_weight"]) for c in configs) == [(r, w) for r in (0.1, 1.0) for w in (0.1, 0.3, 1.0)]
    aligner = _aligner_for(configs[-1], n_iter=10)
    assert (aligner.rho_frames, aligner.order_weight) == (configs[-1]["rho_frames"], configs[-1]["order_weight"])
    assert _panel_label(configs[-1]) == "tuot rho=1.000 w=1 eps=0.05"


def test_write_table_writes_csv_and_markdown(tmp_path):
    rows = [dict(aligner="uot", eps=0.05, rho_frames=0.1, partial_mass=math.nan, order_weight=0.0, precision=0.9,
                 token_recall=1.0)]
    csv_path, md_path = write_table(rows, tmp_path)
    assert csv_path.read_text().splitlines()[0].startswith("aligner,eps,rho_frames")
    md = md_path.read_text()
    assert "| uot | 0.050 | 0.100 |" in md


def test_manifest_word_timings_are_used_as_given(teacher):
    utterance = {"id": "u1", "text": "hello big world", "duration": 2.0,
                 "words": [{"word": "hello", "start": 0.5, "end": 0.9}, {"word": "big", "start": 0.9, "end": 1.1},
                           {"word": "world", "start": 1.3, "end": 1.7}],
                 "nonspeech": [{"kind": "silence", "start": 0.0, "end": 0.5}, {"kind": "noise", "start": 1.1, "end": 1.3},
                               {"kind": "silence", "start": 1.7, "end": 2.0}]}
    (e,) = examples_from_manifest([utterance], teacher=teacher)
    assert e.num_frames == 50 and e.word_spans[2] == (1.3, 1.7)
    # hello: frames 12-22, big: 22-27 (frames split exactly in half count for both sides), world: 32-42
    assert e.speech_fraction == pytest.approx(27 / 50)
    with pytest.raises(ValueError, match="u2"):
        examples_from_manifest([{**utterance, "id": "u2", "words": utterance["words"][:2]}], teacher=teacher)


@pytest.mark.slow
def test_align_command_synthetic_writes_table_pr_curve_and_heatmaps(tmp_path, teacher):
    report = align_command(None, None, str(tmp_path), aligners=["ot", "tot", "uot", "partial"], rhos=[0.01, 1.0],
                           epsilons=[0.05], synthetic=True, num_utterances=4, partial_masses=[0.5],
                           teacher=teacher, num_heatmaps=1, n_iter=100)
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "metrics.md").is_file()
    assert report["pr_curve"].is_file() and report["pr_curve"].stat().st_size < 400_000
    assert len(report["heatmaps"]) == 1 and report["heatmaps"][0].read_bytes()[:4] == b"\x89PNG"
    assert [r["aligner"] for r in report["rows"]] == ["ot", "tot", "uot", "uot", "partial", "uniform"]


def test_align_command_without_a_model_or_manifest_says_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="manifest"):
        align_command("model.pt", None, str(tmp_path))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "audio_filepath": "a.wav", "duration": 1.0, "text": "hi", '
                        '"words": [{"word": "hi", "start": 0.1, "end": 0.5}]}\n')
    with pytest.raises(ValueError, match="encode_fn"):
        align_command("model.pt", str(manifest), str(tmp_path))


def test_a_trained_model_is_scored_with_its_own_teacher_and_frame_length(tmp_path, teacher, monkeypatch):
    import otalign.align.sweep as sweep_module

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "audio_filepath": "a.wav", "duration": 1.0, "text": "hi there", '
                        '"words": [{"word": "hi", "start": 0.1, "end": 0.4}, {"word": "there", "start": 0.5, '
                        '"end": 0.9}]}\n')
    from otalign.text.teacher import PLMTeacher

    layer0 = PLMTeacher(layer=0)

    def encode(utterances):
        return torch.randn(len(utterances), 50, 384), torch.ones(len(utterances), 50, dtype=torch.bool)

    seen = {}
    monkeypatch.setattr(sweep_module, "run_alignment_report",
                        lambda out, examples, *a, **k: seen.setdefault("examples", list(examples)))
    options = dict(aligners=["uot"], rhos=[1.0], epsilons=[0.1], num_heatmaps=0)
    # a bare encode_fn and no ckpt: the teacher it was trained with is unknown, so no default PLM
    with pytest.raises(ValueError, match="teacher it was trained with"):
        align_command(None, str(manifest), str(tmp_path), encode_fn=encode, frame_s=0.02, **options)
    encode.targets = lambda: layer0
    with pytest.raises(ValueError, match="frame length"):
        align_command(None, str(manifest), str(tmp_path), encode_fn=encode, **options)
    encode.frame_s = 0.02
    align_command(None, str(manifest), str(tmp_path), encode_fn=encode, **options)
    (example,) = seen["examples"]
    assert example.frame_s == 0.02
    torch.testing.assert_close(example.token_states, layer0.encode(["hi there"]).states[0])
