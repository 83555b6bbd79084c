"""Building a ready-to-use streaming pipeline from a checkpoint.

A project checkpoint stores, beside the generator's weights and `WanConfig`, a `PipelineSpec`: the pixel
resolution, frame rate, codec, text encoder and sampling settings it was trained with. `load_pipeline`
reads both and assembles generator + text encoder + codec. With no path it loads the default model shipped
inside the package.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ..config import get_preset
from ..models.codec import LatentNorm, LearnedFrameCodec, SpaceToDepthCodec, VideoCodec
from ..models.wan import WanDiT
from .pipeline import SamplingConfig, StreamingPipeline
from .speed import SpeedOptions

__all__ = [
    "PipelineSpec",
    "load_pipeline",
    "with_sampling",
    "default_checkpoint",
    "anchor_codec",
    "FRAME_CODEC_PREFIX",
    "make_codec",
    "resolve_codec_file",
    "make_text_encoder",
    "read_pipeline_spec",
    "PIPELINE_METADATA_KEY",
]

log = logging.getLogger(__name__)

PIPELINE_METADATA_KEY = "selfforcing.pipeline"


@dataclass(frozen=True)
class PipelineSpec:
    """Everything besides the generator that generation needs.

    Attributes:
        height, width: pixel size of the video.
        fps: frames per second of the written video.
        codec: "space-to-depth-N" (lossless pixel-space codec with N x N patches), "frame-codec:PATH" (a learned
            world codec, `LearnedFrameCodec`, read from PATH) or "wan-vae" (Wan2.1's VAE, loaded from a Wan2.1
            folder by `load_wan_pipeline`).
        latent_mean, latent_std: the fixed latent normalisation the generator was trained with, one value
            per channel group (see `models/codec.py`).
        text_encoder: "minilm" (all-MiniLM-L6-v2 token embeddings) or "umt5" (Wan2.1's, with "wan-vae").
        text_max_length: tokens kept per prompt.
        prompt_extender: "world" expands short prompts into detailed captions; None disables it.
        train_frames: latent frames per training clip (the training window).
        sampling: how chunks are denoised.
    """

    height: int = 64
    width: int = 64
    fps: int = 16
    codec: str = "space-to-depth-4"
    latent_mean: tuple[float, ...] = (0.0,)
    latent_std: tuple[float, ...] = (1.0,)
    text_encoder: str = "minilm"
    text_max_length: int = 64
    prompt_extender: str | None = "world"
    train_frames: int = 21
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineSpec":
        d = dict(d)
        sampling = d.pop("sampling", {})
        sampling["denoising_steps"] = tuple(sampling.get("denoising_steps", SamplingConfig.denoising_steps))
        for key in ("latent_mean", "latent_std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(sampling=SamplingConfig(**sampling), **d)


FRAME_CODEC_PREFIX = "frame-codec:"


def anchor_codec(spec: PipelineSpec, checkpoint: str | Path) -> PipelineSpec:
    """`spec` as stored in the file `checkpoint`: a learned codec's path made relative to the checkpoint's
    folder, so that a checkpoint and its codec can move together (see `resolve_codec_file`)."""
    if not spec.codec.startswith(FRAME_CODEC_PREFIX):
        return spec
    codec_file = Path(spec.codec[len(FRAME_CODEC_PREFIX):]).resolve()
    relative = Path(os.path.relpath(codec_file, Path(checkpoint).resolve().parent)).as_posix()
    return dataclasses.replace(spec, codec=FRAME_CODEC_PREFIX + relative)


def resolve_codec_file(path: str, checkpoint: str | Path | None = None) -> Path:
    """The learned codec file a spec names: an absolute path as it is; a relative one against the checkpoint's
    folder (how checkpoints store it), then against the working directory (older checkpoints), then the same
    file name in the checkpoint's folder (a model shipped beside its codec).

    Raises:
        FileNotFoundError: none of these is a file.
    """
    given = Path(path)
    folder = Path(checkpoint).parent if checkpoint is not None else None
    candidates = [given] if given.is_absolute() or folder is None else [folder / given, given, folder / given.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = f" (nor relative to the checkpoint's folder {folder})" if folder is not None else ""
    raise FileNotFoundError(f"no codec file at {path}{where}")


def make_codec(spec: PipelineSpec, checkpoint: str | Path | None = None) -> VideoCodec:
    """The codec `spec` names; `checkpoint`: the file the spec came from, against which a learned codec's
    relative path is resolved."""
    if spec.codec.startswith("space-to-depth-"):
        return SpaceToDepthCodec(int(spec.codec.rsplit("-", 1)[1]), LatentNorm(spec.latent_mean, spec.latent_std))
    if spec.codec.startswith(FRAME_CODEC_PREFIX):
        return LearnedFrameCodec.from_file(resolve_codec_file(spec.codec[len(FRAME_CODEC_PREFIX):], checkpoint))
    if spec.codec == "wan-vae":
        raise ValueError("this generator runs on Wan VAE latents: pass --model-dir WAN2.1_FOLDER (the VAE and UMT5)")
    raise ValueError(f"unknown codec {spec.codec!r}")


def make_text_encoder(name: str, max_length: int):
    if name == "minilm":
        from ..text import MiniLMTextEncoder

        return MiniLMTextEncoder(max_length=max_length)
    raise ValueError(f"unknown text encoder {name!r}")


def default_checkpoint() -> Path | None:
    """The generator shipped inside the package, or None if this build ships none."""
    path = Path(str(resources.files("selfforcing") / "assets" / "default" / "generator.safetensors"))
    return path if path.is_file() else None


def read_pipeline_spec(path: str | Path) -> PipelineSpec | None:
    """The PipelineSpec stored in a project checkpoint's metadata, if any."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return PipelineSpec.from_dict(json.loads(meta[PIPELINE_METADATA_KEY])) if PIPELINE_METADATA_KEY in meta else None


def with_sampling(spec: PipelineSpec, *, shift: float | None = None, steps: int | None = None,
                  guidance: float | None = None, sampler: str | None = None) -> PipelineSpec:
    """`spec` with its multi-step sampling recipe changed: the shift of the sampling grid, the number of steps,
    the guidance scale, the solver ("euler" or "dpmpp-2m"; None: as stored).

    Only for models sampled with many steps (a teacher, the TF / DF baselines: `num_inference_steps` set): a
    few-step generator was trained for its own step list and shift, and is refused.

    Raises:
        ValueError: a few-step generator, a value out of range, or an unknown solver (`SamplingConfig` checks it).
    """
    changes = {k: v for k, v in (("shift", shift), ("num_inference_steps", steps), ("guidance_scale", guidance),
                                 ("sampler", sampler)) if v is not None}
    if not changes:
        return spec
    if spec.sampling.num_inference_steps is None:
        steps_list = ", ".join(f"{t:g}" for t in spec.sampling.denoising_steps)
        raise ValueError(f"this checkpoint is a few-step generator (denoising steps {steps_list}, shift "
                         f"{spec.sampling.shift:g}): the sampling shift, steps, guidance and solver apply to "
                         "multi-step models")
    if shift is not None and not shift > 0:
        raise ValueError(f"the sampling shift must be positive, got {shift}")
    if steps is not None and steps < 1:
        raise ValueError(f"the number of sampling steps must be positive, got {steps}")
    if guidance is not None and not guidance > 0:
        raise ValueError(f"the guidance scale must be positive, got {guidance}")
    return dataclasses.replace(spec, sampling=dataclasses.replace(spec.sampling, **changes))


def load_pipeline(
    checkpoint: str | Path | None = None,
    *,
    spec: PipelineSpec | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    overrides: dict | None = None,
    text_encoder=None,
    compile: bool = False,
    fp8: bool = False,
    emulate_dtype: str | None = None,
    sampling: dict | None = None,
) -> tuple:
    """Load a streaming pipeline and its spec.

    Args:
        checkpoint: a checkpoint in any layout `load_transformer` reads: a causal generator gives a
            `StreamingPipeline`, a bidirectional model (a teacher) a `BidirectionalPipeline`; None = the packaged
            default, or, if no default is shipped, a randomly initialised `world-causal` model (with a warning).
        spec: overrides the spec stored in the checkpoint.
        device, dtype: where and in which precision the generator runs; dtype None keeps the stored precision,
            except that half-precision weights run in float32 on the CPU (most CPUs have no fast bf16 / fp16
            matmul; the shipped models are stored in fp16 to stay small).
        overrides: WanConfig fields changing the attention layout (e.g. local_attn_size, sink_size).
        text_encoder: an already built text encoder to reuse.
        compile: torch.compile the generator's transformer blocks (`speed.compile_model`); the first chunks
            are slow while they compile.
        fp8: FP8 linear layers in the generator's blocks (`speed.apply_fp8`): fast FP8 matmuls on a CUDA GPU
            with torchao and a bfloat16 model, weight-only FP8 emulation (not faster) elsewhere.
        emulate_dtype: "bfloat16" or "float16": the generator runs in float32 but rounds like that precision
            (`speed.emulate_precision`), to measure its quality cost on a CPU without fast bf16 / fp16
            matmuls; dtype must then be None or float32.
        sampling: fields of the stored `SamplingConfig` to replace (`with_sampling`), e.g. {"shift": 3.0} for a
            multi-step model; the returned spec carries them.
    """
    from ..io.checkpoints import load_transformer

    if emulate_dtype is not None:
        if dtype not in (None, torch.float32):
            raise ValueError(f"--emulate-dtype {emulate_dtype} rounds a float32 generator: drop "
                             f"--dtype {str(dtype).removeprefix('torch.')} (or pass --dtype float32)")
        dtype = torch.float32

    if checkpoint is None:
        checkpoint = default_checkpoint()
    if checkpoint is None:
        log.warning("no trained default model is shipped in this build: generating with random weights")
        generator = WanDiT(get_preset("world-causal").replace(**(overrides or {})))
        spec = spec or PipelineSpec()
    else:
        if dtype is None and torch.device(device).type == "cpu":
            dtype = torch.float32
        generator = load_transformer(checkpoint, overrides=overrides, device=device, dtype=dtype)
        spec = spec or read_pipeline_spec(checkpoint) or PipelineSpec()
    if sampling:
        spec = with_sampling(spec, **sampling)
    generator = generator.to(device=device, dtype=dtype or generator.dtype)
    codec = make_codec(spec, checkpoint)
    if codec.latent_channels != generator.config.in_dim:
        raise ValueError(
            f"codec {spec.codec} gives {codec.latent_channels} channels but the model takes {generator.config.in_dim}"
        )
    if text_encoder is None:
        text_encoder = make_text_encoder(spec.text_encoder, spec.text_max_length)
    if text_encoder.dim != generator.config.text_dim:
        raise ValueError(f"text encoder gives {text_encoder.dim}-wide embeddings, the model takes {generator.config.text_dim}")
    SpeedOptions(compile=compile, fp8=fp8, emulate_dtype=emulate_dtype).apply(generator)  # dtype: set by .to()
    latent = (spec.height // codec.spatial_factor, spec.width // codec.spatial_factor)
    if not generator.config.causal:  # a teacher or a base model: all frames at once
        from .teacher import BidirectionalPipeline

        return BidirectionalPipeline(generator, latent, text_encoder=text_encoder, codec=codec,
                                     sampling=spec.sampling), spec
    pipe = StreamingPipeline(generator, latent, text_encoder=text_encoder, codec=codec, sampling=spec.sampling)
    return pipe, spec
