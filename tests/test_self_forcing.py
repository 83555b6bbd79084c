"""Self-Forcing's rollout and losses: training rolls out exactly as inference, gradients exist only where
Algorithm 1 puts them, and the distribution-matching losses vanish when the two scores agree."""

import pytest
import torch

from selfforcing.algorithms.distribution_matching import critic_loss, dmd_loss, sid_loss
from selfforcing.algorithms.rollout import sample_exit_step, self_forcing_rollout
from selfforcing.diffusion.flow import FlowMatching
from selfforcing.inference.pipeline import SamplingConfig, StreamingPipeline

LATENT = (4, 6)
FLOW = FlowMatching(shift=5.0)
STEPS = FLOW.warp_timesteps([1000, 750, 500, 250])


def setup(make_model, frames=6, batch=1, **overrides):
    model = make_model(num_frame_per_block=2, **overrides)
    cfg = model.config
    ctx = torch.randn(batch, 5, cfg.text_dim, generator=torch.Generator().manual_seed(1))
    return model, cfg, ctx


@pytest.mark.parametrize("context_noise", [0.0, 100.0])
def test_rollout_at_last_step_equals_inference(make_model, context_noise):
    model, cfg, ctx = setup(make_model)
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(6, cfg.in_dim, *LATENT, generator=g)[None]
    with torch.no_grad():
        out = self_forcing_rollout(model, ctx, noise, flow=FLOW, timesteps=STEPS, exit_step=3,
                                   context_noise=context_noise, rng=g)
    pipe = StreamingPipeline(model, LATENT, sampling=SamplingConfig(context_noise=context_noise))
    ref = pipe(prompt_embeds=ctx, num_frames=6, seeds=[5]).latents
    assert torch.equal(out.video, ref)


def test_gradient_only_at_exit_step(make_model):
    model, cfg, ctx = setup(make_model)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    noise = torch.randn(1, 6, cfg.in_dim, *LATENT)
    exit_step = 2
    out = self_forcing_rollout(model, ctx, noise, flow=FLOW, timesteps=STEPS, exit_step=exit_step,
                               rng=torch.Generator().manual_seed(0))
    # per chunk: exit_step + 1 denoising calls, then one refill (none after the last chunk); only the exit call
    # has gradient
    per_chunk = [False] * exit_step + [True] + [False]
    assert calls == (per_chunk * 3)[:-1]
    out.video.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_gradient_only_for_last_frames(make_model):
    model, cfg, ctx = setup(make_model)
    noise = torch.randn(1, 6, cfg.in_dim, *LATENT)
    out = self_forcing_rollout(model, ctx, noise, flow=FLOW, timesteps=STEPS, exit_step=1, grad_frames=2,
                               rng=torch.Generator().manual_seed(0))
    assert out.grad_start_frame == 4
    out.video[:, :4].sum().backward()  # the early frames are constants
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())
    model.zero_grad()
    out = self_forcing_rollout(model, ctx, noise, flow=FLOW, timesteps=STEPS, exit_step=1, grad_frames=2,
                               rng=torch.Generator().manual_seed(0))
    out.video[:, 4:].sum().backward()
    assert sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None) > 0


def test_rollout_with_rolling_cache_past_window(make_model):
    model, cfg, ctx = setup(make_model, local_attn_size=4)
    noise = torch.randn(1, 12, cfg.in_dim, *LATENT)
    out = self_forcing_rollout(model, ctx, noise, flow=FLOW, timesteps=STEPS, exit_step=0, grad_frames=4)
    out.video[:, -4:].mean().backward()
    assert torch.isfinite(out.video).all()


def test_exit_step_distribution(make_model):
    g = torch.Generator().manual_seed(0)
    draws = [sample_exit_step(4, g) for _ in range(400)]
    assert set(draws) == {0, 1, 2, 3}
    model, cfg, ctx = setup(make_model)
    with pytest.raises(ValueError, match="outside"):
        self_forcing_rollout(model, ctx, torch.zeros(1, 2, cfg.in_dim, *LATENT), flow=FLOW, timesteps=STEPS,
                             exit_step=4)


def scores(make_model):
    real = make_model("tiny", seed=1)
    fake = make_model("tiny", seed=2)
    return real, fake


def test_dmd_gradient_vanishes_when_scores_agree(make_model):
    real, _ = scores(make_model)
    ctx = torch.randn(2, 5, real.config.text_dim)
    x = torch.randn(2, 4, real.config.in_dim, *LATENT, requires_grad=True)
    loss, _ = dmd_loss(x, real, real, FLOW, ctx, torch.zeros(1, 5, real.config.text_dim), guidance=0.0)
    loss.backward()
    assert loss == 0 and x.grad.abs().max() == 0


def test_dmd_gradient_is_the_normalised_score_difference(make_model):
    real, fake = scores(make_model)
    cfg = real.config
    ctx, unc = torch.randn(2, 5, cfg.text_dim), torch.zeros(1, 5, cfg.text_dim)
    x = torch.randn(2, 4, cfg.in_dim, *LATENT, requires_grad=True)
    loss, logs = dmd_loss(x, real, fake, FLOW, ctx, unc, rng=torch.Generator().manual_seed(0))
    loss.backward()
    # recompute p_real, p_fake with the same draws
    g = torch.Generator().manual_seed(0)
    t = FLOW.sample_dmd_timesteps((2,), generator=g)
    x_t = FLOW.add_noise(x.detach(), torch.randn(x.shape, generator=g), t)
    with torch.no_grad():
        p_fake = FLOW.x0_from_velocity(x_t, fake(x_t, t, ctx), t)
        c = FLOW.x0_from_velocity(x_t, real(x_t, t, ctx), t)
        u = FLOW.x0_from_velocity(x_t, real(x_t, t, unc.expand_as(ctx)), t)
    p_real = c + 3.0 * (c - u)
    grad = (p_fake - p_real) / (x.detach() - p_real).abs().mean((1, 2, 3, 4), keepdim=True)
    assert torch.allclose(x.grad * x.numel(), grad, atol=1e-5)
    assert logs["dmd/grad_norm"] > 0


def test_sid_vanishes_when_scores_agree(make_model):
    real, _ = scores(make_model)
    cfg = real.config
    x = torch.randn(2, 4, cfg.in_dim, *LATENT, requires_grad=True)
    loss, _ = sid_loss(x, real, real, FLOW, torch.randn(2, 5, cfg.text_dim), torch.zeros(1, 5, cfg.text_dim),
                       guidance=0.0)
    loss.backward()
    assert loss == 0 and x.grad.abs().max() == 0


def test_critic_loss_trains_only_the_critic(make_model):
    _, fake = scores(make_model)
    cfg = fake.config
    x = torch.randn(2, 4, cfg.in_dim, *LATENT, requires_grad=True)
    loss, _ = critic_loss(x, fake, FLOW, torch.randn(2, 5, cfg.text_dim))
    loss.backward()
    assert torch.isfinite(loss) and x.grad is None
    assert fake.head.head.weight.grad.abs().sum() > 0
