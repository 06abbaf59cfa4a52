"""KnowledgeTransfer: loss values, padding, empty transcripts, gradients never NaN."""

import math

import pytest
import torch

from otalign.align.transfer import KnowledgeTransfer, token_cosine_loss

torch.set_num_threads(1)
ENC, PLM = 12, 8


def padded_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(4, 16, ENC, generator=g)
    plm = torch.randn(4, 6, PLM, generator=g)
    enc_mask = torch.ones(4, 16, dtype=torch.bool)
    plm_mask = torch.ones(4, 6, dtype=torch.bool)
    enc_mask[1, 9:] = False
    plm_mask[1, 4:] = False
    enc_mask[2, 3:] = False  # 3 frames for 6 tokens
    plm_mask[3] = False  # empty transcript
    enc[~enc_mask] = 1e4  # padding may hold garbage: it must never leak
    plm[~plm_mask] = 1e6
    return enc, enc_mask, plm, plm_mask


CASES = [(name, grad) for name in ("ot", "tot", "uot", "partial") for grad in ("unrolled", "last_step")]
CASES += [("attention", "unrolled"), ("cif", "unrolled")]  # the grad mode only concerns OT aligners


@pytest.mark.parametrize("name,grad", CASES)
def test_padded_batch_gives_finite_loss_and_gradients(name, grad):
    torch.manual_seed(0)
    enc, enc_mask, plm, plm_mask = padded_batch()
    enc = enc.requires_grad_(True)
    kt = KnowledgeTransfer(name, ENC, PLM, n_iter=30, rho_frames=0.1, grad=grad, num_heads=2)
    out = kt(enc, enc_mask, plm, plm_mask)
    loss = out.kt_loss + out.aux_loss
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(enc.grad).all()
    for p in kt.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    assert out.num_tokens == 6 + 4 + 6
    assert out.num_empty_utterances == 1


def test_garbage_in_padding_does_not_change_the_loss():
    enc, enc_mask, plm, plm_mask = padded_batch()  # 1e4 on padded frames, 1e6 on padded tokens
    torch.manual_seed(0)
    kt = KnowledgeTransfer("uot", ENC, PLM, n_iter=20, rho_frames=0.1, adapter_dropout=0.0)
    clean_enc = torch.where(enc_mask[..., None], enc, torch.zeros_like(enc))
    clean_plm = torch.where(plm_mask[..., None], plm, torch.zeros_like(plm))
    dirty, clean = kt(enc, enc_mask, plm, plm_mask), kt(clean_enc, enc_mask, clean_plm, plm_mask)
    assert dirty.kt_loss.item() == pytest.approx(clean.kt_loss.item(), rel=1e-5)


def test_kt_loss_is_the_mean_over_valid_tokens_of_one_minus_cosine():
    enc, enc_mask, plm, plm_mask = padded_batch()
    kt = KnowledgeTransfer("ot", ENC, PLM, n_iter=30, adapter_dropout=0.0).eval()
    out = kt(enc, enc_mask, plm, plm_mask)
    per_token = token_cosine_loss(out.aligned, plm)
    valid = plm_mask
    assert out.kt_loss.item() == pytest.approx(per_token[valid].mean().item(), rel=1e-5)


def test_mse_loss_is_the_mean_squared_error_over_valid_tokens():
    enc, enc_mask, plm, plm_mask = padded_batch()
    kt = KnowledgeTransfer("uot", ENC, PLM, loss="mse", n_iter=30, adapter_dropout=0.0).eval()
    out = kt(enc, enc_mask, plm, plm_mask)
    manual = (out.aligned - plm).pow(2).mean(-1)[plm_mask].mean()
    assert out.kt_loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_batch_without_tokens_gives_zero_loss_that_still_backpropagates():
    enc, enc_mask, plm, plm_mask = padded_batch()
    plm_mask[:] = False
    kt = KnowledgeTransfer("uot", ENC, PLM, n_iter=10)
    out = kt(enc, enc_mask, plm, plm_mask)
    assert out.kt_loss.item() == 0.0 and out.num_tokens == 0 and out.num_empty_utterances == 4
    out.kt_loss.backward()  # connected to the graph: DDP needs every parameter to get a gradient


def test_none_does_nothing():
    enc, enc_mask, plm, plm_mask = padded_batch()
    kt = KnowledgeTransfer("none", ENC, PLM)
    out = kt(enc, enc_mask, plm, plm_mask)
    assert out.kt_loss.item() == 0.0 and out.plan is None and len(list(kt.parameters())) == 0


def test_gradient_flows_through_the_plan_unless_detached():
    enc, enc_mask, plm, plm_mask = padded_batch()
    grads = {}
    for detach in (False, True):
        torch.manual_seed(0)
        kt = KnowledgeTransfer("uot", ENC, PLM, n_iter=30, rho_frames=0.1, detach_plan=detach, adapter_dropout=0.0)
        x = enc.clone().requires_grad_(True)
        kt(x, enc_mask, plm, plm_mask).kt_loss.backward()
        grads[detach] = x.grad
    assert not torch.allclose(grads[False], grads[True])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="loss"):
        KnowledgeTransfer("uot", ENC, PLM, loss="l1")
    with pytest.raises(ValueError, match="aligner_name"):
        KnowledgeTransfer("gw", ENC, PLM)


def test_infonce_rewards_only_telling_tokens_apart():
    from otalign.align.transfer import token_infonce_loss

    torch.manual_seed(0)
    targets = torch.randn(1, 5, 16)
    mask = torch.tensor([[True, True, True, True, False]])
    flat = targets[:, :4].mean(dim=1, keepdim=True).expand(1, 5, 16)  # every token pooled the same frames
    loss_flat = token_infonce_loss(flat, targets, mask, temperature=0.1)[0, :4]
    # one row of logits shared by all tokens: its mean -log p_n is a cross-entropy against the
    # uniform distribution, at least log N whatever the pooled vector is
    assert loss_flat.mean() >= math.log(4.0) - 1e-6, "a flat plan scores at least log N"
    assert (token_infonce_loss(targets, targets, mask, 0.1)[0, :4] < 0.01).all()


def test_infonce_transfer_trains_and_rejects_bad_temperature():
    transfer = KnowledgeTransfer("uot", 8, 16, loss="infonce", temperature=0.2, eps=0.1, n_iter=20, rho_frames=0.3)
    enc = torch.randn(2, 12, 8, requires_grad=True)
    out = transfer(enc, torch.ones(2, 12, dtype=torch.bool), torch.randn(2, 4, 16), torch.ones(2, 4, dtype=torch.bool))
    out.kt_loss.backward()
    assert torch.isfinite(out.kt_loss) and enc.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        KnowledgeTransfer("uot", 8, 16, loss="infonce", temperature=0.0)
