import pytest

from otalign.text.tokenizer import CharTokenizer, SentencePieceTokenizer, load_tokenizer


def test_char_vocabulary_layout_blank_apostrophe_space_letters():
    tok = CharTokenizer()
    assert tok.blank_id == 0
    assert tok.vocab_size == 29
    assert tok.encode("'") == [1]
    assert tok.encode("a b") == [3, 2, 4]
    assert tok.encode("z") == [28]


def test_char_roundtrip_normalises_case_and_whitespace():
    tok = CharTokenizer()
    assert tok.decode(tok.encode("  Don't   STOP me  ")) == "don't stop me"


def test_char_decode_drops_blank():
    tok = CharTokenizer()
    assert tok.decode([0, 3, 0, 0, 4, 0]) == "ab"


def test_char_out_of_vocabulary_names_the_character():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match=r"'!'"):
        tok.encode("hi!")
    assert CharTokenizer(unknown="skip").encode("hi!") == CharTokenizer().encode("hi")


def test_char_decode_rejects_ids_outside_vocab():
    with pytest.raises(ValueError, match="29"):
        CharTokenizer().decode([29])


def test_char_save_load_roundtrip(tmp_path):
    tok = CharTokenizer(unknown="skip")
    tok.save(tmp_path / "tok.json")
    back = CharTokenizer.load(tmp_path / "tok.json")
    assert back.symbols == tok.symbols and back.unknown == "skip"
    assert isinstance(load_tokenizer(tmp_path / "tok.json"), CharTokenizer)


def test_sentencepiece_trains_with_blank_zero_and_roundtrips(tmp_path):
    texts = [
        "the quick brown fox jumps over the lazy dog",
        "a stitch in time saves nine",
        "all that glitters is not gold",
        "the early bird catches the worm",
        "actions speak louder than words",
    ] * 4
    tok = SentencePieceTokenizer.train(texts, vocab_size=40)
    ids = tok.encode("The lazy fox saves gold")
    assert ids and 0 not in ids
    assert max(ids) < tok.vocab_size
    assert tok.decode(ids) == "the lazy fox saves gold"
    assert tok.decode([0] + ids + [0]) == "the lazy fox saves gold"
    tok.save(tmp_path / "sp.json")
    back = load_tokenizer(tmp_path / "sp.json")
    assert isinstance(back, SentencePieceTokenizer)
    assert back.encode("actions speak") == tok.encode("actions speak")
