"""Training data: world clips (or captions from a prompt file, or stored ODE pairs) in a fixed, resumable order,
their captions, latents and per-sample seeds.

Order. The samples of the run form one stream: global sample g = step · batch_size + position in the global
batch. Epoch e = g // length visits the dataset in the order of a permutation seeded by (run seed, e). The
index and the per-sample seed of every sample are pure functions of (run seed, step, position), so resuming
at step k needs nothing but k, and every cut of the global batch into ranks and micro-batches sees the same
samples with the same randomness (`algorithms/base.py`).

Slicing. With W ranks, A accumulation micro-steps and micro-batch b = batch_size / (W·A), micro-step m of
rank r takes positions [(m·W + r)·b, (m·W + r + 1)·b) of the global batch.

Image steps. With `data.image_every = k`, steps k - 1, 2k - 1, ... take `data.image_batch_size` single frames
instead of clips, from a stream of their own (the same rules, seeded apart from the clips': `image_stream_seed`),
with g = step · image_batch_size + position: still a pure function of (run seed, step, position).

Shared seed. Every micro-batch also carries a seed that depends only on (run seed, step, micro-step), the same on
every rank: the draws that decide how many times a network is called (Self-Forcing's exit step) come from it,
because under FSDP every call is a collective (`algorithms/base.py`).

Captions. Each world sample takes its detailed caption with probability `detailed_caption_prob`, otherwise the
short one, drawn from its seed (and, with `colour_synonyms`, other words for its objects' colours); a prompt file
gives one caption per line. Embeddings come from the (cached) text encoder in the training process.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..algorithms.base import Batch
from ..models.codec import (IDENTITY_LATENT_NORM, WORLD_LATENT_NORM, LatentNorm, LearnedFrameCodec, SpaceToDepthCodec,
                            VideoCodec)
from ..text.encoders import TextEncoder
from ..world.dataset import WorldDataConfig, WorldDataset
from ..world.prompts import vary_colour_words
from ..world.scene import stable_hash
from .config import DataConfig, TrainConfig

__all__ = [
    "HashTextEncoder", "make_text_encoder", "read_prompt_file", "latent_norm", "sample_index", "sample_seed",
    "shared_seed", "is_image_step", "step_samples", "image_stream_seed", "micro_positions", "MicroBatches",
    "make_loader", "to_batch", "world_codec",
]

# UMT5 embeddings are (512, 4096) float32, 8 MiB a prompt: keep few (the negative prompt stays cached).
UMT5_CACHE_SIZE = 64


class HashTextEncoder(TextEncoder):
    """A deterministic stand-in for a text encoder in tests: each word maps to a fixed random vector.

    Token embeddings keep word order (position i holds word i); rows past the prompt are zero, like MiniLM's.
    """

    def __init__(self, dim: int, max_length: int):
        super().__init__()
        self.dim, self.max_length = dim, max_length

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.max_length, self.dim)
        for b, prompt in enumerate(prompts):
            words = ["<s>"] + prompt.lower().split()[: self.max_length - 1]   # "" still has one token, like [CLS]
            for i, word in enumerate(words):
                g = torch.Generator().manual_seed(stable_hash(word) % 2**63)
                out[b, i] = torch.randn(self.dim, generator=g)
        return out


def make_text_encoder(config: DataConfig, text_dim: int, device: torch.device | str = "cpu") -> TextEncoder:
    """The run's frozen text encoder. UMT5 runs on `device` (bfloat16 on a GPU, as Wan runs it; float32 on
    the CPU); the others on the CPU."""
    if config.text_encoder == "hash":
        return HashTextEncoder(text_dim, config.text_max_length)
    if config.text_encoder == "umt5":
        from ..text.umt5 import UMT5TextEncoder

        device = torch.device(device)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        encoder = UMT5TextEncoder.from_pretrained(config.text_encoder_path, device=device, dtype=dtype,
                                                  max_length=config.text_max_length, cache_size=UMT5_CACHE_SIZE)
        if encoder.dim != text_dim:
            raise ValueError(f"the UMT5 encoder in {config.text_encoder_path} is {encoder.dim} wide but "
                             f"model.text_dim is {text_dim}")
        return encoder
    from ..text.encoders import MiniLMTextEncoder

    encoder = MiniLMTextEncoder(max_length=config.text_max_length)
    if encoder.dim != text_dim:
        raise ValueError(f"the MiniLM encoder is {encoder.dim} wide but model.text_dim is {text_dim}")
    return encoder


def read_prompt_file(path: str) -> list[str]:
    """The prompts of a text file, one per line, stripped; blank lines skipped."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"prompt file {path!r} does not exist")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path!r} holds no prompts")
    return prompts


