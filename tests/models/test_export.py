import pytest
import torch
from torch import nn

from otalign.models.adapter import Adapter
from otalign.models.asr import CTCModel
from otalign.models.export import export_inference_model, load_inference_model
from otalign.text.tokenizer import CharTokenizer


class TrainingModule(nn.Module):
    """What training holds: the recogniser plus training-only parts."""

    def __init__(self):
        super().__init__()
        self.asr = CTCModel(29, "tiny", num_layers=1)
        self.adapter = Adapter(self.asr.d_model, 384)
        self.aligner = nn.Linear(384, 384)  # stands in for an aligner with parameters


def test_export_holds_only_ctc_model_weights_and_reloads_identically(tmp_path):
    torch.manual_seed(0)
    train = TrainingModule().eval()
    tok = CharTokenizer()
    ckpt = {"model": train.state_dict(), "model_config": train.asr.config, "tokenizer": tok.to_dict(),
            "optimizer": {}, "epoch": 3}
    exported = export_inference_model(ckpt, tmp_path / "final.pt")
    keys = set(exported["state_dict"])
    assert keys == set(train.asr.state_dict())
    assert not any("adapter" in k or "aligner" in k for k in keys)
    assert set(exported) == {"format", "model_config", "tokenizer", "state_dict", "cmvn", "meta"}
    assert exported["meta"] == {"epoch": 3}

    inf = load_inference_model(tmp_path / "final.pt")
    assert not inf.model.training and inf.tokenizer.vocab_size == 29
    feats = torch.randn(1, 100, 80)
    with torch.no_grad():
        a = train.asr(feats, torch.tensor([100])).log_probs
        b = inf.model(feats, torch.tensor([100])).log_probs
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_export_rejects_checkpoint_without_ctc_head(tmp_path):
    ckpt = {"model": Adapter(4, 4).state_dict(), "model_config": {"vocab_size": 29}, "tokenizer": CharTokenizer().to_dict()}
    with pytest.raises(ValueError, match="ctc_head"):
        export_inference_model(ckpt, tmp_path / "x.pt")


def test_load_rejects_foreign_file(tmp_path):
    torch.save({"hello": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="x.pt is not an otalign"):
        load_inference_model(tmp_path / "x.pt")


def test_trainer_style_checkpoint_loads_directly_with_cmvn(tmp_path):
    torch.manual_seed(0)
    train = TrainingModule()
    asr_only = {k[len("asr."):]: v for k, v in train.state_dict().items() if k.startswith("asr.")}
    cmvn = {"mean": [0.5] * 80, "std": [2.0] * 80, "num_frames": 10}
    torch.save({"model": asr_only, "model_config": {"vocab_size": 29, "preset": "tiny", "num_layers": 1},
                "tokenizer": CharTokenizer().to_dict(), "cmvn": cmvn, "git_hash": "abc"}, tmp_path / "avg.pt")
    inf = load_inference_model(tmp_path / "avg.pt")
    assert inf.cmvn == cmvn and inf.meta == {"git_hash": "abc"}
    assert len(inf.model.encoder.blocks) == 1


def test_export_rejects_mis_shaped_weights(tmp_path):
    train = TrainingModule()
    state = train.state_dict()
    state["asr.ctc_head.weight"] = torch.zeros(30, train.asr.d_model)
    ckpt = {"model": state, "model_config": train.asr.config, "tokenizer": CharTokenizer().to_dict()}
    with pytest.raises(ValueError, match="ctc_head.weight.*shape"):
        export_inference_model(ckpt, tmp_path / "x.pt")
