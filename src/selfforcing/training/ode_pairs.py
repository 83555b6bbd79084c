"""`selfforcing ode-pairs`: sample teacher ODE trajectories for the ODE-regression init (spec §4(a)).

No videos are needed: the prompts are training captions of the world (never the held-out set), the teacher
integrates its guided flow from noise with Euler steps at the generator's shift, and the states at the kept
step indices plus the clean end point are stored in shards that stream from disk (`io/ode_pairs.py`).
With `num_steps` a multiple of 4 and the generator's shift, the kept states sit exactly on the generator's
warped few-step list (see `algorithms/ode_init.py`).

The set is written in whole batches and is resumable: rerunning the command with the same settings adds the
missing trajectories (sample i always gets prompt i and the noise of seed (seed, i)).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..algorithms.ode_init import keep_indices, sample_ode_trajectory
from ..diffusion.flow import FlowMatching
from ..io.checkpoints import load_transformer
from ..io.ode_pairs import ODEPairWriter
from ..world.dataset import WorldDataConfig, WorldDataset

__all__ = ["ODEPairsConfig", "generate_ode_pairs", "pair_prompts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ODEPairsConfig:
    """What `generate_ode_pairs` samples.

    Attributes:
        teacher: the bidirectional teacher checkpoint (its stored spec gives the text encoder and latent size).
        out: the output folder.
        n: trajectories in the set.
        num_steps: Euler steps per trajectory (a multiple of 4; spec: 48).
        guidance: classifier-free scale u + g (c - u) against the empty prompt (spec: 6); None: the teacher's
            recorded sampling guidance.
        shift: the sampling shift; the generator's (5) puts the kept states on its warped few-step list.
        num_frames: latent frames per trajectory (the generator's training clip).
        batch_size: trajectories sampled together.
        seed: noise seed; prompts come from the world's training stream with `data_seed`.
        detailed_caption_prob: share of detailed captions (the rest are short ones).
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

    def __post_init__(self) -> None:
        if self.n < 1 or self.batch_size < 1 or self.num_frames < 1:
            raise ValueError("n, batch_size and num_frames must be positive")
        if self.num_steps < 4 or self.num_steps % 4:
            raise ValueError(f"num_steps must be a positive multiple of 4, got {self.num_steps}")
        if self.shift <= 0:
            raise ValueError("shift must be positive")


def pair_prompts(n: int, data_seed: int = 0, detailed_caption_prob: float = 0.5) -> list[str]:
    """The captions of trajectories 0 .. n-1: training scenes of the world, detailed or short."""
    world = WorldDataset(WorldDataConfig(length=max(n, 1), seed=data_seed))
    prompts = []
    for i in range(n):
        short, detailed = world.captions(i)
        pick_detailed = np.random.default_rng([data_seed, i, 2]).random() < detailed_caption_prob
        prompts.append(detailed if pick_detailed else short)
    return prompts


@torch.no_grad()
def generate_ode_pairs(config: ODEPairsConfig, *, device: str = "cpu", progress: bool = True) -> Path:
    """Sample (or complete) the set; returns its folder."""
    from tqdm import tqdm

    from ..inference.loading import make_text_encoder, read_pipeline_spec

    if not Path(config.teacher).exists():
        raise ValueError(f"teacher checkpoint {config.teacher!r} does not exist")
    teacher = load_transformer(config.teacher, causal=False, device=device, dtype=torch.float32).eval()
    spec = read_pipeline_spec(config.teacher)
    if spec is None:
        raise ValueError(f"{config.teacher} records no pipeline spec (text encoder, size): train it with "
                         "`selfforcing train` first")
    guidance = config.guidance if config.guidance is not None else spec.sampling.guidance_scale
    patch = int(spec.codec.rsplit("-", 1)[1])
    channels, side = 3 * patch**2, spec.height // patch
    if teacher.config.in_dim != channels:
        raise ValueError(f"the teacher takes {teacher.config.in_dim} channels but its codec gives {channels}")
    if spec.text_encoder == "hash":                                         # the test stand-in
        from .data import HashTextEncoder

        encoder = HashTextEncoder(teacher.config.text_dim, spec.text_max_length)
    else:
        encoder = make_text_encoder(spec.text_encoder, spec.text_max_length)
    flow = FlowMatching(shift=config.shift)
    prompts = pair_prompts(config.n, config.data_seed, config.detailed_caption_prob)
    null = encoder.encode([""]).to(device)

    writer = ODEPairWriter(config.out, shard_size=config.batch_size)
    done = writer.num_written
    if done:
        log.info("%s already holds %d trajectories: sampling the remaining %d", config.out, done, config.n - done)
    bar = tqdm(total=config.n, initial=done, desc="ODE pairs", unit="traj", disable=not progress or None)
    for start in range(done, config.n, config.batch_size):
        rows = range(start, min(start + config.batch_size, config.n))
        noise = torch.stack([
            torch.randn(config.num_frames, channels, side, side, generator=torch.Generator().manual_seed(
                int(np.random.SeedSequence([config.seed, i]).generate_state(1)[0])))
            for i in rows
        ]).to(device)
        context = encoder.encode([prompts[i] for i in rows]).to(device)
        states, timesteps = sample_ode_trajectory(
            teacher, context, null, noise, flow=flow, num_steps=config.num_steps, guidance=guidance,
            keep=keep_indices(config.num_steps),
        )
        writer.add(states, timesteps, [prompts[i] for i in rows])
        writer.close()                                                      # every batch lands on disk
        bar.update(len(rows))
    bar.close()
    return Path(config.out)
