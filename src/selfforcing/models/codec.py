"""Video codecs: pixels <-> latents, with a streaming decoder.

A codec maps pixel videos `(B, T, 3, H, W)` in [-1, 1] to latents `(B, F, C, h, w)` and back. Pipelines
decode chunk by chunk as the generator finishes them, through `decoder()`, a stateful object whose
`decode(latent_chunk)` returns the chunk's pixels; concatenating its outputs equals one `decode` call.

`SpaceToDepthCodec` is the lossless pixel-space codec of the synthetic world: each p x p patch of pixels
becomes 3*p*p channels, one latent frame per video frame, followed by a fixed `LatentNorm`. `LearnedFrameCodec`
is the alternative the world can train on instead (`data.codec_file`): a small per-frame autoencoder
(`FrameAutoencoder`, trained by `selfforcing experiment codec`) to fewer channels at the same 1/4 resolution,
stored with its latents' per-channel mean and standard deviation in one safetensors file.

Latent normalisation. Wan's VAE latents are normalised as `z = (mu - mean) / std` with fixed constants
(spec §2) so that diffusion works on roughly unit-variance data. The world's space-to-depth latents are pixels
in [-1, 1]: mostly dark background (about -0.7) with a small spread (about 0.34). Without normalisation the
signal would be ~3x weaker than the noise at every σ, which acts like an extra timestep shift and wastes the
network's output range. `WORLD_LATENT_NORM` holds the per-RGB-channel mean and standard deviation of 512
training clips (`WorldDataset`, 21 frames, start frames 0..32), rounded to two decimals. Space-to-depth orders
latent channels colour-major (`c p q`), so each RGB value is repeated over that colour's p*p channels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

__all__ = ["VideoCodec", "CausalVideoCodec", "SpaceToDepthCodec", "LearnedFrameCodec", "FrameAutoencoder",
           "LatentNorm", "WORLD_LATENT_NORM", "IDENTITY_LATENT_NORM", "to_uint8", "learned_codec_channels"]


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1)


@dataclass(frozen=True)
class LatentNorm:
    """z = (latent - mean) / std per channel group.

    Attributes:
        mean, std: one value per channel *group*; the C latent channels are split into len(mean) equal,
            contiguous groups (colour-major space-to-depth: one group per RGB channel).
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std need the same, non-zero length, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    def _expand(self, values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
        channels = like.shape[-3]
        if channels % len(values):
            raise ValueError(f"{channels} latent channels do not split into {len(values)} groups")
        v = torch.tensor(values, dtype=torch.float32, device=like.device)
        return v.repeat_interleave(channels // len(values))[:, None, None]  # (C, 1, 1)

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) codec latents -> unit-scale latents."""
        return (latents - self._expand(self.mean, latents)) / self._expand(self.std, latents)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) unit-scale latents -> codec latents."""
        return z * self._expand(self.std, z) + self._expand(self.mean, z)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


WORLD_LATENT_NORM = LatentNorm(mean=(-0.70, -0.72, -0.63), std=(0.36, 0.32, 0.33))
IDENTITY_LATENT_NORM = LatentNorm()


class VideoCodec:
    """Interface of a codec; `latent_channels`, `spatial_factor` and `temporal_factor` describe it."""

    latent_channels: int
    spatial_factor: int
    temporal_factor: int = 1

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decoder(self) -> "StatelessDecoder":
        """A streaming decoder; codecs with temporal state override this."""
        return StatelessDecoder(self)

    def num_pixel_frames(self, num_latent_frames: int) -> int:
        return num_latent_frames * self.temporal_factor

    def num_latent_frames(self, num_pixel_frames: int) -> int:
        if num_pixel_frames < 1 or num_pixel_frames % self.temporal_factor:
            raise ValueError(f"the frame count must be a positive multiple of {self.temporal_factor}")
        return num_pixel_frames // self.temporal_factor


class CausalVideoCodec(VideoCodec):
    """A neural codec with a causal first frame (Wan's VAE and its stand-ins): F latent frames <-> T =
    temporal_factor * (F - 1) + 1 pixel frames. Subclasses keep their network in `module`."""

    module: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def num_pixel_frames(self, num_latent_frames: int) -> int:
        return self.temporal_factor * (num_latent_frames - 1) + 1

    def num_latent_frames(self, num_pixel_frames: int) -> int:
        k = self.temporal_factor
        if num_pixel_frames < 1 or (num_pixel_frames - 1) % k:
            raise ValueError(f"the Wan VAE takes {k}n + 1 frames, got {num_pixel_frames}")
        return (num_pixel_frames - 1) // k + 1


class StatelessDecoder:
    def __init__(self, codec: VideoCodec):
        self.codec = codec

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(latents)


class SpaceToDepthCodec(VideoCodec):
    """Lossless: (B, T, 3, H, W) <-> (B, T, 3*p*p, H/p, W/p), then `norm` (identity by default)."""

    def __init__(self, patch: int = 4, norm: LatentNorm = IDENTITY_LATENT_NORM):
        self.spatial_factor = patch
        self.latent_channels = 3 * patch * patch
        self.norm = norm

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        p = self.spatial_factor
        return self.norm.normalize(rearrange(video, "b t c (h p) (w q) -> b t (c p q) h w", p=p, q=p))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        p = self.spatial_factor
        return rearrange(self.norm.denormalize(latents), "b t (c p q) h w -> b t c (h p) (w q)", p=p, q=p)


class _Res(nn.Module):
    """Pre-activation residual block: x + conv(silu(norm(conv(silu(norm(x))))))."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FrameAutoencoder(nn.Module):
    """(N, 3, H, W) in [-1, 1] <-> (N, channels, H/4, W/4): two stride-2 stages each way, a pre-activation
    residual block (GroupNorm, SiLU) at every resolution. `width` must be a multiple of 16."""

    def __init__(self, channels: int = 16, width: int = 64):
        super().__init__()
        if width % 16:
            raise ValueError(f"the autoencoder's width must be a multiple of 16, got {width}")
        w = width
        self.channels, self.width = channels, width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w // 2, 3, padding=1), _Res(w // 2),
            nn.Conv2d(w // 2, w, 4, stride=2, padding=1), _Res(w),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), _Res(2 * w),
            nn.GroupNorm(8, 2 * w), nn.SiLU(), nn.Conv2d(2 * w, channels, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, 2 * w, 3, padding=1), _Res(2 * w),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * w, w, 3, padding=1), _Res(w),
            nn.Upsample(scale_factor=2), nn.Conv2d(w, w // 2, 3, padding=1), _Res(w // 2),
            nn.GroupNorm(8, w // 2), nn.SiLU(), nn.Conv2d(w // 2, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return self.decoder(z), z


LEARNED_CODEC_FORMAT = "selfforcing-frame-codec"


def _codec_header(path: str) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no codec file at {path}")
    return _read_codec_header(path, Path(path).stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _read_codec_header(path: str, mtime_ns: int) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
    except Exception as err:                                           # not a safetensors file at all
        raise ValueError(f"{path} is not a learned world codec (not a safetensors file: {err})") from err
    if meta.get("format") != LEARNED_CODEC_FORMAT:
        raise ValueError(f"{path} is not a learned world codec (`selfforcing experiment codec` writes one)")
    return json.loads(meta["codec"])


def learned_codec_channels(path: str | Path) -> int:
    """Latent channels of the codec stored at `path`, read from its header alone."""
    return int(_codec_header(str(path))["channels"])


class LearnedFrameCodec(VideoCodec):
    """A `FrameAutoencoder` applied frame by frame, (B, T, 3, H, W) <-> (B, T, C, H/4, W/4), followed by a
    per-channel `LatentNorm` measured on its training frames. Runs `chunk` frames at a time, in fp32; with
    `encode_bf16` the encoder runs under bf16 autocast (2.3x faster on AVX-512 BF16 CPUs; the training runs'
    choice where bf16 is native: latents move by ~0.5 % of their std, round-trip PSNR by < 0.01 dB)."""

    spatial_factor = 4

    def __init__(self, module: FrameAutoencoder, norm: LatentNorm, chunk: int = 64, encode_bf16: bool = False):
        self.module = module.eval().requires_grad_(False)
        self.norm = norm
        self.latent_channels = module.channels
        self.chunk = chunk
        self.encode_bf16 = encode_bf16

    def _frames(self, fn, x: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        b, t = x.shape[:2]
        flat = x.reshape(b * t, *x.shape[2:]).float()
        param = next(self.module.parameters())
        # the codec's own numerics, also inside a training step's autocast
        with torch.autocast(param.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = [fn(part.to(param.device)).float().to(x.device) for part in flat.split(self.chunk)]
        y = torch.cat(out)
        return y.reshape(b, t, *y.shape[1:])

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.norm.normalize(self._frames(self.module.encoder, video, self.encode_bf16))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._frames(self.module.decoder, self.norm.denormalize(latents.float())).clamp(-1, 1)

    def save(self, path: str | Path) -> Path:
        """Write weights and header (channels, width, latent mean / std) atomically to one safetensors file."""
        from safetensors.torch import save_file

        from ..io.checkpoints import atomic_write

        header = {"channels": self.module.channels, "width": self.module.width, "latent_mean": list(self.norm.mean),
                  "latent_std": list(self.norm.std)}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        meta = {"format": LEARNED_CODEC_FORMAT, "codec": json.dumps(header)}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def from_file(cls, path: str | Path, encode_bf16: bool = False) -> "LearnedFrameCodec":
        from safetensors.torch import load_file

        header = _codec_header(str(path))
        module = FrameAutoencoder(int(header["channels"]), int(header["width"]))
        module.load_state_dict(load_file(str(path)))
        norm = LatentNorm(tuple(header["latent_mean"]), tuple(header["latent_std"]))
        return cls(module, norm, encode_bf16=encode_bf16)
