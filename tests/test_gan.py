"""The GAN variant: the discriminator reads the critic's hidden states; losses behave as their formulas."""

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
