import json

import pytest

from otalign.data.manifest import (EmptyTranscript, ManifestEntryError, NonSpeechSpan, NotAJSONObject, SkippedEntry,
                                   Utterance, WordSpan, normalize_text, read_manifest, write_manifest)


def test_normalize_text_keeps_lowercase_letters_apostrophes_and_single_spaces():
    assert normalize_text("  'Hello,'  she said -- DON'T   go!  ") == "hello she said don't go"
    assert normalize_text("Caf\u00e9\u2019s 42nd") == "cafe's nd"
    assert normalize_text("... 123 !!") == ""


def test_normalize_text_keeps_cjk_characters_without_spaces():
    assert normalize_text("\u800c \u5bf9 \u697c\u5e02") == "\u800c\u5bf9\u697c\u5e02"


def test_write_then_read_round_trips_with_relative_paths(tmp_path):
    utt = Utterance(id="a", audio_filepath=str(tmp_path / "wav" / "a.wav"), duration=1.5, text="hi there",
                    speaker="s1", words=[WordSpan("hi", 0.1, 0.4), WordSpan("there", 0.5, 1.0)],
                    nonspeech=[NonSpeechSpan("silence", 1.0, 1.5)], extra={"synth": {"voice": "en-us"}})
    write_manifest(tmp_path / "m.jsonl", [utt])
    line = json.loads((tmp_path / "m.jsonl").read_text())
    assert line["audio_filepath"] == "wav/a.wav"
    back = read_manifest(tmp_path / "m.jsonl")
    assert len(back) == 1 and back[0] == utt


