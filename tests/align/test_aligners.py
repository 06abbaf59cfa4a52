"""Aligners behind one interface: plans, masses, padding, CIF's closed form."""


import math

import pytest
import torch

from otalign.align.aligners import (
    ALIGNER_NAMES,
    AttentionAligner,
    CIFAligner,
    OTAligner,
    build_aligner,
    pool_with_plan,
)

torch.set_num_threads(1)


def padded_batch(seed=0, dim=8):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(3, 10, dim, generator=g)
    tokens = torch.randn(3, 5, dim, generator=g)
    frame_mask = torch.ones(3, 10, dtype=torch.bool)
    token_mask = torch.ones(3, 5, dtype=torch.bool)
    frame_mask[1, 6:] = False
    token_mask[1, 3:] = False
    frame_mask[2, 2:] = False  # 2 frames, 5 tokens: more tokens than frames
    return frames, frame_mask, tokens, token_mask


def test_build_aligner_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="aligner must be one of"):
        build_aligner("sinkhorn")
    with pytest.raises(ValueError, match="unknown aligner option"):
        build_aligner("uot", rho=0.1)
    with pytest.raises(ValueError, match="dim"):
        build_aligner("cif")
    with pytest.raises(ValueError, match="rho_frames"):
        build_aligner("uot", rho_frames=0.0)
    with pytest.raises(ValueError, match="partial_mass"):
        build_aligner("partial", partial_mass=1.5)


def test_options_of_other_aligners_are_ignored():
    aligner = build_aligner("ot", dim=8, rho_frames=0.1, num_heads=2, kernel_size=5)
    assert isinstance(aligner, OTAligner) and aligner.kind == "ot"


@pytest.mark.parametrize("name", ["ot", "tot", "uot"])
def test_hard_token_marginal_gives_every_token_its_mass(name):
    frames, frame_mask, tokens, token_mask = padded_batch()
    out = build_aligner(name, eps=0.1, n_iter=300, rho_frames=0.05)(frames, frame_mask, tokens, token_mask)
    col_mass = out.plan.sum(dim=1)
    n = token_mask.sum(dim=1, keepdim=True).float()
    expected = torch.where(token_mask, 1.0 / n, torch.zeros_like(col_mass))
    # item 2 has 2 frames for 5 tokens: each token still receives exactly 1/5
    torch.testing.assert_close(col_mass, expected, atol=1e-5, rtol=1e-4)


def test_plans_and_aligned_vectors_are_zero_on_padding():
    frames, frame_mask, tokens, token_mask = padded_batch()
    for name in ("ot", "tot", "uot", "partial"):
        out = build_aligner(name, n_iter=50)(frames, frame_mask, tokens, token_mask)
        valid = frame_mask[:, :, None] & token_mask[:, None, :]
        assert (out.plan[~valid] == 0).all(), name
        assert (out.aligned[~token_mask] == 0).all(), name
        assert torch.isfinite(out.aligned).all(), name


def test_aligned_is_the_plan_weighted_mean_of_frames():
    frames, frame_mask, tokens, token_mask = padded_batch()
    out = build_aligner("uot", rho_frames=0.3, n_iter=100)(frames, frame_mask, tokens, token_mask)
    b, j = 1, 2
    p = out.plan[b, :, j]
    manual = (p[:, None] * frames[b]).sum(0) / p.sum()
    torch.testing.assert_close(out.aligned[b, j], manual, atol=1e-5, rtol=1e-5)


def test_pool_with_plan_gives_zero_for_a_token_without_mass_and_finite_gradients():
    plan = torch.tensor([[[0.5, 0.0], [0.5, 0.0]]], requires_grad=True)
    states = torch.randn(1, 2, 3, requires_grad=True)
    aligned = pool_with_plan(plan, states)
    assert (aligned[0, 1] == 0).all()
    aligned.sum().backward()
    assert torch.isfinite(plan.grad).all() and torch.isfinite(states.grad).all()


def test_partial_moves_exactly_mass_m():
    frames, frame_mask, tokens, token_mask = padded_batch()
    out = build_aligner("partial", partial_mass=0.6, n_iter=500)(frames, frame_mask, tokens, token_mask)
    torch.testing.assert_close(out.plan.sum(dim=(1, 2)), torch.full((3,), 0.6), atol=2e-3, rtol=0)


