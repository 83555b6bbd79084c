"""Few-step distillation of the causal generator with a video-level loss: Self-Forcing and its baselines.

One algorithm covers the paper's whole family (spec §4(b)-(e)), as the product of two choices:

- **where the generated clip comes from** (`inputs`):
  - "self-forcing": the generator's own autoregressive rollout from noise, exactly as at inference (KV cache,
    few-step list, cache refill, random gradient truncation; `rollout.py`). Needs prompts only.
  - "diffusion-forcing" (CausVid): a real clip noised per block at random few-step timesteps, denoised in one
    parallel block-causal forward (`causal_diffusion.one_pass_sample`).
  - "teacher-forcing": the same, with the clean real previous blocks as context.
- **how the clip is judged** (`loss`):
  - "dmd": distribution matching, real score = the frozen teacher with guidance, fake score = a critic
    trained online by flow matching on the generator's clips (`distribution_matching.py`);
  - "sid": score identity distillation, same scores;
  - "gan": a discriminator on the critic's backbone (register tokens + head) against real world clips
    (`gan.py`); no teacher needed.
  - "dmd" or "sid" with `gan_weight` > 0: both, as DMD2 (Yin et al. 2024b) does: one critic is the fake score
    and, through a register head on its backbone, the discriminator; the generator's loss adds `gan_weight` x
    the adversarial loss, the critic's adds `gan_critic_weight` x the discriminator's. Real clips then give the
    generator what the teacher alone cannot (DMD matches the teacher's distribution, errors included).

Updates: the critic (or discriminator) every step, the generator every `generator_every` steps (5 in the
published DMD config), each at its own learning rate.

Randomness: every draw of an update (initial noise, exit step, noise between denoising steps, timesteps and
noise of the scores) comes from one generator seeded by the micro-batch's sample seeds and the update (so the
critic's and the generator's rollouts of one step are independent samples, as in the published trainer). A run
resumed from a checkpoint reproduces the uninterrupted one; cutting the global batch differently (gradient
accumulation, more ranks) changes the draws, so distillation on N processes matches one process in
distribution, not bit for bit (the teacher and the ODE init, whose draws are all per sample, match exactly).
The one exception is the exit step under the trainer: it sets how many times the generator is called, and under
FSDP every call is a collective, so it comes from `Batch.shared_seed`, the same on every rank at a micro-step
(the published trainer draws it on rank 0 and broadcasts it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from ..diffusion.flow import FlowMatching
from .base import Batch, Logs, SampleRNG, Update, seeded_generator
from .causal_diffusion import one_pass_sample
from .distribution_matching import critic_loss, dmd_loss, sid_loss
from .gan import gan_discriminator_loss, gan_generator_loss
from .rollout import sample_exit_step, self_forcing_rollout

__all__ = ["DistillConfig", "DistillTraining"]


@dataclass(frozen=True)
class DistillConfig:
    """Settings of a distillation run (Self-Forcing, CausVid, TF + DMD).

    Attributes:
        loss: "dmd", "sid" or "gan".
        inputs: "self-forcing", "diffusion-forcing" (CausVid) or "teacher-forcing"; the last two need videos.
        teacher: the frozen bidirectional teacher (the real score of DMD / SiD), any layout `load_transformer`
            reads. Also the default initialisation of the critic.
        generator_init: the causal generator's starting weights, normally the ODE-init checkpoint
            (spec §4(b)); None: the teacher's weights loaded into the causal config.
        critic_init: the critic's starting weights; None: the teacher.
        denoising_steps, warp, shift: the generator's few-step list (warped onto the shift-`shift` grid).
        context_noise: timestep of the cache-refill pass (spec §5: 0).
        guidance: g of the real score c + g (c - u) (spec §4(b): 3).
        generator_every: the generator trains every this many steps, the critic every step (spec: 5).
        generator_lr, critic_lr: peak learning rates of the two optimizers.
        sid_alpha: α of SiD (spec §4(c): 1).
        min_t, max_t: range of the score timesteps (spec: [20, 980], shift-`shift` distribution).
        rollout_frames: latent frames of a self-forcing rollout; None: the training clip length. Longer
            rollouts (the long-video recipe) put gradient on the last `data.num_frames` frames only.
        gan_relativistic, r1_weight, r2_weight, r_sigma: the adversarial losses' options (`gan.py`).
        gan_weight, gan_critic_weight: the DMD2 mix for "dmd" / "sid": weights of the adversarial term in the
            generator's and the critic's loss (0: none; gan_critic_weight None: gan_weight).
        num_registers: register tokens of the discriminator head.
    """

    loss: Literal["dmd", "sid", "gan"] = "dmd"
    inputs: Literal["self-forcing", "diffusion-forcing", "teacher-forcing"] = "self-forcing"
    teacher: str | None = None
    generator_init: str | None = None
    critic_init: str | None = None
    denoising_steps: tuple[float, ...] = (1000, 750, 500, 250)
    warp: bool = True
    shift: float = 5.0
    context_noise: float = 0.0
    guidance: float = 3.0
    generator_every: int = 5
    generator_lr: float = 2e-6
    critic_lr: float = 4e-7
    sid_alpha: float = 1.0
    min_t: float = 20.0
    max_t: float = 980.0
    rollout_frames: int | None = None
    gan_relativistic: bool = False
    r1_weight: float = 0.0
    r2_weight: float = 0.0
    r_sigma: float = 0.01
    num_registers: int = 3
    gan_weight: float = 0.0
    gan_critic_weight: float | None = None

    def __post_init__(self) -> None:
        if self.loss not in ("dmd", "sid", "gan"):
            raise ValueError(f"unknown distillation loss {self.loss!r}; choose dmd, sid or gan")
        if self.inputs not in ("self-forcing", "diffusion-forcing", "teacher-forcing"):
            raise ValueError(f"unknown inputs {self.inputs!r}; choose self-forcing, diffusion-forcing or "
                             "teacher-forcing")
        if self.generator_every < 1 or self.generator_lr <= 0 or self.critic_lr <= 0:
            raise ValueError("generator_every, generator_lr and critic_lr must be positive")
        if not self.denoising_steps or self.shift <= 0:
            raise ValueError("denoising_steps must not be empty and shift must be positive")
        if not 0 <= self.min_t < self.max_t <= 1000:
            raise ValueError(f"need 0 <= min_t < max_t <= 1000, got {self.min_t}, {self.max_t}")
        if self.rollout_frames is not None and self.rollout_frames < 1:
            raise ValueError("rollout_frames must be positive")
        critic_weight = self.critic_gan_weight
        if self.gan_weight < 0 or critic_weight < 0 or (self.gan_weight > 0) != (critic_weight > 0):
            raise ValueError(f"gan_weight and gan_critic_weight must both be positive (the DMD2 mix) or both 0, got "
                             f"{self.gan_weight} and {critic_weight}")
        if self.gan_weight > 0 and self.loss == "gan":
            raise ValueError("gan_weight mixes an adversarial term into dmd or sid; loss=gan is adversarial already")

    @property
    def adversarial(self) -> bool:
        """A discriminator judges the clips: the GAN loss, or the DMD2 mix."""
        return self.loss == "gan" or self.gan_weight > 0

    @property
    def critic_gan_weight(self) -> float:
        """Weight of the discriminator's loss in the critic's update of the DMD2 mix."""
        return self.gan_weight if self.gan_critic_weight is None else self.gan_critic_weight

    @property
    def needs_videos(self) -> bool:
        """Real clips are needed by the GAN (alone or mixed in) and by the one-pass (CausVid / TF) inputs."""
        return self.adversarial or self.inputs != "self-forcing"

    @property
    def needs_teacher(self) -> bool:
        return self.loss in ("dmd", "sid")


class DistillTraining:
    """The algorithm: a `critic` update every step and a `generator` update every `generator_every` steps.

    Args:
        config: the settings.
        generator: causal WanDiT (possibly wrapped for data parallelism).
        critic: bidirectional WanDiT (the fake score) for DMD / SiD, a `Discriminator` for the GAN, a
            `Discriminator(score=True)` for the DMD2 mix (fake score and discriminator in one).
        real: the frozen teacher (DMD / SiD), or None.
        num_frames: F of the training window (the critic's and teacher's clip length).
        latent_shape: (C, H, W) of a latent frame.
    """

    def __init__(self, config: DistillConfig, generator: nn.Module, critic: nn.Module, real: nn.Module | None,
                 *, num_frames: int, latent_shape: tuple[int, int, int]):
        if config.needs_teacher and real is None:
            raise ValueError(f"{config.loss} needs a teacher (the real score): set distill.teacher")
        self.config = config
        self.generator, self.critic, self.real = generator, critic, real
        self.num_frames, self.latent_shape = num_frames, latent_shape
        self.rollout_frames = config.rollout_frames or num_frames
        if self.rollout_frames < num_frames:
            raise ValueError(f"rollout_frames {self.rollout_frames} is shorter than the training clip ({num_frames})")
        if config.inputs != "self-forcing" and self.rollout_frames != num_frames:
            raise ValueError("rollout_frames only applies to self-forcing inputs")
        self.flow = FlowMatching(shift=config.shift)
        steps = torch.tensor(config.denoising_steps, dtype=torch.float64)
        self.timesteps = self.flow.warp_timesteps(steps) if config.warp else steps
        self.updates = (
            Update(name="critic", network="critic", loss=self.critic_loss, lr=config.critic_lr),
            Update(name="generator", network="generator", loss=self.generator_loss, every=config.generator_every,
                   lr=config.generator_lr),
        )

    # --------------------------------------------------------------------------- the generated clip
    def generate(self, batch: Batch, rng: torch.Generator,
                 exit_rng: torch.Generator | None = None) -> tuple[torch.Tensor, Logs]:
        """The generator's clip for this batch (B, F, C, H, W): gradient where the recipe puts it when grad
        mode is on. For self-forcing rollouts longer than the window, only the last window is returned.
        `exit_rng` draws the exit step (default: `rng`); the updates pass one common to all ranks."""
        c = self.config
        if c.inputs == "self-forcing":
            shape = (batch.size, self.rollout_frames, *self.latent_shape)
            noise = torch.randn(shape, generator=rng).to(batch.context.device)
            exit_step = sample_exit_step(len(self.timesteps), exit_rng or rng)
            out = self_forcing_rollout(
                self.generator, batch.context, noise, flow=self.flow, timesteps=self.timesteps,
                exit_step=exit_step, context_noise=c.context_noise, grad_frames=self.num_frames, rng=rng,
            )
            video = out.video[:, out.grad_start_frame:]
            return video, {"exit_step": torch.tensor(float(exit_step))}
        if batch.x_0 is None:
            raise ValueError(f"{c.inputs} inputs need real clips (batch.x_0)")
        video = one_pass_sample(
            self.generator, batch.x_0, batch.context, flow=self.flow, timesteps=self.timesteps,
            teacher_forcing=c.inputs == "teacher-forcing", rng=rng,
        )
        return video, {}

    @staticmethod
    def _exit_rng(batch: Batch, salt: int) -> torch.Generator | None:
        """The exit step's generator, from the rank-independent `batch.shared_seed` and the update's salt; None
        without a shared seed (outside the trainer: the micro-batch's own generator draws it)."""
        if batch.shared_seed is None:
            return None
        return seeded_generator(batch.shared_seed, salt)

    # --------------------------------------------------------------------------- the two updates
    def generator_loss(self, batch: Batch) -> tuple[torch.Tensor, Logs]:
        c = self.config
        rng = SampleRNG(batch.seeds).generator(salt=1)
        video, logs = self.generate(batch, rng, self._exit_rng(batch, salt=1))
        kw = dict(min_t=c.min_t, max_t=c.max_t, rng=rng)
        if c.loss == "dmd":
            loss, extra = dmd_loss(video, self.real, self.fake_score, self.flow, batch.context, batch.null_context,
                                   guidance=c.guidance, **kw)
        elif c.loss == "sid":
            loss, extra = sid_loss(video, self.real, self.fake_score, self.flow, batch.context, batch.null_context,
                                   alpha=c.sid_alpha, guidance=c.guidance, **kw)
        else:
            loss, extra = self._adversarial_generator_loss(video, batch, kw)
        if c.gan_weight > 0:
            adversarial, gan_logs = self._adversarial_generator_loss(video, batch, kw)
            loss, extra = loss + c.gan_weight * adversarial, {**extra, **gan_logs}
        return loss, {"loss": loss.detach(), **logs, **{k.replace("/", "_"): v for k, v in extra.items()}}

    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, Logs]:
        c = self.config
        rng = SampleRNG(batch.seeds).generator(salt=0)
        with torch.no_grad():
            video, _ = self.generate(batch, rng, self._exit_rng(batch, salt=0))
        kw = dict(min_t=c.min_t, max_t=c.max_t, rng=rng)
        if c.loss == "gan":
            loss, extra = self._discriminator_loss(video, batch, kw)
        else:
            loss, extra = critic_loss(video, self.fake_score, self.flow, batch.context, **kw)
            if c.gan_weight > 0:
                d_loss, gan_logs = self._discriminator_loss(video, batch, kw)
                extra = {**extra, "critic/flow_loss": loss.detach(), **gan_logs}
                loss = loss + c.critic_gan_weight * d_loss
        logs = {k.removeprefix("critic/").replace("/", "_"): v for k, v in extra.items() if k != "critic/loss"}
        return loss, {"loss": loss.detach(), **logs}

    def _adversarial_generator_loss(self, video: torch.Tensor, batch: Batch, kw: dict):
        return gan_generator_loss(video, self._real_clip(batch), self.critic, self.flow, batch.context,
                                  relativistic=self.config.gan_relativistic, **kw)

    def _discriminator_loss(self, video: torch.Tensor, batch: Batch, kw: dict):
        c = self.config
        return gan_discriminator_loss(video, self._real_clip(batch), self.critic, self.flow, batch.context,
                                      relativistic=c.gan_relativistic, r1_weight=c.r1_weight, r2_weight=c.r2_weight,
                                      r_sigma=c.r_sigma, **kw)

    def fake_score(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The critic's velocity prediction (DMD / SiD's fake score), through its discriminator in the DMD2 mix."""
        if self.config.gan_weight > 0:
            return self.critic(x_t, t, context, output="velocity")
        return self.critic(x_t, t, context)

    def _real_clip(self, batch: Batch) -> torch.Tensor:
        if batch.x_0 is None:
            raise ValueError("the GAN loss needs real clips (batch.x_0): set data.source=world (or latents)")
        return batch.x_0
