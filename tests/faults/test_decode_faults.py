"""Decode faults: a bad utterance never stops the others (unless --strict), and every skipped
line or file is counted and listed in the results, so a CER never covers an unstated subset."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from otalign.cli import main
from otalign.models.asr import CTCModel
from otalign.text.tokenizer import CharTokenizer


def _tone(seconds=0.5, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.fixture()
def corpus(tmp_path):
    """Two good utterances, and one each of: missing wav, empty wav, corrupt wav, bad JSON line."""
    sf.write(tmp_path / "good1.wav", _tone(), 16000)
    sf.write(tmp_path / "good2.wav", _tone(0.7), 16000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    lines = [json.dumps({"id": "good-1", "audio_filepath": "good1.wav", "duration": 0.5, "text": "hello"}),
             json.dumps({"id": "gone", "audio_filepath": "gone.wav", "duration": 0.5, "text": "world"}),
             json.dumps({"id": "empty", "audio_filepath": "empty.wav", "duration": 0.5, "text": "quiet"}),
             '{"id": "broken", "audio_filepath": ',
             json.dumps({"id": "corrupt", "audio_filepath": "corrupt.wav", "duration": 0.5, "text": "noise"}),
             json.dumps({"id": "good-2", "audio_filepath": "good2.wav", "duration": 0.7, "text": "again"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    tokenizer = CharTokenizer()
    model = CTCModel(tokenizer.vocab_size, "tiny", num_layers=1).eval()
    torch.save({"model": model.state_dict(), "model_config": model.config, "tokenizer": tokenizer.to_dict(), "cmvn": None}, tmp_path / "avg.pt")
    sources = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    return tmp_path, sources


def _decode(tmp_path, *extra):
    return main(["decode", "--ckpt", str(tmp_path / "avg.pt"), "--data", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "out"), *extra])


def test_bad_utterances_are_skipped_counted_and_listed(corpus, capsys):
    tmp_path, sources = corpus
    assert _decode(tmp_path) == 0
    err = capsys.readouterr().err
    assert "CER over 2 of 6 utterances" in err and "Traceback" not in err
    results = json.loads((tmp_path / "out" / "m.results.json").read_text())
    assert (results["num_lines"], results["num_decoded"], results["num_skipped"], results["num_utts"]) == (6, 2, 4, 2)
    reasons = {entry["where"]: entry["reason"] for entry in results["skipped"]}
    assert set(reasons) == {"line 4", "utterance 'gone'", "utterance 'empty'", "utterance 'corrupt'"}
    assert "MissingAudio" in reasons["utterance 'gone'"] and "EmptyAudio" in reasons["utterance 'empty'"]
    assert "CorruptAudio" in reasons["utterance 'corrupt'"] and "JSON" in reasons["line 4"]
    text = (tmp_path / "out" / "m.results.txt").read_text()
    assert "num_skipped" in text and "corrupt" in text
    hyp_ids = [line.split("\t")[0] for line in (tmp_path / "out" / "m.hyp.txt").read_text().splitlines()]
    assert hyp_ids == ["good-1", "good-2"]
    # the source corpus is untouched
    assert {name: (tmp_path / name).read_bytes() for name in sources} == sources


@pytest.mark.parametrize("drop_lines, culprit", [((), "line 4"), ((3,), "gone")])
def test_strict_stops_at_the_first_bad_one_naming_it(corpus, capsys, drop_lines, culprit):
    tmp_path, _ = corpus
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    (tmp_path / "m.jsonl").write_text("\n".join(line for number, line in enumerate(lines) if number not in drop_lines) + "\n")
    assert _decode(tmp_path, "--strict") == 2
    err = capsys.readouterr().err
    assert culprit in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_manifest_whose_every_utterance_is_bad_is_an_error(corpus, capsys):
    tmp_path, _ = corpus
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    (tmp_path / "m.jsonl").write_text("\n".join(lines[1:5]) + "\n")
    assert _decode(tmp_path) == 2
    assert "no utterance could be decoded" in capsys.readouterr().err


def test_a_transcript_that_is_not_utf8_is_a_counted_skip_naming_the_line(corpus, capsys):
    tmp_path, _ = corpus
    with open(tmp_path / "m.jsonl", "ab") as f:
        f.write(b'{"id": "latin1", "audio_filepath": "good1.wav", "duration": 0.5, "text": "caf\xe9"}\n')
    assert _decode(tmp_path) == 0
    results = json.loads((tmp_path / "out" / "m.results.json").read_text())
    reasons = {entry["where"]: entry["reason"] for entry in results["skipped"]}
    assert reasons["line 7"] == "not UTF-8 (byte 0xe9 at column 78)"
    assert (results["num_lines"], results["num_decoded"]) == (7, 2)
    assert _decode(tmp_path, "--strict") == 2
    assert "line 4" in capsys.readouterr().err  # strict stops at the first bad line, in file order


def test_the_library_decode_puts_its_default_feature_cache_under_out_dir(corpus, tmp_path, monkeypatch):
    """decode_manifest (the library call) defaulted to exp/cache/fbank relative to the current folder."""
    from otalign.decode.recipe import decode_manifest

    root, _ = corpus
    good = root / "good.jsonl"
    good.write_text((root / "m.jsonl").read_text().splitlines()[0] + "\n")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    report = decode_manifest(root / "avg.pt", good, root / "lib_out")
    assert report.num_utts == 1
    assert list(cwd.iterdir()) == [], "nothing is created in the current folder"
    assert list((root / "lib_out" / "cache" / "fbank").rglob("*.npy"))