def test_uot_sheds_the_mass_of_frames_that_match_no_token_and_ot_cannot():
    g = torch.Generator().manual_seed(1)
    tokens = torch.nn.functional.normalize(torch.randn(1, 4, 32, generator=g), dim=-1)
    speech = tokens[0].repeat_interleave(3, dim=0)  # 12 frames, 3 per token, in order
    junk = torch.nn.functional.normalize(torch.randn(8, 32, generator=g), dim=-1)  # 8 frames of "noise"
    frames = torch.cat([junk[:4], speech, junk[4:]])[None]
    frame_mask = torch.ones(1, 20, dtype=torch.bool)
    token_mask = torch.ones(1, 4, dtype=torch.bool)
    junk_rows = torch.tensor([True] * 4 + [False] * 12 + [True] * 4)
    uot = build_aligner("uot", eps=0.05, rho_frames=0.01, n_iter=300)(frames, frame_mask, tokens, token_mask).plan
    ot = build_aligner("ot", eps=0.05, n_iter=300)(frames, frame_mask, tokens, token_mask).plan
    assert uot[0, junk_rows].sum() < 0.02
    # balanced OT must move each frame's 1/20: junk frames carry 8/20 of the mass
    assert ot[0, junk_rows].sum() == pytest.approx(0.4, abs=1e-3)


def test_tuot_sheds_noise_like_uot_and_orders_repeated_tokens_like_tot():
    g = torch.Generator().manual_seed(2)
    word_a, word_b = torch.nn.functional.normalize(torch.randn(2, 32, generator=g), dim=-1)
    tokens = torch.stack([word_a, word_b, word_a])[None]  # "a b a": cosine alone cannot tell the a's apart
    junk = torch.nn.functional.normalize(torch.randn(4, 32, generator=g), dim=-1)
    frames = torch.cat([junk[:2], word_a.expand(3, 32), word_b.expand(3, 32), word_a.expand(3, 32), junk[2:]])[None]
    frame_mask, token_mask = torch.ones(1, 13, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool)
    junk_rows = torch.tensor([True] * 2 + [False] * 9 + [True] * 2)
    options = dict(eps=0.05, rho_frames=0.01, n_iter=300)
    uot = build_aligner("uot", **options)(frames, frame_mask, tokens, token_mask).plan[0]
    tuot = build_aligner("tuot", order_weight=1.0, **options)(frames, frame_mask, tokens, token_mask).plan[0]
    assert tuot[junk_rows].sum() < 0.05 and uot[junk_rows].sum() < 0.05
    first_a, last_a = slice(2, 5), slice(8, 11)
    # without the prior each "a" token splits its mass over both runs of a-frames
    assert float(uot[first_a, 0].sum()) == pytest.approx(float(uot[last_a, 0].sum()), rel=1e-3)
    # with it, the first "a" token takes the first run and the last one the last run
    assert tuot[first_a, 0].sum() > 0.9 * tuot[:, 0].sum() and tuot[last_a, 2].sum() > 0.9 * tuot[:, 2].sum()


def test_empty_transcript_gets_an_all_zero_plan():
    frames, frame_mask, tokens, token_mask = padded_batch()
    token_mask[0] = False
    for name in ("ot", "uot", "partial", "tot", "tuot"):
        out = build_aligner(name, n_iter=30)(frames, frame_mask, tokens, token_mask)
        assert (out.plan[0] == 0).all() and out.plan[1].sum() > 0, name
        assert torch.isfinite(out.aligned).all()


def test_attention_plan_is_attention_weights_over_valid_frames():
    frames, frame_mask, tokens, token_mask = padded_batch()
    aligner = AttentionAligner(dim=8, num_heads=2)
    out = aligner(frames, frame_mask, tokens, token_mask)
    col = out.plan.sum(dim=1)
    torch.testing.assert_close(col[token_mask], torch.ones(int(token_mask.sum())), atol=1e-5, rtol=0)
    assert (out.plan[1, 6:] == 0).all()
    assert (out.aligned[~token_mask] == 0).all()


def test_attention_survives_an_utterance_without_frames():
    frames, frame_mask, tokens, token_mask = padded_batch()
    frame_mask[2] = False
    frames.requires_grad_(True)
    out = AttentionAligner(dim=8, num_heads=2, queries="sinusoidal")(frames, frame_mask, tokens, token_mask)
    assert torch.isfinite(out.aligned).all() and (out.plan[2] == 0).all()
    out.aligned.sum().backward()
    assert torch.isfinite(frames.grad).all()


