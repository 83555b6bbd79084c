"""Flow-matching training of the bidirectional teacher (Wan2.1 / SD3-style rectified flow, spec §3).

For clean latents x_0 of real videos and their captions c, one step draws per sample

    t ~ U(shifted grid)                        (one timestep per sample: the teacher is bidirectional)
    ε ~ N(0, I),  x_t = (1 - σ) x_0 + σ ε      (σ = t / 1000)
    c ← c_∅ with probability p                 (prompt dropout, for classifier-free guidance)

and regresses the velocity: L = E ‖v_θ(x_t, t, c) - (ε - x_0)‖², optionally weighted by Wan's training
weight w(t) (spec §3). The shift of the training grid sets how often each noise level is seen: shift s gives
P(σ > σ*) = 1 - s⁻¹(σ*) with s⁻¹ the inverse shift, e.g. 36% of the draws above σ = 0.9 at shift 5. The
published teacher is *sampled* at shift 8 (spec §3: the ODE pairs use 8); we train at shift 5 (configurable):
a bit more weight on low noise levels, where the shapes' sharp edges are decided, while keeping most draws
at the high noise levels where layout and motion are decided. Sampling still uses shift 8 by default
(`inference/teacher.py`), as in the published pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..diffusion.flow import FlowMatching
from .base import Batch, Logs, SampleRNG, Update, unwrap

__all__ = ["TeacherConfig", "motion_weights", "scene_targets", "scene_loss", "self_condition", "teacher_loss",
           "tube_mask", "TeacherTraining"]


@dataclass(frozen=True)
class TeacherConfig:
    """Flow-matching training of the bidirectional teacher.

    Attributes:
        shift: shift of the training timestep grid (spec §3); see the module docstring for the choice of 5.
        prompt_dropout: probability of replacing a caption by the empty prompt (classifier-free guidance).
        weighting: "uniform" (plain MSE) or "wan" (× Wan's bell-shaped training weight, spec §3).
        sample_shift, sample_steps, guidance, sampler: how previews are drawn and what the exported
            checkpoint records as its sampling recipe (spec §3: shift 8; §5: 50 steps).
        init_from: a checkpoint (any layout `load_transformer` reads) to start from instead of random weights.
        frame_noise: probability that a sample's frames are noised at independent levels (each frame its own
            draw from the training grid, as diffusion forcing does) instead of at one shared level. Frames
            noised less than their neighbours make copying along the motion pay, which one shared level
            rarely does; sampling still noises all frames alike. 0: one level per sample. Tried at 0.5 for 500
            steps on the committed teacher: its frames agreed less, not more (docs/world-teacher.md).
        multiscale: pooling factors k of a multiscale loss (Hoogeboom et al. 2023): besides the plain squared
            error, the error average-pooled over k x k latent positions, times k² (so an error of white noise
            costs the same at every scale and a smooth, low-frequency one up to k² more), all terms averaged.
            It puts more of the gradient on where objects are and what colour, less on the irreducible detail
            of high noise levels. (): the plain loss. Tried as (2, 4) for 500 steps: no better than the plain loss.
        motion_weight: λ of a loss weighted towards what moves: each latent position's squared error is weighted
            by 1 + λ m, with m the clean clip's standard deviation over frames at that position (channel mean),
            scaled to mean 1 over the frame, and the weights scaled to mean 1 again (a clip in which nothing
            moves keeps the plain loss). A static background, most of the world's pixels and best denoised by
            pooling the frames in place, then pays less than the objects' paths. 0: the plain loss.
        motion_span: "clip" (one map for the clip, the objects' whole paths) or "frame" (a map a frame, from
            its neighbours: where the objects are changing in that frame); `motion_weights`.
        temporal_weight: adds this times the mean of ½ ‖e_{f+1} - e_f‖² over neighbouring frames, e the velocity
            error (times the motion weights): an error that stays put while the clip moves (a blob drawn where
            the object was) costs its motion again, white noise costs as much as in the plain term. 0: off.
        scene_weight: λ of the scene loss, an auxiliary loss on the network's representation in the spirit of
            representation alignment (REPA, Yu et al. 2025), with the world's own scene labels in place of a
            pretrained encoder's features: a probe (`WanConfig.probe`, a two-layer MLP) reads each token's state
            after block `scene_layer` from the noisy clip and predicts, for each attribute (shape, colour,
            size, motion), the fraction of the token's pixels that show each class (background included);
            the loss is the KL divergence from the rendered fractions, averaged over tokens and attributes.
            The denoising loss pays little for knowing which object a token belongs to (a shape is a few
            edge pixels, a motion a fraction of a pixel a frame); the scene loss asks the early blocks for
            exactly that. World clips only (they carry their labels); the probe is dropped from exported
            weights. 0: off.
        scene_layer: the block (0-based) whose token states the probe reads.
        self_cond_prob: for a self-conditioned model (`WanConfig.self_cond`), the share of samples trained with
            the model's own estimate of the clean clip as the extra input: a first forward without gradient
            from x_t alone, then the trained forward reading it (Chen et al. 2023); the other samples read
            zeros, as the first sampling step does. Ignored for a model without self-conditioning.
        mask_ratio: masked training (MaskDiT, Zheng et al. 2023; MDT, Gao et al. 2023): the share of each clip's
            token positions hidden from the network's first blocks, the same positions in every frame (tube
            masking, as in VideoMAE), drawn per sample. The last `mask_decoder` blocks see every position, the
            hidden ones as a learned mask token (`WanConfig.mask_decoder`), and must infer their clean content
            from the visible ones: the relations between an object's parts, which the plain loss teaches
            slowly, are what pays. The first blocks see fewer tokens, so a step costs less. Sampling sees
            every token; train without it at the end (the teacher recipe's second stage). 0: off.
        mask_weight: weight of the hidden positions' loss, their x0 error (σ² times their velocity error: their
            noise cannot be inferred, their clean content can); the visible positions keep the plain loss.
        mask_decoder: how many of the last blocks see the hidden positions.
    """

    shift: float = 5.0
    prompt_dropout: float = 0.1
    weighting: Literal["uniform", "wan"] = "uniform"
    sample_shift: float = 8.0
    sample_steps: int = 50
    guidance: float = 3.0
    sampler: Literal["euler", "dpmpp-2m"] = "euler"
    init_from: str | None = None
    frame_noise: float = 0.0
    multiscale: tuple[int, ...] = ()
    motion_weight: float = 0.0
    motion_span: Literal["clip", "frame"] = "clip"
    temporal_weight: float = 0.0
    scene_weight: float = 0.0
    scene_layer: int = 1
    self_cond_prob: float = 0.5
    mask_ratio: float = 0.0
    mask_weight: float = 1.0
    mask_decoder: int = 1

    def __post_init__(self) -> None:
        if self.shift <= 0 or self.sample_shift <= 0:
            raise ValueError("shifts must be positive")
        if not 0.0 <= self.prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout must lie in [0, 1], got {self.prompt_dropout}")
        if self.sample_steps < 1:
            raise ValueError("sample_steps must be at least 1")
        if not 0.0 <= self.frame_noise <= 1.0:
            raise ValueError(f"frame_noise must lie in [0, 1], got {self.frame_noise}")
        if any(k < 2 for k in self.multiscale):
            raise ValueError(f"multiscale pooling factors must be at least 2, got {self.multiscale}")
        if self.motion_weight < 0:
            raise ValueError(f"motion_weight must be non-negative, got {self.motion_weight}")
        if self.motion_span not in ("clip", "frame"):
            raise ValueError(f"motion_span must be 'clip' or 'frame', got {self.motion_span!r}")
        if self.temporal_weight < 0:
            raise ValueError(f"temporal_weight must be non-negative, got {self.temporal_weight}")
        if not 0.0 <= self.self_cond_prob <= 1.0:
            raise ValueError(f"self_cond_prob must lie in [0, 1], got {self.self_cond_prob}")
        if not 0.0 <= self.mask_ratio < 1.0 or self.mask_weight < 0 or self.mask_decoder < 1:
            raise ValueError(f"mask_ratio must lie in [0, 1), mask_weight be non-negative and mask_decoder at least "
                             f"1, got {self.mask_ratio}, {self.mask_weight} and {self.mask_decoder}")
        if self.mask_ratio > 0 and self.scene_weight > 0:
            raise ValueError("mask_ratio and scene_weight cannot be combined: the probe reads every token")
        if self.scene_weight < 0 or self.scene_layer < 0:
            raise ValueError(f"scene_weight and scene_layer must be non-negative, got {self.scene_weight} and "
                             f"{self.scene_layer}")


def motion_weights(x_0: torch.Tensor, strength: float, span: str = "clip") -> torch.Tensor:
    """Per-position loss weights 1 + λ m of `TeacherConfig.motion_weight`, mean 1 over each frame.

    span "clip": m is x_0's standard deviation over frames (channel mean), one map for the clip, (B, 1, 1, H, W):
    it marks each object's whole path. span "frame": m is |x_0[f + 1] - x_0[f - 1]| (channel mean; one-sided
    at the ends), one map a frame, (B, F, 1, H, W): it marks where the objects are changing in that frame.
    m is scaled to mean 1 over the frame; a clip of one frame, or a frame in which nothing changes, gets
    weight 1 everywhere.
    """
    if x_0.shape[1] < 2 or strength == 0:
        return torch.ones_like(x_0[:, :1, :1], dtype=torch.float32)
    x = x_0.float()
    if span == "clip":
        change = x.std(dim=1, keepdim=True).mean(dim=2, keepdim=True)          # (B, 1, 1, H, W)
    elif span == "frame":
        padded = torch.cat([x[:, :1], x, x[:, -1:]], dim=1)
        change = (padded[:, 2:] - padded[:, :-2]).abs().mean(dim=2, keepdim=True)   # (B, F, 1, H, W)
    else:
        raise ValueError(f"unknown motion span {span!r}; expected 'clip' or 'frame'")
    mean = change.mean(dim=(3, 4), keepdim=True)
    change = torch.where(mean > 1e-6, change / mean.clamp_min(1e-6), torch.zeros_like(change))
    weight = 1 + strength * change
    return weight / weight.mean(dim=(3, 4), keepdim=True)


def scene_targets(labels: torch.Tensor, classes: tuple[int, ...], grid: tuple[int, int]) -> list[torch.Tensor]:
    """Per-token class fractions of per-pixel labels, one tensor per attribute group.

    Args:
        labels: (B, F, G, H, W) integer class maps (class 0 the background).
        classes: K_g, the number of classes of each of the G groups.
        grid: (h, w) tokens per frame; H and W must be multiples of them.
    Returns:
        G tensors (B, F*h*w, K_g), float32, each token's fractions summing to 1, tokens in the model's order
        (frame, row, column).
    """
    (h, w), (height, width) = grid, labels.shape[-2:]
    if height % h or width % w or labels.shape[2] != len(classes):
        raise ValueError(f"labels {tuple(labels.shape)} do not fit {len(classes)} groups on a {h}x{w} token grid")
    targets = []
    for g, k in enumerate(classes):
        one_hot = F.one_hot(labels[:, :, g].long(), k).float()                          # (B, F, H, W, K)
        pooled = F.avg_pool2d(rearrange(one_hot, "b f h w k -> (b f) k h w"), (height // h, width // w))
        targets.append(rearrange(pooled, "(b f) k h w -> b (f h w) k", b=labels.shape[0]))  # (B, N, K)
    return targets


def scene_loss(logits: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
    """Mean over tokens and groups of KL(target ‖ softmax(logits)) (`TeacherConfig.scene_weight`): zero when
    the probe predicts every token's fractions exactly.

    Args:
        logits: (B, N, sum of K_g) probe outputs, the groups one after another.
        targets: G tensors (B, N, K_g) of class fractions (`scene_targets`).
    """
    groups = logits.float().split([t.shape[-1] for t in targets], dim=-1)
    kl = [(t * (t.clamp_min(1e-12).log() - z.log_softmax(-1))).sum(-1).mean() for z, t in zip(groups, targets)]
    return torch.stack(kl).mean()


def self_condition(
    model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, use: torch.Tensor,
    flow: FlowMatching,
) -> torch.Tensor:
    """The self-conditioning input of a training step (`TeacherConfig.self_cond_prob`): for the samples with
    `use` (B,) bool, the model's own estimate of x_0 from x_t alone (one forward without gradient), zeros for
    the others. Single-process, only those samples run; under torch.distributed every process runs its whole
    batch, so that all of them make the same collective calls.

    Returns:
        (B, F, C, H, W) float32, the same shape as x_t.
    """
    x0_cond = torch.zeros(x_t.shape, dtype=torch.float32, device=x_t.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rows = torch.arange(x_t.shape[0], device=x_t.device)
    else:
        rows = use.nonzero().squeeze(1)
        if rows.numel() == 0:
            return x0_cond
    with torch.no_grad():
        v = model(x_t[rows], t[rows], context[rows]).float()               # (b, F, C, H, W)
        x0 = flow.x0_from_velocity(x_t[rows].float(), v, t[rows])
    x0_cond[rows] = torch.where(use[rows].view(-1, 1, 1, 1, 1), x0, 0.0)
    return x0_cond


def tube_mask(rng: SampleRNG, ratio: float, num_frames: int, grid: tuple[int, int]) -> torch.Tensor:
    """The token positions each sample keeps under masked training (`TeacherConfig.mask_ratio`): the same
    positions in every frame, drawn uniformly per sample.

    Returns:
        (B, F, K) int64 indices into each frame's row-major token grid, sorted, K = h*w - round(ratio * h*w)
        (at least one position is hidden and one kept).
    """
    tokens = grid[0] * grid[1]
    hidden = min(max(round(ratio * tokens), 1), tokens - 1)
    keep = rng.rand(tokens).argsort(dim=1)[:, : tokens - hidden].sort(dim=1).values    # (B, K)
    return keep[:, None].expand(-1, num_frames, -1)


def teacher_loss(
    model: nn.Module,
    x_0: torch.Tensor,
    context: torch.Tensor,
    null_context: torch.Tensor,
    rng: SampleRNG,
    flow: FlowMatching,
    *,
    prompt_dropout: float = 0.1,
    weighting: str = "uniform",
    frame_noise: float = 0.0,
    multiscale: tuple[int, ...] = (),
    motion_weight: float = 0.0,
    motion_span: str = "clip",
    temporal_weight: float = 0.0,
    labels: torch.Tensor | None = None,
    scene_classes: tuple[int, ...] = (),
    scene_weight: float = 0.0,
    self_cond: float = 0.0,
    mask_ratio: float = 0.0,
    mask_weight: float = 1.0,
) -> tuple[torch.Tensor, Logs]:
    """Flow-matching loss of a bidirectional velocity model (spec §3, target v = ε - x_0).

    Args:
        model: (x_t (B, F, C, H, W), t (B,) or per frame (B, F), context (B, L, D_text)) -> v_pred (B, F, C, H, W).
        x_0: (B, F, C, H, W) clean (normalised) latents.
        context, null_context: (B, L, D_text) caption and empty-prompt embeddings.
        rng: per-sample random streams (draw order: timestep, noise, dropout).
        flow: the schedule; its shift sets the training grid.
        prompt_dropout: probability of training a sample unconditionally.
        weighting: "uniform" or "wan" (× `flow.training_weight(t)`).
        frame_noise: probability of independent per-frame noise levels for a sample (draws made after the
            others, so 0 gives exactly the one-level loss).
        multiscale: pooling factors of the multiscale loss (`TeacherConfig.multiscale`); () the plain MSE.
        motion_weight: λ of the loss weighted towards what moves (`TeacherConfig.motion_weight`); 0 the plain MSE.
        motion_span: "clip" or "frame" (`motion_weights`).
        temporal_weight: weight of the error's frame-to-frame change (`TeacherConfig.temporal_weight`).
        labels: (B, F, G, H_px, W_px) the clips' per-pixel scene labels (`Batch.labels`), for the scene loss.
        scene_classes: classes of each of the G label groups; their sum is the model's `config.probe`.
        scene_weight: λ of the scene loss (`TeacherConfig.scene_weight`); > 0 needs a model with a probe.
        self_cond: share of samples that read the model's own estimate of x_0 (`TeacherConfig.self_cond_prob`,
            drawn after the other draws); > 0 needs a self-conditioned model, which reads zeros otherwise.
        mask_ratio: share of token positions hidden from the first blocks (`TeacherConfig.mask_ratio`, drawn
            last); > 0 needs a model with `config.mask_decoder`.
        mask_weight: weight of the hidden positions' x0 error (`TeacherConfig.mask_weight`).
    Returns:
        loss (0-dim, mean over the batch) and detached logs.
    """
    index = rng.randint(flow.num_train_timesteps)                          # (B,)
    eps = rng.randn(*x_0.shape[1:])                                        # (B, F, C, H, W)
    drop = rng.rand() < prompt_dropout                                     # (B,)
    if frame_noise > 0:
        per_frame = rng.randint(flow.num_train_timesteps, x_0.shape[1])    # (B, F)
        mixed = (rng.rand() < frame_noise)[:, None]                        # (B, 1)
        index = torch.where(mixed, per_frame, index[:, None])              # (B, F)
    t = flow.timesteps.to(x_0.device)[index]                               # (B,) or (B, F) on the shifted grid
    x_t = flow.add_noise(x_0, eps, t)                                      # x_t = (1 - σ) x_0 + σ ε
    context = torch.where(drop[:, None, None], null_context, context)      # (B, L, D_text)
    extra = {}
    if self_cond > 0:
        extra["x0_cond"] = self_condition(model, x_t, t, context, rng.rand() < self_cond, flow)
    hidden = None
    if mask_ratio > 0:
        _, ph, pw = unwrap(model).config.patch_size
        grid = (x_0.shape[-2] // ph, x_0.shape[-1] // pw)
        extra["keep"] = tube_mask(rng, mask_ratio, x_0.shape[1], grid)    # (B, F, K)
        shown = torch.zeros(x_0.shape[0], grid[0] * grid[1], device=x_0.device)
        shown.scatter_(1, extra["keep"][:, 0], 1.0)                        # (B, h*w): 1 where kept
        hidden = 1 - shown.view(-1, 1, 1, *grid).repeat_interleave(ph, -2).repeat_interleave(pw, -1)

    if scene_weight > 0:
        if labels is None:
            raise ValueError("the scene loss needs the clips' scene labels (world clips)")
        v_pred, logits = model(x_t, t, context, probe=True, **extra)       # (B, F, C, H, W), (B, N, ΣK)
    else:
        v_pred = model(x_t, t, context, **extra)                           # (B, F, C, H, W)
    v = flow.target_velocity(x_0, eps)                                     # v = ε - x_0
    error = v_pred.float() - v.float()                                     # (B, F, C, H, W)
    weight = motion_weights(x_0, motion_weight, motion_span)               # (B, 1 or F, 1, H, W), mean 1
    if hidden is not None:                      # hidden positions: their x0 error, σ² times the velocity error
        sigma = flow.sigma_of(t).float().view(*t.shape, *[1] * (5 - t.dim()))  # (B or B x F, then 1s)
        weight = weight * (1 + hidden * (mask_weight * sigma**2 - 1))      # (B, 1 or F, 1, H, W)
    per_frame = (error.pow(2) * weight).mean(dim=(2, 3, 4))                # (B, F)
    for k in multiscale:
        pooled = F.avg_pool2d(error.flatten(0, 1), k, ceil_mode=True)        # (B*F, C, H/k, W/k)
        pooled_weight = F.avg_pool2d(weight.expand_as(error).flatten(0, 1), k, ceil_mode=True)
        pooled = (pooled.pow(2) * pooled_weight).mean(dim=(1, 2, 3))
        per_frame = per_frame + k**2 * pooled.unflatten(0, error.shape[:2])
    per_frame = per_frame / (1 + len(multiscale))
    if weighting not in ("uniform", "wan"):
        raise ValueError(f"unknown weighting {weighting!r}")
    level = flow.training_weight(t) if weighting == "wan" else torch.ones_like(t, dtype=torch.float32)
    level = level if level.ndim == 2 else level[:, None].expand_as(per_frame)   # (B, F): each frame its own level's
    loss = (per_frame * level).mean()
    if temporal_weight > 0 and error.shape[1] > 1:
        # the frame-to-frame change of the error, pair (f, f + 1); half its square, so white noise costs the same
        pair_weight = weight if weight.shape[1] == 1 else 0.5 * (weight[:, 1:] + weight[:, :-1])
        change = 0.5 * (error[:, 1:] - error[:, :-1]).pow(2).mul(pair_weight).mean(dim=(2, 3, 4))   # (B, F - 1)
        loss = loss + temporal_weight * (change * 0.5 * (level[:, 1:] + level[:, :-1])).mean()

    logs = {"loss": loss.detach(), "prompt_dropout": drop.float().mean()}
    if scene_weight > 0:
        _, ph, pw = unwrap(model).config.patch_size
        grid = (x_0.shape[-2] // ph, x_0.shape[-1] // pw)
        scene = scene_loss(logits, scene_targets(labels, scene_classes, grid))
        loss = loss + scene_weight * scene
        logs["scene_loss"] = scene.detach()
    return loss, logs


class TeacherTraining:
    """The teacher as a training algorithm: one update of the network `model` with `teacher_loss`.

    Args:
        config: the teacher's settings.
        model: the bidirectional WanDiT, possibly wrapped for data parallelism (its forward is what is called);
            with the scene loss, one with a probe of sum(scene_classes) outputs.
        scene_classes: classes of each scene label group (`world.LABEL_GROUPS`, background included).
    """

    def __init__(self, config: TeacherConfig, model: nn.Module, scene_classes: tuple[int, ...] = ()):
        self.config = config
        self.model = model
        self.scene_classes = tuple(scene_classes)
        self.flow = FlowMatching(shift=config.shift)
        self.updates = (Update(name="model", network="model", loss=self.loss),)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, Logs]:
        if batch.x_0 is None:
            raise ValueError("teacher training needs clean latents (batch.x_0)")
        rng = SampleRNG(batch.seeds, device=batch.x_0.device)
        return teacher_loss(
            self.model, batch.x_0, batch.context, batch.null_context, rng, self.flow,
            prompt_dropout=self.config.prompt_dropout, weighting=self.config.weighting,
            frame_noise=self.config.frame_noise, multiscale=self.config.multiscale,
            motion_weight=self.config.motion_weight, motion_span=self.config.motion_span,
            temporal_weight=self.config.temporal_weight, labels=batch.labels, scene_classes=self.scene_classes,
            scene_weight=self.config.scene_weight,
            self_cond=self.config.self_cond_prob if unwrap(self.model).config.self_cond else 0.0,
            mask_ratio=self.config.mask_ratio, mask_weight=self.config.mask_weight,
        )
