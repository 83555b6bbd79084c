"""Video codecs: pixels <-> latents, with a streaming decoder.

A codec maps pixel videos `(B, T, 3, H, W)` in [-1, 1] to latents `(B, F, C, h, w)` and back. Pipelines
decode chunk by chunk as the generator finishes them, through `decoder()`, a stateful object whose
`decode(latent_chunk)` returns the chunk's pixels; concatenating its outputs equals one `decode` call.

`SpaceToDepthCodec` is the lossless pixel-space codec of the synthetic world: each p x p patch of pixels
becomes 3*p*p channels, one latent frame per video frame.
"""

from __future__ import annotations

import torch
from einops import rearrange

__all__ = ["VideoCodec", "SpaceToDepthCodec", "to_uint8"]


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1)


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


class StatelessDecoder:
    def __init__(self, codec: VideoCodec):
        self.codec = codec

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(latents)


class SpaceToDepthCodec(VideoCodec):
    """Lossless: (B, T, 3, H, W) <-> (B, T, 3*p*p, H/p, W/p)."""

    def __init__(self, patch: int = 4):
        self.spatial_factor = patch
        self.latent_channels = 3 * patch * patch

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        p = self.spatial_factor
        return rearrange(video, "b t c (h p) (w q) -> b t (c p q) h w", p=p, q=p)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        p = self.spatial_factor
        return rearrange(latents, "b t (c p q) h w -> b t c (h p) (w q)", p=p, q=p)
