import pytest
import torch

from otalign.models.adapter import Adapter
from otalign.models.asr import PRESETS, CTCModel, ctc_min_frames
from otalign.text.tokenizer import CharTokenizer


def test_forward_shapes_and_log_probs_normalised():
    torch.manual_seed(0)
    model = CTCModel(29, preset="tiny").eval()
    out = model(torch.randn(2, 300, 80), torch.tensor([300, 180]))
    assert out.states.shape == (2, 74, model.d_model)
    assert out.log_probs.shape == (2, 74, 29)
    assert out.out_lengths.tolist() == [74, 44]
    torch.testing.assert_close(out.log_probs.exp().sum(-1), torch.ones(2, 74))


def test_presets_sizes():
    tiny = sum(p.numel() for p in CTCModel(29, "tiny").parameters())
    small = CTCModel(29, "small")
    assert 1e6 < tiny < 3e6
    assert small.d_model == 256 and len(small.encoder.blocks) == 12
    assert 25e6 < sum(p.numel() for p in small.parameters()) < 40e6
    assert set(PRESETS) >= {"tiny", "small"}


def test_overrides_and_unknown_options():
    m = CTCModel(29, "tiny", num_layers=1, d_model=64)
    assert len(m.encoder.blocks) == 1 and m.d_model == 64 and m.config["d_model"] == 64
    with pytest.raises(ValueError, match="num_layer"):
        CTCModel(29, "tiny", num_layer=1)
    with pytest.raises(ValueError, match="preset"):
        CTCModel(29, "huge")


def test_min_frames_counts_blanks_between_repeats():
    tok = CharTokenizer()
    hello = torch.tensor([tok.encode("hello") + [0, 0]])
    assert ctc_min_frames(hello, torch.tensor([5])).tolist() == [6]
    # padding after the valid length never counts as a repeat
    assert ctc_min_frames(torch.tensor([[3, 4, 4, 4]]), torch.tensor([2])).tolist() == [2]


def test_ctc_loss_flags_exactly_the_impossible_utterances():
    tok = CharTokenizer()
    hello = tok.encode("hello")  # needs 6 frames
    V = 29
    log_probs = torch.randn(4, 6, V).log_softmax(-1).requires_grad_()
    targets = torch.tensor([hello, hello, hello, [3, 4, 5, 6, 7]])
    out_lengths = torch.tensor([6, 5, 0, 5])
    loss, valid = CTCModel.ctc_loss(log_probs, out_lengths, targets, torch.tensor([5, 5, 5, 5]))
    assert valid.tolist() == [True, False, False, True]
    assert torch.isfinite(loss).all() and loss[1] == 0 and loss[2] == 0
    # the criterion is tight: torch itself says "hello" in 5 frames has zero probability
    raw = torch.nn.functional.ctc_loss(log_probs[1:2].transpose(0, 1), targets[1:2], out_lengths[1:2],
                                       torch.tensor([5]), reduction="none")
    assert torch.isinf(raw).all()
    loss.sum().backward()
    assert log_probs.grad[1].abs().sum() == 0 and log_probs.grad[0].abs().sum() > 0


def test_ctc_loss_all_impossible_still_backpropagates():
    log_probs = torch.randn(1, 2, 5).log_softmax(-1).requires_grad_()
    loss, valid = CTCModel.ctc_loss(log_probs, torch.tensor([2]), torch.tensor([[1, 2, 3]]), torch.tensor([3]))
    assert not valid.any()
    loss.sum().backward()


@pytest.mark.slow
def test_tiny_model_overfits_one_batch():
    # The tiny preset, narrowed to keep the test within a few seconds on 2 shared cores.
    torch.manual_seed(0)
    model = CTCModel(29, "tiny", num_layers=2, d_model=96, ff_dim=192, subsampling_channels=32, dropout=0.0)
    feats = torch.randn(2, 100, 80)
    lengths = torch.tensor([100, 90])
    targets = torch.randint(1, 29, (2, 8))
    target_lengths = torch.tensor([8, 7])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(feats, lengths)
        loss, valid = model.ctc_loss(out.log_probs, out.out_lengths, targets, target_lengths)
        assert valid.all()
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        losses.append(loss.mean().item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_adapter_projects_to_plm_width():
    h = torch.randn(2, 10, 144)
    for hidden in (None, 256):
        z = Adapter(144, 384, hidden=hidden)(h)
        assert z.shape == (2, 10, 384)
        torch.testing.assert_close(z.mean(-1), torch.zeros(2, 10), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="144"):
        Adapter(144, 384)(torch.randn(2, 10, 100))