def integrate_and_fire_loop(alpha, num_tokens):
    """Reference: the sequential CIF loop (accumulate, fire at 1, carry the remainder)."""
    weights = torch.zeros(len(alpha), num_tokens, dtype=torch.float64)
    token, acc = 0, 0.0
    for t, a in enumerate(alpha.tolist()):
        left = a
        while left > 1e-12 and token < num_tokens:
            take = min(left, 1.0 - acc)
            weights[t, token] += take
            acc += take
            left -= take
            if acc >= 1.0 - 1e-12:
                token, acc = token + 1, 0.0
    return weights


def test_cif_closed_form_equals_the_integrate_and_fire_loop():
    torch.manual_seed(0)
    aligner = CIFAligner(dim=8).double()
    frames = torch.randn(1, 12, 8, dtype=torch.float64)
    tokens = torch.randn(1, 4, 8, dtype=torch.float64)
    mask_t, mask_n = torch.ones(1, 12, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)
    aligner.train()
    out = aligner(frames, mask_t, tokens, mask_n)
    alpha = aligner.firing_weights(frames, mask_t)[0]
    scaled = alpha * 4 / alpha.sum()
    torch.testing.assert_close(out.plan[0], integrate_and_fire_loop(scaled, 4))
    torch.testing.assert_close(out.plan[0].sum(dim=0), torch.ones(4, dtype=torch.float64))
    assert out.aux_losses["quantity"].item() == pytest.approx(abs(alpha.sum().item() - 4))


def test_cif_eval_mode_uses_raw_alphas():
    torch.manual_seed(0)
    aligner = CIFAligner(dim=8).eval()
    frames, frame_mask, tokens, token_mask = padded_batch()
    out = aligner(frames, frame_mask, tokens, token_mask)
    alpha = aligner.firing_weights(frames, frame_mask)
    expected = torch.minimum(alpha.sum(dim=1), token_mask.sum(dim=1).float())
    torch.testing.assert_close(out.plan.sum(dim=(1, 2)), expected, atol=1e-5, rtol=1e-5)


def test_every_aligner_name_builds():
    for name in ALIGNER_NAMES:
        assert build_aligner(name, dim=8).name == name


def test_one_registry_names_the_aligners_their_knobs_and_solver_options():
    from otalign.align.aligners import ALIGNERS, ALIGNER_NAMES, OT_ALIGNER_NAMES, AlignerConfig

    assert ALIGNER_NAMES == tuple(ALIGNERS) and set(OT_ALIGNER_NAMES) == {"ot", "tot", "uot", "partial", "tuot"}
    assert AlignerConfig(name="uot", rho_frames=0.3).knob == ("rho_frames", 0.3)
    assert AlignerConfig(name="ot").knob is None
    options = {name: AlignerConfig(name=name, eps=0.05, n_iter=30).solver_options() for name in OT_ALIGNER_NAMES}
    assert options["uot"] == dict(eps=0.05, max_iter=30, tol=None, grad="implicit", rho_rows=1.0, rho_cols=math.inf)
    assert options["partial"]["partial_mass"] == 0.7 and options["tot"]["order_weight"] == 1.0
    assert options["tuot"] == dict(options["uot"], order_weight=1.0)
    assert options["ot"] == dict(eps=0.05, max_iter=30, tol=None, grad="implicit")
    with pytest.raises(ValueError, match="does not use the OT solver"):
        AlignerConfig(name="cif").solver_options()
    with pytest.raises(ValueError, match="detach_plan applies to the OT aligners"):
        AlignerConfig(name="attention", detach_plan=True)


def test_every_aligner_option_is_reachable_from_a_recipe():
    from otalign.train.config import ConfigError, aligner_config, load_config

    config = load_config(None, ["transfer.aligner=attention", "transfer.aligner_options={num_heads: 8, dropout: 0.2}"])
    aligner = aligner_config(config.transfer).build(dim=64)
    assert aligner.attn.num_heads == 8 and aligner.attn.dropout == 0.2
    config = load_config(None, ["transfer.aligner=uot", "transfer.aligner_options={tol: 1e-4}", "transfer.n_iter=7"])
    assert aligner_config(config.transfer).build().solver_options()["tol"] == 1e-4
    with pytest.raises(ConfigError, match=r"transfer.aligner_options.heads"):
        load_config(None, ["transfer.aligner_options={heads: 8}"])
    with pytest.raises(ConfigError, match=r"set it as transfer.eps"):
        load_config(None, ["transfer.aligner_options={eps: 0.2}"])
    with pytest.raises(ConfigError, match=r"config section 'transfer': queries must be"):
        load_config(None, ["transfer.aligner=attention", "transfer.aligner_options={queries: random}"])
