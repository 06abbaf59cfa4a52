"""Damaged and foreign checkpoints: one CheckpointError line naming the file, never arbitrary code."""

import os
import pickle

import pytest
import torch

from otalign.models.export import TRAIN_KEYS, CheckpointError, load_checkpoint
from otalign.text.tokenizer import CharTokenizer
from otalign.train.config import load_config, to_dict
from otalign.train.trainer import build_trainable, lr_lambda


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    """A training checkpoint with the trainer's keys (a tiny real model, optimizer and scheduler)."""
    config = load_config(None, ["transfer.aligner=none", "model.overrides={d_model: 48, num_layers: 1, ff_dim: 96}"])
    tokenizer = CharTokenizer()
    trainable = build_trainable(config, tokenizer.vocab_size, None)
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    state = {"trainable": trainable.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": 1, "step": 3, "bad_batches": 0,
             "config": to_dict(config), "tokenizer": tokenizer.to_dict(), "cmvn": None, "git_hash": "x"}
    path = tmp_path_factory.mktemp("ckpt") / "epoch_1.pt"
    torch.save(state, path)
    return path


def test_real_checkpoint_loads_weights_only(real_checkpoint):
    assert set(TRAIN_KEYS) <= set(load_checkpoint(real_checkpoint, require=TRAIN_KEYS))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_RAN",))


@pytest.mark.parametrize("damage, message", [
    ("truncated", "truncated or damaged"),
    ("empty", "empty"),
    ("random", "not a PyTorch checkpoint|not written by otalign"),
    ("foreign_pickle", "not written by otalign"),
    ("foreign_dict", "not an otalign checkpoint"),
    ("missing_keys", "lacks 'optimizer'"),
    ("missing_file", "does not exist"),
])
def test_damaged_checkpoint_is_one_line_naming_the_file(real_checkpoint, tmp_path, damage, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / f"{damage}.pt"
    data = real_checkpoint.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "random":
        bad.write_bytes(os.urandom(4096))
    elif damage == "foreign_pickle":
        bad.write_bytes(pickle.dumps({"x": _Evil()}))
    elif damage == "foreign_dict":
        torch.save({"hello": torch.zeros(2)}, bad)
    elif damage == "missing_keys":
        state = torch.load(real_checkpoint, weights_only=True)
        del state["optimizer"]
        torch.save(state, bad)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_checkpoint(bad, require=TRAIN_KEYS)
    assert str(bad) in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "EVIL_RAN").exists()


def test_decode_and_align_use_the_safe_loader(tmp_path):
    from otalign.decode.recipe import load_recognizer
    from otalign.train.system import System

    bad = tmp_path / "avg.pt"
    bad.write_bytes(b"")
    for loader in (load_recognizer, System.load):
        with pytest.raises(CheckpointError, match="empty"):
            loader(bad)
