"""The trainer: one loop for every algorithm, in one process or under `torchrun`.

The algorithm table `ALGORITHMS` is the only place that branches on the algorithm. An entry says which
networks to build, which of them are trained (wrapped for data parallelism, optimised, averaged), how to build
the algorithm from the wrapped networks, and how to draw preview samples. A step then reads:

    for each update due at this step (algorithm.updates, e.g. DMD: critic every step, generator every 5th):
        zero its gradients
        for each micro-batch (gradient accumulation; gradients reduced across ranks on the last one):
            loss, logs = update.loss(batch)          # the algorithm: pure, no optimizer / I/O / sync
            backward(loss / grad_accum)
        clip the gradient norm, set the learning rate of this step, optimizer step, EMA update

Randomness is seeded per sample (see `algorithms/base.py` and `data.py`), the learning rate is a function of
the step, and checkpoints hold the full state, so an interrupted run resumed from a checkpoint reproduces the
uninterrupted one bit for bit (fp32, same machine and thread count).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..algorithms.base import Algorithm, Batch, Update
from ..algorithms.causal_diffusion import CausalDiffusionTraining
from ..algorithms.distillation import DistillTraining
from ..algorithms.ode_init import ODEInitTraining
from ..algorithms.teacher import TeacherTraining
from ..config import WanConfig
from ..inference.loading import FRAME_CODEC_PREFIX, PipelineSpec
from ..inference.pipeline import SamplingConfig, StreamingPipeline
from ..inference.teacher import decode_to_uint8, sample_teacher
from ..inference.wan import wan_pipeline_spec
from ..io.checkpoints import describe_checkpoint, load_transformer
from ..models.discriminator import Discriminator
from ..models.wan import WanDiT, grow_depth
from ..models.wan_vae import WanVAE
from ..world.dataset import LABEL_GROUPS
from ..world.splits import heldout_prompts
from . import checkpoint as ckpt
from . import parallel
from .config import OptimConfig, TrainConfig
from .data import latent_norm, make_loader, make_text_encoder, step_samples, to_batch, world_codec
from .ema import EMA
from .overrides import config_diff

__all__ = ["AlgorithmEntry", "ALGORITHMS", "Trainer", "train", "lr_at"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- algorithm table
@dataclass(frozen=True)
class AlgorithmEntry:
    """How the trainer sets up one algorithm.

    Attributes:
        networks: config -> {name: network} on the CPU (trained and frozen ones).
        trained: names of the networks the updates train (wrapped, optimised, checkpointed, exported).
        build: (config, {name: network to call in training}) -> the algorithm.
        ema: names of the networks that keep an EMA when `config.ema.enabled`.
        preview: (config, network, context, null_context, seed) -> (B, F, C, H, W) latents, or None.
        preview_network: the network previews sample from.
        export: the trained networks written as stand-alone weights (with their EMA) at each checkpoint;
            None: all trained networks.
    """

    networks: Callable[[TrainConfig], dict[str, nn.Module]]
    trained: tuple[str, ...]
    build: Callable[[TrainConfig, dict[str, nn.Module]], Algorithm]
    ema: tuple[str, ...] = ()
    preview: Callable[[TrainConfig, nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None
    preview_network: str | None = None
    export: tuple[str, ...] | None = None


# optional parts a checkpoint can gain with its function unchanged: config field -> what its weights' names hold
_GROWABLE = {"refine": "refiner.", "pos_embed": "pos_embedding.", "rope_mixed": ".self_attn.rope_freqs",
             "probe": "probe.", "self_cond": "self_cond_embedding.", "mask_decoder": "mask_token"}


def _load_or_new(path: str | None, config: WanConfig) -> WanDiT:
    """`config`'s network with the weights at `path` (any layout), or freshly initialised. Ways to grow a
    checkpoint that keep its function: `config.num_layers` a multiple of the stored depth interleaves silent
    copies of its blocks (`grow_depth`); an output refiner (`WanConfig.refine`) or absolute positions
    (`WanConfig.pos_embed`) the checkpoint lacks start at zero, mixed RoPE (`WanConfig.rope_mixed`) at the
    axial frequencies. A self-conditioned checkpoint (`WanConfig.self_cond`) loads into a network without
    self-conditioning, a causal generator for one, as its plain denoiser: the embedding of the estimate, which
    reads none as zeros, is left out."""
    if not path:
        return WanDiT(config)
    stored = describe_checkpoint(path)["config"]
    layers = stored.get("num_layers") or config.num_layers
    new = {field: prefix for field, prefix in _GROWABLE.items() if getattr(config, field) and not stored.get(field)}
    drop = bool(stored.get("self_cond")) and not config.self_cond
    if layers == config.num_layers and not new and not drop:
        return load_transformer(path, config=config, dtype=torch.float32)
    if config.num_layers % layers:
        raise ValueError(f"{path} has {layers} blocks: a model grown from it needs a multiple of {layers} "
                         f"blocks, got model.num_layers={config.num_layers}")
    off = {field: type(getattr(config, field))() for field in new}          # 0 / False: the part absent
    if drop:
        off.update(self_cond=True, causal=False)                           # loaded as stored, then left out
    base = load_transformer(path, config=config.replace(num_layers=layers, **off),
                            dtype=torch.float32)
    if layers != config.num_layers:
        base = grow_depth(base, config.num_layers)
        log.info("%s has %d blocks: grown to %d, each block followed by silent copies of itself",
                 path, layers, config.num_layers)
    if not new and not drop:
        return base
    model = WanDiT(config)
    state = {k: v for k, v in base.state_dict().items() if not (drop and k.startswith("self_cond_embedding."))}
    if drop:
        log.info("%s is self-conditioned: loaded as its plain denoiser, without the estimate's embedding", path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(any(part in k for part in new.values()) for k in missing), (missing, unexpected)
    if new:
        log.info("%s lacks %s: new weights starting with the function unchanged", path,
                 ", ".join(f"model.{field}" for field in new))
    return model


def _param_groups(network: nn.Module, optim: OptimConfig) -> list[dict]:
    """AdamW's parameter groups: mixed RoPE frequencies (`WanConfig.rope_mixed`) apart, at `optim.rope_lr_scale`
    times the learning rate and without weight decay; every other trained parameter in one group."""
    trained = [(n, p) for n, p in network.named_parameters() if p.requires_grad]
    rope = [p for n, p in trained if n.endswith("self_attn.rope_freqs")]
    groups = [{"params": [p for n, p in trained if not n.endswith("self_attn.rope_freqs")]}]
    if rope:
        groups.append({"params": rope, "rope": True, "weight_decay": 0.0})
    return groups


def _require_causal(config: TrainConfig) -> WanConfig:
    if not config.model.causal:
        raise ValueError(f"{config.algorithm} trains a causal generator: set model.causal=true "
                         "(e.g. the world-causal model preset)")
    return config.model


# classes of each scene label group, background included: the teacher's scene loss and its probe's outputs
SCENE_CLASSES = tuple(len(words) + 1 for words in LABEL_GROUPS.values())


def _teacher_networks(config: TrainConfig) -> dict[str, nn.Module]:
    if config.model.causal:
        raise ValueError("the teacher is bidirectional: set model.causal=false")
    model = config.model
    if config.teacher.scene_weight > 0:                  # the scene loss's probe, dropped from exported weights
        if config.data.source != "world":
            raise ValueError("teacher.scene_weight needs world clips (data.source=world): they carry the labels")
        if config.teacher.scene_layer >= model.num_layers:
            raise ValueError(f"teacher.scene_layer {config.teacher.scene_layer} is not a block of the "
                             f"{model.num_layers}-block model")
        model = model.replace(probe=sum(SCENE_CLASSES), probe_layer=config.teacher.scene_layer)
    if config.teacher.mask_ratio > 0:                    # masked training's mask token, dropped from exported weights
        if config.teacher.mask_decoder >= model.num_layers:
            raise ValueError(f"teacher.mask_decoder {config.teacher.mask_decoder} leaves no block of the "
                             f"{model.num_layers}-block model to the visible tokens alone")
        model = model.replace(mask_decoder=config.teacher.mask_decoder)
    return {"model": _load_or_new(config.teacher.init_from, model)}


def _ode_init_networks(config: TrainConfig) -> dict[str, nn.Module]:
    return {"generator": _load_or_new(config.ode_init.init_from, _require_causal(config))}


def _causal_networks(config: TrainConfig) -> dict[str, nn.Module]:
    return {"generator": _load_or_new(config.causal.init_from, _require_causal(config))}


def _distill_networks(config: TrainConfig) -> dict[str, nn.Module]:
    d = config.distill
    nets = {"generator": _load_or_new(d.generator_init or d.teacher, _require_causal(config))}
    critic_from = d.critic_init or d.teacher
    if critic_from is None:
        raise ValueError("distillation needs distill.teacher (or distill.critic_init): the critic starts from it")
    critic = load_transformer(critic_from, causal=False, dtype=torch.float32)
    if d.adversarial:                                   # the DMD2 mix: one critic, fake score and discriminator
        critic = Discriminator(critic, num_registers=d.num_registers, score=d.gan_weight > 0)
    nets["critic"] = critic
    if d.needs_teacher:
        nets["real"] = load_transformer(d.teacher, causal=False, dtype=torch.float32)
    return nets


def _build_distill(config: TrainConfig, nets: dict[str, nn.Module]) -> DistillTraining:
    return DistillTraining(config.distill, nets["generator"], nets["critic"], nets.get("real"),
                           num_frames=config.data.num_frames,
                           latent_shape=(config.latent_channels, *config.latent_size))


def _teacher_preview(config: TrainConfig, model: nn.Module, context, null_context, seed: int) -> torch.Tensor:
    t = config.teacher
    return sample_teacher(
        model, context, null_context[:1], num_frames=config.data.num_frames, latent_size=config.latent_size,
        steps=config.logging.sample_steps, guidance=t.guidance, shift=t.sample_shift, seed=seed, sampler=t.sampler,
    )


def _causal_preview(config: TrainConfig, generator: nn.Module, context, null_context, seed: int) -> torch.Tensor:
    """Stream the clip with the generator's own inference recipe (few-step or multi-step)."""
    was_training = generator.training
    pipe = StreamingPipeline(generator, config.latent_size, sampling=_sampling(config))
    video = pipe(prompt_embeds=context, negative_embeds=null_context[:1], num_frames=config.data.num_frames,
                 seeds=seed)
    generator.train(was_training)
    return video.latents


