import pytest
import torch

from otalign.decode.search import ctc_greedy
from otalign.text.tokenizer import CharTokenizer

pytest.importorskip("flashlight.lib.text.decoder", reason="flashlight-text is not installed")

from otalign.decode.lm import LMBeamDecoder, train_char_ngram_arpa  # noqa: E402

TEXTS = ["the cat sat on the mat", "the cat ate", "a cat is on a mat", "the dog sat"] * 3


@pytest.fixture(scope="module")
def arpa(tmp_path_factory):
    return train_char_ngram_arpa(TEXTS, tmp_path_factory.mktemp("lm") / "char4.arpa", CharTokenizer(), order=4)


def test_arpa_is_a_normalised_distribution_after_every_history(arpa):
    tok = CharTokenizer()
    lm = LMBeamDecoder(tok, arpa).lm

    def total(state):  # KenLM scores are log10; id 0 (blank) maps to <unk>
        return sum(10 ** lm.score(state, i)[1] for i in range(tok.vocab_size)) + 10 ** lm.finish(state)[1]

    state = lm.start(False)
    assert total(state) == pytest.approx(1.0, abs=1e-5)
    for ch in "the cat xq":
        state, _ = lm.score(state, _unit(tok, ch))
        assert total(state) == pytest.approx(1.0, abs=1e-5), ch


def _unit(tok, ch):
    return tok.symbols.index("|" if ch == " " else ch)


def _emissions(text, confusions, tok, frames_per_char=3):
    """Peaked CTC posteriors spelling ``text``; at chars in ``confusions`` the mass is split."""
    V = tok.vocab_size
    rows = []
    for ch in text:
        for f in range(frames_per_char):
            p = torch.full((V,), 1e-4)
            if f == frames_per_char - 1:
                p[0] = 1.0  # a blank closes each character
            elif ch in confusions:
                other, share = confusions[ch]
                p[_unit(tok, ch)] = 1 - share
                p[_unit(tok, other)] = share
            else:
                p[_unit(tok, ch)] = 1.0
            rows.append((p / p.sum()).log())
    return torch.stack(rows)


def test_lm_fixes_an_acoustically_ambiguous_character(arpa):
    tok = CharTokenizer()
    # acoustics prefer "k" (0.55) over "c" (0.45) in "the cat"; the LM has only seen "cat"
    lp = _emissions("the cat", {"c": ("k", 0.55)}, tok)
    assert tok.decode(ctc_greedy(lp[None], None)[0]) == "the kat"
    with_lm = LMBeamDecoder(tok, arpa, lm_weight=1.0, beam=10)
    assert tok.decode(with_lm.decode(lp)) == "the cat"
    without_lm = LMBeamDecoder(tok, arpa, lm_weight=0.0, beam=10)
    assert tok.decode(without_lm.decode(lp)) == "the kat"


def test_missing_lm_file_is_reported(tmp_path):
    with pytest.raises(ValueError, match="nope.arpa"):
        LMBeamDecoder(CharTokenizer(), tmp_path / "nope.arpa")


def test_lm_command_leaves_held_out_sentences_out_of_the_lm_text(tmp_path, capsys):
    from otalign.cli import main
    from otalign.data.manifest import write_manifest

    def manifest(name, texts):
        rows = [{"id": f"{name}-{i}", "audio_filepath": f"/nowhere/{name}-{i}.wav", "text": t, "duration": 1.0} for i, t in enumerate(texts)]
        write_manifest(tmp_path / f"{name}.jsonl", rows)
        return str(tmp_path / f"{name}.jsonl")

    train = manifest("train", TEXTS + ["zyzzyva quux"])
    test = manifest("test", ["zyzzyva quux"])
    assert main(["lm", "--data", train, "--exclude", test, "--out", str(tmp_path / "lm.arpa"), "--order", "3"]) == 0
    assert "13 transcripts from 1 manifest(s); 1 also in --exclude manifests, left out" in capsys.readouterr().out
    arpa_text = (tmp_path / "lm.arpa").read_text()
    # the held-out sentence's rare letters never reach the LM: no n-gram holds 'y' after 'z'
    assert " z y" not in arpa_text and "\tz y" not in arpa_text
    assert main(["lm", "--data", train, "--out", str(tmp_path / "all.arpa"), "--order", "3"]) == 0
    assert "z y" in (tmp_path / "all.arpa").read_text()
