"""Same config and seed, same model: the committed results/ are only worth resuming from if a rerun
reproduces them. Cold and warm feature/PLM caches must not change the outcome either."""

import pytest
import torch

from otalign.train.config import load_config
from otalign.train.trainer import run
from tests.train.conftest import tiny_overrides


@pytest.mark.parametrize("aligner", ["none", "uot"])
def test_two_runs_with_one_seed_train_the_same_weights(tiny_corpus, tmp_path, aligner):
    weights = []
    for name in ("first", "second"):  # the first fills the caches, the second reads them
        overrides = tiny_overrides(tiny_corpus, tmp_path / name, aligner=aligner, epochs=1)
        overrides += [f"data.feature_cache_dir={tmp_path}/fbank", f"teacher.cache_dir={tmp_path}/plm", "threads=1"]
        run(load_config(None, overrides))
        weights.append(torch.load(tmp_path / name / "epoch_1.pt", weights_only=False)["trainable"])
    assert weights[0].keys() == weights[1].keys()
    different = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
