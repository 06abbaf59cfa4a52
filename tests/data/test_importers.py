"""Importers on tiny fake corpora in each layout, with broken entries; the source stays untouched."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from otalign.data.importers import import_aishell, import_kaldi, import_librispeech
from otalign.data.manifest import read_manifest

from .conftest import write_wav


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _broken_files(folder: Path, speech: np.ndarray) -> dict[str, Path]:
    """stereo, empty, corrupt files next to good ones."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x01 not audio at all" * 20)
    return {"stereo": write_wav(folder / "stereo.wav", np.stack([speech, speech], axis=1)),
            "empty": folder / "empty.wav", "corrupt": folder / "corrupt.wav"}


@pytest.fixture
def kaldi_dir(tmp_path, spoken_words):
    d = tmp_path / "kaldi"
    audio = d / "audio"
    write_wav(audio / "r1.wav", spoken_words[0])
    write_wav(audio / "r2.wav", np.concatenate([spoken_words[1], spoken_words[2]]), 8000)
    broken = _broken_files(audio, spoken_words[0])
    (d / "wav.scp").write_text(
        f"r1 {audio / 'r1.wav'}\n"
        f"r2 audio/r2.wav\n"  # relative to the data dir
        f"r3 {broken['stereo']}\n"
        f"r4 {broken['empty']}\n"
        f"r5 {broken['corrupt']}\n"
        f"r6 {audio / 'missing.wav'}\n"
        f"r7 sox in.wav -t wav - |\n"
        f"r1 {audio / 'r2.wav'}\n")  # duplicate recording id
    (d / "text").write_text("u1 HELLO WORLD\nu2a GOOD MORNING\nu2b TO YOU\nu3 STEREO\nu4 EMPTY\nu5 CORRUPT\n"
                            "u6 MISSING\nu7 PIPE\nu8 123 !!\nu1 AGAIN\nu9\n")
    (d / "segments").write_text("u1 r1 0.0 0.8\nu2a r2 0.0 1.0\nu2b r2 1.0 1.9\nu3 r3 0 1\nu4 r4 0 1\n"
                                "u5 r5 0 1\nu6 r6 0 1\nu7 r7 0 1\nu8 r1 0 1\n")
    (d / "utt2spk").write_text("u1 s1\nu2a s2\nu2b s2\n")
    return d


def test_import_kaldi_keeps_good_entries_and_counts_each_broken_one(kaldi_dir, tmp_path, capsys):
    before = _tree_digest(kaldi_dir)
    summary = import_kaldi(kaldi_dir, tmp_path / "out" / "kaldi.jsonl")
    assert _tree_digest(kaldi_dir) == before  # nothing in the source corpus changed
    utts = read_manifest(tmp_path / "out" / "kaldi.jsonl").utterances
    assert [u.id for u in utts] == ["u1", "u2a", "u2b"]
    u1, u2a, u2b = utts
    assert u1.text == "hello world" and u1.speaker == "s1" and u1.duration == pytest.approx(0.8)
    assert u2a.sample_rate == 8000 and u2b.offset == pytest.approx(1.0) and u2b.duration == pytest.approx(0.9)
    assert summary["skip_counts"] == {
        "duplicate id": 2,  # r1 in wav.scp, u1 in text
        "empty transcript": 2,  # "123 !!" and a bare id
        "stereo audio": 1, "empty audio": 1, "unreadable audio": 1, "missing audio": 1,
        "unsupported wav.scp entry": 1}
    assert "kept 3, skipped 9" in summary["summary"]
    printed = capsys.readouterr().out
    assert "utterance 'u3'" in printed and "2 channels" in printed


def test_import_kaldi_strict_raises_on_the_first_broken_entry(kaldi_dir, tmp_path):
    with pytest.raises(ValueError, match="duplicate id 'r1'"):
        import_kaldi(kaldi_dir, tmp_path / "k.jsonl", strict=True)