def _write_lines(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")


def _bad_manifest(tmp_path):
    good = {"id": "u1", "audio_filepath": "a.wav", "duration": 1.0, "text": "hello"}
    records = [
        good,
        dict(good),  # duplicate id
        "{not json",
        {"id": "u3", "audio_filepath": "a.wav", "duration": 1.0, "text": "42 !!"},  # normalises to nothing
        {"id": "u4", "audio_filepath": "a.wav", "duration": 0, "text": "hi"},  # bad duration
        {"id": "u5", "audio_filepath": "a.wav", "text": "hi"},  # missing duration
        {"id": "u6", "audio_filepath": "a.wav", "duration": 1.0, "text": "hi",
         "words": [{"word": "hi", "start": 0.5, "end": 3.0}]},  # span outside the audio
        {"id": "u7", "audio_filepath": "a.wav", "duration": 1.0, "text": "hi there"},
    ]
    path = tmp_path / "bad.jsonl"
    _write_lines(path, records)
    return path


def test_read_manifest_skips_and_counts_each_bad_line(tmp_path, capsys):
    result = read_manifest(_bad_manifest(tmp_path))
    assert [u.id for u in result] == ["u1", "u7"]
    assert result.skip_counts == {"duplicate id": 1, "invalid json": 1, "empty transcript": 1, "invalid entry": 3}
    assert "kept 2, skipped 6" in result.summary
    printed = capsys.readouterr().out
    assert "line 2 (utterance 'u1'): duplicate id" in printed
    assert "'u3'" in printed and "'u6'" in printed


def test_read_manifest_strict_raises_naming_file_line_and_id(tmp_path):
    path = _bad_manifest(tmp_path)
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 \(utterance 'u1'\): duplicate id"):
        read_manifest(path, strict=True)


def test_entry_errors_are_typed_and_carry_their_skip_category():
    good = {"id": "u", "audio_filepath": "a.wav", "duration": 1.0, "text": "hi"}
    for record, kind, category in ((["u"], NotAJSONObject, "invalid entry"),
                                   ({**good, "text": "42 !!"}, EmptyTranscript, "empty transcript"),
                                   ({**good, "duration": 0}, ManifestEntryError, "invalid entry")):
        with pytest.raises(kind) as err:
            Utterance.from_dict(record)
        assert isinstance(err.value, ValueError) and err.value.category == category


def test_strict_read_raises_a_typed_skip_with_its_category(tmp_path):
    _write_lines(tmp_path / "m.jsonl", [{"id": "u", "audio_filepath": "a.wav", "duration": 1.0, "text": "42 !!"}])
    with pytest.raises(SkippedEntry, match=r"m.jsonl: line 1 \(utterance 'u'\): .*transcript '42 !!' is empty") as err:
        read_manifest(tmp_path / "m.jsonl", strict=True)
    assert err.value.category == "empty transcript"


def test_a_file_that_is_no_jsonl_gets_the_hint_and_one_with_bad_entries_does_not(tmp_path):
    (tmp_path / "array.jsonl").write_text('[{"id": "u"}]\n')
    with pytest.raises(ValueError, match="is it JSONL"):
        read_manifest(tmp_path / "array.jsonl", verbose=False)
    _write_lines(tmp_path / "bad.jsonl", [{"id": "u", "audio_filepath": "a.wav", "duration": 0, "text": "hi"}])
    with pytest.raises(ValueError, match="duration") as err:
        read_manifest(tmp_path / "bad.jsonl", verbose=False)
    assert "is it JSONL" not in str(err.value)


def test_read_manifest_check_files_skips_missing_audio(tmp_path):
    (tmp_path / "here.wav").write_bytes(b"x")
    _write_lines(tmp_path / "m.jsonl", [
        {"id": "a", "audio_filepath": "here.wav", "duration": 1.0, "text": "hi"},
        {"id": "b", "audio_filepath": "gone.wav", "duration": 1.0, "text": "hi"}])
    result = read_manifest(tmp_path / "m.jsonl", check_files=True)
    assert [u.id for u in result] == ["a"] and result.skip_counts == {"missing audio": 1}


def test_write_manifest_rejects_duplicate_ids(tmp_path):
    utt = Utterance(id="a", audio_filepath="/x.wav", duration=1.0, text="hi")
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        write_manifest(tmp_path / "m.jsonl", [utt, utt])
    assert not (tmp_path / "m.jsonl").exists()


# ---------------------------------------------------------------------------------------------
# word alignments: Lhotse's alignment.word, and the legacy words

_BASE = {"id": "u", "audio_filepath": "a.wav", "duration": 2.0, "text": "hi there"}
_SPANS = [WordSpan("hi", 0.1, 0.4), WordSpan("there", 0.5, 1.0)]


def test_the_writer_emits_lhotse_alignment_and_the_legacy_words_and_reads_them_back(tmp_path):
    utt = Utterance(id="u", audio_filepath=str(tmp_path / "a.wav"), duration=2.0, text="hi there",
                    words=[WordSpan("hi", 0.1, 0.4), WordSpan("there", 0.5, 1.0), WordSpan("x", 1.00004, 1.3333333)])
    write_manifest(tmp_path / "m.jsonl", [utt])
    line = json.loads((tmp_path / "m.jsonl").read_text())
    assert line["alignment"] == {"word": [{"symbol": "hi", "start": 0.1, "duration": 0.3},
                                          {"symbol": "there", "start": 0.5, "duration": 0.5},
                                          {"symbol": "x", "start": 1.0, "duration": 0.3333}]}
    assert list(line["alignment"]["word"][0]) == ["symbol", "start", "duration"]  # Lhotse's field order
    assert line["words"][2] == {"word": "x", "start": 1.0, "end": 1.3333}
    back = read_manifest(tmp_path / "m.jsonl").utterances[0]
    # exactly the rounded times the legacy key held, not 1.0 + 0.3333 in floating point
    assert [(w.word, w.start, w.end) for w in back.words] == [("hi", 0.1, 0.4), ("there", 0.5, 1.0), ("x", 1.0, 1.3333)]
    assert "alignment" not in back.extra and "words" not in back.extra


def test_an_old_format_line_reads_as_before(tmp_path):
    _write_lines(tmp_path / "m.jsonl", [{**_BASE, "words": [w.to_dict() for w in _SPANS]}])
    utt = read_manifest(tmp_path / "m.jsonl")[0]
    assert utt.words == _SPANS and isinstance(utt.words[0], WordSpan) and utt.extra == {}


def test_a_lhotse_line_reads_in_dict_and_list_form_and_keeps_other_tiers(tmp_path):
    phones = [["HH", 0.1, 0.05], ["AY", 0.15, 0.25]]
    _write_lines(tmp_path / "m.jsonl", [
        {**_BASE, "alignment": {"word": [{"symbol": "hi", "start": 0.1, "duration": 0.3},
                                         {"symbol": "there", "start": 0.5, "duration": 0.5, "score": 0.9}]}},
        {**_BASE, "id": "v", "alignment": {"word": [["hi", 0.1, 0.3], ["there", 0.5, 0.5, 0.9]], "phone": phones}}])
    u, v = read_manifest(tmp_path / "m.jsonl")
    assert u.words == _SPANS and v.words == _SPANS
    assert v.extra == {"alignment": {"phone": phones}}
    again = v.to_dict()
    assert again["alignment"] == {"phone": phones, "word": [w.to_alignment_item() for w in _SPANS]}


def test_a_malformed_alignment_is_a_clear_error_naming_the_line(tmp_path):
    good = {**_BASE, "id": "ok"}
    for alignment, message in (([["hi", 0.1, 0.3]], "'alignment' must be an object"),
                               ({"word": {"hi": 0.1}}, "'alignment.word' must be a list"),
                               ({"word": [{"symbol": "hi", "start": 0.1}]}, "malformed alignment.word item"),
                               ({"word": [{"word": "hi", "start": 0.1, "end": 0.4}]}, "malformed alignment.word item"),
                               ({"word": [["hi", "soon", 0.3]]}, "malformed alignment.word item"),
                               ({"word": [["hi", 0.1, -0.3]]}, "negative duration"),
                               ({"word": [["hi", 0.1, 5.0]]}, r"word span 'hi' \[0.1, 5.1\] is not inside")):
        _write_lines(tmp_path / "m.jsonl", [good, {**_BASE, "alignment": alignment}])
        with pytest.raises(SkippedEntry, match=r"m.jsonl: line 2 \(utterance 'u'\): .*" + message):
            read_manifest(tmp_path / "m.jsonl", strict=True)
        result = read_manifest(tmp_path / "m.jsonl", verbose=False)
        assert [x.id for x in result] == ["ok"] and result.skip_counts == {"invalid entry": 1}


def test_alignment_and_legacy_words_that_disagree_are_refused(tmp_path):
    _write_lines(tmp_path / "m.jsonl", [{**_BASE, "alignment": {"word": [["hi", 0.1, 0.3], ["there", 0.5, 0.5]]},
                                         "words": [{"word": "hi", "start": 0.1, "end": 0.4},
                                                   {"word": "there", "start": 0.6, "end": 1.0}]}])
    with pytest.raises(SkippedEntry, match="line 1 .*'alignment.word' and the legacy 'words' disagree"):
        read_manifest(tmp_path / "m.jsonl", strict=True)
