"""The training configuration: typed, frozen, nested dataclasses, and the presets that build them.

A run is described by one `TrainConfig`. Presets are plain functions returning one, derived from each other
with `dataclasses.replace`; the command line starts from a preset (or a JSON file) and applies dotted
overrides (`--set optim.lr=3e-4 schedule.steps=2000`, see `overrides.py`). The resolved config is stored in
every checkpoint.

Batch sizes. `schedule.batch_size` is the *global* batch: samples per optimizer step, summed over ranks and
gradient-accumulation micro-steps. Each rank sees micro-batches of batch_size / (world_size · grad_accum)
samples, so changing the number of processes or the accumulation leaves the optimisation unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from ..algorithms.causal_diffusion import CausalDiffusionConfig
from ..algorithms.distillation import DistillConfig
from ..algorithms.ode_init import ODEInitConfig
from ..algorithms.teacher import TeacherConfig
from ..config import WanConfig, get_preset
from ..models.codec import LearnedFrameCodec, learned_codec_channels
from ..world import vocab
from .overrides import apply_overrides, config_from_dict, config_to_dict

__all__ = [
    "DataConfig", "OptimConfig", "ScheduleConfig", "EMAConfig", "PrecisionConfig", "LoggingConfig",
    "CheckpointConfig", "ParallelConfig", "TrainConfig", "TRAIN_PRESETS", "train_preset", "train_preset_names",
    "load_config", "resolve_config",
]


@dataclass(frozen=True)
class DataConfig:
    """Training data: clips of the synthetic world (`selfforcing.world.WorldDataset`) and their captions, or
    captions alone, or stored teacher trajectories; in the world codec's latent space or, at real scale, in a
    given latent space (Wan VAE latents, `latent_shape`).

    Attributes:
        source: "world" (rendered clips and their captions), "prompts" (the world's captions only: prompt-only
            algorithms such as Self-Forcing DMD / SiD need no videos), "prompt-file" (captions from a text file,
            one per line, as the published system trains), "ode-pairs" (stored teacher trajectories and their
            prompts, from `selfforcing ode-pairs`, for the ODE init) or "latents" (real clips already encoded,
            from `selfforcing encode-videos`: the GAN variant's real videos at Wan scale).
        ode_pairs: the folder of ODE pairs (source "ode-pairs").
        latents: the folder of encoded clips (source "latents").
        prompts_file: the caption file (source "prompt-file"); blank lines are skipped.
        length: distinct training items (scenes) of one epoch (ignored for "ode-pairs" and "prompt-file": the
            stored set, the file's prompts).
        seed: the world's scene stream (not the run seed).
        num_frames: F, frames per clip (one latent frame per frame with the space-to-depth codec).
        size: H = W in pixels.
        max_objects: at most this many objects per scene.
        max_start_frame: clips start at a uniform frame in [0, max_start_frame], so objects are also seen
            mid-motion.
        fps: frame rate the world clips are rendered at. The world's motions are per second, so a lower rate
            moves every object further between frames (8: twice as far, as if every other frame were skipped);
            the captions stay the same. An experiment's knob: generated videos play at the world's 16 fps.
        detailed_caption_prob: probability of the detailed caption, otherwise the short one.
        colour_synonyms: probability that each object's colour name in a world caption is replaced by one of
            its synonyms ("red" -> "scarlet", `world.prompts.vary_colour_words`; the words of
            `HELDOUT_COLOUR_WORDS`, "crimson" and "azure" among them, are never used), so that colour words the
            captions never use still steer the colour through the text encoder's embeddings. 0: the captions as
            written.
        text_encoder: "minilm" (all-MiniLM-L6-v2 token embeddings), "umt5" (Wan2.1's UMT5-XXL encoder, from
            `text_encoder_path`) or "hash" (a tiny deterministic stand-in for tests, no model to load).
        text_encoder_path: a Wan2.1 folder holding UMT5 (original or diffusers layout; text encoder "umt5").
        text_max_length: tokens per caption; at most model.text_len (Wan: 512).
        negative_prompt: the caption of the null context: the teacher's dropped prompt, and the negative prompt
            of the guided real score (DMD / SiD) and of ODE-pair sampling (the published runs use Wan's
            negative prompt; "" is the empty prompt).
        codec_patch: p of the lossless `SpaceToDepthCodec(p)` (latent channels 3 p²).
        codec_file: a learned world codec (`LearnedFrameCodec`, the codec.safetensors of `selfforcing experiment
            codec`) to encode the world's clips with instead of the space-to-depth codec: latent channels are
            the codec's, at 1/4 resolution; its own latent statistics replace `latent_norm`. None: the pixel codec.
        latent_norm: "world" (fixed per-channel normalisation, `models/codec.py`) or "none"; ignored with
            `latent_shape` (Wan latents come normalised by the VAE).
        latent_shape: (C, H, W) of a latent frame for runs without the world codec, e.g. (16, 60, 104) for Wan
            VAE latents of 480x832 video; None: the world codec's (3 p², size / p, size / p). Such runs read
            no videos (sources "prompt-file", "prompts", "ode-pairs", "latents").
        num_workers: DataLoader worker processes rendering clips (0: render in the training process).
        image_every: k > 0 makes every k-th optimizer step (steps k - 1, 2k - 1, ...) an image step: it trains
            on `image_batch_size` single frames of other scenes instead of on clips (joint image-video training,
            as Wan is trained: a frame costs a small fraction of a clip, so the per-frame prior of shapes and
            colours sees many more scenes per second). World data and the teacher only; 0: clips only.
        image_batch_size: single frames in an image step (the global batch of that step).
    """

    source: Literal["world", "prompts", "prompt-file", "ode-pairs", "latents"] = "world"
    ode_pairs: str | None = None
    latents: str | None = None
    prompts_file: str | None = None
    length: int = 100_000
    seed: int = 0
    num_frames: int = 21
    size: int = 64
    max_objects: int = 3
    max_start_frame: int = 32
    fps: int = vocab.FPS
    detailed_caption_prob: float = 0.5
    colour_synonyms: float = 0.0
    text_encoder: Literal["minilm", "umt5", "hash"] = "minilm"
    text_encoder_path: str | None = None
    text_max_length: int = 64
    negative_prompt: str = ""
    codec_patch: int = 4
    codec_file: str | None = None
    latent_norm: Literal["world", "none"] = "world"
    latent_shape: tuple[int, int, int] | None = None
    num_workers: int = 0
    image_every: int = 0
    image_batch_size: int = 0

    def __post_init__(self) -> None:
        if min(self.length, self.num_frames, self.size, self.max_objects, self.codec_patch, self.text_max_length) < 1:
            raise ValueError("length, num_frames, size, max_objects, codec_patch and text_max_length must be positive")
        if self.size % self.codec_patch:
            raise ValueError(f"size {self.size} is not a multiple of codec_patch {self.codec_patch}")
        if self.codec_file is not None and self.latent_shape is not None:
            raise ValueError("data.codec_file encodes the world's clips; data.latent_shape is for runs in a given "
                             "latent space: set one of them")
        if self.codec_file is not None and self.size % LearnedFrameCodec.spatial_factor:
            raise ValueError(f"size {self.size} is not a multiple of the learned codec's factor "
                             f"{LearnedFrameCodec.spatial_factor}")
        if not 0.0 <= self.detailed_caption_prob <= 1.0:
            raise ValueError("detailed_caption_prob must lie in [0, 1]")
        if not 0.0 <= self.colour_synonyms <= 1.0:
            raise ValueError("colour_synonyms must lie in [0, 1]")
        if self.fps < 1:
            raise ValueError(f"data.fps must be positive, got {self.fps}")
        if self.max_start_frame < 0 or self.num_workers < 0:
            raise ValueError("max_start_frame and num_workers must be non-negative")
        if self.image_every < 0 or self.image_batch_size < 0:
            raise ValueError("image_every and image_batch_size must be non-negative")
        if self.image_every and not self.image_batch_size:
            raise ValueError("data.image_every needs data.image_batch_size (single frames per image step)")
        if self.image_every and self.source != "world":
            raise ValueError(f"image steps read rendered frames: data.image_every needs data.source=world, "
                             f"not {self.source}")
        if self.source == "ode-pairs" and not self.ode_pairs:
            raise ValueError("data.source=ode-pairs needs data.ode_pairs (a folder from `selfforcing ode-pairs`)")
        if self.source == "latents" and not self.latents:
            raise ValueError("data.source=latents needs data.latents (a folder from `selfforcing encode-videos`)")
        if self.source == "prompt-file" and not self.prompts_file:
            raise ValueError("data.source=prompt-file needs data.prompts_file (a text file, one prompt per line)")
        if self.text_encoder == "umt5" and not self.text_encoder_path:
            raise ValueError("data.text_encoder=umt5 needs data.text_encoder_path (a Wan2.1 folder)")
        if self.latent_shape is not None:
            if min(self.latent_shape) < 1:
                raise ValueError(f"data.latent_shape must be positive (C, H, W), got {self.latent_shape}")
            if self.source == "world":
                raise ValueError("data.latent_shape is for runs without the world codec, which read no videos: "
                                 "use source prompt-file, prompts, ode-pairs or latents")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule: linear warm-up, then constant, cosine or linear decay.

    Attributes:
        lr: peak learning rate.
        betas, eps, weight_decay: AdamW's.
        warmup_steps: steps of linear warm-up from 0.
        decay: shape after warm-up; "cosine" and "linear" end at lr · min_lr_ratio at the last step.
        min_lr_ratio: final lr as a fraction of `lr`.
        rope_lr_scale: learning rate of mixed RoPE frequencies (`model.rope_mixed`) as a multiple of `lr`, without
            weight decay. A frequency has to move by about the speed of an object in tokens a frame (~0.1 in the
            world) before attention follows it, which steps of `lr` with noisy signs take thousands of steps to do.
    """

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 100
    decay: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = 0.1
    rope_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.eps <= 0 or self.weight_decay < 0:
            raise ValueError("lr and eps must be positive and weight_decay non-negative")
        if self.rope_lr_scale <= 0:
            raise ValueError(f"rope_lr_scale must be positive, got {self.rope_lr_scale}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("warmup_steps must be non-negative and min_lr_ratio in [0, 1]")


@dataclass(frozen=True)
class ScheduleConfig:
    """How long and in what batches.

    Attributes:
        steps: optimizer steps of the whole run.
        batch_size: global batch (see the module docstring).
        grad_accum: micro-steps per optimizer step.
        grad_clip: maximum global gradient norm; 0 disables clipping.
    """

    steps: int = 2000
    batch_size: int = 8
    grad_accum: int = 1
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be positive")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.grad_clip < 0:
            raise ValueError("grad_clip must be non-negative (0 disables it)")


@dataclass(frozen=True)
class EMAConfig:
    """Exponential moving average of the trained weights: ema ← decay·ema + (1 - decay)·θ.

    Attributes:
        enabled: keep an EMA (exported next to the raw weights; previews use it).
        decay: per-step decay.
        start_step: before this step the EMA simply copies the weights (spec §4(b): decay 0.99 from 200).
    """

    enabled: bool = True
    decay: float = 0.995
    start_step: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0 or self.start_step < 0:
            raise ValueError("decay must lie in [0, 1) and start_step be non-negative")


@dataclass(frozen=True)
class PrecisionConfig:
    """Numerics: fp32 everywhere, or bf16 autocast of the forward and backward (weights and optimizer stay fp32).

    "auto" picks bf16 where the device multiplies bf16 natively (CUDA GPUs with bf16, CPUs with AVX-512 BF16 or
    AMX) and fp32 elsewhere: on AVX2-only CPUs bf16 matmuls are ~100x slower than fp32. The trainer resolves it
    once at start-up (`parallel.native_bf16`) and stores the resolved choice in its checkpoints.
    """

    autocast: Literal["fp32", "bf16", "auto"] = "fp32"


@dataclass(frozen=True)
class LoggingConfig:
    """Console / TensorBoard logging and preview samples.

    Attributes:
        every: log averaged scalars every this many steps.
        tensorboard: write TensorBoard event files under `tensorboard_dir` (relative to out_dir).
        sample_every: draw preview videos every this many steps (and at the end); 0 disables.
        sample_prompts: number of preview prompts (held-out captions).
        sample_steps: ODE steps of a preview.
        progress: show a tqdm progress bar (rank 0, terminals only).
    """

    every: int = 10
    tensorboard: bool = True
    tensorboard_dir: str = "tensorboard"
    sample_every: int = 500
    sample_prompts: int = 2
    sample_steps: int = 20
    progress: bool = True

    def __post_init__(self) -> None:
        if self.every < 1 or self.sample_every < 0 or self.sample_prompts < 0 or self.sample_steps < 1:
            raise ValueError("every and sample_steps must be positive, sample_every and sample_prompts non-negative")


@dataclass(frozen=True)
class CheckpointConfig:
    """Full training state every `every` steps (and at the end) under `dir` (relative to out_dir); the
    newest `keep` are kept. `every = 0` saves only at the end."""

    every: int = 500
    dir: str = "checkpoints"
    keep: int = 3

    def __post_init__(self) -> None:
        if self.every < 0 or self.keep < 1:
            raise ValueError("every must be non-negative and keep at least 1")


@dataclass(frozen=True)
class ParallelConfig:
    """Data parallelism under `torchrun` (ignored in a single process).

    Attributes:
        strategy: "ddp" (replicated weights, all-reduced gradients) or "fsdp" (FSDP2 `fully_shard` per block).
        backend: process-group backend; "auto" is nccl on CUDA, gloo otherwise.
        activation_checkpointing: recompute each transformer block in the backward instead of storing its
            activations (all trained networks; also in a single process): less memory for one more forward
            of each block in the backward.
        fsdp_param_dtype: FSDP2 mixed precision (`MixedPrecisionPolicy`): the dtype parameters are gathered and
            computed in; the sharded master weights and the optimizer state stay fp32. "float32" = off.
        fsdp_reduce_dtype: the dtype gradients are reduce-scattered in (fp32 keeps the sum exact across ranks).
        shard_frozen: under FSDP, shard the frozen networks too (a distillation's real score: the published
            system scores with the 14B model, which does not fit replicated next to the rest); False replicates
            them (no gathers in their forwards).
    """

    strategy: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    activation_checkpointing: bool = False
    fsdp_param_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    fsdp_reduce_dtype: Literal["float32", "bfloat16"] = "float32"
    shard_frozen: bool = True

    def __post_init__(self) -> None:
        if self.strategy != "fsdp" and (self.fsdp_param_dtype, self.fsdp_reduce_dtype) != ("float32", "float32"):
            raise ValueError("parallel.fsdp_param_dtype / fsdp_reduce_dtype need parallel.strategy=fsdp")


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Attributes:
        name: the run's name (logs, checkpoint metadata).
        algorithm: key of the trainer's algorithm table: "teacher", "ode-init", "causal-diffusion" (TF / DF),
            "distill" (Self-Forcing DMD / SiD / GAN, CausVid, TF + DMD).
        seed: seeds the weights, the data order and every per-sample random draw.
        device: "cpu", "cuda" (each rank takes cuda:LOCAL_RANK) or "auto".
        threads: torch CPU threads per process; 0 keeps torch's default.
        out_dir: where checkpoints, exported weights and TensorBoard logs go.
        model: the trained network's shape.
        data, optim, schedule, ema, precision, logging, checkpoint, parallel: see each class.
        teacher, ode_init, causal, distill: the settings of each algorithm (only the run's own is used).
    """

    name: str = "teacher-world"
    algorithm: str = "teacher"
    seed: int = 0
    device: str = "cpu"
    threads: int = 0
    out_dir: str = "runs/teacher-world"
    model: WanConfig = field(default_factory=lambda: get_preset("world"))
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    ode_init: ODEInitConfig = field(default_factory=ODEInitConfig)
    causal: CausalDiffusionConfig = field(default_factory=CausalDiffusionConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError("threads must be non-negative (0: torch's default)")
        if self.data.text_max_length > self.model.text_len:
            raise ValueError(f"data.text_max_length {self.data.text_max_length} exceeds model.text_len "
                             f"{self.model.text_len}")
        channels = self.latent_channels
        where = "data.latent_shape" if self.data.latent_shape else "data.codec_file" if self.data.codec_file \
            else "the codec"
        if self.model.in_dim != channels or self.model.out_dim != channels:
            raise ValueError(f"{where} gives {channels} latent channels but model.in_dim / out_dim are "
                             f"{self.model.in_dim} / {self.model.out_dim}")
        self.model.tokens_per_frame(*self.latent_size)          # the latent frame must fit the patch
        if self.data.image_every and self.algorithm != "teacher":
            raise ValueError(f"image steps (data.image_every) train the bidirectional teacher only, not "
                             f"algorithm {self.algorithm!r}")
        if self.data.image_batch_size % self.schedule.grad_accum:
            raise ValueError(f"data.image_batch_size {self.data.image_batch_size} is not divisible by "
                             f"schedule.grad_accum {self.schedule.grad_accum}")
        if self.data.latent_shape is not None and self.logging.sample_every:
            raise ValueError("previews decode with the world codec: set logging.sample_every=0 for runs in a "
                             "given latent space (data.latent_shape)")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return config_from_dict(cls, data)

    @property
    def latent_channels(self) -> int:
        """C of a latent frame: `data.latent_shape`'s, the learned codec's, or the pixel codec's 3 p²."""
        if self.data.latent_shape is not None:
            return self.data.latent_shape[0]
        if self.data.codec_file is not None:
            return learned_codec_channels(self.data.codec_file)
        return 3 * self.data.codec_patch**2

    @property
    def latent_size(self) -> tuple[int, int]:
        """(H, W) of a latent frame: `data.latent_shape`'s, the learned codec's size / 4, or the pixel codec's
        size / p."""
        if self.data.latent_shape is not None:
            return self.data.latent_shape[1], self.data.latent_shape[2]
        factor = LearnedFrameCodec.spatial_factor if self.data.codec_file is not None else self.data.codec_patch
        side = self.data.size // factor
        return side, side


# ------------------------------------------------------------------------------------------------ presets
TRAIN_PRESETS: dict[str, Callable[[], TrainConfig]] = {}


def _preset(name: str):
    def wrap(fn: Callable[[], TrainConfig]) -> Callable[[], TrainConfig]:
        TRAIN_PRESETS[name] = fn
        return fn

    return wrap


def train_preset(name: str) -> TrainConfig:
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; known: {', '.join(train_preset_names())}")
    return TRAIN_PRESETS[name]()


def train_preset_names() -> list[str]:
    return sorted(TRAIN_PRESETS)


@_preset("teacher-world")
def teacher_world() -> TrainConfig:
    """The world's bidirectional teacher (`world` model, 21-frame 64x64 clips): 4000 steps of 4 clips, about
    2.4 hours of 2-core CPU training at the measured 1.9 samples/s (fp32, AVX2); bf16 autocast where the CPU
    has AVX-512 BF16 or AMX (measured 4.3 samples/s on a 2-core AVX-512 BF16 CPU, 2.8 in fp32 there). An hour
    (1600 steps) was not enough: samples were still scattered specks, one per token, instead of a few coherent
    objects."""
    return TrainConfig(
        name="teacher-world",
        out_dir="runs/teacher-world",
        model=get_preset("world"),
        schedule=ScheduleConfig(steps=4000, batch_size=4, grad_clip=1.0),
        optim=OptimConfig(lr=5e-4, betas=(0.9, 0.99), weight_decay=0.01, warmup_steps=100, decay="cosine",
                          min_lr_ratio=0.1),
        ema=EMAConfig(decay=0.995, start_step=100),
        logging=LoggingConfig(every=10, sample_every=200),
        checkpoint=CheckpointConfig(every=200, keep=3),
        precision=PrecisionConfig(autocast="auto"),
    )


@_preset("teacher-world-quick")
def teacher_world_quick() -> TrainConfig:
    """A smoke test of `teacher-world`: a couple of minutes, checkpoints and previews included."""
    base = teacher_world()
    return dataclasses.replace(
        base,
        name="teacher-world-quick",
        out_dir="runs/teacher-world-quick",
        data=dataclasses.replace(base.data, num_frames=9),
        schedule=dataclasses.replace(base.schedule, steps=40, batch_size=2),
        optim=dataclasses.replace(base.optim, warmup_steps=5),
        ema=dataclasses.replace(base.ema, start_step=10),
        logging=dataclasses.replace(base.logging, every=5, sample_every=20, sample_prompts=1, sample_steps=8),
        checkpoint=dataclasses.replace(base.checkpoint, every=20, keep=2),
    )


@_preset("teacher-tiny")
def teacher_tiny() -> TrainConfig:
    """A seconds-long configuration for unit tests: a 2-layer 32-wide model on 3-frame 16x16 clips and the
    hash text encoder (no model to load). Not meant to learn anything."""
    model = get_preset("world").replace(dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=32,
                                        text_dim=32, text_len=8)
    return TrainConfig(
        name="teacher-tiny",
        out_dir="runs/teacher-tiny",
        model=model,
        data=DataConfig(length=64, num_frames=3, size=16, max_objects=2, max_start_frame=8,
                        text_encoder="hash", text_max_length=8),
        optim=OptimConfig(lr=1e-3, warmup_steps=1),
        schedule=ScheduleConfig(steps=4, batch_size=4, grad_clip=1.0),
        ema=EMAConfig(decay=0.9, start_step=1),
        logging=LoggingConfig(every=1, tensorboard=False, sample_every=0, progress=False),
        checkpoint=CheckpointConfig(every=2, keep=2),
    )


# The world's pipeline, one preset per stage; each reads the previous stage's output at its default folder:
#   teacher-world -> runs/teacher-world/model_ema.safetensors
#   selfforcing ode-pairs runs/teacher-world/model_ema.safetensors -o runs/ode-pairs-world
#   ode-init-world -> runs/ode-init-world/generator_ema.safetensors
#   sf-dmd-world (and sf-sid-world, sf-gan-world, ...) -> runs/sf-dmd-world/generator_ema.safetensors
WORLD_TEACHER = "runs/teacher-world/model_ema.safetensors"
WORLD_ODE_PAIRS = "runs/ode-pairs-world"
WORLD_ODE_INIT = "runs/ode-init-world/generator_ema.safetensors"
WORLD_ODE_INIT_FRAMEWISE = "runs/ode-init-world-framewise/generator_ema.safetensors"


def _world_stage(name: str, model: str, **changes) -> TrainConfig:
    """A stage after the teacher: the causal world generator, bf16 where it is native, frequent logs."""
    base = TrainConfig(
        name=name, out_dir=f"runs/{name}", model=get_preset(model),
        schedule=ScheduleConfig(steps=400, batch_size=4, grad_clip=1.0),
        optim=OptimConfig(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.01, warmup_steps=20, decay="constant"),
        ema=EMAConfig(decay=0.99, start_step=50),
        logging=LoggingConfig(every=10, sample_every=100),
        checkpoint=CheckpointConfig(every=100, keep=2),
        precision=PrecisionConfig(autocast="auto"),
    )
    return dataclasses.replace(base, **changes)


@_preset("ode-init-world")
def ode_init_world() -> TrainConfig:
    """ODE-regression init of the chunk-wise world generator (3 frames a block) from stored teacher
    trajectories (`selfforcing ode-pairs`), starting from the teacher's weights."""
    return _world_stage(
        "ode-init-world", "world-causal", algorithm="ode-init",
        data=DataConfig(source="ode-pairs", ode_pairs=WORLD_ODE_PAIRS),
        ode_init=ODEInitConfig(init_from=WORLD_TEACHER),
    )


@_preset("ode-init-world-framewise")
def ode_init_world_framewise() -> TrainConfig:
    """`ode-init-world` for the frame-wise generator (1 frame a block)."""
    return dataclasses.replace(ode_init_world(), name="ode-init-world-framewise",
                               out_dir="runs/ode-init-world-framewise", model=get_preset("world-causal-framewise"))


def _distill_world(name: str, model: str = "world-causal", init: str = WORLD_ODE_INIT, source: str = "prompts",
                   **distill) -> TrainConfig:
    """Self-Forcing and its DMD-family baselines on the world: critic every step, generator every 5th,
    AdamW β = (0, 0.999) as published. Learning rates scaled up from the published 2e-6 / 4e-7 (1.3B): with 120
    generator updates, Adam moves each weight of a 256-wide model by at most ~120·lr, and at 2e-5 that is ~4% of
    its typical size; 5e-5 for both networks (a guess to be checked against the ODE init's scores).

    Real-score guidance 2: DMD's guided prediction c + g (c - u) is classifier-free scale 1 + g, so g = 2 guides
    exactly as the world teacher samples (scale 3), where the published recipe's g = 3 (scale 4) sits below its
    teacher's sampling scale. Measured with the first teacher (8 held-out prompts, after 200 / 300 of 600 steps):
    the generator's EMA scored 33.9 / 33.9 total with g = 2 against 26.8 / 26.7 with g = 3, whose objects grew
    into saturated blobs."""
    d = DistillConfig(**(dict(teacher=WORLD_TEACHER, generator_init=init, generator_lr=5e-5, critic_lr=5e-5,
                              guidance=2.0) | distill))
    return _world_stage(
        name, model, algorithm="distill", distill=d, data=DataConfig(source=source),
        schedule=ScheduleConfig(steps=600, batch_size=4, grad_clip=1.0),
        optim=OptimConfig(lr=5e-5, betas=(0.0, 0.999), weight_decay=0.01, warmup_steps=0, decay="constant"),
        ema=EMAConfig(decay=0.99, start_step=100),
        logging=LoggingConfig(every=10, sample_every=100),
    )


@_preset("sf-dmd-world")
def sf_dmd_world() -> TrainConfig:
    """Self-Forcing + DMD, chunk-wise. Prompts only, no videos. The shipped default generator is this preset's EMA
    weights after 100 steps (`--set schedule.steps=100`), in fp16."""
    return _distill_world("sf-dmd-world", loss="dmd")


@_preset("sf-sid-world")
def sf_sid_world() -> TrainConfig:
    """Self-Forcing + SiD (α = 1), chunk-wise."""
    return _distill_world("sf-sid-world", loss="sid")


@_preset("sf-gan-world")
def sf_gan_world() -> TrainConfig:
    """Self-Forcing + GAN, chunk-wise: a discriminator on the critic's backbone against real world clips."""
    return _distill_world("sf-gan-world", loss="gan", source="world", gan_relativistic=True)


@_preset("sf-dmd-gan-world")
def sf_dmd_gan_world() -> TrainConfig:
    """Self-Forcing + DMD with DMD2's adversarial term, chunk-wise: the critic is also a discriminator against real
    world clips. Weights from one measurement (the ODE init's clips, the discriminator of `sf-gan-world` after 300
    steps): the adversarial gradient on the clip was 35-95x the DMD gradient and orthogonal to it, so 0.01 puts it
    at about half of DMD's; the critic's weight 0.1 lets its backbone learn features that tell real from
    generated while it stays a score."""
    return _distill_world("sf-dmd-gan-world", loss="dmd", source="world", gan_relativistic=True, gan_weight=0.01,
                          gan_critic_weight=0.1)


@_preset("sf-dmd-world-framewise")
def sf_dmd_world_framewise() -> TrainConfig:
    """Self-Forcing + DMD, frame-wise (1 frame a block), from the frame-wise ODE init."""
    return _distill_world("sf-dmd-world-framewise", "world-causal-framewise", WORLD_ODE_INIT_FRAMEWISE, loss="dmd")


@_preset("sf-dmd-world-long")
def sf_dmd_world_long() -> TrainConfig:
    """The long-video recipe: training under a restricted attention window (12 frames incl. 3 sink frames),
    so the rolling cache keeps working once the first chunk is evicted, with 2x longer self-rollouts whose
    last 21 frames carry the gradient (as Self-Forcing++)."""
    config = _distill_world("sf-dmd-world-long", loss="dmd", rollout_frames=42)
    return dataclasses.replace(config, model=config.model.replace(local_attn_size=12, sink_size=3))


@_preset("causvid-world")
def causvid_world() -> TrainConfig:
    """CausVid = DMD on diffusion-forcing inputs: real clips noised per block, one parallel forward."""
    return _distill_world("causvid-world", loss="dmd", inputs="diffusion-forcing", source="world")


@_preset("tf-dmd-world")
def tf_dmd_world() -> TrainConfig:
    """DMD on teacher-forcing inputs: real clips noised per block with the clean previous blocks as context."""
    return _distill_world("tf-dmd-world", loss="dmd", inputs="teacher-forcing", source="world")


# The world baselines' sampling: 10 DPM-Solver++(2M) steps a block with guidance 3. On the committed comparison's
# four TF / DF generators, 10 steps score within noise of 20 on 16 held-out prompts (paired totals +1.2 ± 3.1,
# +0.7 ± 1.2, -0.8 ± 1.5, +0.7 ± 1.6; docs/comparison.md) at half the cost of every video.
WORLD_BASELINE_STEPS = 10


@_preset("tf-world")
def tf_world() -> TrainConfig:
    """Causal diffusion with Teacher Forcing (clean ground-truth context), from the teacher's weights;
    sampled with many steps and guidance."""
    return _world_stage("tf-world", "world-causal", algorithm="causal-diffusion",
                        causal=CausalDiffusionConfig(teacher_forcing=True, init_from=WORLD_TEACHER,
                                                     sample_steps=WORLD_BASELINE_STEPS))


@_preset("df-world")
def df_world() -> TrainConfig:
    """Causal diffusion with Diffusion Forcing (independent noise level per block), from the teacher's weights."""
    return _world_stage("df-world", "world-causal", algorithm="causal-diffusion",
                        causal=CausalDiffusionConfig(teacher_forcing=False, init_from=WORLD_TEACHER,
                                                     sample_steps=WORLD_BASELINE_STEPS))


# ------------------------------------------------------------------------------------------------ real scale
# Wan2.1-T2V-1.3B with the published recipe (spec §4): prompts only, UMT5-XXL text, Wan VAE latents of 480x832
# video, bf16 autocast, activation checkpointing, FSDP2, global batch 64 (the paper: 64 GPUs x 1 clip; on 8 GPUs
# set schedule.grad_accum=8). Paths default to the published repository's layout; give yours with --set:
#   selfforcing ode-pairs WAN_DIR --prompts FILE --text-encoder-path WAN_DIR --latent-shape 16 60 104 \
#       -o runs/ode-pairs-wan1.3b
#   ode-init-wan1.3b -> runs/ode-init-wan1.3b/generator_ema.safetensors
#   sf-dmd-wan1.3b (sf-sid-wan1.3b) -> runs/sf-dmd-wan1.3b/generator_ema.safetensors
WAN_DIR = "wan_models/Wan2.1-T2V-1.3B"
WAN_PROMPTS = "prompts/vidprom_filtered_extended.txt"
WAN_ODE_PAIRS = "runs/ode-pairs-wan1.3b"
WAN_ODE_INIT = "runs/ode-init-wan1.3b/generator_ema.safetensors"
WAN_VIDEO_LATENTS = "runs/video-latents-wan1.3b"     # selfforcing encode-videos CLIPS -o ... --model-dir WAN_DIR
WAN_LATENT_SHAPE = (16, 60, 104)   # spec §0: 480x832 pixels through the VAE's stride 8, 16 latent channels
WAN_FRAMES = 21                    # spec §0: 81 pixel frames -> 21 latent frames = 7 chunks of 3


def _wan_data(**changes) -> DataConfig:
    """Captions from the prompt file, UMT5 embeddings (512 tokens), 21-frame clips of Wan latents."""
    return DataConfig(source="prompt-file", prompts_file=WAN_PROMPTS, num_frames=WAN_FRAMES, text_encoder="umt5",
                      text_encoder_path=WAN_DIR, text_max_length=512, latent_shape=WAN_LATENT_SHAPE, **changes)


def _wan_stage(name: str, **changes) -> TrainConfig:
    """A real-scale stage: the causal Wan2.1-1.3B generator on UMT5 prompts and Wan latents, on GPUs."""
    base = TrainConfig(
        name=name, out_dir=f"runs/{name}", device="cuda", model=get_preset("self-forcing-1.3b"), data=_wan_data(),
        schedule=ScheduleConfig(steps=600, batch_size=64, grad_accum=1, grad_clip=10.0),   # spec §4: clip 10
        precision=PrecisionConfig(autocast="bf16"),
        parallel=ParallelConfig(strategy="fsdp", activation_checkpointing=True),
        ema=EMAConfig(decay=0.99, start_step=200),                                          # spec §4(b)
        logging=LoggingConfig(every=10, sample_every=0),
        checkpoint=CheckpointConfig(every=100, keep=3),
    )
    return dataclasses.replace(base, **changes)


@_preset("ode-init-wan1.3b")
def ode_init_wan() -> TrainConfig:
    """ODE-regression init of the chunk-wise Wan2.1-1.3B generator from the base weights, on teacher
    trajectories from `selfforcing ode-pairs` (spec §4(a): the published set has 16k). The spec gives no
    optimiser for this stage: lr 2e-6 (the generator's DMD rate), AdamW (0.9, 0.999), 3000 steps of 64
    (12 passes over 16k pairs) are our choice."""
    return _wan_stage(
        "ode-init-wan1.3b", algorithm="ode-init",
        data=dataclasses.replace(_wan_data(), source="ode-pairs", ode_pairs=WAN_ODE_PAIRS),
        ode_init=ODEInitConfig(init_from=WAN_DIR),
        schedule=ScheduleConfig(steps=3000, batch_size=64, grad_accum=1, grad_clip=10.0),
        optim=OptimConfig(lr=2e-6, betas=(0.9, 0.999), weight_decay=0.01, warmup_steps=0, decay="constant"),
        checkpoint=CheckpointConfig(every=500, keep=3),
    )


def _sf_wan(name: str, data: DataConfig | None = None, **distill) -> TrainConfig:
    """Self-Forcing at Wan2.1-1.3B (spec §4(b)): generator from the ODE init, critic and real score from the
    base weights (the released config scores with the 14B model; 1.3B works), critic every step, generator
    every 5th, AdamW β = (0, 0.999), weight decay 0.01, EMA 0.99 from step 200, 600 steps."""
    published = dict(teacher=WAN_DIR, generator_init=WAN_ODE_INIT, generator_lr=2e-6, critic_lr=4e-7,
                     generator_every=5, guidance=3.0)
    d = DistillConfig(**(published | distill))
    return _wan_stage(
        name, algorithm="distill", distill=d, data=data or _wan_data(),
        optim=OptimConfig(lr=2e-6, betas=(0.0, 0.999), weight_decay=0.01, warmup_steps=0, decay="constant"),
    )


@_preset("sf-dmd-wan1.3b")
def sf_dmd_wan() -> TrainConfig:
    """Self-Forcing + DMD at Wan2.1-1.3B: the published recipe (prompts only)."""
    return _sf_wan("sf-dmd-wan1.3b", loss="dmd")


@_preset("sf-sid-wan1.3b")
def sf_sid_wan() -> TrainConfig:
    """Self-Forcing + SiD at Wan2.1-1.3B (spec §4(c): α = 1, critic lr 2e-6)."""
    return _sf_wan("sf-sid-wan1.3b", loss="sid", critic_lr=2e-6, sid_alpha=1.0)


@_preset("sf-gan-wan1.3b")
def sf_gan_wan() -> TrainConfig:
    """Self-Forcing + GAN at Wan2.1-1.3B, against real clips encoded by `selfforcing encode-videos` (captions
    from the clips). No GAN config is released (spec §4(d)): relativistic loss, discriminator and generator at
    2e-6, are our choice."""
    data = dataclasses.replace(_wan_data(), source="latents", latents=WAN_VIDEO_LATENTS, prompts_file=None)
    return _sf_wan("sf-gan-wan1.3b", data=data, loss="gan", gan_relativistic=True, critic_lr=2e-6)


# ------------------------------------------------------------------------------------------------ loading
def load_config(source: str) -> TrainConfig:
    """A preset name, or a JSON file holding a (possibly partial) TrainConfig.

    A JSON file may name a base preset under the key "preset"; its other keys override that preset's fields
    (nested sections may be partial).
    """
    path = Path(source)
    if source in TRAIN_PRESETS:
        return train_preset(source)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise ValueError(f"config file {source!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {source} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {source} must hold a JSON object")
        base = data.pop("preset", None)
        if base is None:
            return TrainConfig.from_dict(data)
        return apply_overrides(train_preset(base), dict(_flatten(data)))
    raise ValueError(f"{source!r} is neither a training preset ({', '.join(train_preset_names())}) "
                     f"nor a JSON config file")


def _flatten(data: dict, prefix: str = ""):
    """{'optim': {'lr': 1}} -> ('optim.lr', 1); lists and scalars are leaves."""
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def resolve_config(source: str, overrides: list[str] | None = None, out_dir: str | None = None) -> TrainConfig:
    """Preset or JSON file, then dotted overrides, then `--out`."""
    config = apply_overrides(load_config(source), overrides or [])
    if out_dir is not None:
        config = dataclasses.replace(config, out_dir=out_dir)
    return config
