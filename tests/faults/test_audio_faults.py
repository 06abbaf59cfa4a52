"""Audio faults: each is classified by an AudioError subclass and named with its utterance."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from otalign.cli import main
from otalign.data.dataset import SpeechDataset
from otalign.data.features import CorruptAudio, EmptyAudio, MissingAudio, load_audio
from otalign.data.importers import import_kaldi
from otalign.models.asr import CTCModel
from otalign.text.tokenizer import CharTokenizer


def _tone(seconds=0.5, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_each_audio_fault_has_its_own_type(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wav file at all" * 10)
    with pytest.raises(MissingAudio, match="nope.wav"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(EmptyAudio, match="empty.wav"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(CorruptAudio, match="junk.wav"):
        load_audio(tmp_path / "junk.wav")


def test_kaldi_import_counts_audio_faults_by_type_and_leaves_the_source_alone(tmp_path):
    src = tmp_path / "kaldi"
    src.mkdir()
    sf.write(src / "good.wav", _tone(), 16000)
    (src / "empty.wav").write_bytes(b"")
    (src / "junk.wav").write_bytes(b"\x00\x01garbage" * 50)
    (src / "wav.scp").write_text("good good.wav\nempty empty.wav\njunk junk.wav\nmissing missing.wav\n")
    (src / "text").write_text("good hello\nempty hello\njunk hello\nmissing hello\n")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in src.iterdir()}
    summary = import_kaldi(src, tmp_path / "out.jsonl")
    assert summary["kept"] == 1
    assert summary["skip_counts"] == {"empty audio": 1, "unreadable audio": 1, "missing audio": 1}
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in src.iterdir()} == before


def test_decode_of_a_missing_wav_names_the_utterance_not_a_raw_file_not_found(tmp_path, capsys):
    sf.write(tmp_path / "a.wav", _tone(), 16000)
    lines = [{"id": "utt-present", "audio_filepath": "a.wav", "duration": 0.5, "text": "hello"},
             {"id": "utt-gone", "audio_filepath": "gone.wav", "duration": 0.5, "text": "world"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ds = SpeechDataset(str(tmp_path / "m.jsonl"), cache_dir=tmp_path / "cache")
    with pytest.raises(MissingAudio, match="utt-gone"):
        ds[1]
    torch.manual_seed(0)
    tok = CharTokenizer()
    model = CTCModel(tok.vocab_size, "tiny", num_layers=1).eval()
    torch.save({"model": model.state_dict(), "model_config": model.config, "tokenizer": tok.to_dict(),
                "cmvn": None}, tmp_path / "avg.pt")
    rc = main(["decode", "--ckpt", str(tmp_path / "avg.pt"), "--data", str(tmp_path / "m.jsonl"),
               "--out", str(tmp_path / "out"), "--feature-cache-dir", str(tmp_path / "cache"), "--strict"])
    err = capsys.readouterr().err
    assert rc == 2 and "utt-gone" in err and "gone.wav" in err and "Traceback" not in err


def test_prepare_with_every_utterance_skipped_fails_and_writes_no_manifest(tmp_path, capsys):
    src = tmp_path / "kaldi"
    src.mkdir()
    (src / "empty.wav").write_bytes(b"")
    (src / "wav.scp").write_text("empty empty.wav\nmissing missing.wav\n")
    (src / "text").write_text("empty hello\nmissing hello\n")
    rc = main(["prepare", "kaldi", str(src), str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "kaldi" in err and str(src) in err and "empty audio: 1" in err and "missing audio: 1" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_decode_puts_its_feature_cache_under_out_not_the_current_folder(tmp_path, monkeypatch):
    sf.write(tmp_path / "a.wav", _tone(), 16000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "u", "audio_filepath": "a.wav", "duration": 0.5,
                                                  "text": "hello"}) + "\n")
    tok = CharTokenizer()
    model = CTCModel(tok.vocab_size, "tiny", num_layers=1).eval()
    torch.save({"model": model.state_dict(), "model_config": model.config, "tokenizer": tok.to_dict(),
                "cmvn": None}, tmp_path / "avg.pt")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    rc = main(["decode", "--ckpt", str(tmp_path / "avg.pt"), "--data", str(tmp_path / "m.jsonl"),
               "--out", str(tmp_path / "out")])
    assert rc == 0
    assert list(cwd.iterdir()) == []
    assert list((tmp_path / "out" / "cache" / "fbank").rglob("*.npy"))


def test_a_truncated_wav_is_named_not_imported_with_its_full_transcript(tmp_path):
    """Its header says 3.0 s, the file holds 0.6 s: libsndfile would read the 0.6 s silently."""
    from otalign.data.features import TruncatedAudio, check_audio_file

    whole, cut = tmp_path / "whole.wav", tmp_path / "cut.wav"
    sf.write(whole, _tone(3.0), 16000, subtype="PCM_16")
    cut.write_bytes(whole.read_bytes()[: 44 + 2 * 16000 * 6 // 10])
    assert check_audio_file(whole) == str(whole)
    with pytest.raises(TruncatedAudio, match=r"cut.wav is truncated: its header declares 96000 bytes of samples, the file holds 19200"):
        load_audio(cut)
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"u1 {whole}\nu2 {cut}\n")
    (kaldi / "text").write_text("u1 hello there\nu2 the whole transcript\n")
    summary = import_kaldi(kaldi, tmp_path / "out.jsonl")
    assert "truncated audio: 1" in str(summary) and "kept 1" in str(summary)
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["u1"]
