import pytest
import torch

from otalign.text.cache import TeacherCache
from otalign.text.teacher import PLMTeacher


@pytest.fixture(scope="module")
def teacher():
    return PLMTeacher()


def _count_forwards(teacher):
    calls = []
    handle = teacher.model.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_second_get_reads_the_cache_without_running_the_plm(teacher, tmp_path):
    cache = TeacherCache(tmp_path, teacher)
    texts = ["the first sentence", "a second one", "the first sentence"]
    calls, handle = _count_forwards(teacher)
    try:
        first = cache.get(texts)
        n_first = len(calls)
        second = cache.get(texts)
        assert n_first >= 1
        assert len(calls) == n_first  # no forward on the second call
    finally:
        handle.remove()
    torch.testing.assert_close(first.states, second.states, atol=0, rtol=0)
    assert torch.equal(first.mask, second.mask) and torch.equal(first.word_index, second.word_index)
    assert first.token_strings == second.token_strings
    assert len(list(tmp_path.rglob("*.pt"))) == 2  # one file per distinct utterance


def test_cached_states_match_the_teacher_to_fp16(teacher, tmp_path):
    texts = ["unbelievable things happened", "ok"]
    got = TeacherCache(tmp_path, teacher).get(texts)
    ref = teacher.encode(texts)
    assert torch.equal(got.mask, ref.mask)
    torch.testing.assert_close(got.states, ref.states, atol=2e-3, rtol=2e-3)


def test_cache_key_changes_with_layer_and_text(teacher, tmp_path):
    last = TeacherCache(tmp_path, teacher)
    emb = TeacherCache(tmp_path, None, name=teacher.name, layer=0)
    assert last.key("hello") != emb.key("hello")
    assert last.key("hello") != last.key("hello ")
    assert last.key("hello") == TeacherCache(tmp_path, None, name=teacher.name, layer=-1).key("hello")


def test_precompute_then_read_only_cache_serves_without_a_teacher(teacher, tmp_path):
    texts = ["one two three", "four five"]
    assert TeacherCache(tmp_path, teacher).precompute(texts, progress=False) == 2
    reader = TeacherCache(tmp_path, None, name=teacher.name, layer=teacher.layer)
    out = reader.get(texts)
    assert out.mask.sum(1).tolist() == [3, 2]
    with pytest.raises(ValueError, match="not in the PLM cache"):
        reader.get(["never seen"])


def test_empty_text_is_cached_with_zero_tokens(teacher, tmp_path):
    cache = TeacherCache(tmp_path, teacher)
    out = cache.get(["", "word"])
    again = cache.get([""])
    assert out.mask.sum(1).tolist() == [0, 1] and again.mask.sum() == 0


def test_center_per_utterance_removes_each_mean_and_keeps_padding_zero():
    from otalign.text.teacher import center_per_utterance

    states = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [0.0, 0.0]],     # 2 valid tokens, mean (2, 4)
                           [[5.0, -1.0], [0.0, 0.0], [0.0, 0.0]]])   # 1 valid token
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = center_per_utterance(states, mask)
    assert torch.equal(out[0], torch.tensor([[-1.0, -2.0], [1.0, 2.0], [0.0, 0.0]]))
    assert torch.equal(out[1], torch.zeros(3, 2))  # one token: nothing to tell apart
    assert torch.equal(center_per_utterance(states, torch.zeros_like(mask)), torch.zeros_like(states))


def test_centred_cache_serves_centred_states_from_the_same_files(teacher, tmp_path):
    raw = TeacherCache(tmp_path, teacher).get(["a sentence of several words", "two words"])
    centred_cache = TeacherCache(tmp_path, teacher, center=True)
    centred = centred_cache.get(["a sentence of several words", "two words"])
    assert centred_cache.misses == 0  # the raw files were reused
    for b in range(2):
        n = int(raw.mask[b].sum())
        assert torch.allclose(centred.states[b, :n], raw.states[b, :n] - raw.states[b, :n].mean(dim=0), atol=1e-6)
        assert torch.allclose(centred.states[b, :n].mean(dim=0), torch.zeros(raw.states.shape[-1]), atol=1e-5)
        assert torch.all(centred.states[b, n:] == 0)


def test_collated_output_keeps_its_lengths_and_device_move():
    from otalign.text.cache import collate_entries

    entries = [{"states": torch.ones(3, 2), "word_index": torch.arange(3), "token_strings": ["a", "b", "c"]},
               {"states": torch.ones(1, 2), "word_index": torch.zeros(1, dtype=torch.long), "token_strings": ["d"]}]
    out = collate_entries(entries)
    assert out.lengths.tolist() == [3, 1]
    moved = out.to("cpu")
    assert torch.equal(moved.states, out.states) and moved.token_strings == out.token_strings


def test_cache_keys_on_the_layer_list_and_the_model(teacher, tmp_path):
    keys = {TeacherCache(tmp_path, None, name=teacher.name, layer=layer).key("hello")
            for layer in (0, 1, [0, 1], [1, 0], [0, 1, 2], -1)}
    assert len(keys) == 6
    assert TeacherCache(tmp_path, None, name="other-model", layer=-1).key("hello") != \
        TeacherCache(tmp_path, None, name=teacher.name, layer=-1).key("hello")
    # a range and its list are one key
    assert TeacherCache(tmp_path, None, name=teacher.name, layer="0-2").key("hello") == \
        TeacherCache(tmp_path, None, name=teacher.name, layer=[0, 1, 2]).key("hello")


@pytest.mark.slow
def test_an_entry_made_for_another_layer_or_model_is_never_served(teacher, tmp_path):
    texts = ["one two three"]
    assert TeacherCache(tmp_path, PLMTeacher(layer=0)).precompute(texts, progress=False) == 1
    for layer in (1, [0, 1], -1):
        with pytest.raises(ValueError, match="not in the PLM cache"):
            TeacherCache(tmp_path, None, name=teacher.name, layer=layer).get(texts)
    with pytest.raises(ValueError, match="not in the PLM cache"):
        TeacherCache(tmp_path, None, name=teacher.name + "-mpnet", layer=0).get(texts)
    # a mean-of-layers teacher computes its own entry, and it is the mean, not layer 0
    mean = TeacherCache(tmp_path, PLMTeacher(layer=[0, 1]))
    got = mean.get(texts)
    assert mean.misses == 1
    ref = PLMTeacher(layer=[0, 1]).encode(texts)
    torch.testing.assert_close(got.states, ref.states, atol=2e-3, rtol=2e-3)
    assert not torch.allclose(got.states, PLMTeacher(layer=0).encode(texts).states, atol=1e-2)


def test_targets_from_config_builds_the_configured_layer_and_centring(tmp_path):
    from otalign.text.cache import targets_from_config

    targets = targets_from_config({"model": "minilm", "layer": [2, 3], "cache_dir": str(tmp_path), "center": True})
    assert targets.layer == [2, 3] and targets.center is True and targets.cache_dir == tmp_path
    out = targets.encode(["a b c"])
    torch.testing.assert_close(out.states[0].mean(0), torch.zeros(384), atol=1e-5, rtol=0)
