"""Same config and seed, same model: the committed results/ are only worth resuming from if a rerun
reproduces them. Cold and warm feature/PLM caches must not change the outcome either.

This is the one same-seed test (issue 19): it compares every trained tensor bit for bit and the
epoch's recorded losses and dev CER exactly."""

import json

import pytest
import torch

from otalign.train.config import load_config
from otalign.train.trainer import DEV_ALIGNMENT_KEYS, run
from tests.train.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # two training runs per case


@pytest.mark.parametrize("aligner", ["none", "uot"])
def test_two_runs_with_one_seed_train_the_same_weights(tiny_corpus, tmp_path, aligner):
    weights, sidecars = [], []
    for name in ("first", "second"):  # the first fills the caches, the second reads them
        overrides = tiny_overrides(tiny_corpus, tmp_path / name, aligner=aligner, epochs=1)
        overrides += [f"data.feature_cache_dir={tmp_path}/fbank", f"teacher.cache_dir={tmp_path}/plm", "threads=1"]
        run(load_config(None, overrides))
        weights.append(torch.load(tmp_path / name / "epoch_1.pt", weights_only=False)["trainable"])
        sidecars.append(json.loads((tmp_path / name / "epoch_1.json").read_text()))
    assert weights[0].keys() == weights[1].keys()
    different = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert (aligner == "uot") == any(k.startswith("transfer.") for k in weights[0]), "the aligner was not built"
    keys = ["step", "train_loss", "train_ctc", "train_kt", "dev_loss", "dev_cer"]
    keys += list(DEV_ALIGNMENT_KEYS.values()) if aligner == "uot" else []  # the plans' detection metrics too
    for key in keys:
        assert sidecars[0][key] == sidecars[1][key], key
    assert (sidecars[0]["train_kt"] > 0) == (aligner == "uot"), "the transfer loss is on exactly with an aligner"
