"""Importer faults: a Kaldi `text` file that is not UTF-8, and an Asterisk import whose every prompt
is skipped."""

import json

import numpy as np
import pytest
import soundfile as sf

from otalign.cli import main
from otalign.data.asterisk import prepare_asterisk
from otalign.data.importers import import_aishell, import_kaldi


def _tone(seconds=0.5, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.fixture()
def kaldi_latin1(tmp_path):
    src = tmp_path / "kaldi"
    src.mkdir()
    for name in ("u1", "u2", "u3"):
        sf.write(src / f"{name}.wav", _tone(), 16000)
    (src / "wav.scp").write_text("u1 u1.wav\nu2 u2.wav\nu3 u3.wav\n")
    (src / "text").write_bytes("u1 hello there\nu2 caf\u00e9 au lait\nu3 good bye\n".encode("latin-1"))
    return src


def test_a_kaldi_text_line_that_is_not_utf8_is_a_counted_skip_naming_file_and_line(kaldi_latin1, tmp_path, capsys):
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in kaldi_latin1.iterdir()}
    assert main(["prepare", "kaldi", str(kaldi_latin1), str(tmp_path / "out.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "text line 2 (utterance 'u2'): not UTF-8 (byte 0xe9 at column 7)" in out
    summary = json.loads(out[out.index("{"):])
    assert summary["kept"] == 2 and summary["skip_counts"] == {"bad encoding": 1}
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["u1", "u3"]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in kaldi_latin1.iterdir()} == before


def test_the_same_under_strict_is_one_line_naming_file_and_line(kaldi_latin1, tmp_path, capsys):
    assert main(["prepare", "kaldi", str(kaldi_latin1), str(tmp_path / "out.jsonl"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"otalign prepare: error: kaldi {kaldi_latin1}: text line 2 (utterance 'u2'): not UTF-8" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_an_aishell_transcript_that_is_not_utf8_is_a_counted_skip(tmp_path):
    wavs = tmp_path / "wav" / "S0002"
    wavs.mkdir(parents=True)
    sf.write(wavs / "BAC009S0002W0122.wav", _tone(), 16000)
    sf.write(wavs / "BAC009S0002W0123.wav", _tone(), 16000)
    transcript = tmp_path / "aishell_transcript.txt"
    transcript.write_bytes("BAC009S0002W0122 而 对 楼市\n".encode() + "BAC009S0002W0123 而 对\n".encode("gbk"))
    summary = import_aishell(transcript, tmp_path / "wav", tmp_path / "out.jsonl")
    assert summary["kept"] == 1 and summary["skip_counts"] == {"bad encoding": 1, "no transcript": 1}
    assert "aishell_transcript.txt line 2 (utterance 'BAC009S0002W0123')" in str(summary["skipped_entries"])


def test_asterisk_with_every_prompt_skipped_fails_and_writes_no_manifest(tmp_path):
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    sf.write(sounds / "beep.wav", _tone(), 8000)
    sf.write(sounds / "untold.wav", _tone(), 8000)
    (sounds / "broken.wav").write_bytes(b"")
    transcripts = tmp_path / "core-sounds-en.txt"
    transcripts.write_text("beep: [a beep]\nbroken: Hello.\n")
    out = tmp_path / "ast"
    with pytest.raises(ValueError, match=r"asterisk .*sounds: every prompt was skipped \(3 skipped; empty audio: 1, "
                                         r"no transcript: 1, non-speech prompt: 1\); no manifest written"):
        prepare_asterisk(out, sounds_dir=sounds, transcripts=transcripts)
    assert not (out / "train.jsonl").exists() and not (out / "test.jsonl").exists()


def test_kaldi_import_still_reads_good_utf8(tmp_path):
    src = tmp_path / "kaldi"
    src.mkdir()
    sf.write(src / "u1.wav", _tone(), 16000)
    (src / "wav.scp").write_text("u1 u1.wav\n")
    (src / "text").write_text("u1 caf\u00e9 au lait\n", encoding="utf-8")
    summary = import_kaldi(src, tmp_path / "out.jsonl")
    assert summary["kept"] == 1
    assert json.loads((tmp_path / "out.jsonl").read_text())["raw_text"] == "caf\u00e9 au lait"
