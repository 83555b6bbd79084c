"""A fast, tiny decoder for Wan2.1 latents: TAEHV (`taew2_1.pth`, madebyollin/taehv), spec §5.

TAEHV is a distilled stand-in for the Wan VAE's decoder, a few million parameters of 2-D convolutions instead of
the VAE's 3-D ones, used by Self-Forcing's streaming demo when decoding speed matters more than the last bit of
fidelity. It reads the same normalised latents the generator produces and gives the same frame count as the VAE:
F latent frames -> 4(F - 1) + 1 pixel frames.

The network is a plain stack (its state-dict names are `decoder.<index>.…`):

    tanh clamp, conv 16->256, ReLU,
    stage 0: 3 memory blocks (256), 2x spatial upsample, time "grow" x1, conv 256->128
    stage 1: 3 memory blocks (128), 2x spatial upsample, time grow x2,  conv 128->64
    stage 2: 3 memory blocks (64),  2x spatial upsample, time grow x2,  conv 64->64
    ReLU, conv 64->3

A memory block sees its input frame and the previous frame's input to the same block (zeros before the first);
a time grow turns each frame into `stride` frames through a 1x1 convolution to stride x channels. Everything is
causal in time, so decoding chunk by chunk with each memory block's last input kept between chunks gives exactly
the one-shot result; the first 3 of the 4F decoded frames are start-up frames and are dropped, which aligns
the output with the VAE's causal first frame.

    decoder = TAEHVCodec.from_file("taew2_1.pth")
    pixels = decoder.decode(latents)           # (B, F, 16, h, w) -> (B, 4F - 3, 3, 8h, 8w) in [-1, 1]
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .codec import CausalVideoCodec

__all__ = ["TAEHVDecoderNet", "TAEHVCodec", "TAEHVStreamingDecoder", "TAEHV_CHECKPOINT", "find_taehv"]

log = logging.getLogger(__name__)

TAEHV_CHECKPOINT = "taew2_1.pth"
_WIDTHS = (256, 128, 64, 64)
_TIME_STRIDES = (1, 2, 2)         # the Wan 2.1 decoder grows time x4 over its last two stages


def _conv3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class _Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _MemoryBlock(nn.Module):
    """relu(convs([x, previous x]) + x): a residual block that also reads the previous frame's input."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(_conv3(2 * channels, channels), nn.ReLU(), _conv3(channels, channels), nn.ReLU(),
                                  _conv3(channels, channels))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + x)


class _TimeGrow(nn.Module):
    """(N, C, H, W) frames -> (N * stride, C, H, W): each frame becomes `stride` consecutive frames."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return self.conv(x).reshape(n * self.stride, c, h, w)


class TAEHVDecoderNet(nn.Module):
    """TAEHV's decoder for Wan 2.1 latents (16 channels), laid out as `taew2_1.pth`'s `decoder.*` entries."""

    def __init__(self, latent_channels: int = 16):
        super().__init__()
        layers: list[nn.Module] = [_Clamp(), _conv3(latent_channels, _WIDTHS[0]), nn.ReLU()]
        for stage, stride in enumerate(_TIME_STRIDES):
            width, next_width = _WIDTHS[stage], _WIDTHS[stage + 1]
            layers += [_MemoryBlock(width) for _ in range(3)]
            layers += [nn.Upsample(scale_factor=2), _TimeGrow(width, stride), _conv3(width, next_width, bias=False)]
        layers += [nn.ReLU(), _conv3(_WIDTHS[-1], 3)]
        self.decoder = nn.Sequential(*layers)
        self.latent_channels = latent_channels
        self.time_factor = 1
        for s in _TIME_STRIDES:
            self.time_factor *= s

    @property
    def startup_frames(self) -> int:
        """Decoded frames dropped at the start of a video (the VAE's first latent frame decodes to one frame)."""
        return self.time_factor - 1

    def step(self, latents: torch.Tensor, memory: list[torch.Tensor | None]) -> torch.Tensor:
        """(B, K, C, h, w) the next K latent frames -> (B, time_factor * K, 3, 8h, 8w) in [0, 1], before trimming.

        memory: one entry per layer, the last input frame each memory block saw (None before the first);
        updated in place.
        """
        b = latents.shape[0]
        x = latents.flatten(0, 1)                                     # (B*T, C, h, w), frames of a video together
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, _MemoryBlock):
                frames = x.unflatten(0, (b, -1))                      # (B, T, C, H, W)
                last = memory[i] if memory[i] is not None else torch.zeros_like(frames[:, 0])
                past = torch.cat([last[:, None], frames[:, :-1]], dim=1)
                memory[i] = frames[:, -1]
                x = layer(x, past.flatten(0, 1))
            else:
                x = layer(x)
        return x.unflatten(0, (b, -1)).clamp(0, 1)

    def load_taehv_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load `taew2_1.pth` (encoder entries ignored). Checkpoints trained with a x2 first time grow store twice
        the rows of `decoder.7.conv.weight`; a x1 grow keeps the last frame's rows, as TAEHV does."""
        own = self.state_dict()
        picked = {}
        for key, value in state.items():
            if not key.startswith("decoder."):
                continue
            if key in own and value.ndim == 4 and value.shape[0] > own[key].shape[0] and value.shape[1:] == own[key].shape[1:]:
                value = value[-own[key].shape[0]:]
            picked[key] = value
        missing = sorted(set(own) - set(picked))
        unexpected = sorted(set(picked) - set(own))
        if missing or unexpected:
            raise ValueError(f"not a TAEHV Wan 2.1 decoder: missing {missing[:3]}, unexpected {unexpected[:3]}")
        bad = [k for k in own if own[k].shape != picked[k].shape]
        if bad:
            raise ValueError(f"not a TAEHV Wan 2.1 decoder: {bad[0]} has shape {tuple(picked[bad[0]].shape)}, "
                             f"expected {tuple(own[bad[0]].shape)}")
        self.load_state_dict(picked)


