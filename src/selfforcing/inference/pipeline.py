"""Streaming autoregressive video generation with a KV cache (spec §5).

The video is generated chunk by chunk (`num_frame_per_block` latent frames each). For every chunk:

1. start from fresh noise and denoise with the few-step list (e.g. warped [1000, 750, 500, 250]): at each
   step the generator predicts x_0 and, unless it is the last step, x_0 is re-noised to the next timestep
   with fresh noise; or, for multi-step diffusion models (the baselines), integrate the flow with Euler
   steps and classifier-free guidance (separate caches for the prompt and the negative prompt);
2. yield the chunk (decoded to pixels when the pipeline has a codec) as soon as it is done;
3. run the generator once more on the finished chunk at t = `context_noise` to write its clean keys and
   values into the cache, which the following chunks attend to.

`stream()` is an iterator over chunks; `__call__` collects it, so streaming and one-shot generation run the
same code. Noise is drawn from one `torch.Generator` per sample, seeded from the per-sample seeds, so a
sample is reproducible bit for bit on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from ..diffusion.flow import FlowMatching
from ..diffusion.samplers import cfg as apply_cfg
from ..diffusion.samplers import MULTISTEP_SAMPLERS
from ..models.codec import VideoCodec
from ..models.kv_cache import CrossAttnCache, KVCache
from ..models.wan import WanDiT

__all__ = ["SamplingConfig", "Chunk", "GeneratedVideo", "StreamingPipeline", "chunk_sizes"]


@dataclass(frozen=True)
class SamplingConfig:
    """How each chunk is denoised.

    Attributes:
        denoising_steps: the few-step list before warping (spec §3: [1000, 750, 500, 250]).
        warp: map the list onto the shifted grid (the published generator expects it).
        shift: flow-matching shift of the generator (5 for Self-Forcing).
        num_inference_steps: if set, integrate with this many Euler steps per chunk instead of the
            few-step list (multi-step causal diffusion: the TF / DF baselines).
        sampler: the multi-step solver, "euler" or "dpmpp-2m".
        guidance_scale: classifier-free guidance in velocity space, u + g (c - u); 1 disables it.
        context_noise: timestep of the cache-refill pass (0: clean context).
    """

    denoising_steps: tuple[float, ...] = (1000, 750, 500, 250)
    warp: bool = True
    shift: float = 5.0
    num_inference_steps: int | None = None
    sampler: str = "euler"
    guidance_scale: float = 1.0
    context_noise: float = 0.0

    def __post_init__(self) -> None:
        if self.sampler not in MULTISTEP_SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {sorted(MULTISTEP_SAMPLERS)}")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ValueError("num_inference_steps must be positive")
        if not self.denoising_steps:
            raise ValueError("denoising_steps must not be empty")


@dataclass
class Chunk:
    """One finished chunk. `frames` is None when the pipeline has no codec."""

    index: int
    start_frame: int
    latents: torch.Tensor                      # (B, K, C, h, w)
    frames: torch.Tensor | None = None         # (B, T, 3, H, W) in [-1, 1]


@dataclass
class GeneratedVideo:
    latents: torch.Tensor                      # (B, F, C, h, w)
    frames: torch.Tensor | None = None         # (B, T, 3, H, W) in [-1, 1]
    chunks: list[int] = field(default_factory=list)


def chunk_sizes(num_frames: int, frames_per_block: int, independent_first_frame: bool = False) -> list[int]:
    """Latent frames of every chunk; raises ValueError if `num_frames` does not fit the chunking."""
    if num_frames < 1:
        raise ValueError(f"the number of latent frames must be positive, got {num_frames}")
    rest = num_frames - 1 if independent_first_frame else num_frames
    if rest % frames_per_block:
        first = "1 + " if independent_first_frame else ""
        raise ValueError(
            f"{num_frames} latent frames do not fit chunks of {frames_per_block}: use {first}a multiple of "
            f"{frames_per_block}"
        )
    return ([1] if independent_first_frame else []) + [frames_per_block] * (rest // frames_per_block)


class StreamingPipeline:
    """Chunk-by-chunk generation with a causal `WanDiT`.

    Args:
        generator: a causal WanDiT.
        latent_size: (h, w) of a latent frame.
        text_encoder: turns prompts into (B, L, text_dim) embeddings (optional if embeddings are given).
        codec: decodes latents to pixels chunk by chunk (optional).
        sampling: how chunks are denoised.
        use_kv_cache: False recomputes the whole visible context every chunk instead (for benchmarks).
    """

    def __init__(
        self,
        generator: WanDiT,
        latent_size: tuple[int, int],
        *,
        text_encoder=None,
        codec: VideoCodec | None = None,
        sampling: SamplingConfig = SamplingConfig(),
        use_kv_cache: bool = True,
    ):
        if not generator.config.causal:
            raise ValueError("streaming generation needs a causal generator (config.causal=True)")
        self.generator = generator.eval()
        self.config = generator.config
        self.latent_size = latent_size
        self.text_encoder = text_encoder
        self.codec = codec
        self.sampling = sampling
        self.use_kv_cache = use_kv_cache
        self.flow = FlowMatching(shift=sampling.shift)
        self.tokens_per_frame = self.config.tokens_per_frame(*latent_size)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def timesteps(self) -> torch.Tensor:
        steps = torch.tensor(self.sampling.denoising_steps, dtype=torch.float64)
        return self.flow.warp_timesteps(steps) if self.sampling.warp else steps

    # ------------------------------------------------------------------ inputs
    def _embed(self, prompts: Sequence[str] | None, prompt_embeds: torch.Tensor | None) -> torch.Tensor:
        if prompt_embeds is not None:
            return prompt_embeds.to(self.device)
        if self.text_encoder is None:
            raise ValueError("this pipeline has no text encoder: pass prompt_embeds")
        for p in prompts:
            if not p or not p.strip():
                raise ValueError("prompts must not be empty")
        return self.text_encoder.encode(list(prompts)).to(self.device)

    def _noise(self, generators: list[torch.Generator], num_frames: int) -> torch.Tensor:
        c, (h, w) = self.config.in_dim, self.latent_size
        return torch.stack([torch.randn(num_frames, c, h, w, generator=g) for g in generators]).to(self.device)

    def _fresh_noise(self, generators: list[torch.Generator], like: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.randn(like.shape[1:], generator=g) for g in generators]).to(like.device)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def stream(
        self,
        prompts: Sequence[str] | str | None = None,
        *,
        num_frames: int,
        seeds: Sequence[int] | int = 0,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt: str = "",
        negative_embeds: torch.Tensor | None = None,
        initial_latents: torch.Tensor | None = None,
    ) -> Iterator[Chunk]:
        """Generate `num_frames` latent frames, yielding each chunk as soon as it is finished.

        Args:
            prompts: one prompt or a list (the batch), or None with `prompt_embeds`.
            num_frames: latent frames; must fit the chunking. Past the cache size, a rolling cache
                (config.local_attn_size > 0) keeps the cost per chunk constant.
            seeds: one seed per sample (an int seeds sample b with seed + b).
            prompt_embeds: (B, L, text_dim) instead of prompts.
            negative_prompt / negative_embeds: the unconditional input for guidance_scale != 1.
            initial_latents: (B, F0, C, h, w) clean latents that start the video (video extension or
                image-to-video); F0 must end on a chunk boundary. They are yielded first, unchanged.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        context = self._embed(prompts, prompt_embeds)                       # (B, L, text_dim)
        batch = context.shape[0]
        if isinstance(seeds, int):
            seeds = [seeds + b for b in range(batch)]
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for {batch} prompts")
        if any(s < 0 for s in seeds):
            raise ValueError("seeds must be non-negative")
        sizes = chunk_sizes(num_frames, self.config.num_frame_per_block, self.config.independent_first_frame)
        num_given = 0 if initial_latents is None else initial_latents.shape[1]
        boundaries = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        if num_given not in boundaries:
            raise ValueError(f"initial_latents has {num_given} frames; it must end on a chunk boundary {boundaries}")

        guided = self.sampling.guidance_scale != 1.0
        contexts = [context]
        if guided:
            if negative_embeds is None:
                if self.text_encoder is None:
                    raise ValueError("guidance needs negative_embeds or a text encoder")
                negative_embeds = self.text_encoder.encode([negative_prompt]).to(self.device)  # "" is allowed
            contexts.append(negative_embeds.to(self.device).expand(batch, -1, -1))

        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        noise = self._noise(generators, num_frames)                         # (B, F, C, h, w)
        dtype = self.generator.dtype
        caches = [
            (KVCache.empty(self.config, batch, self.tokens_per_frame, num_frames, device=self.device, dtype=dtype),
             CrossAttnCache.empty(self.config.num_layers))
            for _ in contexts
        ] if self.use_kv_cache else None
        history: list[torch.Tensor] = []                                    # context frames (recompute mode)
        decoder = self.codec.decoder() if self.codec is not None else None

        start = 0
        for index, size in enumerate(sizes):
            if start < num_given:
                x_0 = initial_latents[:, start : start + size].to(self.device, torch.float32)
            else:
                x_0 = self._denoise_chunk(noise[:, start : start + size], start, contexts, caches, history, generators)
            if index < len(sizes) - 1:                  # the last chunk is no one's context
                self._write_context(x_0, start, contexts, caches, history, generators)
            frames = decoder.decode(x_0) if decoder is not None else None
            yield Chunk(index=index, start_frame=start, latents=x_0, frames=frames)
            start += size

    def __call__(self, prompts=None, **kwargs) -> GeneratedVideo:
        """Generate the whole video at once (collects `stream`)."""
        chunks = list(self.stream(prompts, **kwargs))
        latents = torch.cat([c.latents for c in chunks], dim=1)
        frames = torch.cat([c.frames for c in chunks], dim=1) if chunks[0].frames is not None else None
        return GeneratedVideo(latents=latents, frames=frames, chunks=[c.latents.shape[1] for c in chunks])

    # ------------------------------------------------------------------ one chunk
    def _velocity(self, x_t, t, start, contexts, caches, history):
        """Guided velocity of one chunk at scalar timestep t. x_t: (B, K, C, h, w)."""
        batch, size = x_t.shape[:2]
        t_chunk = torch.full((batch, size), float(t), device=x_t.device)
        preds = []
        for i, context in enumerate(contexts):
            if caches is not None:
                kv, cross = caches[i]
                preds.append(self.generator(x_t, t_chunk, context, kv_cache=kv, cross_cache=cross, start_frame=start))
            else:
                preds.append(self._recompute(x_t, t_chunk, context, start, history))
        if len(preds) == 1:
            return preds[0]
        return apply_cfg(preds[0], preds[1], self.sampling.guidance_scale)

    def _recompute(self, x_t, t_chunk, context, start, history):
        """Run the parallel block-causal forward over the visible context plus the chunk."""
        visible = torch.cat(history, dim=1) if history else x_t[:, :0]
        if self.config.rolling:
            keep = self.config.local_attn_size - x_t.shape[1]
            visible = visible[:, visible.shape[1] - min(keep, visible.shape[1]) :]
        first = start - visible.shape[1]
        t_ctx = torch.full(visible.shape[:2], self.sampling.context_noise, device=x_t.device)
        v = self.generator(
            torch.cat([visible, x_t], 1), torch.cat([t_ctx, t_chunk], 1), context, start_frame=first
        )
        return v[:, visible.shape[1] :]

    def _denoise_chunk(self, x_t, start, contexts, caches, history, generators):
        if self.sampling.num_inference_steps is not None:
            sigmas = self.flow.sampling_sigmas(self.sampling.num_inference_steps)
            sampler = MULTISTEP_SAMPLERS[self.sampling.sampler]
            return sampler(
                lambda x, sigma: self._velocity(x, 1000 * float(sigma), start, contexts, caches, history), x_t, sigmas
            )
        timesteps = self.timesteps()
        for i, t in enumerate(timesteps):
            v = self._velocity(x_t, t, start, contexts, caches, history)
            x_0 = self.flow.x0_from_velocity(x_t, v, torch.full(x_t.shape[:1], float(t)))
            if i + 1 < len(timesteps):
                t_next = torch.full(x_t.shape[:1], float(timesteps[i + 1]))
                x_t = self.flow.add_noise(x_0, self._fresh_noise(generators, x_0), t_next)
        return x_0

    def _write_context(self, x_0, start, contexts, caches, history, generators):
        """Refill the cache with the finished chunk at t = context_noise (spec §5)."""
        t_ctx = self.sampling.context_noise
        x_ctx = x_0
        if t_ctx > 0:
            x_ctx = self.flow.add_noise(x_0, self._fresh_noise(generators, x_0), torch.full(x_0.shape[:1], t_ctx))
        if caches is None:
            history.append(x_ctx)
            return
        t_chunk = torch.full(x_0.shape[:2], float(t_ctx), device=x_0.device)
        for context, (kv, cross) in zip(contexts, caches):
            self.generator(x_ctx, t_chunk, context, kv_cache=kv, cross_cache=cross, start_frame=start)
