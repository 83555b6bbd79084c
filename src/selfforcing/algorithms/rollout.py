"""The Self-Forcing rollout: Algorithm 1 of Huang et al. (2025), with random gradient truncation.

During training the generator produces the whole clip exactly as at inference: chunk by chunk, from fresh noise,
with the few-step denoising list, a KV cache of its *own* previous outputs, and a cache-refill pass after each
chunk. To keep this affordable, one exit step s ~ U{0, ..., S-1} is drawn per rollout and shared by all chunks
(`same_step_across_blocks` in the published code): the steps before s run without gradient, the step s runs with
gradient and its x_0 prediction is the chunk's output, and the cache is refilled without gradient, so earlier
context enters every later chunk as constants. Gradients therefore flow only through each chunk's exit-step
forward (spec §4(b)).

When the rollout is longer than the training window (long-video recipes, as in Self-Forcing++), only the last
`grad_frames` frames get gradient; with a rolling cache (config.local_attn_size) the cost per chunk stays flat.

Under torchrun the generator may be wrapped (DDP) or sharded (FSDP2); every call is then a collective, so the
exit step must be the same on every rank (`base.py`: drawn from `Batch.shared_seed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion.flow import FlowMatching
from ..inference.pipeline import chunk_sizes
from ..models.kv_cache import CrossAttnCache, KVCache
from ..models.wan import WanDiT
from .base import unwrap

__all__ = ["RolloutOutput", "sample_exit_step", "self_forcing_rollout"]


@dataclass
class RolloutOutput:
    video: torch.Tensor          # (B, F, C, H, W): each chunk's x_0 at the exit step
    exit_step: int               # index into the denoising list
    exit_timestep: float         # its timestep
    grad_start_frame: int        # frames from here on carry gradient


def sample_exit_step(num_steps: int, rng: torch.Generator | None = None) -> int:
    """s ~ U{0, ..., num_steps - 1} (Algorithm 1, line 2)."""
    return int(torch.randint(num_steps, (1,), generator=rng))


def self_forcing_rollout(
    generator: WanDiT,
    context: torch.Tensor,
    noise: torch.Tensor,
    *,
    flow: FlowMatching,
    timesteps: torch.Tensor,
    exit_step: int,
    context_noise: float = 0.0,
    grad_frames: int | None = None,
    rng: torch.Generator | None = None,
) -> RolloutOutput:
    """Roll the causal generator out over a whole clip, as at inference.

    Args:
        generator: causal WanDiT (its config gives the chunking and the cache layout), possibly wrapped for data
            parallelism.
        context: (B, L, text_dim) text embeddings.
        noise: (B, F, C, H, W) the initial noise of every frame.
        flow: the generator's flow-matching schedule (shift 5 for Self-Forcing).
        timesteps: (S,) the warped few-step list, descending.
        exit_step: the step whose x_0 is kept, with gradient.
        context_noise: timestep of the cache-refill pass.
        grad_frames: only the last `grad_frames` frames get gradient (None: all).
        rng: generator of the fresh noise between steps (on the CPU).
    """
    cfg, dtype = unwrap(generator).config, unwrap(generator).dtype
    if torch.is_autocast_enabled(noise.device.type):       # keys and values come out in the autocast dtype:
        dtype = torch.get_autocast_dtype(noise.device.type)  # keep them so (a 21-frame 1.3B cache: 6 GB, not 12)
    batch, num_frames, _, height, width = noise.shape
    if not 0 <= exit_step < len(timesteps):
        raise ValueError(f"exit_step {exit_step} is outside the {len(timesteps)}-step list")
    sizes = chunk_sizes(num_frames, cfg.num_frame_per_block, cfg.independent_first_frame)
    grad_start = 0 if grad_frames is None else max(0, num_frames - grad_frames)
    tokens_per_frame = cfg.tokens_per_frame(height, width)
    kv_cache = KVCache.empty(cfg, batch, tokens_per_frame, num_frames, device=noise.device,
                             dtype=dtype)
    cross_cache = CrossAttnCache.empty(cfg.num_layers)

    def fresh(like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=rng).to(like.device, like.dtype)

    outputs, start = [], 0
    for size in sizes:
        x_t = noise[:, start : start + size]                                           # (B, K, C, H, W)
        with_grad = start + size > grad_start
        for i in range(exit_step + 1):
            t = torch.full((batch, size), float(timesteps[i]), device=noise.device)
            with torch.set_grad_enabled(with_grad and i == exit_step and torch.is_grad_enabled()):
                v = generator(x_t, t, context, kv_cache=kv_cache, cross_cache=cross_cache, start_frame=start)
                x_0 = flow.x0_from_velocity(x_t, v, t)
            if i < exit_step:                                                          # Algorithm 1, line 9
                t_next = torch.full((batch,), float(timesteps[i + 1]), device=noise.device)
                x_t = flow.add_noise(x_0, fresh(x_0), t_next)
        outputs.append(x_0)
        if start + size < num_frames:                           # the last chunk is no one's context: no refill
            with torch.no_grad():                                                      # Algorithm 1, line 13
                x_ctx = x_0.detach()
                if context_noise > 0:
                    x_ctx = flow.add_noise(x_ctx, fresh(x_ctx), torch.full((batch,), float(context_noise)))
                t_ctx = torch.full((batch, size), float(context_noise), device=noise.device)
                generator(x_ctx, t_ctx, context, kv_cache=kv_cache, cross_cache=cross_cache, start_frame=start)
        start += size
    return RolloutOutput(
        video=torch.cat(outputs, dim=1),
        exit_step=exit_step,
        exit_timestep=float(timesteps[exit_step]),
        grad_start_frame=grad_start,
    )
