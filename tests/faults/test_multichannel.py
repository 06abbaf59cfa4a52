"""`prepare --allow-multichannel` records its choice in the manifest (``"downmix": true``), and every
reader of the manifest's audio honours it: what prepare accepted, train and decode accept, downmixed
the same way (the mean of the channels). Without the record a multichannel file is still refused,
naming the option."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from otalign.cli import main
from otalign.data.dataset import SpeechDataset
from otalign.data.features import GlobalCMVN, MultichannelAudio, compute_fbank, load_utterance_audio
from otalign.data.manifest import read_manifest
from otalign.models.asr import CTCModel
from otalign.text.tokenizer import CharTokenizer

def _tone(seconds, freq, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture()
def prepared(tmp_path):
    src = tmp_path / "kaldi"
    src.mkdir()
    stereo = np.stack([_tone(0.6, 220), _tone(0.6, 330) * 0.5], axis=1)
    sf.write(src / "stereo.wav", stereo, 16000, subtype="PCM_16")
    sf.write(src / "mono.wav", _tone(0.5, 440), 16000, subtype="PCM_16")
    (src / "wav.scp").write_text("stereo stereo.wav\nmono mono.wav\n")
    (src / "text").write_text("stereo two channels\nmono one channel\n")
    manifest = tmp_path / "m.jsonl"
    assert main(["prepare", "kaldi", str(src), str(manifest), "--allow-multichannel"]) == 0
    return tmp_path, manifest


def test_prepare_records_the_downmix_in_the_manifest(prepared):
    _, manifest = prepared
    records = {r["id"]: r for r in map(json.loads, manifest.read_text().splitlines())}
    assert records["stereo"]["downmix"] is True and records["stereo"]["channels"] == 2
    assert "downmix" not in records["mono"] and "channels" not in records["mono"]
    utts = {u.id: u for u in read_manifest(manifest)}
    assert utts["stereo"].downmix and not utts["mono"].downmix


def test_a_downmix_entry_is_read_as_the_mean_of_its_channels(prepared):
    tmp_path, manifest = prepared
    utt = next(u for u in read_manifest(manifest) if u.id == "stereo")
    samples, rate = load_utterance_audio(utt)
    expected = sf.read(tmp_path / "kaldi" / "stereo.wav", dtype="float32")[0].mean(axis=1)
    assert rate == 16000 and samples.ndim == 1 and np.array_equal(samples, expected.astype(np.float32))
    # prepare cmvn reads it too
    GlobalCMVN.from_manifest(manifest).save(tmp_path / "cmvn.json")


def test_without_the_record_a_multichannel_file_is_refused_naming_the_option(prepared):
    tmp_path, manifest = prepared
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for record in lines:
        record.pop("downmix", None)
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in lines))
    utt = next(u for u in read_manifest(plain) if u.id == "stereo")
    with pytest.raises(MultichannelAudio, match="2 channels.*--allow-multichannel"):
        load_utterance_audio(utt)


def test_a_downmix_value_that_is_not_a_bool_is_a_counted_skip(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(0.5, 220), 16000)
    lines = [{"id": "a", "audio_filepath": "a.wav", "duration": 0.5, "text": "a", "downmix": "yes"},
             {"id": "b", "audio_filepath": "a.wav", "duration": 0.5, "text": "b"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = read_manifest(tmp_path / "m.jsonl")
    assert [u.id for u in result] == ["b"] and "'downmix' must be true or false" in result.skipped[0][1]


def test_training_features_accept_what_prepare_accepted(prepared):
    tmp_path, manifest = prepared
    dataset = SpeechDataset(list(read_manifest(manifest)), cache_dir=tmp_path / "fbank")
    index = next(i for i, u in enumerate(dataset.utterances) if u.id == "stereo")
    feats = dataset.features(index)
    samples, rate = load_utterance_audio(dataset.utterances[index])
    assert np.array_equal(feats, compute_fbank(samples, rate))


def test_decode_accepts_what_prepare_accepted(prepared):
    tmp_path, manifest = prepared
    torch.manual_seed(0)
    tokenizer = CharTokenizer()
    model = CTCModel(tokenizer.vocab_size, "tiny", num_layers=1).eval()
    torch.save({"model": model.state_dict(), "model_config": model.config, "tokenizer": tokenizer.to_dict(),
                "cmvn": None}, tmp_path / "avg.pt")
    assert main(["decode", "--ckpt", str(tmp_path / "avg.pt"), "--data", str(manifest), "--out",
                 str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "m.results.json").read_text())
    assert results["num_decoded"] == 2 and results["num_skipped"] == 0
