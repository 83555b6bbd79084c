"""The baselines the paper compares against (spec §4(e)): causal diffusion with Teacher Forcing or Diffusion
Forcing, and DMD on their inputs (CausVid = DF + DMD, and TF + DMD).

- **Teacher Forcing (TF)**: the causal model denoises every block given the *clean ground-truth* previous blocks
  (the [clean ; noisy] teacher-forcing layout of `WanDiT`).
- **Diffusion Forcing (DF)**: every block gets its own noise level and sees the *noisy* previous blocks.
Both train on real videos with the flow-matching loss MSE(v, ε − x_0), weighted by the training weight, with
one timestep per block drawn from the shifted grid. At inference they are sampled with many steps and guidance;
their train-test gap (clean or noisy ground truth in training, own imperfect outputs at inference) is what
Self-Forcing removes.

`one_pass_sample` is the generator of CausVid-style DMD: a real video noised per block at a random step of the
few-step list, denoised in one parallel forward; its x_0 prediction is the clip DMD scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion.flow import FlowMatching
from ..models.wan import WanDiT
from ..nn.masks import frame_blocks
from .base import Batch, SampleRNG, Update, unwrap

__all__ = ["per_block_timesteps", "causal_diffusion_loss", "one_pass_sample", "CausalDiffusionConfig",
           "CausalDiffusionTraining"]


def _blocks(generator: WanDiT, num_frames: int) -> torch.Tensor:
    cfg = unwrap(generator).config                      # through a DDP wrapper
    return frame_blocks(num_frames, cfg.num_frame_per_block, cfg.independent_first_frame)


def per_block_timesteps(
    generator: WanDiT, batch: int, num_frames: int, flow: FlowMatching, rng: torch.Generator | None = None
) -> torch.Tensor:
    """(B, F) timesteps drawn uniformly from the shifted grid, one per block."""
    blocks = _blocks(generator, num_frames)
    t = flow.sample_timesteps((batch, int(blocks[-1]) + 1), generator=rng)
    return t[:, blocks]


def causal_diffusion_loss(
    generator: WanDiT,
    x_0: torch.Tensor,
    context: torch.Tensor,
    *,
    flow: FlowMatching,
    teacher_forcing: bool,
    weighted: bool = True,
    rng: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """Flow-matching loss of a causal model on real clips, with Teacher Forcing or Diffusion Forcing.

    Args:
        generator: causal WanDiT.
        x_0: (B, F, C, H, W) real latents.
        context: (B, L, D) prompt embeddings (already dropped out for guidance by the caller).
        teacher_forcing: give the clean ground truth as context (TF) or not (DF).
        weighted: multiply the per-frame loss by the training weight of its timestep.
    """
    batch, num_frames = x_0.shape[:2]
    t = per_block_timesteps(generator, batch, num_frames, flow, rng).to(x_0.device)     # (B, F)
    eps = torch.randn(x_0.shape, generator=rng).to(x_0.device, x_0.dtype)
    x_t = flow.add_noise(x_0, eps, t)
    if teacher_forcing:
        v_pred = generator(x_t, t, context, clean_x=x_0, clean_t=torch.zeros_like(t))
    else:
        v_pred = generator(x_t, t, context)
    per_frame = (v_pred.float() - flow.target_velocity(x_0, eps).float()).square().mean(dim=(2, 3, 4))  # (B, F)
    if weighted:
        per_frame = per_frame * flow.training_weight(t).to(per_frame)
    loss = per_frame.mean()
    name = "tf" if teacher_forcing else "df"
    return loss, {f"{name}/loss": loss.detach(), f"{name}/t": t.float().mean()}


def one_pass_sample(
    generator: WanDiT,
    x_real: torch.Tensor,
    context: torch.Tensor,
    *,
    flow: FlowMatching,
    timesteps: torch.Tensor,
    teacher_forcing: bool,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    """The generator's x_0 prediction from a real clip noised per block at random few-step timesteps.

    CausVid (DF + DMD) denoises all blocks in one block-causal forward over noisy inputs; TF + DMD gives the
    clean real previous blocks as context. Returns (B, F, C, H, W) with gradient.
    """
    batch, num_frames = x_real.shape[:2]
    blocks = _blocks(generator, num_frames)
    index = torch.randint(len(timesteps), (batch, int(blocks[-1]) + 1), generator=rng)[:, blocks]
    t = timesteps.float()[index].to(x_real.device)                                      # (B, F)
    eps = torch.randn(x_real.shape, generator=rng).to(x_real.device, x_real.dtype)
    x_t = flow.add_noise(x_real, eps, t)
    if teacher_forcing:
        v = generator(x_t, t, context, clean_x=x_real, clean_t=torch.zeros_like(t))
    else:
        v = generator(x_t, t, context)
    return flow.x0_from_velocity(x_t, v, t)


@dataclass(frozen=True)
class CausalDiffusionConfig:
    """Causal diffusion training (the TF / DF baselines) and how its checkpoints are sampled.

    Attributes:
        teacher_forcing: clean ground-truth context (TF) or an independent noise level per block (DF).
        init_from: starting weights (the teacher loaded into the causal config, as in the paper); None: random.
        shift: the training grid's shift (spec §4(e): 5).
        prompt_dropout: probability of the empty prompt, for classifier-free guidance at sampling.
        weighted: × Wan's training weight (spec §4(e)).
        sample_steps, sampler, sample_shift, guidance: the multi-step recipe recorded for inference
            (spec §5: 50 steps with guidance).
    """

    teacher_forcing: bool = True
    init_from: str | None = None
    shift: float = 5.0
    prompt_dropout: float = 0.1
    weighted: bool = True
    sample_steps: int = 20
    sampler: str = "dpmpp-2m"
    sample_shift: float = 5.0
    guidance: float = 3.0


class CausalDiffusionTraining:
    """One update of the causal `generator` with `causal_diffusion_loss` on real clips."""

    def __init__(self, config: CausalDiffusionConfig, generator: torch.nn.Module):
        self.config = config
        self.generator = generator
        self.flow = FlowMatching(shift=config.shift)
        self.updates = (Update(name="generator", network="generator", loss=self.loss),)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        if batch.x_0 is None:
            raise ValueError("causal diffusion needs real clips (batch.x_0): set data.source=world (or latents)")
        rng = SampleRNG(batch.seeds, device=batch.x_0.device)
        drop = rng.rand() < self.config.prompt_dropout                          # (B,)
        context = torch.where(drop[:, None, None], batch.null_context, batch.context)
        loss, logs = causal_diffusion_loss(self.generator, batch.x_0, context, flow=self.flow,
                                           teacher_forcing=self.config.teacher_forcing,
                                           weighted=self.config.weighted, rng=rng.generator())
        return loss, {"loss": loss.detach(), "t": next(v for k, v in logs.items() if k.endswith("/t"))}