def find_taehv(path: str | Path) -> Path:
    """The TAEHV weights: `path` itself or `path/taew2_1.pth`."""
    p = Path(path)
    if p.is_dir():
        p = p / TAEHV_CHECKPOINT
    if not p.is_file():
        raise FileNotFoundError(f"no TAEHV decoder at {path}: expected a {TAEHV_CHECKPOINT} file")
    return p


class TAEHVCodec(CausalVideoCodec):
    """Decode-only codec over `TAEHVDecoderNet`; same frame arithmetic and pixel range as `WanVAE`."""

    spatial_factor = 8
    temporal_factor = 4

    def __init__(self, net: TAEHVDecoderNet):
        self.net = net.eval().requires_grad_(False)
        self.latent_channels = net.latent_channels

    @classmethod
    def from_file(cls, path: str | Path, *, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> "TAEHVCodec":
        weights = find_taehv(path)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{weights}: not a state dict")
        channels = state.get("decoder.1.weight")
        if channels is None:
            raise ValueError(f"{weights}: not a TAEHV checkpoint (no decoder.1.weight)")
        net = TAEHVDecoderNet(latent_channels=channels.shape[1])
        net.load_taehv_state_dict(state)
        log.info("loaded TAEHV decoder from %s", weights)
        return cls(net.to(device=device, dtype=dtype))

    @property
    def module(self) -> nn.Module:
        return self.net

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("TAEHV is loaded as a decoder only: encode with the Wan VAE")

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, F, C, h, w) normalised latents -> (B, 4(F-1)+1, 3, 8h, 8w) in [-1, 1]."""
        return self.decoder().decode(latents)

    def decoder(self) -> "TAEHVStreamingDecoder":
        return TAEHVStreamingDecoder(self)


class TAEHVStreamingDecoder:
    """Decodes one video chunk by chunk; the memory blocks' last inputs carry over between chunks."""

    def __init__(self, codec: TAEHVCodec):
        self.codec = codec
        self._memory: list[torch.Tensor | None] = [None] * len(codec.net.decoder)
        self._to_drop = codec.net.startup_frames

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, K, C, h, w) the next K latent frames -> (B, T, 3, 8h, 8w) in [-1, 1]; T = 4K, minus 3 at the start."""
        x = self.codec.net.step(latents.to(self.codec.device, self.codec.dtype), self._memory)
        if self._to_drop:
            dropped = min(self._to_drop, x.shape[1])
            x = x[:, dropped:]
            self._to_drop -= dropped
        return x.float() * 2 - 1
