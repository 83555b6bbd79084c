"""Text-to-video with the real Wan2.1 stack: a Self-Forcing generator, UMT5-XXL and the Wan VAE (spec §2, §5).

`load_wan_pipeline(model_dir, checkpoint)` assembles a `StreamingPipeline` from a local Wan2.1-T2V-1.3B
folder, in Wan's original layout or the diffusers one (detected), and an official Self-Forcing checkpoint
(`self_forcing_dmd.pt`) or a generator exported by `selfforcing train` on Wan latents (its stored config and
few-step recipe are used). Without a checkpoint the base Wan transformer itself is loaded as a causal
generator (useful only to test the plumbing: the base model is not trained for few-step causal sampling).

    pipe, spec = load_wan_pipeline("Wan2.1-T2V-1.3B", "checkpoints/self_forcing_dmd.pt", device="cuda",
                                   dtype=torch.bfloat16)
    video = pipe("a corgi surfing a wave", num_frames=21, seeds=0)   # 21 latent frames -> 81 pixel frames
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from ..config import WanConfig
from ..io.checkpoints import CheckpointError, describe_checkpoint, load_transformer
from ..models.taehv import TAEHVCodec
from ..models.wan_vae import WanVAE, find_wan_vae
from ..text.umt5 import UMT5TextEncoder, find_umt5
from .loading import PipelineSpec, read_pipeline_spec
from .pipeline import SamplingConfig, StreamingPipeline
from .speed import SpeedOptions

__all__ = ["load_wan_pipeline", "default_text_device", "wan_pipeline_spec", "detect_wan_layout", "SELF_FORCING_SAMPLING"]

log = logging.getLogger(__name__)

# The released Self-Forcing generator: 4 steps [1000, 750, 500, 250] warped onto the shift-5 grid (spec §3, §5).
SELF_FORCING_SAMPLING = SamplingConfig(denoising_steps=(1000, 750, 500, 250), warp=True, shift=5.0)
SELF_FORCING_BLOCK = 3   # latent frames per chunk of the released chunk-wise generator (spec §0)


def wan_pipeline_spec(height: int = 480, width: int = 832, text_len: int = 512) -> PipelineSpec:
    """Self-Forcing's inference settings: 480x832 at 16 fps, 21 latent frames (81 pixel frames) per clip."""
    return PipelineSpec(
        height=height, width=width, fps=16, codec="wan-vae", text_encoder="umt5", text_max_length=text_len,
        prompt_extender=None, train_frames=21, sampling=SELF_FORCING_SAMPLING,
    )


def detect_wan_layout(model_dir: str | os.PathLike) -> str:
    """'original' (Wan2.1's own files) or 'diffusers' (transformer/, vae/, text_encoder/, tokenizer/)."""
    text_layout, _, _ = find_umt5(model_dir)
    vae_layout, _ = find_wan_vae(model_dir)
    if text_layout != vae_layout:
        log.warning("%s mixes layouts: text encoder %s, VAE %s", model_dir, text_layout, vae_layout)
    return text_layout


LOW_MEMORY_BYTES = 40 * 1024**3   # below this much free GPU memory UMT5 stays on the CPU (spec §5)


