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
