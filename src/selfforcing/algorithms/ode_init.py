"""ODE-regression initialisation of the causal generator (CausVid, Yin et al. 2025; spec §4(a)).

1. The bidirectional teacher samples deterministic (Euler, guided) trajectories from noise for training prompts;
   no videos are needed. The states at the generator's few-step timesteps and the final clean state are kept.
2. The causal student learns to jump from a stored state straight to the clean end point: for every block an
   index into the stored states is drawn at random, and one parallel block-causal forward predicts x_0 of all
   frames at once.

With the teacher sampled at the generator's own shift over `num_steps` steps, the states at step indices
`(0, 1/4, 1/2, 3/4) * num_steps` sit exactly on the warped list [1000, 750, 500, 250] of that shift (for
shift 5: t = 1000, 937.5, 833.3, 625), so the student is trained at the timesteps it will be run at.
The published code samples with shift 8 and 48 steps and keeps indices [0, 12, 24, 36] instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..diffusion.flow import FlowMatching
from ..diffusion.samplers import cfg
from ..models.wan import WanDiT
from ..nn.masks import frame_blocks
from .base import Batch, SampleRNG, Update, unwrap

__all__ = ["keep_indices", "sample_ode_trajectory", "ode_regression_loss", "ODEInitConfig", "ODEInitTraining"]


def keep_indices(num_steps: int, num_kept: int = 4) -> list[int]:
    """Step indices of the kept states: evenly spaced from 0 (pure noise)."""
    if num_steps % num_kept:
        raise ValueError(f"num_steps {num_steps} must be a multiple of {num_kept}")
    return [i * num_steps // num_kept for i in range(num_kept)]


@torch.no_grad()
def sample_ode_trajectory(
    teacher: WanDiT,
    context: torch.Tensor,
    uncond_context: torch.Tensor,
    noise: torch.Tensor,
    *,
    flow: FlowMatching,
    num_steps: int = 48,
    guidance: float = 6.0,
    keep: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler-integrate the guided teacher flow and keep selected states.

    Args:
        teacher: bidirectional WanDiT; a self-conditioned one reads its own last estimate of x_0 in each
            branch, as `sample_teacher` does.
        context: (B, L, D); uncond_context: (1 or B, L, D) negative prompt.
        noise: (B, F, C, H, W) the starting noise (σ = 1).
        flow: schedule giving the sampling σ's (its shift).
        guidance: classifier-free scale u + g (c - u) (linear, so the same in velocity and x_0 space).
        keep: step indices whose state x_t (before the step) is stored; default `keep_indices(num_steps)`.
    Returns:
        states: (B, len(keep) + 1, F, C, H, W), the kept states then the final clean state;
        timesteps: (len(keep) + 1,) their timesteps, the last 0.
    """
    keep = keep_indices(num_steps) if keep is None else keep
    sigmas = flow.sampling_sigmas(num_steps)
    uncond = uncond_context.expand_as(context)
    self_cond = getattr(getattr(teacher, "config", None), "self_cond", False)
    estimates = {}                                     # a self-conditioned teacher's last x_0, per branch
    x, states = noise, []

    def velocity(t: torch.Tensor, ctx: torch.Tensor, branch: str) -> torch.Tensor:
        v = teacher(x, t, ctx, **({"x0_cond": estimates.get(branch)} if self_cond else {}))
        if self_cond:
            estimates[branch] = flow.x0_from_velocity(x.float(), v.float(), t)
        return v

    for i in range(num_steps):
        if i in keep:
            states.append(x)
        t = torch.full((x.shape[0],), 1000.0 * float(sigmas[i]), device=x.device)
        v = velocity(t, context, "cond")
        if guidance != 1.0:
            v = cfg(v, velocity(t, uncond, "uncond"), guidance)
        x = x + v * float(sigmas[i + 1] - sigmas[i])                       # Euler step
    states.append(x)
    timesteps = torch.tensor([1000.0 * float(sigmas[i]) for i in keep] + [0.0])
    return torch.stack(states, dim=1), timesteps


def ode_regression_loss(
    generator: WanDiT,
    states: torch.Tensor,
    timesteps: torch.Tensor,
    context: torch.Tensor,
    *,
    flow: FlowMatching,
    rng: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """Regress the clean end point from a random stored state per block, in one block-causal forward.

    Args:
        generator: causal WanDiT (possibly wrapped for data parallelism).
        states: (B, S + 1, F, C, H, W) from `sample_ode_trajectory`, last = clean.
        timesteps: (S + 1,) timesteps of the states.
        context: (B, L, D).
    """
    cfg_ = unwrap(generator).config
    batch, num_states, num_frames = states.shape[:3]
    blocks = frame_blocks(num_frames, cfg_.num_frame_per_block, cfg_.independent_first_frame)
    num_blocks = int(blocks[-1]) + 1
    index = torch.randint(num_states - 1, (batch, num_blocks), generator=rng)[:, blocks]  # (B, F)
    index = index.to(states.device)
    gather = index[:, None, :, None, None, None].expand(-1, 1, -1, *states.shape[3:])
    x_t = states.gather(1, gather).squeeze(1)                              # (B, F, C, H, W)
    t = timesteps.to(states.device)[index]                                 # (B, F)
    x_0 = states[:, -1]
    x0_pred = flow.x0_from_velocity(x_t, generator(x_t, t, context), t)
    noisy = (t != 0)[:, :, None, None, None].expand_as(x_0)
    loss = F.mse_loss(x0_pred[noisy].float(), x_0[noisy].float())
    return loss, {"ode/loss": loss.detach(), "ode/t": t.float().mean()}


@dataclass(frozen=True)
class ODEInitConfig:
    """ODE-regression initialisation of the causal generator.

    Attributes:
        init_from: the student's starting weights (normally the teacher, loaded into the causal config, as the
            published student starts from the base model); None: random.
        shift: the generator's flow shift (x_0 conversion only: σ = t / 1000).
        denoising_steps, warp: the few-step list recorded in the exported checkpoint (inference recipe); the
            stored trajectories should sit on it (see the module docstring).
        context_noise: the cache-refill timestep recorded for inference.
    """

    init_from: str | None = None
    shift: float = 5.0
    denoising_steps: tuple[float, ...] = (1000, 750, 500, 250)
    warp: bool = True
    context_noise: float = 0.0


class ODEInitTraining:
    """One update of the causal `generator` with `ode_regression_loss` on stored teacher trajectories."""

    def __init__(self, config: ODEInitConfig, generator: torch.nn.Module):
        self.config = config
        self.generator = generator
        self.flow = FlowMatching(shift=config.shift)
        self.updates = (Update(name="generator", network="generator", loss=self.loss),)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        if batch.trajectory is None or batch.trajectory_timesteps is None:
            raise ValueError("ODE init needs stored trajectories: set data.source=ode-pairs and data.ode_pairs")
        rng = SampleRNG(batch.seeds).generator()
        loss, logs = ode_regression_loss(self.generator, batch.trajectory, batch.trajectory_timesteps, batch.context,
                                         flow=self.flow, rng=rng)
        return loss, {"loss": loss.detach(), "t": logs["ode/t"]}