def default_text_device(device: torch.device) -> torch.device:
    """Where UMT5 runs when not told: with the generator, unless that is a GPU with under 40 GB free."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    if free < LOW_MEMORY_BYTES:
        log.info("%.1f GB free on %s: the text encoder runs on the CPU (low-memory mode)", free / 1024**3, device)
        return torch.device("cpu")
    return device


def _base_config(model_dir: Path) -> WanConfig | None:
    """The transformer config stored in `model_dir`, or None if it holds no transformer."""
    try:
        return WanConfig.from_dict(describe_checkpoint(model_dir)["config"])
    except (CheckpointError, TypeError, ValueError):
        return None


def load_wan_pipeline(
    model_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    text_device: str | torch.device | None = None,
    text_dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
    use_ema: bool = True,
    overrides: dict | None = None,
    height: int = 480,
    width: int = 832,
    compile: bool = False,
    fp8: bool = False,
    taehv: str | os.PathLike | None = None,
) -> tuple[StreamingPipeline, PipelineSpec]:
    """Build a streaming text-to-video pipeline from a Wan2.1 folder and a Self-Forcing checkpoint.

    Args:
        model_dir: Wan2.1-T2V folder, original layout (`config.json` + `diffusion_pytorch_model.safetensors`,
            `Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth`, `google/umt5-xxl/`) or diffusers layout.
        checkpoint: the generator: an official Self-Forcing `.pt` (`generator_ema` / `generator`) or any
            layout `load_transformer` reads. None loads the base transformer of `model_dir` made causal.
        device, dtype: where and in which precision the generator and the VAE's input run; dtype None keeps
            the checkpoint's.
        text_device: where UMT5 runs; None = `device`, except on a CUDA device with less than 40 GB free, where
            it stays on the CPU (as the original switches). "cpu" keeps the 5.7B-parameter encoder off the GPU.
        text_dtype: UMT5's dtype; None = bfloat16 on a GPU (as Wan runs it), float32 on the CPU.
        vae_dtype: the VAE's dtype; None = float32 (as Wan runs it).
        use_ema: take `generator_ema` from an official `.pt` when present.
        overrides: WanConfig fields changing the attention layout, e.g. {"num_frame_per_block": 1} for the
            frame-wise checkpoint, {"local_attn_size": 12, "sink_size": 3} for a rolling window.
        height, width: pixel size; both must be multiples of 16 (VAE stride 8 times patch 2).
        compile, fp8: speed options of the generator, as in `load_pipeline`.
        taehv: TAEHV weights (`taew2_1.pth`, or a folder holding it): decode with this tiny decoder instead of
            the Wan VAE (faster, slightly less faithful; the VAE is then not loaded).
    Returns:
        (pipeline, spec). `pipeline.stream(prompt, num_frames=F, seeds=s)` yields chunks whose `frames` are
        decoded as they finish; F latent frames give 4(F - 1) + 1 pixel frames.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"Wan2.1 model folder not found: {model_dir}")
    layout = detect_wan_layout(model_dir)            # fail fast, before reading the generator
    device = torch.device(device)
    text_device = torch.device(text_device) if text_device is not None else default_text_device(device)
    if text_dtype is None:
        text_dtype = torch.bfloat16 if text_device.type == "cuda" else torch.float32

    trained = read_pipeline_spec(checkpoint) if checkpoint is not None else None
    if trained is not None and trained.codec != "wan-vae":
        raise ValueError(f"{checkpoint} was trained with the {trained.codec} codec, not on Wan VAE latents: "
                         "run it without --model-dir")
    if checkpoint is None:
        log.warning("no Self-Forcing checkpoint given: using the base Wan transformer as a causal generator")
        generator = load_transformer(model_dir, causal=True, overrides=overrides, device=device, dtype=dtype)
    elif trained is not None:                        # exported by `selfforcing train`: its own config
        generator = load_transformer(checkpoint, causal=True, overrides=overrides, device=device, dtype=dtype)
    else:
        # an official .pt has no config: take the shape from model_dir, the chunking from the release
        base = _base_config(model_dir)
        config = base.replace(causal=True, num_frame_per_block=SELF_FORCING_BLOCK) if base is not None else None
        generator = load_transformer(
            checkpoint, config=config, causal=True, use_ema=use_ema, overrides=overrides, device=device, dtype=dtype
        )
    cfg = generator.config

    text_encoder = UMT5TextEncoder.from_pretrained(
        model_dir, device=text_device, dtype=text_dtype, max_length=cfg.text_len
    )
    if text_encoder.dim != cfg.text_dim:
        raise ValueError(f"UMT5 gives {text_encoder.dim}-wide embeddings, the generator takes {cfg.text_dim}")
    if taehv is not None:
        codec = TAEHVCodec.from_file(taehv, device=device, dtype=vae_dtype or torch.float32)
    else:
        codec = WanVAE.from_pretrained(model_dir, device=device, dtype=vae_dtype or torch.float32)
    if codec.latent_channels != cfg.in_dim:
        raise ValueError(f"the VAE gives {codec.latent_channels} latent channels, the generator takes {cfg.in_dim}")

    step = codec.spatial_factor * cfg.patch_size[1]
    if height % step or width % step:
        raise ValueError(f"height and width must be multiples of {step}, got {height}x{width}")
    spec = wan_pipeline_spec(height, width, cfg.text_len)
    if trained is not None:                          # the recipe it was trained for
        spec = dataclasses.replace(spec, train_frames=trained.train_frames, sampling=trained.sampling)
    latent = (height // codec.spatial_factor, width // codec.spatial_factor)
    log.info("Wan2.1 pipeline (%s layout): generator %s on %s, UMT5 on %s, %s on %s, %dx%d", layout,
             generator.dtype, device, text_encoder.device, type(codec).__name__, codec.device, height, width)
    SpeedOptions(compile=compile, fp8=fp8).apply(generator)
    pipe = StreamingPipeline(generator, latent, text_encoder=text_encoder, codec=codec, sampling=spec.sampling)
    return pipe, spec
