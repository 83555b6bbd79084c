"""What every training algorithm shares: the batch it receives, its updates, and per-sample randomness.

An algorithm is a small object built from its (already parallelised) networks. It lists its `updates`: each
update names the network it trains, how often it runs and its loss, a pure function `loss(batch) -> (loss,
logs)` with no optimizer, file I/O, distributed call or `.item()` inside. The trainer owns everything else:
one optimizer (and LR schedule) per update, EMA, gradient clipping and accumulation, checkpoints, logging.
DMD, for instance, has two updates, `critic` every step and `generator` every fifth step (spec §4(b)).

Randomness. Every random draw of an algorithm goes through `SampleRNG`, one generator per sample seeded from
the sample's seed. The trainer derives that seed from (run seed, step, position of the sample in the global
batch), so a sample's noise, timestep and prompt dropout do not depend on how the global batch is cut into
micro-batches and ranks: gradient accumulation and data parallelism reproduce the single-process step, and
resuming needs no RNG state beyond the step counter.

Data parallelism. Networks reach an algorithm already parallelised by the trainer: FSDP2 shards a module in
place (its `config` stays readable), DDP wraps it (`unwrap` gives the module inside). Under FSDP every forward
is a collective, so every rank must call a network equally often: a draw that changes the control flow (the
Self-Forcing exit step, which sets the number of generator calls) comes from `Batch.shared_seed`, common to all
ranks at a micro-step, never from the per-sample seeds. The published trainer draws it on rank 0 and
broadcasts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

__all__ = ["Batch", "Update", "Algorithm", "SampleRNG", "Logs", "LossFn", "unwrap", "seeded_generator"]

Logs = dict[str, torch.Tensor]
LossFn = Callable[["Batch"], tuple[torch.Tensor, Logs]]


@dataclass
class Batch:
    """One micro-batch on the training device.

    Attributes:
        context: (B, L, text_dim) caption embeddings.
        null_context: (B, L, text_dim) embeddings of the empty prompt (prompt dropout, negative prompt).
        seeds: (B,) int64 per-sample seeds, the only source of randomness (see `SampleRNG`).
        x_0: (B, F, C, H, W) clean latents of real videos, or None for prompt-only algorithms.
        trajectory: (B, S + 1, F, C, H, W) stored teacher ODE states, the last one clean (ODE init), or None.
        trajectory_timesteps: (S + 1,) their timesteps, the last 0.
        prompts: the captions, for logging.
        labels: (B, F, G, H_px, W_px) uint8 per-pixel scene labels of the clips in x_0, G attribute groups,
            class 0 the background (`world.label_maps`), or None; the teacher's scene loss reads them.
        shared_seed: a seed common to every rank's micro-batch at this micro-step (see the module docstring);
            None outside the trainer (a single process), where the micro-batch's own draws decide.
    """

    context: torch.Tensor
    null_context: torch.Tensor
    seeds: torch.Tensor
    x_0: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None
    trajectory_timesteps: torch.Tensor | None = None
    prompts: list[str] = field(default_factory=list)
    labels: torch.Tensor | None = None
    shared_seed: int | None = None

    @property
    def size(self) -> int:
        return self.seeds.shape[0]


@dataclass(frozen=True)
class Update:
    """One optimizer's update.

    Attributes:
        name: names the optimizer, its LR schedule and its logs ("model", "generator", "critic", ...).
        network: key of the trained network in the algorithm's `networks`.
        loss: batch -> (scalar loss averaged over the batch, logs of detached 0-dim tensors).
        every: runs at the steps where `step % every == 0` (DMD's `dfake_gen_update_ratio`).
        lr: this optimizer's peak learning rate (the schedule's shape comes from the run's `optim`);
            None: `optim.lr`. DMD trains its critic at a fifth of the generator's rate (spec §4(b)).
    """

    name: str
    network: str
    loss: LossFn
    every: int = 1
    lr: float | None = None


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (sample seeds, a shared seed, a salt)."""
    return torch.Generator().manual_seed(hash(parts) & 0x7FFF_FFFF_FFFF_FFFF)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DDP wrapper (which keeps it at `.module`); any other network as it is (FSDP2
    shards in place, so `config` and `dtype` stay readable)."""
    return getattr(network, "module", network)


class Algorithm(Protocol):
    """A training algorithm as the trainer sees it (see the module docstring)."""

    updates: Sequence[Update]

    def preview(self, context: torch.Tensor, null_context: torch.Tensor, num_frames: int,
                latent_size: tuple[int, int], seed: int) -> torch.Tensor | None:
        """(B, F, C, H, W) sample latents for TensorBoard previews, or None if the algorithm has none."""
        ...


class SampleRNG:
    """One `torch.Generator` per sample: `randn(shape)` stacks a (shape) draw from each sample's generator.

    Draws happen on the CPU (so results do not depend on the device) and move to `device`.

    Args:
        seeds: (B,) integer seeds.
        device: where the draws go.
    """

    def __init__(self, seeds: torch.Tensor | Sequence[int], device: torch.device | str = "cpu"):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, *shape) standard normal."""
        return torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in self.generators]).to(self.device)

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, *shape) uniform on [0, 1)."""
        return torch.stack([torch.rand(shape, generator=g, dtype=dtype) for g in self.generators]).to(self.device)

    def generator(self, salt: int = 0) -> torch.Generator:
        """One generator for draws shared by the whole micro-batch (e.g. Self-Forcing's exit step), seeded
        from all the samples' seeds and `salt` (different salts give independent streams, e.g. one per update)."""
        seeds = [int(g.initial_seed()) for g in self.generators]
        return seeded_generator(*seeds, salt)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        """(B, *shape) int64 uniform on [0, high)."""
        return torch.stack([torch.randint(high, shape, generator=g) for g in self.generators]).to(self.device)