def _sampling(config: TrainConfig) -> SamplingConfig:
    """How the run's exported network is sampled (recorded in its checkpoint)."""
    if config.algorithm == "teacher":
        t = config.teacher
        return SamplingConfig(num_inference_steps=t.sample_steps, sampler=t.sampler, shift=t.sample_shift,
                              guidance_scale=t.guidance)
    if config.algorithm == "causal-diffusion":
        c = config.causal
        return SamplingConfig(num_inference_steps=c.sample_steps, sampler=c.sampler, shift=c.sample_shift,
                              guidance_scale=c.guidance)
    few = config.ode_init if config.algorithm == "ode-init" else config.distill
    return SamplingConfig(denoising_steps=tuple(few.denoising_steps), warp=few.warp, shift=few.shift,
                          context_noise=few.context_noise)


ALGORITHMS: dict[str, AlgorithmEntry] = {
    "teacher": AlgorithmEntry(
        networks=_teacher_networks,
        trained=("model",),
        build=lambda config, nets: TeacherTraining(config.teacher, nets["model"], SCENE_CLASSES),
        ema=("model",),
        preview=_teacher_preview,
        preview_network="model",
    ),
    "ode-init": AlgorithmEntry(
        networks=_ode_init_networks,
        trained=("generator",),
        build=lambda config, nets: ODEInitTraining(config.ode_init, nets["generator"]),
        ema=("generator",),
        preview=_causal_preview,
        preview_network="generator",
    ),
    "causal-diffusion": AlgorithmEntry(
        networks=_causal_networks,
        trained=("generator",),
        build=lambda config, nets: CausalDiffusionTraining(config.causal, nets["generator"]),
        ema=("generator",),
        preview=_causal_preview,
        preview_network="generator",
    ),
    "distill": AlgorithmEntry(
        networks=_distill_networks,
        trained=("generator", "critic"),
        build=_build_distill,
        ema=("generator",),
        preview=_causal_preview,
        preview_network="generator",
        export=("generator",),
    ),
}


