"""Flow-matching training of the bidirectional teacher (Wan2.1 / SD3-style rectified flow, spec §3).

For clean latents x_0 of real videos and their captions c, one step draws per sample

    t ~ U(shifted grid)                        (one timestep per sample: the teacher is bidirectional)
    ε ~ N(0, I),  x_t = (1 - σ) x_0 + σ ε      (σ = t / 1000)
    c ← c_∅ with probability p                 (prompt dropout, for classifier-free guidance)

and regresses the velocity: L = E ‖v_θ(x_t, t, c) - (ε - x_0)‖², optionally weighted by Wan's training
weight w(t) (spec §3). The shift of the training grid sets how often each noise level is seen: shift s gives
P(σ > σ*) = 1 - s⁻¹(σ*) with s⁻¹ the inverse shift, e.g. 36% of the draws above σ = 0.9 at shift 5. The
published teacher is *sampled* at shift 8 (spec §3: the ODE pairs use 8); we train at shift 5 (configurable):
a bit more weight on low noise levels, where the shapes' sharp edges are decided, while keeping most draws
at the high noise levels where layout and motion are decided. Sampling still uses shift 8 by default
(`inference/teacher.py`), as in the published pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..diffusion.flow import FlowMatching
from .base import Batch, Logs, SampleRNG, Update

__all__ = ["TeacherConfig", "teacher_loss", "TeacherTraining"]


@dataclass(frozen=True)
class TeacherConfig:
    """Flow-matching training of the bidirectional teacher.

    Attributes:
        shift: shift of the training timestep grid (spec §3); see the module docstring for the choice of 5.
        prompt_dropout: probability of replacing a caption by the empty prompt (classifier-free guidance).
        weighting: "uniform" (plain MSE) or "wan" (× Wan's bell-shaped training weight, spec §3).
        sample_shift, sample_steps, guidance, sampler: how previews are drawn and what the exported
            checkpoint records as its sampling recipe (spec §3: shift 8; §5: 50 steps).
        init_from: a checkpoint (any layout `load_transformer` reads) to start from instead of random weights.
        frame_noise: probability that a sample's frames are noised at independent levels (each frame its own
            draw from the training grid, as diffusion forcing does) instead of at one shared level. Frames
            noised less than their neighbours make copying along the motion pay, which one shared level
            rarely does; sampling still noises all frames alike. 0: one level per sample. Tried at 0.5 for 500
            steps on the committed teacher: its frames agreed less, not more (docs/world-teacher.md).
        multiscale: pooling factors k of a multiscale loss (Hoogeboom et al. 2023): besides the plain squared
            error, the error average-pooled over k x k latent positions, times k² (so an error of white noise
            costs the same at every scale and a smooth, low-frequency one up to k² more), all terms averaged.
            It puts more of the gradient on where objects are and what colour, less on the irreducible detail
            of high noise levels. (): the plain loss. Tried as (2, 4) for 500 steps: no better than the plain loss.
    """

    shift: float = 5.0
    prompt_dropout: float = 0.1
    weighting: Literal["uniform", "wan"] = "uniform"
    sample_shift: float = 8.0
    sample_steps: int = 50
    guidance: float = 3.0
    sampler: Literal["euler", "dpmpp-2m"] = "euler"
    init_from: str | None = None
    frame_noise: float = 0.0
    multiscale: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.shift <= 0 or self.sample_shift <= 0:
            raise ValueError("shifts must be positive")
        if not 0.0 <= self.prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout must lie in [0, 1], got {self.prompt_dropout}")
        if self.sample_steps < 1:
            raise ValueError("sample_steps must be at least 1")
        if not 0.0 <= self.frame_noise <= 1.0:
            raise ValueError(f"frame_noise must lie in [0, 1], got {self.frame_noise}")
        if any(k < 2 for k in self.multiscale):
            raise ValueError(f"multiscale pooling factors must be at least 2, got {self.multiscale}")


def teacher_loss(
    model: nn.Module,
    x_0: torch.Tensor,
    context: torch.Tensor,
    null_context: torch.Tensor,
    rng: SampleRNG,
    flow: FlowMatching,
    *,
    prompt_dropout: float = 0.1,
    weighting: str = "uniform",
    frame_noise: float = 0.0,
    multiscale: tuple[int, ...] = (),
) -> tuple[torch.Tensor, Logs]:
    """Flow-matching loss of a bidirectional velocity model (spec §3, target v = ε - x_0).

    Args:
        model: (x_t (B, F, C, H, W), t (B,) or per frame (B, F), context (B, L, D_text)) -> v_pred (B, F, C, H, W).
        x_0: (B, F, C, H, W) clean (normalised) latents.
        context, null_context: (B, L, D_text) caption and empty-prompt embeddings.
        rng: per-sample random streams (draw order: timestep, noise, dropout).
        flow: the schedule; its shift sets the training grid.
        prompt_dropout: probability of training a sample unconditionally.
        weighting: "uniform" or "wan" (× `flow.training_weight(t)`).
        frame_noise: probability of independent per-frame noise levels for a sample (draws made after the
            others, so 0 gives exactly the one-level loss).
        multiscale: pooling factors of the multiscale loss (`TeacherConfig.multiscale`); () the plain MSE.
    Returns:
        loss (0-dim, mean over the batch) and detached logs.
    """
    index = rng.randint(flow.num_train_timesteps)                          # (B,)
    eps = rng.randn(*x_0.shape[1:])                                        # (B, F, C, H, W)
    drop = rng.rand() < prompt_dropout                                     # (B,)
    if frame_noise > 0:
        per_frame = rng.randint(flow.num_train_timesteps, x_0.shape[1])    # (B, F)
        mixed = (rng.rand() < frame_noise)[:, None]                        # (B, 1)
        index = torch.where(mixed, per_frame, index[:, None])              # (B, F)
    t = flow.timesteps.to(x_0.device)[index]                               # (B,) or (B, F) on the shifted grid
    x_t = flow.add_noise(x_0, eps, t)                                      # x_t = (1 - σ) x_0 + σ ε
    context = torch.where(drop[:, None, None], null_context, context)      # (B, L, D_text)

    v_pred = model(x_t, t, context)                                        # (B, F, C, H, W)
    v = flow.target_velocity(x_0, eps)                                     # v = ε - x_0
    error = v_pred.float() - v.float()                                     # (B, F, C, H, W)
    per_frame = error.pow(2).mean(dim=(2, 3, 4))                           # (B, F)
    for k in multiscale:
        pooled = F.avg_pool2d(error.flatten(0, 1), k, ceil_mode=True)        # (B*F, C, H/k, W/k)
        per_frame = per_frame + k**2 * pooled.pow(2).mean(dim=(1, 2, 3)).unflatten(0, error.shape[:2])
    per_frame = per_frame / (1 + len(multiscale))
    if weighting == "wan":                                                 # each frame by its own level's weight
        weight = flow.training_weight(t)
        per_frame = per_frame * (weight if weight.ndim == 2 else weight[:, None])
    elif weighting != "uniform":
        raise ValueError(f"unknown weighting {weighting!r}")
    loss = per_frame.mean()

    logs = {"loss": loss.detach(), "prompt_dropout": drop.float().mean()}
    return loss, logs


class TeacherTraining:
    """The teacher as a training algorithm: one update of the network `model` with `teacher_loss`.

    Args:
        config: the teacher's settings.
        model: the bidirectional WanDiT, possibly wrapped for data parallelism (its forward is what is called).
    """

    def __init__(self, config: TeacherConfig, model: nn.Module):
        self.config = config
        self.model = model
        self.flow = FlowMatching(shift=config.shift)
        self.updates = (Update(name="model", network="model", loss=self.loss),)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, Logs]:
        if batch.x_0 is None:
            raise ValueError("teacher training needs clean latents (batch.x_0)")
        rng = SampleRNG(batch.seeds, device=batch.x_0.device)
        return teacher_loss(
            self.model, batch.x_0, batch.context, batch.null_context, rng, self.flow,
            prompt_dropout=self.config.prompt_dropout, weighting=self.config.weighting,
            frame_noise=self.config.frame_noise, multiscale=self.config.multiscale,
        )
