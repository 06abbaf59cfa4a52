import torch

from otalign.models.conformer import ConformerEncoder


def _encoder():
    torch.manual_seed(0)
    return ConformerEncoder(80, d_model=48, num_layers=2, num_heads=4, ff_dim=96, conv_kernel=15, dropout=0.1).eval()


def test_shapes_and_mask():
    enc = _encoder()
    states, mask = enc(torch.randn(3, 200, 80), torch.tensor([200, 150, 31]))
    assert states.shape == (3, 49, 48)
    assert mask.sum(1).tolist() == [49, 36, 7]
    assert torch.all(states[~mask] == 0)
    assert torch.isfinite(states).all()


def test_padding_does_not_change_valid_outputs():
    enc = _encoder()
    torch.manual_seed(1)
    short = torch.randn(1, 123, 80)
    alone, mask_alone = enc(short, torch.tensor([123]))
    # pad with garbage (not zeros): the encoder must ignore whatever sits in padded frames
    batch = torch.randn(3, 400, 80) * 5
    batch[1, :123] = short[0]
    states, mask = enc(batch, torch.tensor([400, 123, 250]))
    n = int(mask_alone.sum())
    assert int(mask[1].sum()) == n
    torch.testing.assert_close(states[1, :n], alone[0, :n], atol=1e-5, rtol=1e-4)


def test_zero_length_utterance_stays_finite():
    enc = _encoder()
    states, mask = enc(torch.randn(2, 50, 80), torch.tensor([50, 0]))
    assert torch.isfinite(states).all() and mask[1].sum() == 0