# ----------------------------------------------------------------------------------------------- helpers
def lr_at(optim: OptimConfig, step: int, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then constant / cosine / linear."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.decay == "constant":
        return optim.lr
    span = max(1, total_steps - 1 - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    if optim.decay == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        factor = 1 - progress
    return optim.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * factor)


def _pipeline_spec(config: TrainConfig) -> PipelineSpec:
    """How the exported network is run: the world's codec and text encoder, or, for a run on Wan latents
    (`data.latent_shape`), the Wan VAE and UMT5 of `selfforcing generate --model-dir`."""
    d = config.data
    if d.latent_shape is not None:
        height, width = (n * WanVAE.spatial_factor for n in config.latent_size)
        return dataclasses.replace(wan_pipeline_spec(height, width, config.model.text_len),
                                   text_max_length=d.text_max_length, train_frames=d.num_frames,
                                   sampling=_sampling(config))
    norm = latent_norm(d)
    codec = FRAME_CODEC_PREFIX + d.codec_file if d.codec_file is not None else f"space-to-depth-{d.codec_patch}"
    return PipelineSpec(
        height=d.size, width=d.size, codec=codec, latent_mean=norm.mean,
        latent_std=norm.std, text_encoder=d.text_encoder,
        text_max_length=d.text_max_length, train_frames=d.num_frames, sampling=_sampling(config),
    )


def video_strip(video: np.ndarray, max_frames: int = 11) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (H, W·k, 3): k ≤ max_frames evenly spaced frames side by side."""
    index = np.linspace(0, len(video) - 1, min(max_frames, len(video))).round().astype(int)
    return np.concatenate(list(video[index]), axis=1)


# ----------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Builds networks, optimizers, EMA and data for a `TrainConfig`; `fit()` runs the loop.

    Args:
        config: the resolved configuration.
        resume: False, True (the latest checkpoint in the run's checkpoint folder; error if there is none)
            or a checkpoint path.
        ctx: the parallel context; default: `init_parallel` from the torchrun environment.
    """

    def __init__(self, config: TrainConfig, *, resume: bool | str | Path = False,
                 ctx: parallel.ParallelContext | None = None):
        if config.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {config.algorithm!r}; known: {', '.join(sorted(ALGORITHMS))}")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.ctx = ctx or parallel.init_parallel(config.device, config.parallel.backend)
        if config.precision.autocast == "auto":                # resolved once: checkpoints store the choice
            choice = "bf16" if parallel.native_bf16(self.ctx.device) else "fp32"
            config = config.replace(precision=dataclasses.replace(config.precision, autocast=choice))
            log.info("precision.autocast=auto: %s on %s", choice, self.ctx.device)
        self.config = config
        s = config.schedule
        if s.batch_size % (s.grad_accum * self.ctx.world_size):
            raise ValueError(f"schedule.batch_size {s.batch_size} must be divisible by grad_accum {s.grad_accum} "
                             f"x {self.ctx.world_size} processes")
        self.out_dir = Path(config.out_dir)
        self.ckpt_dir = self.out_dir / config.checkpoint.dir
        self.entry = ALGORITHMS[config.algorithm]

        torch.manual_seed(config.seed)                       # identical initial weights on every rank
        self.networks = {k: m.to(self.ctx.device) for k, m in self.entry.networks(config).items()}
        for name, net in self.networks.items():
            if name in self.entry.trained and config.parallel.activation_checkpointing:
                for module in net.modules():
                    if isinstance(module, WanDiT):
                        module.gradient_checkpointing = True
            if name not in self.entry.trained:                 # frozen (a teacher); trained ones keep their
                net.requires_grad_(False)                       # own choice (a discriminator's unused head)
        par = config.parallel
        self.wrapped = {
            k: parallel.parallelize(m, self.ctx, par.strategy, par.fsdp_param_dtype, par.fsdp_reduce_dtype)
            if k in self.entry.trained or (par.strategy == "fsdp" and par.shard_frozen) else m
            for k, m in self.networks.items()
        }
        self.algorithm = self.entry.build(config, self.wrapped)
        self.updates: tuple[Update, ...] = tuple(self.algorithm.updates)
        for u in self.updates:
            if u.network not in self.entry.trained:
                raise ValueError(f"update {u.name!r} trains {u.network!r}, which is not a trained network")
        o = config.optim
        self.optimizers = {
            u.name: torch.optim.AdamW(_param_groups(self.networks[u.network], o),
                                      lr=self._peak_lr(u), betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
            for u in self.updates
        }
        self.emas = {
            k: EMA(self.networks[k], config.ema.decay, config.ema.start_step) for k in self.entry.ema
        } if config.ema.enabled else {}
        self.step = 0
        if resume:
            path = Path(resume) if not isinstance(resume, bool) else ckpt.latest_checkpoint(self.ckpt_dir)
            if path is None:
                raise ValueError(f"--resume: no checkpoint in {self.ckpt_dir}")
            self.load(path)

    def _peak_lr(self, update: Update) -> float:
        return update.lr if update.lr is not None else self.config.optim.lr

    # ------------------------------------------------------------------------------ state
    def state(self) -> dict:
        """The full training state (collective under FSDP; complete on rank 0)."""
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "networks": {k: parallel.model_state(self.networks[k]) for k in self.entry.trained},
            "optimizers": {u.name: parallel.optimizer_state(self.networks[u.network], self.optimizers[u.name])
                           for u in self.updates},
            "ema": {k: e.state_dict() for k, e in self.emas.items()},
            "rng": ckpt.rng_state(),
            "world_size": self.ctx.world_size,
        }

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by `save` (any world size)."""
        state = ckpt.load_state(path)
        stored = TrainConfig.from_dict(state["config"])
        changed = config_diff(stored, self.config)
        if changed:
            log.warning("resuming %s with a changed config: %s", path,
                        ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in sorted(changed.items())))
        for k in self.entry.trained:
            parallel.load_model_state(self.networks[k], state["networks"][k])
        for u in self.updates:
            parallel.load_optimizer_state(self.networks[u.network], self.optimizers[u.name], state["optimizers"][u.name])
        for k, e in self.emas.items():
            if k in state["ema"]:
                e.load_state_dict(state["ema"][k])
            else:
                log.warning("%s has no EMA of %s; starting it from the weights", path, k)
                e.load_state_dict({n: p.detach().cpu() for n, p in state["networks"][k].items() if n in e.shadow})
        ckpt.set_rng_state(state["rng"])
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", path, self.step)

    def save(self) -> Path | None:
        """Write the checkpoint of the current step and export the weights (rank 0 writes). Collective."""
        state = self.state()
        path = None
        if self.ctx.is_main:
            path = ckpt.save_state(ckpt.checkpoint_path(self.ckpt_dir, self.step), state)
            ckpt.prune_checkpoints(self.ckpt_dir, self.config.checkpoint.keep)
            spec, norm = _pipeline_spec(self.config), latent_norm(self.config.data).to_dict()
            for k in self.entry.export or self.entry.trained:
                exports = {f"{k}.safetensors": state["networks"][k]}
                if k in state["ema"]:
                    exports[f"{k}_ema.safetensors"] = state["ema"][k]
                for filename, weights in exports.items():
                    ckpt.export_weights(weights, self.networks[k].config, self.out_dir / filename,
                                        train_config=state["config"], step=self.step, spec=spec, latent_norm=norm)
            log.info("saved %s", path)
        parallel.barrier(self.ctx)
        return path

    # ------------------------------------------------------------------------------ one step
    def _autocast(self):
        if self.config.precision.autocast == "bf16":
            return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self, micro_batches: list[Batch]) -> dict[str, torch.Tensor]:
        """One optimizer step of every update due now, over this rank's micro-batches. Returns detached logs."""
        logs: dict[str, torch.Tensor] = {}
        accum = len(micro_batches)
        for u in self.updates:
            if self.step % u.every:
                continue
            net, wrapped, opt = self.networks[u.network], self.wrapped[u.network], self.optimizers[u.name]
            opt.zero_grad(set_to_none=True)
            sums: dict[str, torch.Tensor] = {}
            for i, batch in enumerate(micro_batches):
                with parallel.grad_sync(wrapped, enabled=i == accum - 1):
                    with self._autocast():
                        loss, micro_logs = u.loss(batch)
                    (loss / accum).backward()
                for k, v in micro_logs.items():                   # kept on the device: no sync per step
                    sums[k] = sums.get(k, 0.0) + v.detach().float() / accum
            params = [p for p in net.parameters() if p.grad is not None]
            clip = self.config.schedule.grad_clip
            if clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            else:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            lr = lr_at(dataclasses.replace(self.config.optim, lr=self._peak_lr(u)), self.step,
                       self.config.schedule.steps)
            for group in opt.param_groups:      # the scale read from the config, so a resume can change it
                group["lr"] = lr * (self.config.optim.rope_lr_scale if group.get("rope") else 1.0)
            opt.step()
            if u.network in self.emas:
                self.emas[u.network].update(net, self.step + 1)
            logs.update({f"{u.name}/{k}": v for k, v in sums.items()})
            logs[f"{u.name}/grad_norm"] = parallel.full_tensor(grad_norm).detach().float()
            logs[f"{u.name}/lr"] = torch.tensor(lr)
        self.step += 1
        return logs

    # ------------------------------------------------------------------------------ previews
    def preview(self, writer, text_encoder) -> None:
        """Sample held-out prompts with the EMA weights and log them as frame strips (collective under FSDP)."""
        entry, cfg = self.entry, self.config
        if entry.preview is None or cfg.logging.sample_prompts == 0:
            return
        fsdp = self.ctx.distributed and cfg.parallel.strategy == "fsdp"
        if not (self.ctx.is_main or fsdp):
            return
        name = entry.preview_network
        net = self.networks[name]
        prompts = [detailed for _, detailed in heldout_prompts(cfg.logging.sample_prompts)]
        context = text_encoder.encode(prompts).to(self.ctx.device)
        null = text_encoder.encode([""]).to(self.ctx.device)
        ema = self.emas.get(name)
        with torch.no_grad(), (ema.swapped(net) if ema is not None else nullcontext()), self._autocast():
            latents = entry.preview(cfg, net, context, null, cfg.seed)
        if writer is None or not self.ctx.is_main:
            return
        video = decode_to_uint8(latents, world_codec(cfg.data), latent_norm(cfg.data)).numpy()
        for i, (prompt, clip) in enumerate(zip(prompts, video)):
            writer.add_image(f"preview/{i}", video_strip(clip), self.step, dataformats="HWC")
            writer.add_text(f"preview/{i}/prompt", prompt, self.step)

    # ------------------------------------------------------------------------------ the loop
    def fit(self, until: int | None = None) -> dict[str, float]:
        """Train from the current step to `until` (default: schedule.steps), checkpointing on the way.

        Returns:
            the last logged averages (floats) plus "step" and "samples_per_s".
        """
        cfg, ctx = self.config, self.ctx
        until = min(until or cfg.schedule.steps, cfg.schedule.steps)
        text_encoder = make_text_encoder(cfg.data, cfg.model.text_dim, ctx.device)
        make_batch = to_batch(cfg, text_encoder, ctx.device)
        loader = iter(make_loader(cfg, self.step, ctx.world_size, ctx.rank))
        writer = self._writer() if ctx.is_main else None
        from tqdm import tqdm

        bar = tqdm(total=until, initial=self.step, desc=cfg.name, unit="step", dynamic_ncols=True,
                   disable=True if not (cfg.logging.progress and ctx.is_main) else None)
        accum, window = cfg.schedule.grad_accum, defaultdict(list)
        result: dict[str, float] = {}
        tick, samples, paused = time.perf_counter(), 0, 0.0              # paused: previews and checkpoints
        start_step = self.step
        try:
            while self.step < until:
                micro = [make_batch(next(loader)) for _ in range(accum)]
                samples += step_samples(cfg, self.step)
                for k, v in self.train_step(micro).items():
                    window[k].append(v)
                bar.update(1)
                last = self.step == until
                if self.step % cfg.logging.every == 0 or last:
                    now = time.perf_counter()
                    means = parallel.all_reduce_mean({k: torch.stack(v).mean() for k, v in window.items()}, ctx)
                    result = {k: float(v) for k, v in means.items()}
                    elapsed = max(now - tick - paused, 1e-9)
                    result["samples_per_s"] = samples / elapsed
                    result["step"] = self.step
                    self._log(result, writer, bar)
                    window.clear()
                    tick, samples, paused = time.perf_counter(), 0, 0.0
                pause_start = time.perf_counter()
                every = cfg.logging.sample_every
                if every and (self.step % every == 0 or (last and self.step != start_step)):
                    self.preview(writer, text_encoder)
                c_every = cfg.checkpoint.every
                if (c_every and self.step % c_every == 0) or self.step == cfg.schedule.steps:
                    self.save()
                paused += time.perf_counter() - pause_start
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return result

    def _writer(self):
        if not self.config.logging.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed (pip install tensorboard): no TensorBoard logs")
            return None
        writer = SummaryWriter(str(self.out_dir / self.config.logging.tensorboard_dir))
        writer.add_text("config", "```\n" + _pretty(self.config.to_dict()) + "\n```", self.step)
        return writer

    def _log(self, values: dict[str, float], writer, bar) -> None:
        if not self.ctx.is_main:
            return
        losses = {k: v for k, v in values.items() if k.endswith("/loss")}
        bar.set_postfix({k.split("/")[0]: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
        log.info("step %d/%d  %s  %.2f samples/s", self.step, self.config.schedule.steps,
                 "  ".join(f"{k} {v:.4g}" for k, v in sorted(values.items()) if k not in ("step", "samples_per_s")),
                 values["samples_per_s"])
        if writer is not None:
            for k, v in values.items():
                if k != "step":
                    writer.add_scalar(k if "/" in k else f"perf/{k}", v, self.step)
            writer.flush()


def _pretty(d: dict, indent: int = 0) -> str:
    lines = []
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(" " * indent + f"{k}:")
            lines.append(_pretty(v, indent + 2))
        else:
            lines.append(" " * indent + f"{k}: {v}")
    return "\n".join(lines)


def train(config: TrainConfig, *, resume: bool | str | Path = False, until: int | None = None) -> Trainer:
    """Build a `Trainer`, run it to `until` (default: the end) and return it. Shuts the process group down."""
    trainer = Trainer(config, resume=resume)
    try:
        trainer.fit(until)
    finally:
        parallel.shutdown(trainer.ctx)
    return trainer
