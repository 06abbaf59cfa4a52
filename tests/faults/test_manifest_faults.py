"""Broken manifests through the CLI (`train` via its config, `decode`, `prepare cmvn`): one line
`otalign <cmd>: error: ...` naming the file (and the line), exit 2, no traceback; or, for a bad line
among good ones, a counted skip naming the file and line (an error under --strict/data.strict)."""

import json
import re

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


GOOD = {"id": "a", "audio_filepath": "a.wav", "duration": 0.5, "text": "hello"}

# name -> (how the manifest is made, what the one error line must say)
BROKEN = {
    "missing file": (None, r"manifest .*missing\.jsonl does not exist"),
    "a directory": ("dir", r"manifest .*directory\.jsonl is a directory, not a JSONL file"),
    "a JSON array": (json.dumps([GOOD, {**GOOD, "id": "b"}], indent=2) + "\n",
                     r"manifest .*a_JSON_array\.jsonl holds no usable utterance: all \d+ line\(s\) were skipped "
                     r"\(invalid json: \d+; first: line 1: invalid JSON .*is it JSONL"),
    "a CSV file": ("id,audio_filepath,duration,text\na,a.wav,0.5,hello\n",
                   r"manifest .*a_CSV_file\.jsonl holds no usable utterance.*first: line 1: invalid JSON.*is it JSONL"),
    "an empty file": ("", r"manifest .*an_empty_file\.jsonl holds no utterance \(it is empty\)"),
    "only entries missing a field": (json.dumps({"id": "a", "audio_filepath": "a.wav", "duration": 0.5}) + "\n",
                                     r"manifest .*only_entries_missing_a_field\.jsonl holds no usable utterance.*"
                                     r"line 1 \(utterance 'a'\): utterance 'a': missing required field 'text'"),
}
# a bad line among good ones: (line 2 of the manifest, the reason named)
BAD_LINE = {
    "a line missing a required field": ({"id": "b", "audio_filepath": "a.wav", "text": "hi"},
                                        r"line 2 \(utterance 'b'\): utterance 'b': missing required field 'duration'"),
    "a duplicate id": (GOOD, r"line 2 \(utterance 'a'\): duplicate id 'a'"),
}


@pytest.fixture()
def folder(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(), 16000)
    torch.manual_seed(0)
    tokenizer = CharTokenizer()
    model = CTCModel(tokenizer.vocab_size, "tiny", num_layers=1).eval()
    torch.save({"model": model.state_dict(), "model_config": model.config, "tokenizer": tokenizer.to_dict(),
                "cmvn": None}, tmp_path / "avg.pt")
    (tmp_path / "good.jsonl").write_text(json.dumps(GOOD) + "\n")
    return tmp_path


def _broken(folder, name):
    content, _ = BROKEN[name]
    path = folder / (name.replace(" ", "_") + ".jsonl") if name != "missing file" else folder / "missing.jsonl"
    if name == "a directory":
        path = folder / "directory.jsonl"
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    return path


def _train_config(folder, train_manifest, strict=False):
    config = folder / "conf.yaml"
    config.write_text(f"exp_dir: {folder}/exp\ndata:\n  train_manifests: [{train_manifest}]\n"
                      f"  dev_manifest: {folder}/good.jsonl\n  feature_cache_dir: {folder}/fbank\n"
                      f"  strict: {str(strict).lower()}\ntransfer:\n  aligner: none\noptim:\n  epochs: 1\n")
    return config


def _one_error_line(capsys, command, pattern):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"otalign {command}: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("name", list(BROKEN))
@pytest.mark.parametrize("command", ["train", "decode", "prepare cmvn"])
def test_a_broken_manifest_is_one_line_naming_it(folder, capsys, command, name):
    path = _broken(folder, name)
    if command == "train":
        argv = ["train", "--config", str(_train_config(folder, path)), "--no-progress"]
    elif command == "decode":
        argv = ["decode", "--ckpt", str(folder / "avg.pt"), "--data", str(path), "--out", str(folder / "out")]
    else:
        argv = ["prepare", "cmvn", str(path), str(folder / "cmvn.json")]
    assert main(argv) == 2
    _one_error_line(capsys, command.split()[0], BROKEN[name][1])
    assert not (folder / "cmvn.json").exists() and not (folder / "exp" / "epoch_1.pt").exists()


@pytest.mark.parametrize("name", list(BAD_LINE))
def test_a_bad_line_is_a_counted_skip_listed_by_decode_and_an_error_under_strict(folder, capsys, name):
    record, pattern = BAD_LINE[name]
    manifest = folder / "m.jsonl"
    manifest.write_text(json.dumps(GOOD) + "\n" + json.dumps(record) + "\n")
    argv = ["decode", "--ckpt", str(folder / "avg.pt"), "--data", str(manifest), "--out", str(folder / "out")]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert re.search(f"skip: {manifest}: {pattern}", out.out), out.out
    results = json.loads((folder / "out" / "m.results.json").read_text())
    assert (results["num_lines"], results["num_decoded"], results["num_skipped"]) == (2, 1, 1)
    assert re.search(pattern, results["skipped"][0]["where"] + ": " + results["skipped"][0]["reason"])
    assert main(argv + ["--strict"]) == 2
    _one_error_line(capsys, "decode", f"{manifest}: {pattern}")


@pytest.mark.parametrize("name", list(BAD_LINE))
def test_train_with_data_strict_stops_at_a_bad_line_naming_file_and_line(folder, capsys, name):
    record, pattern = BAD_LINE[name]
    manifest = folder / "m.jsonl"
    manifest.write_text(json.dumps(GOOD) + "\n" + json.dumps(record) + "\n")
    assert main(["train", "--config", str(_train_config(folder, manifest, strict=True)), "--no-progress"]) == 2
    _one_error_line(capsys, "train", f"{manifest}: {pattern}")


@pytest.mark.slow
def test_a_train_that_failed_on_a_broken_manifest_can_be_rerun_once_it_is_fixed(folder, capsys):
    path = _broken(folder, "a CSV file")
    config = _train_config(folder, path)
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    capsys.readouterr()
    path.write_text(json.dumps(GOOD) + "\n")
    assert main(["train", "--config", str(config), "--no-progress"]) == 0, capsys.readouterr().err


def test_an_utterance_in_two_train_manifests_is_refused_naming_both(folder, capsys):
    first, second = folder / "one.jsonl", folder / "two.jsonl"
    first.write_text(json.dumps(GOOD) + "\n")
    second.write_text(json.dumps(GOOD) + "\n")
    config = _train_config(folder, f"{first}, {second}")
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    _one_error_line(capsys, "train", r"utterance id 'a' is in both .*one\.jsonl and .*two\.jsonl")
    assert not (folder / "exp" / "config.yaml").exists(), "a refused run writes nothing into exp_dir"
