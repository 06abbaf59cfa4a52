import pytest

from otalign.decode.scoring import (
    RealTimeFactor,
    git_hash,
    normalize_for_scoring,
    score,
    write_error_file,
    write_results,
)


def test_known_wer_and_cer():
    refs = {"u1": "the cat sat", "u2": "hello world"}
    hyps = {"u1": "the bat sat on", "u2": "hello"}
    r = score(refs, hyps)
    # words: u1 1 sub + 1 ins, u2 1 del -> 3 / 5
    assert r.wer == pytest.approx(3 / 5)
    assert (r.word_substitutions, r.word_deletions, r.word_insertions, r.ref_words) == (1, 1, 1, 5)
    # chars: u1 "the cat sat" -> "the bat sat on": 1 sub + 3 ins; u2 "hello world" -> "hello": 6 del
    assert r.ref_chars == 11 + 11
    assert r.cer == pytest.approx((1 + 3 + 6) / 22)
    assert r.num_utts == 2


def test_normalisation_ignores_case_and_punctuation_keeps_apostrophes():
    assert normalize_for_scoring("  Don't, STOP!  'quoted' ") == "don't stop quoted"
    r = score({"a": "Hello, World!"}, {"a": "hello world"})
    assert r.wer == 0 and r.cer == 0


def test_missing_hypothesis_counts_as_deletions_and_extra_is_an_error():
    r = score({"a": "one two", "b": "three"}, {"a": "one two"})
    assert r.word_deletions == 1 and r.num_missing_hyps == 1
    with pytest.raises(ValueError, match="'zzz'"):
        score({"a": "x"}, {"a": "x", "zzz": "y"})


def test_empty_reference_with_empty_hypothesis_is_no_error():
    r = score({"a": "", "b": "word"}, {"a": "", "b": "word"})
    assert r.wer == 0 and r.cer == 0


def test_error_file_has_one_line_per_utterance(tmp_path):
    write_error_file(tmp_path / "errors.tsv", {"b": "the cat", "a": "hi"}, {"a": "hi", "b": "a cat"})
    lines = (tmp_path / "errors.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["id", "ref", "hyp", "char_errors", "ref_chars", "word_errors", "ref_words"]
    assert lines[1].split("\t") == ["a", "hi", "hi", "0", "2", "0", "1"]
    assert lines[2].split("\t") == ["b", "the cat", "a cat", "3", "7", "1", "2"]


def test_results_header_records_config_and_git_hash(tmp_path):
    r = score({"a": "x y"}, {"a": "x"})
    write_results(tmp_path / "results.txt", r, {"aligner": "uot", "rho": 0.5}, "abc123", rtf=0.01)
    text = (tmp_path / "results.txt").read_text()
    assert "# git: abc123" in text
    assert '"aligner": "uot"' in text and '"rho": 0.5' in text
    assert "wer_percent: 50.00" in text and "rtf: 0.01000" in text
    assert len(git_hash()) >= 7


def test_real_time_factor_accumulates():
    rtf = RealTimeFactor()
    rtf.add(0.5, 10.0)
    rtf.add(0.5, 40.0)
    assert rtf.rtf == pytest.approx(0.02)
    with rtf.measure(audio_s=50.0):
        pass
    assert rtf.audio_s == 100.0 and 0.01 <= rtf.rtf < 0.02
    with pytest.raises(ValueError):
        RealTimeFactor().rtf
