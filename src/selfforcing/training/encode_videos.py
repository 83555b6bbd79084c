"""Real videos -> Wan VAE latents on disk, the real clips of the GAN variant at real scale.

Self-Forcing's DMD and SiD need prompts only; its GAN variant needs real videos. At Wan scale these are encoded
once, here, into the shard format of ODE pairs (`io/ode_pairs.py`) with a single stored state per clip, the clean
latents at t = 0, and read back with `data.source=latents data.latents=DIR`.

The input folder holds mp4 files and their captions, either a `prompts.jsonl` (one object per clip with "file"
and "prompt", or the world's "detailed" / "short") or a `NAME.txt` next to each `NAME.mp4`. Each clip is resized
(shorter side to fit) and centre-cropped to height x width, and its first `frames` frames (4k + 1) are encoded.
Clips shorter than that are skipped with a warning. The output folder must not hold clips yet.

    selfforcing encode-videos clips/ -o runs/video-latents --model-dir wan_models/Wan2.1-T2V-1.3B
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..io.ode_pairs import ODEPairWriter

__all__ = ["EncodeVideosConfig", "encode_videos", "list_captioned_videos", "fit_frames"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeVideosConfig:
    """Attributes:
    videos: the input folder (mp4 files with captions).
    out: the output folder (latent shards + prompts.jsonl).
    model_dir: a Wan2.1 folder holding the VAE (either layout), or the VAE itself.
    frames: pixel frames per clip, 4k + 1 (81 = 21 latent frames, as Self-Forcing trains).
    height, width: pixel size, multiples of 8.
    batch_size: clips encoded together.
    shard_size: clips per shard file.
    """

    videos: str
    out: str
    model_dir: str
    frames: int = 81
    height: int = 480
    width: int = 832
    batch_size: int = 1
    shard_size: int = 64

    def __post_init__(self) -> None:
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ValueError(f"--frames must be 4k + 1 (the Wan VAE's causal first frame), got {self.frames}")
        if self.height % 8 or self.width % 8 or min(self.height, self.width) < 8:
            raise ValueError(f"height and width must be positive multiples of 8, got {self.height}x{self.width}")
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError("batch_size and shard_size must be positive")


def list_captioned_videos(folder: str | Path) -> list[tuple[Path, str]]:
    """(video path, caption) of every clip in `folder`, in a fixed order."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    index = root / "prompts.jsonl"
    items = []
    if index.is_file():
        for n, line in enumerate(index.read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            caption = row.get("prompt") or row.get("detailed") or row.get("short")
            if "file" not in row or not caption:
                raise ValueError(f"{index}:{n}: each line needs \"file\" and \"prompt\" (or \"detailed\")")
            items.append((root / row["file"], caption))
    else:
        for video in sorted(root.glob("*.mp4")):
            text = video.with_suffix(".txt")
            if not text.is_file():
                raise ValueError(f"{video} has no caption: add {text.name} or a prompts.jsonl")
            items.append((video, text.read_text().strip()))
    missing = [str(p) for p, _ in items if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"listed videos not found: {', '.join(missing[:3])}")
    if not items:
        raise ValueError(f"no captioned mp4 files in {root}")
    return items


def fit_frames(video: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (T, 3, height, width) in [-1, 1]: resized so it covers the target, centre-cropped."""
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return x[..., top:top + height, left:left + width].clamp(-1, 1)


def encode_videos(config: EncodeVideosConfig, *, device: str = "cpu", progress: bool = True) -> tuple[Path, int]:
    """Encode the folder; returns (out folder, clips written in total)."""
    from ..models.wan_vae import WanVAE
    from ..world.io import read_video

    items = list_captioned_videos(config.videos)
    out = Path(config.out)
    if any(out.glob("shard_*.safetensors")):
        raise ValueError(f"{out} already holds encoded clips: use a new folder")
    codec = WanVAE.from_pretrained(config.model_dir, device=device, dtype=torch.float32)
    with ODEPairWriter(out, shard_size=config.shard_size) as writer:
        batch, captions = [], []
        for path, caption in tqdm(items, desc="encoding", disable=not progress):
            video = read_video(path)
            if len(video) < config.frames:
                log.warning("%s: %d frames, fewer than %d: skipped", path, len(video), config.frames)
                continue
            batch.append(fit_frames(video[:config.frames], config.height, config.width))
            captions.append(caption)
            if len(batch) == config.batch_size:
                _encode(codec, batch, captions, writer)
                batch, captions = [], []
        if batch:
            _encode(codec, batch, captions, writer)
    if writer.num_written == 0:
        raise ValueError(f"no clip in {config.videos} has {config.frames} frames")
    return out, writer.num_written


def _encode(codec, batch: list[torch.Tensor], captions: list[str], writer: ODEPairWriter) -> None:
    latents = codec.encode(torch.stack(batch))                     # (B, F, 16, h, w), normalised
    writer.add(latents[:, None], torch.zeros(1), captions)         # one stored state: the clean clip, t = 0
