"""`selfforcing ode-pairs`: sample teacher ODE trajectories for the ODE-regression init (spec §4(a)).

No videos are needed: the prompts are training captions (the world's, never the held-out set, or the lines of
a prompt file), the teacher integrates its guided flow from noise with Euler steps at the generator's shift,
and the states at the kept step indices plus the clean end point are stored in shards that stream from disk
(`io/ode_pairs.py`). With `num_steps` a multiple of 4 and the generator's shift, the kept states sit exactly
on the generator's warped few-step list (see `algorithms/ode_init.py`).

Two ways to say what the teacher runs on:
- a teacher trained by `selfforcing train` records its text encoder and latent size (its `PipelineSpec`);
- any other teacher (a Wan2.1 folder, at real scale) needs them given: the UMT5 encoder of a Wan2.1 folder
  (`text_encoder_path`) and the latent frame shape (`latent_shape`, e.g. (16, 60, 104) for 480x832).

The set is written in whole batches and is resumable: rerunning the command with the same settings adds the
missing trajectories (sample i always gets prompt i and the noise of seed (seed, i)). Under torchrun each of
the W processes samples the trajectories i ≡ rank (mod W) into its own part folder `OUT/part-RRR-of-WWW`
(rerun with the same W to resume); `ODEPairDataset` reads the parts as one set.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..algorithms.ode_init import keep_indices, sample_ode_trajectory
from ..diffusion.flow import FlowMatching
from ..io.checkpoints import load_transformer
from ..io.ode_pairs import ODEPairWriter
from ..text.encoders import TextEncoder
from ..world.dataset import WorldDataConfig, WorldDataset

__all__ = ["ODEPairsConfig", "generate_ode_pairs", "pair_prompts", "part_folder"]

SPEC_GUIDANCE = 6.0   # spec §4(a): the published pairs are sampled with CFG 6 (teachers without a recorded one)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ODEPairsConfig:
    """What `generate_ode_pairs` samples.

    Attributes:
        teacher: the bidirectional teacher, any layout `load_transformer` reads (a checkpoint of `selfforcing
            train`, whose stored spec gives the text encoder and latent size, or a Wan2.1 folder).
        out: the output folder.
        n: trajectories in the set.
        num_steps: Euler steps per trajectory (a multiple of 4; spec: 48).
        guidance: classifier-free scale u + g (c - u) against the negative prompt (spec: 6); None: the
            teacher's recorded sampling guidance, or 6 for a teacher without one.
        shift: the sampling shift; the generator's (5) puts the kept states on its warped few-step list.
        num_frames: latent frames per trajectory (the generator's training clip).
        batch_size: trajectories sampled together.
        seed: noise seed; world prompts come from the world's training stream with `data_seed`.
        detailed_caption_prob: share of detailed world captions (the rest are short ones).
        prompts_file: captions from this text file instead (one per line; trajectory i gets line i, cycling).
        text_encoder_path: a Wan2.1 folder whose UMT5 encodes the prompts (a teacher without a recorded spec).
        latent_shape: (C, H, W) of a latent frame (with `text_encoder_path`).
        negative_prompt: the prompt guidance pushes away from ("" the empty prompt).
        dtype: the teacher's (and UMT5's on a GPU) precision, "float32", "bfloat16" or "auto" (bf16 where the
            device multiplies it natively: `training.parallel.native_bf16`, resolved by `generate_ode_pairs`).
        rank, world_size: this process's share: trajectories i ≡ rank (mod world_size), in its part folder.
    """

    teacher: str
    out: str
    n: int = 256
    num_steps: int = 16
    guidance: float | None = None
    shift: float = 5.0
    num_frames: int = 21
    batch_size: int = 8
    seed: int = 0
    data_seed: int = 0
    detailed_caption_prob: float = 0.5
    prompts_file: str | None = None
    text_encoder_path: str | None = None
    latent_shape: tuple[int, int, int] | None = None
    negative_prompt: str = ""
    dtype: str = "auto"
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.n < 1 or self.batch_size < 1 or self.num_frames < 1:
            raise ValueError("n, batch_size and num_frames must be positive")
        if self.num_steps < 4 or self.num_steps % 4:
            raise ValueError(f"num_steps must be a positive multiple of 4, got {self.num_steps}")
        if self.shift <= 0:
            raise ValueError("shift must be positive")
        if (self.text_encoder_path is None) != (self.latent_shape is None):
            raise ValueError("a teacher without a recorded spec needs both the text encoder path (a Wan2.1 "
                             "folder with UMT5) and the latent shape (C, H, W)")
        if self.latent_shape is not None and (len(self.latent_shape) != 3 or min(self.latent_shape) < 1):
            raise ValueError(f"latent_shape must be three positive numbers (C, H, W), got {self.latent_shape}")
        if self.dtype not in ("float32", "bfloat16", "auto"):
            raise ValueError(f"dtype must be float32, bfloat16 or auto, got {self.dtype!r}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")


def pair_prompts(n: int, data_seed: int = 0, detailed_caption_prob: float = 0.5) -> list[str]:
    """The captions of trajectories 0 .. n-1: training scenes of the world, detailed or short."""
    world = WorldDataset(WorldDataConfig(length=max(n, 1), seed=data_seed))
    prompts = []
    for i in range(n):
        short, detailed = world.captions(i)
        pick_detailed = np.random.default_rng([data_seed, i, 2]).random() < detailed_caption_prob
        prompts.append(detailed if pick_detailed else short)
    return prompts


def part_folder(out: str | Path, rank: int, world_size: int) -> Path:
    """Where process `rank` of `world_size` writes: `out` itself for one process, else `out/part-RRR-of-WWW`."""
    return Path(out) if world_size == 1 else Path(out) / f"part-{rank:03d}-of-{world_size:03d}"


def _prompts(config: ODEPairsConfig) -> list[str]:
    """The captions of trajectories 0 .. n-1."""
    if config.prompts_file is None:
        return pair_prompts(config.n, config.data_seed, config.detailed_caption_prob)
    from .data import read_prompt_file

    lines = read_prompt_file(config.prompts_file)
    return [lines[i % len(lines)] for i in range(config.n)]


def _encoder_and_latents(config: ODEPairsConfig, teacher, device: torch.device) -> tuple[TextEncoder, tuple, float]:
    """(text encoder, latent frame shape (C, H, W), guidance) of the teacher: given, or from its spec."""
    cfg = teacher.config
    if config.text_encoder_path is not None:
        from ..text.umt5 import UMT5TextEncoder

        dtype = torch.bfloat16 if device.type == "cuda" and config.dtype == "bfloat16" else torch.float32
        encoder = UMT5TextEncoder.from_pretrained(config.text_encoder_path, device=device, dtype=dtype,
                                                  max_length=cfg.text_len, cache_size=2 * config.batch_size)
        shape = tuple(config.latent_shape)
        guidance = config.guidance if config.guidance is not None else SPEC_GUIDANCE
    else:
        from ..inference.loading import make_codec, make_text_encoder, read_pipeline_spec

        spec = read_pipeline_spec(config.teacher)
        if spec is None:
            raise ValueError(f"{config.teacher} records no pipeline spec (text encoder, size): give the text encoder "
                             "path and the latent shape (--text-encoder-path, --latent-shape), or train it with "
                             "`selfforcing train`")
        if spec.codec == "wan-vae":
            raise ValueError(f"{config.teacher} was trained on {spec.codec} latents: give --text-encoder-path and "
                             "--latent-shape")
        codec = make_codec(spec, config.teacher)                            # the world's, or a learned codec
        factor = codec.spatial_factor
        shape = (codec.latent_channels, spec.height // factor, spec.width // factor)
        guidance = config.guidance if config.guidance is not None else spec.sampling.guidance_scale
        if spec.text_encoder == "hash":                                     # the test stand-in
            from .data import HashTextEncoder

            encoder = HashTextEncoder(cfg.text_dim, spec.text_max_length)
        else:
            encoder = make_text_encoder(spec.text_encoder, spec.text_max_length)
    if cfg.in_dim != shape[0]:
        raise ValueError(f"the teacher takes {cfg.in_dim} latent channels but the latent frames have {shape[0]}")
    cfg.tokens_per_frame(shape[1], shape[2])                                # H, W must fit the patch
    if encoder.dim != cfg.text_dim:
        raise ValueError(f"the text encoder gives {encoder.dim}-wide embeddings, the teacher takes {cfg.text_dim}")
    return encoder, shape, guidance


@torch.no_grad()
def generate_ode_pairs(config: ODEPairsConfig, *, device: str = "cpu", progress: bool = True) -> Path:
    """Sample (or complete) this process's share of the set; returns the set's folder."""
    from tqdm import tqdm

    if not Path(config.teacher).exists():
        raise ValueError(f"teacher checkpoint {config.teacher!r} does not exist")
    device = torch.device(device)
    if config.dtype == "auto":
        from .parallel import native_bf16

        config = dataclasses.replace(config, dtype="bfloat16" if native_bf16(device) else "float32")
        log.info("ode pairs in %s on %s", config.dtype, device)
    teacher = load_transformer(config.teacher, causal=False, device=device,
                               dtype=getattr(torch, config.dtype)).eval()
    encoder, (channels, height, width), guidance = _encoder_and_latents(config, teacher, device)
    flow = FlowMatching(shift=config.shift)
    prompts = _prompts(config)
    null = encoder.encode([config.negative_prompt]).to(device)

    mine = list(range(config.rank, config.n, config.world_size))           # this process's trajectories
    out = part_folder(config.out, config.rank, config.world_size)
    writer = ODEPairWriter(out, shard_size=config.batch_size)
    done = writer.num_written
    if done:
        log.info("%s already holds %d trajectories: sampling the remaining %d", out, done, len(mine) - done)
    bar = tqdm(total=len(mine), initial=done, desc="ODE pairs", unit="traj", disable=not progress or None)
    for start in range(done, len(mine), config.batch_size):
        rows = mine[start : start + config.batch_size]
        noise = torch.stack([
            torch.randn(config.num_frames, channels, height, width, generator=torch.Generator().manual_seed(
                int(np.random.SeedSequence([config.seed, i]).generate_state(1)[0])))
            for i in rows
        ]).to(device)                                                       # (b, F, C, H, W)
        context = encoder.encode([prompts[i] for i in rows]).to(device)     # (b, L, text_dim)
        states, timesteps = sample_ode_trajectory(
            teacher, context, null, noise, flow=flow, num_steps=config.num_steps, guidance=guidance,
            keep=keep_indices(config.num_steps),
        )
        writer.add(states, timesteps, [prompts[i] for i in rows])
        writer.close()                                                      # every batch lands on disk
        bar.update(len(rows))
    bar.close()
    return Path(config.out)
