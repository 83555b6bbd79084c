"""Video-level distribution-matching losses on a generated clip: DMD, SiD and the critic's loss.

All three see the *whole* clip the generator produced (Self-Forcing's rollout, or CausVid's single parallel
forward) and compare two scores of its noised version: the real score (the frozen teacher with guidance) and the
fake score (a critic trained online, by flow matching, on the generator's own samples). Score networks are
bidirectional `WanDiT`s predicting velocity; x_0 predictions come from `FlowMatching.x0_from_velocity`.

Functions are pure: networks and a batch in, `(loss, logs)` out; logs are tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..diffusion.flow import FlowMatching
from ..models.wan import WanDiT

__all__ = ["predict_x0", "real_score_x0", "dmd_loss", "sid_loss", "critic_loss"]


def predict_x0(score: WanDiT, flow: FlowMatching, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor):
    """x_0 prediction of a velocity network; t: (B,)."""
    return flow.x0_from_velocity(x_t, score(x_t, t, context), t)


def real_score_x0(real, flow, x_t, t, context, uncond_context, guidance: float) -> torch.Tensor:
    """Guided teacher prediction p_real = c + g (c - u) in x_0 space (spec §4(b); g = 3 in the published
    config, i.e. a classifier-free scale of 1 + g in the u + s (c - u) convention)."""
    cond = predict_x0(real, flow, x_t, t, context)
    if guidance == 0:
        return cond
    uncond = predict_x0(real, flow, x_t, t, uncond_context.expand_as(context))
    return cond + guidance * (cond - uncond)


def _noised(x: torch.Tensor, flow: FlowMatching, rng, min_t: float, max_t: float):
    t = flow.sample_dmd_timesteps((x.shape[0],), generator=rng, min_t=min_t, max_t=max_t).to(x.device)
    eps = torch.randn(x.shape, generator=rng).to(x.device, x.dtype)
    return flow.add_noise(x, eps, t), t, eps


@torch.no_grad()
def _score_pair(x, real, fake, flow, context, uncond_context, guidance, rng, min_t, max_t):
    """Noise the clip once and return (p_real, p_fake, mean|x - p_real| per sample, t)."""
    x_t, t, _ = _noised(x.detach(), flow, rng, min_t, max_t)
    p_fake = predict_x0(fake, flow, x_t, t, context)
    p_real = real_score_x0(real, flow, x_t, t, context, uncond_context, guidance)
    weight = (x.detach() - p_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)           # (B, 1, 1, 1, 1)
    return p_real, p_fake, weight, t


def dmd_loss(
    x: torch.Tensor,
    real: WanDiT,
    fake: WanDiT,
    flow: FlowMatching,
    context: torch.Tensor,
    uncond_context: torch.Tensor,
    *,
    guidance: float = 3.0,
    min_t: float = 20.0,
    max_t: float = 980.0,
    rng: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """Distribution matching distillation (Yin et al. 2024, DMD Eq. 7) with DMD2's per-sample normaliser.

    grad = (p_fake - p_real) / mean|x - p_real|, and loss = 0.5 ||x - sg(x - grad)||², whose gradient with
    respect to x is `grad`: it moves the generated clip from where the critic thinks generated videos are
    towards where the teacher thinks real videos are.

    Args:
        x: (B, F, C, H, W) generated clip, with gradient.
        real, fake: the real score (frozen teacher) and the fake score (critic).
        context, uncond_context: (B, L, D) prompt and (1 or B, L, D) negative-prompt embeddings.
    """
    p_real, p_fake, weight, t = _score_pair(x, real, fake, flow, context, uncond_context, guidance, rng, min_t, max_t)
    grad = torch.nan_to_num((p_fake - p_real) / weight)                                  # Eq. 7 / 8
    loss = 0.5 * F.mse_loss(x.float(), (x.detach() - grad).float())
    return loss, {"dmd/grad_norm": grad.norm() / grad.numel() ** 0.5, "dmd/t": t.float().mean(),
                  "dmd/real_fake_gap": (p_real - p_fake).abs().mean()}


def sid_loss(
    x: torch.Tensor,
    real: WanDiT,
    fake: WanDiT,
    flow: FlowMatching,
    context: torch.Tensor,
    uncond_context: torch.Tensor,
    *,
    alpha: float = 1.0,
    guidance: float = 3.0,
    min_t: float = 20.0,
    max_t: float = 980.0,
    rng: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """Score identity distillation (Zhou et al. 2024) as used by Self-Forcing (spec §4(c)):

        L = mean[(p_real - p_fake) · ((p_real - x) - α (p_real - p_fake)) / sg(mean|x - p_real|)],

    with the score predictions held constant and the gradient flowing through x.
    """
    p_real, p_fake, weight, t = _score_pair(x, real, fake, flow, context, uncond_context, guidance, rng, min_t, max_t)
    diff = (p_real - p_fake).float()
    loss = torch.nan_to_num(diff * ((p_real - x).float() - alpha * diff) / weight).mean()
    return loss, {"sid/real_fake_gap": diff.abs().mean(), "sid/t": t.float().mean()}


def critic_loss(
    x: torch.Tensor,
    fake: WanDiT,
    flow: FlowMatching,
    context: torch.Tensor,
    *,
    min_t: float = 20.0,
    max_t: float = 980.0,
    rng: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """Flow matching of the fake score on generated clips: mean((v_fake - (ε - x))²) (spec §4(b))."""
    x = x.detach()
    x_t, t, eps = _noised(x, flow, rng, min_t, max_t)
    v_fake = fake(x_t, t, context)
    loss = F.mse_loss(v_fake.float(), flow.target_velocity(x, eps).float())
    return loss, {"critic/loss": loss.detach(), "critic/t": t.float().mean()}
