"""Baselines: TF / DF losses are the flow-matching loss with per-block timesteps; DF's input for a block never
depends on later blocks; TF sees clean context."""

import pytest
import torch

from selfforcing.algorithms.causal_diffusion import causal_diffusion_loss, one_pass_sample, per_block_timesteps
from selfforcing.diffusion.flow import FlowMatching

LATENT = (4, 6)
FLOW = FlowMatching(shift=5.0)


def test_timesteps_constant_per_block(make_model):
    gen = make_model(num_frame_per_block=3)
    t = per_block_timesteps(gen, 4, 9, FLOW, torch.Generator().manual_seed(0))
    assert t.shape == (4, 9)
    assert torch.equal(t[:, 0], t[:, 2]) and torch.equal(t[:, 3], t[:, 5])
    assert not torch.equal(t[:, 0], t[:, 3])


@pytest.mark.parametrize("teacher_forcing", [False, True])
def test_loss_matches_formula(make_model, teacher_forcing):
    gen = make_model(num_frame_per_block=2)
    x_0 = torch.randn(2, 4, gen.config.in_dim, *LATENT)
    ctx = torch.randn(2, 5, gen.config.text_dim)
    loss, _ = causal_diffusion_loss(gen, x_0, ctx, flow=FLOW, teacher_forcing=teacher_forcing, weighted=False,
                                    rng=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    t = per_block_timesteps(gen, 2, 4, FLOW, g)
    eps = torch.randn(x_0.shape, generator=g)
    x_t = FLOW.add_noise(x_0, eps, t)
    kw = dict(clean_x=x_0, clean_t=torch.zeros_like(t)) if teacher_forcing else {}
    v = gen(x_t, t, ctx, **kw)
    assert torch.allclose(loss, (v - (eps - x_0)).square().mean(), atol=1e-6)
    loss.backward()
    assert gen.head.head.weight.grad.abs().sum() > 0


def test_one_pass_sample_tf_uses_clean_context(make_model):
    gen = make_model(num_frame_per_block=2)
    x = torch.randn(1, 4, gen.config.in_dim, *LATENT)
    ctx = torch.randn(1, 5, gen.config.text_dim)
    steps = FLOW.warp_timesteps([1000, 750, 500, 250])
    kw = dict(flow=FLOW, timesteps=steps, rng=None)
    torch.manual_seed(0)
    a = one_pass_sample(gen, x, ctx, teacher_forcing=True, **kw)
    x2 = x.clone()
    x2[:, 0] += 1.0  # change a clean context frame: TF's block 1 must react to it
    torch.manual_seed(0)
    b = one_pass_sample(gen, x2, ctx, teacher_forcing=True, **kw)
    assert (a[:, 2:] - b[:, 2:]).abs().max() > 1e-4
    assert a.requires_grad