def latent_norm(config: DataConfig) -> LatentNorm:
    """The world codec's latent normalisation; the identity for runs in a given latent space (Wan latents come
    normalised by the VAE) and for a learned world codec (`data.codec_file`, which normalises its own latents)."""
    if config.latent_shape is not None or config.codec_file is not None:   # a learned codec normalises itself
        return IDENTITY_LATENT_NORM
    return WORLD_LATENT_NORM if config.latent_norm == "world" else IDENTITY_LATENT_NORM


def world_codec(config: DataConfig, encode_bf16: bool = False) -> VideoCodec:
    """The codec that turns the world's clips into the run's latents: the learned one of `data.codec_file`
    (encoding under bf16 autocast with `encode_bf16`), or the lossless `SpaceToDepthCodec(data.codec_patch)`
    (followed by `latent_norm`)."""
    if config.codec_file is not None:
        return LearnedFrameCodec.from_file(config.codec_file, encode_bf16=encode_bf16)
    return SpaceToDepthCodec(config.codec_patch)


# ------------------------------------------------------------------------------------------- data order
@lru_cache(maxsize=4)
def _permutation(length: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(length)


def sample_index(g: int, length: int, seed: int) -> int:
    """Dataset index of global sample g (epoch-wise permutations seeded by (seed, epoch))."""
    return int(_permutation(length, seed, g // length)[g % length])


def _seed63(*entropy: int) -> int:
    """A 63-bit seed hashed from integers (so nearby inputs give unrelated seeds)."""
    hi, lo = np.random.SeedSequence(list(entropy)).generate_state(2, np.uint32)
    return (int(hi) & 0x7FFFFFFF) << 32 | int(lo)


def sample_seed(g: int, seed: int) -> int:
    """A 63-bit seed for global sample g of a run seeded `seed`."""
    return _seed63(seed, g)


def shared_seed(step: int, micro: int, seed: int) -> int:
    """A 63-bit seed common to all ranks at micro-step `micro` of optimizer step `step`."""
    return _seed63(seed, step, micro, 0x5A4ED)


def is_image_step(step: int, image_every: int) -> bool:
    """Whether optimizer step `step` trains on single frames (`data.image_every`: every k-th step, k - 1 first)."""
    return image_every > 0 and step % image_every == image_every - 1


def step_samples(config: TrainConfig, step: int) -> int:
    """Samples (clips or single frames) in the global batch of optimizer step `step`."""
    return config.data.image_batch_size if is_image_step(step, config.data.image_every) else config.schedule.batch_size


def image_stream_seed(seed: int) -> int:
    """The seed of image steps' own sample stream (scenes and per-sample draws), apart from the clips'."""
    return _seed63(seed, 0x1A6E5)


def micro_positions(batch_size: int, grad_accum: int, world_size: int, rank: int, micro: int) -> range:
    """Positions in the global batch of micro-step `micro` of rank `rank` (see the module docstring)."""
    b = batch_size // (grad_accum * world_size)
    first = (micro * world_size + rank) * b
    return range(first, first + b)


class MicroBatches(Dataset):
    """Item k is micro-batch k of this rank: step k // A, micro-step k % A.

    Returns a dict: "captions" (b strings), "seeds" (b,) int64, "indices" (b,) int64 dataset indices,
    "shared_seed" (an int, the same on every rank), and by `data.source`: "video" (b, F, 3, H, W) in [-1, 1]
    (world), "latents" (b, F, C, h, w) (encoded clips), or "trajectory" (b, S + 1, F, C, h, w) and
    "trajectory_timesteps" (S + 1,) (ode-pairs); stored states and clips are already normalised latents. A
    teacher with the scene loss (`teacher.scene_weight`) also gets "labels" (b, F, G, H, W) uint8, the clips'
    per-pixel scene labels (`world.label_maps`).
    """

    def __init__(self, config: TrainConfig, world_size: int = 1, rank: int = 0):
        d, s = config.data, config.schedule
        if s.batch_size % (s.grad_accum * world_size):
            raise ValueError(f"schedule.batch_size {s.batch_size} is not divisible by grad_accum {s.grad_accum} "
                             f"x world size {world_size}")
        if d.image_batch_size % (s.grad_accum * world_size):
            raise ValueError(f"data.image_batch_size {d.image_batch_size} is not divisible by grad_accum "
                             f"{s.grad_accum} x world size {world_size}")
        self.world = self.images = self.pairs = self.prompts = None
        self.length = d.length
        if d.source in ("world", "prompts"):
            world = WorldDataConfig(length=d.length, seed=d.seed, num_frames=d.num_frames, size=d.size,
                                    max_objects=d.max_objects, max_start_frame=d.max_start_frame, fps=d.fps)
            self.world = WorldDataset(world)
            if d.image_every:
                self.images = WorldDataset(dataclasses.replace(world, num_frames=1))
        elif d.source == "prompt-file":
            self.prompts = read_prompt_file(d.prompts_file)
            self.length = len(self.prompts)
        else:
            from ..io.ode_pairs import ODEPairDataset

            folder, what = (d.ode_pairs, "ODE pairs") if d.source == "ode-pairs" else (d.latents, "encoded clips")
            self.pairs = ODEPairDataset(folder)
            self.length = len(self.pairs)
            frames, shape = int(self.pairs.shape[1]), tuple(self.pairs.shape[2:])
            if d.source == "latents" and self.pairs.shape[0] != 1:
                raise ValueError(f"{folder} holds trajectories (ODE pairs), not encoded clips: use "
                                 "data.source=ode-pairs")
            if frames != d.num_frames:
                raise ValueError(f"the {what} in {folder} have {frames} frames but data.num_frames is {d.num_frames}")
            expected = (config.latent_channels, *config.latent_size)
            if shape != expected:
                raise ValueError(f"the {what} in {folder} hold {shape} latent frames but the run's are "
                                 f"{expected} (data.latent_shape or the world codec)")
        self.config, self.world_size, self.rank = config, world_size, rank

    def __len__(self) -> int:
        return self.config.schedule.steps * self.config.schedule.grad_accum

    def __getitem__(self, k: int) -> dict:
        s, d = self.config.schedule, self.config.data
        step, micro = divmod(k, s.grad_accum)
        image_step = is_image_step(step, d.image_every)
        batch_size = step_samples(self.config, step)
        world = self.images if image_step else self.world
        run_seed = image_stream_seed(self.config.seed) if image_step else self.config.seed
        videos, labels, latents, trajectories, captions, seeds, indices = [], [], [], [], [], [], []
        with_labels = self.config.algorithm == "teacher" and self.config.teacher.scene_weight > 0
        for p in micro_positions(batch_size, s.grad_accum, self.world_size, self.rank, micro):
            g = step * batch_size + p
            index = sample_index(g, self.length, run_seed)
            seed = sample_seed(g, run_seed)
            if d.source == "ode-pairs":
                states, timesteps, prompt = self.pairs[index]
                trajectories.append(states)
                captions.append(prompt)
            elif d.source == "latents":
                states, _, prompt = self.pairs[index]
                latents.append(states[0])
                captions.append(prompt)
            elif d.source == "prompt-file":
                captions.append(self.prompts[index])
            else:
                if d.source == "world":
                    video, short, detailed, _ = world[index]
                    videos.append(video)
                    if with_labels:
                        labels.append(world.labels(index))                  # (F, G, H, W) uint8
                else:
                    short, detailed = world.captions(index)
                detailed_first = np.random.default_rng([seed, 1]).random() < d.detailed_caption_prob
                caption = detailed if detailed_first else short
                if d.colour_synonyms:
                    caption = vary_colour_words(caption, np.random.default_rng([seed, 2]), d.colour_synonyms)
                captions.append(caption)
            seeds.append(seed)
            indices.append(index)
        item = {
            "captions": captions,
            "seeds": torch.tensor(seeds, dtype=torch.int64),                # (b,)
            "indices": torch.tensor(indices, dtype=torch.int64),            # (b,)
            "shared_seed": shared_seed(step, micro, self.config.seed),
        }
        if videos:
            item["video"] = torch.stack(videos)                             # (b, F, 3, H, W)
        if labels:
            item["labels"] = torch.stack(labels)                            # (b, F, G, H, W)
        if latents:
            item["latents"] = torch.stack(latents)                          # (b, F, C, h, w), normalised
        if trajectories:
            item["trajectory"] = torch.stack(trajectories)                  # (b, S + 1, F, C, h, w)
            item["trajectory_timesteps"] = timesteps                        # (S + 1,)
        return item


def make_loader(config: TrainConfig, start_step: int, world_size: int = 1, rank: int = 0) -> DataLoader:
    """Micro-batches of this rank from `start_step` to the end of the run, in order."""
    dataset = MicroBatches(config, world_size, rank)
    a = config.schedule.grad_accum
    workers = config.data.num_workers
    return DataLoader(
        dataset, batch_size=None, sampler=range(start_step * a, len(dataset)), num_workers=workers,
        persistent_workers=False, prefetch_factor=2 if workers else None,
    )


@dataclass
class LatentEncoder:
    """Pixels -> normalised latents, and captions (and the negative prompt) -> embeddings, on the training
    device."""

    codec: VideoCodec
    norm: LatentNorm
    text_encoder: TextEncoder
    device: torch.device
    negative_prompt: str = ""

    def __call__(self, raw: dict) -> Batch:
        x_0 = trajectory = timesteps = None
        if "video" in raw:
            video = raw["video"].to(self.device)                            # (b, F, 3, H, W)
            x_0 = self.norm.normalize(self.codec.encode(video))             # (b, F, C, h, w)
        if "latents" in raw:
            x_0 = raw["latents"].to(self.device)                            # encoded clips: already latents
        if "trajectory" in raw:
            trajectory = raw["trajectory"].to(self.device)                  # (b, S + 1, F, C, h, w)
            timesteps = raw["trajectory_timesteps"].to(self.device)
        context = self.text_encoder.encode(raw["captions"]).to(self.device) # (b, L, text_dim)
        null = self.text_encoder.encode([self.negative_prompt]).to(self.device).expand_as(context)
        shared = raw.get("shared_seed")
        labels = raw["labels"].to(self.device) if "labels" in raw else None  # (b, F, G, H, W)
        return Batch(context=context, null_context=null, seeds=raw["seeds"], x_0=x_0, trajectory=trajectory,
                     trajectory_timesteps=timesteps, prompts=list(raw["captions"]), labels=labels,
                     shared_seed=None if shared is None else int(shared))


def to_batch(config: TrainConfig, text_encoder: TextEncoder, device: torch.device | str) -> LatentEncoder:
    """The function turning a loader item into a `Batch` on `device`; a learned codec encodes in bf16 when the
    run trains in bf16 (`precision.autocast`, resolved by the trainer)."""
    bf16 = config.precision.autocast == "bf16"
    return LatentEncoder(world_codec(config.data, encode_bf16=bf16), latent_norm(config.data), text_encoder,
                         torch.device(device), config.data.negative_prompt)
