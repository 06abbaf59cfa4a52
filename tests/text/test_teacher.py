import pytest
import torch

from otalign.text.teacher import PLMTeacher


@pytest.fixture(scope="module")
def teacher():
    return PLMTeacher()


def test_default_teacher_is_minilm_width_384_and_frozen(teacher):
    assert teacher.width == 384
    assert teacher.num_layers == 6
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    out = teacher.encode(["hello world"])
    assert out.states.dtype == torch.float32 and not out.states.requires_grad


def test_states_have_one_row_per_wordpiece_without_cls_sep(teacher):
    texts = ["unbelievable things happened", "antidisestablishmentarianism is long", "ok"]
    out = teacher.encode(texts)
    n_pieces = [len(teacher.tokenizer.tokenize(t)) for t in texts]
    assert out.states.shape == (3, max(n_pieces), 384)
    assert out.mask.sum(1).tolist() == n_pieces
    assert [len(s) for s in out.token_strings] == n_pieces
    assert "[CLS]" not in sum(out.token_strings, []) and "[SEP]" not in sum(out.token_strings, [])
    assert torch.all(out.states[~out.mask] == 0)


def test_word_index_maps_wordpieces_to_whitespace_words(teacher):
    out = teacher.encode(["antidisestablishmentarianism is long", "don't xylophone"])
    n0 = int(out.mask[0].sum())
    # all pieces of the first word map to word 0, then "is" -> 1, "long" -> 2
    assert out.word_index[0, :n0].tolist() == [0] * (n0 - 2) + [1, 2]
    assert out.token_strings[0][1].startswith("##")
    n1 = int(out.mask[1].sum())
    # "don't" is split into don / ' / t by BERT's punctuation rule but is one whitespace word
    assert out.token_strings[1][:3] == ["don", "'", "t"]
    assert out.word_index[1, :n1].tolist() == [0, 0, 0] + [1] * (n1 - 3)
    assert torch.all(out.word_index[~out.mask] == -1)


def test_keep_special_returns_cls_and_sep_with_word_index_minus_one():
    t = PLMTeacher(keep_special=True)
    out = t.encode(["hello there"])
    assert out.token_strings[0] == ["[CLS]", "hello", "there", "[SEP]"]
    assert out.word_index[0].tolist() == [-1, 0, 1, -1]


def test_layer_selects_hidden_state(teacher):
    text = ["the cat sat on the mat"]
    last = teacher.encode(text).states
    emb = PLMTeacher(layer=0).encode(text).states
    mid = PLMTeacher(layer=3).encode(text).states
    assert last.shape == emb.shape == mid.shape
    assert not torch.allclose(last, emb, atol=1e-3)
    assert not torch.allclose(last, mid, atol=1e-3)
    # layer -1 is the model's last_hidden_state (positions 1..n skip [CLS])
    enc = teacher.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        ref = teacher.model(**enc).last_hidden_state[0, 1:-1]
    torch.testing.assert_close(last[0], ref, atol=1e-5, rtol=1e-5)


def test_states_do_not_depend_on_batch_padding(teacher):
    alone = teacher.encode(["short one"])
    batch = teacher.encode(["a much longer sentence that forces padding", "short one"])
    n = int(alone.mask[0].sum())
    torch.testing.assert_close(batch.states[1, :n], alone.states[0, :n], atol=1e-5, rtol=1e-4)


def test_missing_model_dir_error_names_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ValueError, match="no_such_model.*does not exist"):
        PLMTeacher(model_dir=missing)


def test_incompatible_model_dir_error_names_missing_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"has no weights"):
        PLMTeacher(model_dir=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty has no config.json"):
        PLMTeacher(model_dir=empty)


def test_layer_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="layer=7"):
        PLMTeacher(layer=7)


def test_empty_text_gives_no_valid_token(teacher):
    out = teacher.encode(["", "hello"])
    assert out.mask[0].sum() == 0 and out.mask[1].sum() == 1
    assert out.token_strings[0] == []
