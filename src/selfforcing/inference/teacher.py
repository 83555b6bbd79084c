"""Multi-step sampling of the bidirectional teacher with classifier-free guidance.

All frames are denoised jointly (no cache, no chunks): integrate the flow ODE dx/dσ = v(x, σ) from pure
noise at σ = 1 to σ = 0 on the shifted grid `FlowMatching(shift).sampling_sigmas(steps)` (spec §3), with the
guided velocity of Ho & Salimans (2022) in flow space (spec §5),

    v = v_∅ + g (v_c - v_∅),

the conditional and unconditional predictions computed in one batched forward. With g = 1 the unconditional
pass is skipped. The published teacher is sampled with shift 8 and 48-50 steps (spec §3, §4(a)). A
self-conditioned model (`WanConfig.self_cond`) reads, at each step, the estimate of the clean video x_t - σ v
it made at the step before (zeros at the first), the conditional and unconditional branches each their own.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from ..diffusion.flow import FlowMatching
from ..diffusion.samplers import MULTISTEP_SAMPLERS as SAMPLERS
from ..diffusion.samplers import Callback, cfg
from ..models.codec import WORLD_LATENT_NORM, LatentNorm, SpaceToDepthCodec, VideoCodec, to_uint8
from .pipeline import Chunk, GeneratedVideo, SamplingConfig

__all__ = ["SAMPLERS", "sample_teacher", "initial_noise", "decode_to_uint8", "BidirectionalPipeline"]


def initial_noise(
    shape: Sequence[int], seed: int | Sequence[int] | None = 0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, F, C, H, W) float32 noise on the CPU.

    With `generator`, one draw of the whole shape; otherwise sample b is drawn from its own generator seeded
    with `seed + b` (or `seed[b]`), as the streaming pipeline does, so a sample does not depend on its batch.
    """
    if generator is not None:
        return torch.randn(tuple(shape), generator=generator)
    batch = shape[0]
    seeds = [int(seed or 0) + b for b in range(batch)] if not isinstance(seed, Sequence) else list(seed)
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=torch.Generator().manual_seed(s)) for s in seeds])


