"""Adversarial losses of Self-Forcing + GAN (spec §4(d)): the only variant that needs real videos.

Real and generated clips are noised at the *same* timestep (one per pair) and scored by the discriminator.
Non-saturating losses (Goodfellow et al. 2014), optionally relativistic (Jolicoeur-Martineau 2019), and the
finite-difference R1 / R2 penalties of adversarial post-training (Lin et al. 2025): instead of a gradient
penalty, ||D(x + δ) - D(x)||² with small Gaussian δ, which needs no double backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..diffusion.flow import FlowMatching
from ..models.discriminator import Discriminator

__all__ = ["gan_generator_loss", "gan_discriminator_loss"]


def _same_t_noised(x_fake, x_real, flow: FlowMatching, rng, min_t: float, max_t: float):
    t = flow.sample_dmd_timesteps((x_fake.shape[0],), generator=rng, min_t=min_t, max_t=max_t).to(x_fake.device)
    eps_f = torch.randn(x_fake.shape, generator=rng).to(x_fake.device, x_fake.dtype)
    eps_r = torch.randn(x_real.shape, generator=rng).to(x_real.device, x_real.dtype)
    return flow.add_noise(x_fake, eps_f, t), flow.add_noise(x_real, eps_r, t), t


def gan_generator_loss(
    x_fake: torch.Tensor,
    x_real: torch.Tensor,
    disc: Discriminator,
    flow: FlowMatching,
    context: torch.Tensor,
    *,
    relativistic: bool = False,
    min_t: float = 20.0,
    max_t: float = 980.0,
    rng: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """softplus(-D(fake)), or softplus(-(D(fake) - D(real))) when relativistic; gradient through x_fake."""
    xt_fake, xt_real, t = _same_t_noised(x_fake, x_real.detach(), flow, rng, min_t, max_t)
    logit_fake = disc(xt_fake, t, context)
    if relativistic:
        with torch.no_grad():
            logit_real = disc(xt_real, t, context)
        loss = F.softplus(-(logit_fake - logit_real)).mean()
    else:
        loss = F.softplus(-logit_fake).mean()
    return loss, {"gan/g_loss": loss.detach(), "gan/logit_fake": logit_fake.detach().mean()}


def gan_discriminator_loss(
    x_fake: torch.Tensor,
    x_real: torch.Tensor,
    disc: Discriminator,
    flow: FlowMatching,
    context: torch.Tensor,
    *,
    relativistic: bool = False,
    r1_weight: float = 0.0,
    r2_weight: float = 0.0,
    r_sigma: float = 0.01,
    min_t: float = 20.0,
    max_t: float = 980.0,
    rng: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """softplus(-D(real)) + softplus(D(fake)) (or the relativistic pair), plus optional R1 (real) and R2
    (fake) finite-difference penalties."""
    xt_fake, xt_real, t = _same_t_noised(x_fake.detach(), x_real, flow, rng, min_t, max_t)
    logit_real = disc(xt_real, t, context)
    logit_fake = disc(xt_fake, t, context)
    if relativistic:
        loss = F.softplus(-(logit_real - logit_fake)).mean()
    else:
        loss = F.softplus(-logit_real).mean() + F.softplus(logit_fake).mean()
    logs = {"gan/d_loss": loss.detach(), "gan/logit_real": logit_real.detach().mean(),
            "gan/logit_fake": logit_fake.detach().mean()}
    for weight, x_t, logit, name in ((r1_weight, xt_real, logit_real, "r1"), (r2_weight, xt_fake, logit_fake, "r2")):
        if weight > 0:
            delta = torch.randn(x_t.shape, generator=rng).to(x_t.device, x_t.dtype) * r_sigma
            penalty = (disc(x_t + delta, t, context) - logit).square().mean() / r_sigma**2
            loss = loss + weight * penalty
            logs[f"gan/{name}"] = penalty.detach()
    return loss, logs
