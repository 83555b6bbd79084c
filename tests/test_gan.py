"""The GAN variant: the discriminator reads the critic's hidden states; losses behave as their formulas."""

import pytest
import torch
import torch.nn.functional as F

from selfforcing.algorithms.gan import gan_discriminator_loss, gan_generator_loss
from selfforcing.diffusion.flow import FlowMatching
from selfforcing.models.discriminator import Discriminator, default_tap_layers

LATENT = (4, 6)
FLOW = FlowMatching(shift=5.0)


def test_tap_layers():
    assert default_tap_layers(30) == (13, 21, 29)
    assert default_tap_layers(6) == (2, 3, 5)


def test_discriminator_and_losses(make_model):
    critic = make_model("tiny")
    disc = Discriminator(critic)
    cfg = critic.config
    ctx = torch.randn(2, 5, cfg.text_dim)
    fake = torch.randn(2, 4, cfg.in_dim, *LATENT, requires_grad=True)
    real = torch.randn(2, 4, cfg.in_dim, *LATENT)
    logits = disc(real, torch.tensor([500.0, 100.0]), ctx)
    assert logits.shape == (2,)

    g_loss, _ = gan_generator_loss(fake, real, disc, FLOW, ctx, rng=torch.Generator().manual_seed(0))
    g_loss.backward()
    assert fake.grad.abs().sum() > 0
    disc.zero_grad()
    d_loss, logs = gan_discriminator_loss(fake, real, disc, FLOW, ctx, r1_weight=1.0, r2_weight=1.0,
                                          rng=torch.Generator().manual_seed(0))
    d_loss.backward()
    assert torch.isfinite(d_loss) and "gan/r1" in logs and "gan/r2" in logs
    assert all(p.grad is not None for p in disc.head_parameters())
    assert critic.blocks[-1].self_attn.q.weight.grad is not None  # the backbone is trained too


def test_zero_logits_give_log2(make_model):
    """With a discriminator that outputs 0 everywhere, both losses equal their value at chance."""
    critic = make_model("tiny")
    disc = Discriminator(critic)
    with torch.no_grad():
        disc.classifier[-1].weight.zero_()
        disc.classifier[-1].bias.zero_()
    cfg = critic.config
    x = torch.randn(2, 4, cfg.in_dim, *LATENT)
    ctx = torch.randn(2, 5, cfg.text_dim)
    log2 = F.softplus(torch.tensor(0.0))
    g, _ = gan_generator_loss(x, x, disc, FLOW, ctx)
    d, _ = gan_discriminator_loss(x, x, disc, FLOW, ctx)
    rd, _ = gan_discriminator_loss(x, x, disc, FLOW, ctx, relativistic=True)
    assert torch.allclose(g, log2) and torch.allclose(d, 2 * log2) and torch.allclose(rd, log2)


# ------------------------------------------------------------------------------------------------ the DMD2 mix
def test_score_discriminator_reads_the_backbone_velocity(make_model):
    critic = make_model("tiny")
    x, t = torch.randn(2, 4, critic.config.in_dim, *LATENT), torch.tensor([500.0, 100.0])
    ctx = torch.randn(2, 5, critic.config.text_dim)
    disc = Discriminator(critic, score=True)
    v = disc(x, t, ctx, output="velocity")
    assert torch.equal(v, critic(x, t, ctx))
    v.square().mean().backward()
    assert critic.head.head.weight.grad is not None                # the output head trains as a score
    assert all(p.requires_grad for p in critic.head.parameters())
    with pytest.raises(ValueError, match="score=True"):
        Discriminator(make_model("tiny"))(x, t, ctx, output="velocity")
    assert not any(p.requires_grad for p in Discriminator(make_model("tiny")).backbone.head.parameters())


def _mix(make_model, loss: str, gan_weight: float):
    from selfforcing.algorithms.base import Batch
    from selfforcing.algorithms.distillation import DistillConfig, DistillTraining

    config = DistillConfig(loss=loss, gan_weight=gan_weight, gan_relativistic=True, denoising_steps=(1000, 500),
                           guidance=1.0)
    critic = make_model("tiny", seed=1)
    if gan_weight > 0:
        critic = Discriminator(critic, score=True)
        torch.manual_seed(3)
        with torch.no_grad():                      # a head whose logits are not ~0, so the GAN term is felt
            for p in critic.head_parameters():
                p.add_(0.3 * torch.randn_like(p))
    algo = DistillTraining(config, make_model("tiny-causal", seed=2), critic, make_model("tiny", seed=3),
                           num_frames=4, latent_shape=(4, *LATENT))
    g = torch.Generator().manual_seed(7)
    batch = Batch(context=torch.randn(2, 5, 24, generator=g), null_context=torch.zeros(2, 5, 24),
                  seeds=torch.tensor([4, 5]), x_0=torch.randn(2, 4, 4, *LATENT, generator=g))
    return algo, batch


@pytest.mark.parametrize("loss", ["dmd", "sid"])
def test_dmd2_mix_is_the_plain_loss_plus_the_weighted_adversarial_term(make_model, loss):
    """Generator and critic losses with gan_weight = w are L(0) + w · GAN, where L(0) is the plain loss with the
    discriminator's backbone as the fake score: two weights give the parts, the zero-weight run checks them."""
    plain_algo, batch = _mix(make_model, loss, 0.0)
    plain = [u.loss(batch)[0] for u in plain_algo.updates]                 # critic, generator
    one = [u.loss(batch) for u in _mix(make_model, loss, 1.0)[0].updates]
    half = [u.loss(batch)[0] for u in _mix(make_model, loss, 0.5)[0].updates]
    for p, (l1, _), lh in zip(plain, one, half):
        adversarial = 2 * (l1 - lh)
        assert adversarial.abs() > 1e-4
        torch.testing.assert_close(l1 - adversarial, p, rtol=1e-5, atol=1e-6)
    critic_logs, generator_logs = one[0][1], one[1][1]
    assert {"flow_loss", "gan_d_loss"} <= set(critic_logs) and "gan_g_loss" in generator_logs


def test_dmd2_mix_config_errors():
    from selfforcing.algorithms.distillation import DistillConfig

    assert DistillConfig(gan_weight=0.1).needs_videos and DistillConfig(gan_weight=0.1).adversarial
    assert DistillConfig(gan_weight=0.1, gan_critic_weight=0.5).critic_gan_weight == 0.5
    assert not DistillConfig().needs_videos
    for bad in (dict(loss="gan", gan_weight=0.1), dict(gan_weight=-1.0), dict(gan_weight=0.1, gan_critic_weight=0.0),
                dict(gan_critic_weight=0.1)):
        with pytest.raises(ValueError, match="gan"):
            DistillConfig(**bad)