def _pad_to(context: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(context, (0, 0, 0, length - context.shape[1]))  # zero rows, as the DiT pads anyway


@torch.no_grad()
def sample_teacher(
    model: torch.nn.Module,
    context: torch.Tensor,
    negative_context: torch.Tensor | None = None,
    *,
    num_frames: int,
    latent_size: tuple[int, int],
    steps: int = 50,
    guidance: float = 3.0,
    shift: float = 8.0,
    seed: int | Sequence[int] | None = 0,
    generator: torch.Generator | None = None,
    sampler: str = "euler",
    callback: Optional[Callback] = None,
) -> torch.Tensor:
    """Generate latents with a bidirectional velocity model.

    Args:
        model: a bidirectional WanDiT (or any module with `config.in_dim` mapping (x_t, t (B,), context) -> v).
        context: (B, L, text_dim) prompt embeddings.
        negative_context: (B or 1, L', text_dim) embeddings of the negative (usually empty) prompt; needed
            when guidance != 1.
        num_frames, latent_size: F and (H, W) of the latent video.
        steps: ODE steps.
        guidance: g of v_∅ + g (v_c - v_∅); 1 disables guidance (one forward per step).
        shift: timestep shift of the sampling grid.
        seed: per-sample seeds (an int seeds sample b with seed + b); ignored when `generator` is given.
        generator: draw all the initial noise from this generator instead.
        sampler: "euler" or "dpmpp-2m".
        callback: `callback(i, x, x_0)` after each step.
    Returns:
        (B, F, C, H, W) float32 latents (in the model's normalised latent space).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
    guided = guidance != 1.0
    if guided and negative_context is None:
        raise ValueError("guidance != 1 needs a negative_context (e.g. the empty prompt's embedding)")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batch = context.shape[0]
    shape = (batch, num_frames, model.config.in_dim, *latent_size)
    x = initial_noise(shape, seed, generator).to(device)                    # (B, F, C, H, W)
    context = context.to(device)
    if guided:
        negative_context = negative_context.to(device).expand(batch, -1, -1)
        length = max(context.shape[1], negative_context.shape[1])
        both = torch.cat([_pad_to(context, length), _pad_to(negative_context, length)])  # (2B, L, text_dim)

    flow = FlowMatching(shift=shift)
    self_cond = getattr(model.config, "self_cond", False)
    estimate = None                                                         # the last step's x_0, per branch

    def denoise(x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        nonlocal estimate
        t = torch.full((batch,), 1000.0 * float(sigma), device=device)     # (B,)
        x_in, t_in, ctx = (x_t, t, context) if not guided else (torch.cat([x_t, x_t]), torch.cat([t, t]), both)
        v = model(x_in, t_in, ctx, **({"x0_cond": estimate} if self_cond else {})).float()  # ((2)B, F, C, H, W)
        if self_cond:
            estimate = flow.x0_from_velocity(x_in.float(), v, t_in)
        if not guided:
            return v
        v_cond, v_uncond = v.chunk(2)
        return cfg(v_cond, v_uncond, guidance)                              # v_∅ + g (v_c - v_∅)

    sigmas = flow.sampling_sigmas(steps)                                    # (steps + 1,) from 1 to 0
    return SAMPLERS[sampler](denoise, x, sigmas, callback=callback)


def decode_to_uint8(
    latents: torch.Tensor,
    codec: VideoCodec | None = None,
    norm: LatentNorm = WORLD_LATENT_NORM,
) -> torch.Tensor:
    """(B, F, C, H, W) normalised latents -> (B, T, H_px, W_px, 3) uint8 video.

    Args:
        codec: defaults to the world's `SpaceToDepthCodec(4)`.
        norm: the latent normalisation the model was trained with (`WORLD_LATENT_NORM` for the world).
    """
    codec = codec if codec is not None else SpaceToDepthCodec(4)
    return to_uint8(codec.decode(norm.denormalize(latents.float().cpu())))  # (B, T, H, W, 3)


class BidirectionalPipeline:
    """Generation with a bidirectional model (the teacher, or Wan's base model): all frames are denoised
    together with `sample_teacher`, so the single "chunk" arrives at the end. Same interface as
    `StreamingPipeline`, so the CLI and the evaluator treat both alike.

    Sampling comes from `sampling`: `num_inference_steps` (default 50), `sampler`, `shift`, `guidance_scale`.
    """

    def __init__(self, model, latent_size: tuple[int, int], *, text_encoder=None, codec: VideoCodec | None = None,
                 sampling: SamplingConfig = SamplingConfig()):
        if model.config.causal:
            raise ValueError("BidirectionalPipeline needs a bidirectional model (config.causal=False)")
        self.generator = model.eval()
        self.config = model.config
        self.latent_size = latent_size
        self.text_encoder = text_encoder
        self.codec = codec
        self.sampling = sampling

    @torch.no_grad()
    def stream(self, prompts=None, *, num_frames: int, seeds=0, prompt_embeds=None, negative_prompt: str = "",
               negative_embeds=None) -> Iterator[Chunk]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if num_frames < 1:
            raise ValueError(f"the number of latent frames must be positive, got {num_frames}")
        if prompt_embeds is None:
            if self.text_encoder is None:
                raise ValueError("this pipeline has no text encoder: pass prompt_embeds")
            if any(not p or not p.strip() for p in prompts):
                raise ValueError("prompts must not be empty")
            prompt_embeds = self.text_encoder.encode(list(prompts))
        batch = prompt_embeds.shape[0]
        seeds = [seeds + b for b in range(batch)] if isinstance(seeds, int) else list(seeds)
        if any(s < 0 for s in seeds):
            raise ValueError("seeds must be non-negative")
        guidance = self.sampling.guidance_scale
        if guidance != 1.0 and negative_embeds is None:
            negative_embeds = self.text_encoder.encode([negative_prompt])
        latents = sample_teacher(
            self.generator, prompt_embeds, negative_embeds, num_frames=num_frames, latent_size=self.latent_size,
            steps=self.sampling.num_inference_steps or 50, guidance=guidance, shift=self.sampling.shift,
            seed=seeds, sampler=self.sampling.sampler,
        )
        frames = self.codec.decode(latents) if self.codec is not None else None
        yield Chunk(index=0, start_frame=0, latents=latents, frames=frames)

    def __call__(self, prompts=None, **kwargs) -> GeneratedVideo:
        chunk = next(iter(self.stream(prompts, **kwargs)))
        return GeneratedVideo(latents=chunk.latents, frames=chunk.frames, chunks=[chunk.latents.shape[1]])
