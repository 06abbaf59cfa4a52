import json

import torch

from otalign.train.checkpoint import average_checkpoints, latest_checkpoint, rank_checkpoints, save_checkpoint


def _state(value: float) -> dict:
    return {"trainable": {"w": torch.full((2, 2), value), "steps": torch.tensor(3)}}


def test_sidecar_holds_metrics_and_pruning_keeps_best_and_newest(tmp_path):
    for epoch, dev_loss in [(1, 5.0), (2, 3.0), (3, 4.0), (4, 6.0)]:
        save_checkpoint(tmp_path, epoch, _state(epoch), {"dev_loss": dev_loss}, keep=2)
    assert json.loads((tmp_path / "epoch_3.json").read_text())["dev_loss"] == 4.0
    kept = sorted(p.name for p in tmp_path.glob("epoch_*.pt"))
    # best two by dev loss are epochs 2 and 3; epoch 4 is the newest and must survive for --resume
    assert kept == ["epoch_2.pt", "epoch_3.pt", "epoch_4.pt"]
    assert len(list(tmp_path.glob("epoch_*.json"))) == 4
    assert latest_checkpoint(tmp_path).name == "epoch_4.pt"
    assert [m["epoch"] for m in rank_checkpoints(tmp_path)] == [2, 3, 4]
    assert not list(tmp_path.glob("*.tmp"))


def test_average_is_elementwise_mean(tmp_path):
    paths = [save_checkpoint(tmp_path, e, _state(float(e)), {"dev_loss": 1.0}, keep=0) for e in (1, 2, 6)]
    averaged = average_checkpoints(paths, key="trainable")
    assert torch.allclose(averaged["w"], torch.full((2, 2), 3.0))
    assert averaged["w"].dtype == torch.float32
    assert averaged["steps"].item() == 3