def test_import_kaldi_reads_the_segment_audio(kaldi_dir, tmp_path):
    from otalign.data.dataset import SpeechDataset

    import_kaldi(kaldi_dir, tmp_path / "k.jsonl")
    ds = SpeechDataset(tmp_path / "k.jsonl")
    lengths = [ds[i]["feats"].shape[0] for i in range(len(ds))]
    assert lengths[0] == 1 + (int(0.8 * 16000) - 400) // 160
    assert abs(lengths[2] - 90) <= 2  # 0.9 s segment of an 8 kHz recording -> 16 kHz frames


def test_import_librispeech_layout(tmp_path, spoken_words, capsys):
    root = tmp_path / "LibriSpeech" / "dev-clean"
    chapter = root / "84" / "121123"
    write_wav(chapter / "84-121123-0000.flac", spoken_words[0])
    write_wav(chapter / "84-121123-0001.flac", spoken_words[1])
    write_wav(chapter / "84-121123-0002.flac", np.stack([spoken_words[2]] * 2, axis=1))  # stereo
    (chapter / "84-121123-0004.flac").write_bytes(b"")
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 HELLO WORLD\n84-121123-0001 GOOD MORNING TO YOU\n84-121123-0002 THE CAT SAT\n"
        "84-121123-0003 NO AUDIO HERE\n84-121123-0004 EMPTY FILE\n84-121123-0000 DUPLICATE\n")
    other = root / "1272" / "128104"
    write_wav(other / "1272-128104-0000.flac", spoken_words[3])
    (other / "1272-128104.trans.txt").write_text("1272-128104-0000 OPEN THE DOOR\n")
    before = _tree_digest(root)
    summary = import_librispeech(root, tmp_path / "ls.jsonl")
    assert _tree_digest(root) == before
    utts = read_manifest(tmp_path / "ls.jsonl").utterances
    assert sorted(u.id for u in utts) == ["1272-128104-0000", "84-121123-0000", "84-121123-0001"]
    assert {u.speaker for u in utts} == {"84", "1272"}
    assert summary["skip_counts"] == {"stereo audio": 1, "missing audio": 1, "empty audio": 1, "duplicate id": 1}


def test_import_aishell_layout(tmp_path, spoken_words):
    root = tmp_path / "data_aishell"
    transcript = root / "transcript" / "aishell_transcript_v0.8.txt"
    transcript.parent.mkdir(parents=True)
    wav = root / "wav" / "dev"
    write_wav(wav / "S0724" / "BAC009S0724W0121.wav", spoken_words[0])
    write_wav(wav / "S0724" / "BAC009S0724W0122.wav", spoken_words[1])
    write_wav(wav / "S0725" / "BAC009S0725W0001.wav", np.stack([spoken_words[2]] * 2, axis=1))
    write_wav(wav / "S0725" / "BAC009S0725W0002.wav", spoken_words[3])  # no transcript line
    (wav / "S0725" / "BAC009S0725W0003.wav").write_bytes(b"garbage" * 50)
    transcript.write_text("BAC009S0724W0121 \u5e7f\u5dde \u5973\u5927\u5b66\u751f\nBAC009S0724W0122 \u4e0a\u5e02 \u516c\u53f8\n"
                          "BAC009S0725W0001 \u7acb\u4f53\u58f0\nBAC009S0725W0003 \u574f\u6587\u4ef6\n"
                          "BAC009S0999W0001 \u522b\u7684\u96c6\n")
    before = _tree_digest(root)
    summary = import_aishell(transcript, root / "wav" / "dev", tmp_path / "aishell.jsonl")
    assert _tree_digest(root) == before
    utts = read_manifest(tmp_path / "aishell.jsonl").utterances
    assert [u.id for u in utts] == ["BAC009S0724W0121", "BAC009S0724W0122"]
    assert utts[0].text == "\u5e7f\u5dde\u5973\u5927\u5b66\u751f" and utts[0].speaker == "S0724"
    assert summary["skip_counts"] == {"stereo audio": 1, "no transcript": 1, "unreadable audio": 1}
