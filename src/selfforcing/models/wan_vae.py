"""Wan2.1's causal 3-D VAE as a `VideoCodec` (spec §2), through diffusers' `AutoencoderKLWan`.

Pixels `(B, T, 3, H, W)` in [-1, 1] with T = 4(F - 1) + 1 become latents `(B, F, 16, H/8, W/8)`: the first
frame is encoded alone, then every 4 frames make one latent frame (causal convolutions in time). Latents
are normalised per channel, `z = (mu - mean) / std`, and decoded as `z * std + mean` (spec §2).

Decoding runs one latent frame at a time through causal convolutions that keep the last two feature frames
of every layer in a cache. `WanVAE.decoder()` returns a `WanStreamingDecoder` owning its own cache, so a video
can be decoded chunk by chunk as the generator produces it: latent frame 0 gives 1 pixel frame, every later
latent frame 4, and the concatenated chunks equal a one-shot `decode`.

Two on-disk layouts hold the same weights: diffusers' `vae/` folder, and Wan's original `Wan2.1_VAE.pth`
(the `WanVAE_` names of `wan/modules/vae.py` in Wan-Video/Wan2.1), renamed by `wan_vae_to_diffusers_key`
following `convert_vae` in huggingface/diffusers `scripts/convert_wan_to_diffusers.py`, generalised from its
hard-coded block indices to any `num_res_blocks` and number of stages.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from einops import rearrange

from .codec import CausalVideoCodec

__all__ = [
    "WanVAE",
    "WanStreamingDecoder",
    "find_wan_vae",
    "wan_vae_to_diffusers_key",
    "diffusers_to_wan_vae_key",
    "wan_vae_to_diffusers_state_dict",
    "diffusers_to_wan_vae_state_dict",
    "vae_config_from_wan_state",
    "LATENTS_MEAN",
    "LATENTS_STD",
    "WAN_VAE_CHECKPOINT",
]

log = logging.getLogger(__name__)

WAN_VAE_CHECKPOINT = "Wan2.1_VAE.pth"

# Per-channel latent statistics of Wan2.1's VAE (spec §2; Wan's `WanVAE.mean / std`, diffusers' latents_mean / std).
LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


# ---------------------------------------------------------------------------------------------------------
# Key mapping: Wan's `WanVAE_` <-> diffusers' `AutoencoderKLWan`.
# Wan keeps each residual block as `residual = Sequential(RMS_norm, SiLU, Conv, RMS_norm, SiLU, Dropout, Conv)`
# and the decoder's stages as one flat `upsamples` list: per stage, num_res_blocks + 1 residual blocks, then a
# `Resample` (none after the last stage). diffusers nests the decoder as up_blocks[stage].resnets[j] /
# .upsamplers[0] but keeps the encoder's `down_blocks` flat, with the same indices as Wan's `downsamples`.

_RESIDUAL = {  # inside one residual block
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight", "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight", "shortcut.bias": "conv_shortcut.bias",
}
_FIXED = {
    "conv1.weight": "quant_conv.weight", "conv1.bias": "quant_conv.bias",
    "conv2.weight": "post_quant_conv.weight", "conv2.bias": "post_quant_conv.bias",
    **{f"{part}.conv1.{p}": f"{part}.conv_in.{p}" for part in ("encoder", "decoder") for p in ("weight", "bias")},
    **{f"{part}.head.0.gamma": f"{part}.norm_out.gamma" for part in ("encoder", "decoder")},
    **{f"{part}.head.2.{p}": f"{part}.conv_out.{p}" for part in ("encoder", "decoder") for p in ("weight", "bias")},
}
_MIDDLE = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}   # ResidualBlock, AttentionBlock, ResidualBlock


def _block(rest: str, table: Mapping[str, str]) -> str:
    """Rename inside a residual block; other sub-modules (resample, time_conv, attention) keep their names."""
    return table.get(rest, rest)


def wan_vae_to_diffusers_key(key: str, num_res_blocks: int = 2) -> str:
    """A `Wan2.1_VAE.pth` name -> its `AutoencoderKLWan` name."""
    if key in _FIXED:
        return _FIXED[key]
    if m := re.match(r"^(encoder|decoder)\.middle\.(\d)\.(.+)$", key):
        part, i, rest = m.groups()
        return f"{part}.mid_block.{_MIDDLE[i]}.{_block(rest, _RESIDUAL)}"
    if m := re.match(r"^encoder\.downsamples\.(\d+)\.(.+)$", key):
        return f"encoder.down_blocks.{m.group(1)}.{_block(m.group(2), _RESIDUAL)}"
    if m := re.match(r"^decoder\.upsamples\.(\d+)\.(.+)$", key):
        stage, j = divmod(int(m.group(1)), num_res_blocks + 2)   # per stage: nrb + 1 resnets, 1 upsampler
        if j <= num_res_blocks:
            return f"decoder.up_blocks.{stage}.resnets.{j}.{_block(m.group(2), _RESIDUAL)}"
        return f"decoder.up_blocks.{stage}.upsamplers.0.{m.group(2)}"
    raise KeyError(f"not a Wan2.1 VAE parameter: {key!r}")


def diffusers_to_wan_vae_key(key: str, num_res_blocks: int = 2) -> str:
    """The inverse of `wan_vae_to_diffusers_key`."""
    inverse_fixed = {v: k for k, v in _FIXED.items()}
    inverse_res = {v: k for k, v in _RESIDUAL.items()}
    inverse_mid = {v: k for k, v in _MIDDLE.items()}
    if key in inverse_fixed:
        return inverse_fixed[key]
    if m := re.match(r"^(encoder|decoder)\.mid_block\.(resnets\.\d|attentions\.\d)\.(.+)$", key):
        part, sub, rest = m.groups()
        return f"{part}.middle.{inverse_mid[sub]}.{_block(rest, inverse_res)}"
    if m := re.match(r"^encoder\.down_blocks\.(\d+)\.(.+)$", key):
        return f"encoder.downsamples.{m.group(1)}.{_block(m.group(2), inverse_res)}"
    if m := re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
        stage, j, rest = m.groups()
        return f"decoder.upsamples.{int(stage) * (num_res_blocks + 2) + int(j)}.{_block(rest, inverse_res)}"
    if m := re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", key):
        stage, rest = m.groups()
        return f"decoder.upsamples.{int(stage) * (num_res_blocks + 2) + num_res_blocks + 1}.{rest}"
    raise KeyError(f"not an AutoencoderKLWan parameter: {key!r}")


def vae_config_from_wan_state(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """`AutoencoderKLWan` config of a `Wan2.1_VAE.pth` state dict, read off its shapes.

    The real file gives base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], num_res_blocks 2, temporal
    downsampling [False, True, True], no attention outside the middle blocks.
    """
    try:
        base_dim = shapes["encoder.conv1.weight"][0]
        z_dim = shapes["conv2.weight"][0]
    except KeyError as err:
        raise ValueError(f"not a Wan2.1 VAE state dict: it has no {err.args[0]}") from err
    ups = {}
    for k in shapes:
        if m := re.match(r"^decoder\.upsamples\.(\d+)\.(.+)$", k):
            ups.setdefault(int(m.group(1)), set()).add(m.group(2))
    resamples = sorted(i for i, names in ups.items() if "resample.1.weight" in names)
    if not resamples:
        raise ValueError("not a Wan2.1 VAE state dict: the decoder has no upsampling layer")
    num_res_blocks = resamples[0] - 1
    stride = num_res_blocks + 2
    num_stages = len(resamples) + 1
    if any("to_qkv" in n for names in ups.values() for n in names):
        raise ValueError("attention inside the decoder stages (attn_scales) is not supported by AutoencoderKLWan")
    # decoder stage s outputs base_dim * dim_mult[::-1][s] channels
    out_dims = [shapes[f"decoder.upsamples.{s * stride}.residual.6.weight"][0] for s in range(num_stages)]
    temporal_up = ["time_conv.weight" in ups[i] for i in resamples]          # upsample3d vs upsample2d
    return dict(
        base_dim=base_dim, z_dim=z_dim, dim_mult=[d // base_dim for d in out_dims[::-1]],
        num_res_blocks=num_res_blocks, attn_scales=[], temperal_downsample=temporal_up[::-1],
        latents_mean=list(LATENTS_MEAN[:z_dim]) if z_dim == len(LATENTS_MEAN) else [0.0] * z_dim,
        latents_std=list(LATENTS_STD[:z_dim]) if z_dim == len(LATENTS_STD) else [1.0] * z_dim,
    )


def wan_vae_to_diffusers_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    nrb = vae_config_from_wan_state({k: tuple(v.shape) for k, v in state.items()})["num_res_blocks"]
    return {wan_vae_to_diffusers_key(k, nrb): v for k, v in state.items()}


def diffusers_to_wan_vae_state_dict(state: Mapping[str, torch.Tensor], num_res_blocks: int = 2) -> dict:
    return {diffusers_to_wan_vae_key(k, num_res_blocks): v for k, v in state.items()}


# ---------------------------------------------------------------------------------------------------------
# Locating and loading


def _diffusers():
    try:
        from diffusers import AutoencoderKLWan
    except ImportError as err:
        raise RuntimeError("the Wan VAE needs diffusers (pip install 'selfforcing[wan]')") from err
    return AutoencoderKLWan


def find_wan_vae(path: str | Path) -> tuple[str, Path]:
    """(layout, weights) of the VAE: `path` is a Wan2.1 root (either layout), a `vae/` folder or a `.pth`."""
    p = Path(path)
    if p.is_file():
        if p.suffix not in (".pth", ".pt"):
            raise ValueError(f"{p}: a Wan VAE file is a torch state dict (.pth); pass a vae/ folder for diffusers")
        return "original", p
    if (p / WAN_VAE_CHECKPOINT).is_file():
        return "original", p / WAN_VAE_CHECKPOINT
    for folder in (p / "vae", p):
        if (folder / "config.json").is_file() and any(folder.glob("diffusion_pytorch_model*.safetensors")):
            return "diffusers", folder
    raise FileNotFoundError(f"no Wan VAE under {p}: expected {WAN_VAE_CHECKPOINT} (Wan2.1) or vae/ (diffusers)")


def _load_original(path: Path, dtype: torch.dtype | None):
    AutoencoderKLWan = _diffusers()
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = vae_config_from_wan_state({k: tuple(v.shape) for k, v in state.items()})
    try:
        state = {wan_vae_to_diffusers_key(k, config["num_res_blocks"]): v for k, v in state.items()}
    except KeyError as err:
        raise ValueError(f"{path}: {err.args[0]}") from err
    with torch.device("meta"):
        vae = AutoencoderKLWan(**config)
    dtype = dtype or state["decoder.conv_in.weight"].dtype
    vae.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return vae


class WanVAE(CausalVideoCodec):
    """The Wan2.1 VAE as a codec: `encode` (B, T, 3, H, W) -> (B, F, 16, H/8, W/8), normalised; `decode` back.

    Args:
        vae: a diffusers `AutoencoderKLWan`; its `latents_mean` / `latents_std` normalise the latents.
    Pixels come out float32 on the VAE's device, clamped to [-1, 1]. Causal first frame: F latent frames decode
    to 4(F - 1) + 1 pixel frames.
    """

    spatial_factor = 8
    temporal_factor = 4

    def __init__(self, vae):
        self.vae = vae.eval().requires_grad_(False)
        self.latent_channels = vae.config.z_dim
        self.spatial_factor = vae.config.get("scale_factor_spatial") or 8
        self.temporal_factor = vae.config.get("scale_factor_temporal") or 4
        self.mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32)   # (C,)
        self.std = torch.tensor(vae.config.latents_std, dtype=torch.float32)     # (C,)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> "WanVAE":
        """Load from a Wan2.1 root (either layout), a diffusers `vae/` folder or `Wan2.1_VAE.pth`.

        dtype: None keeps the file's dtype (float32 for both published files).
        """
        layout, weights = find_wan_vae(path)
        if layout == "original":
            vae = _load_original(weights, dtype)
        else:
            vae = _diffusers().from_pretrained(weights, torch_dtype=dtype, local_files_only=True)
        vae = vae.to(device)
        log.info("loaded Wan VAE (%s layout, z_dim %d) from %s onto %s", layout, vae.config.z_dim, weights, device)
        return cls(vae)

    @property
    def module(self) -> torch.nn.Module:
        return self.vae

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)                                              # broadcast over (B, C, F, h, w)
        return self.mean.to(like.device).view(shape), self.std.to(like.device).view(shape)

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """(B, C, F, h, w) VAE means -> the generator's latents, z = (mu - mean) / std."""
        mean, std = self._stats(mu)
        return (mu.float() - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, F, h, w) latents -> VAE means, z * std + mean."""
        mean, std = self._stats(z)
        return z.float() * std + mean

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [-1, 1], T = 4k + 1 -> (B, F, C, H/8, W/8) normalised latents (the posterior mean)."""
        self.num_latent_frames(video.shape[1])
        x = rearrange(video, "b t c h w -> b c t h w").to(self.device, self.dtype)
        mu = self.vae.encode(x).latent_dist.mean                               # (B, C, F, h, w)
        return rearrange(self.normalize(mu), "b c f h w -> b f c h w")

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, F, C, h, w) normalised latents -> (B, 4(F-1)+1, 3, 8h, 8w) in [-1, 1], one shot."""
        z = self.denormalize(rearrange(latents, "b f c h w -> b c f h w").to(self.device))
        x = self.vae.decode(z.to(self.dtype)).sample                           # (B, 3, T, H, W), clamped
        return rearrange(x.float(), "b c t h w -> b t c h w")

    def decoder(self) -> "WanStreamingDecoder":
        return WanStreamingDecoder(self)


class WanStreamingDecoder:
    """Decodes one video chunk by chunk, keeping the causal convolutions' feature cache between calls.

    This is diffusers' `AutoencoderKLWan._decode` loop (one latent frame per decoder call, a cache of each
    causal convolution's last two input frames) with the cache held here rather than on the model, so several
    streams, or a one-shot `decode`, can run between calls without disturbing each other.
    """

    def __init__(self, codec: WanVAE):
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.codec = codec
        num_convs = sum(isinstance(m, WanCausalConv3d) for m in codec.vae.decoder.modules())
        self._feat_map: list = [None] * num_convs
        self.frames_done = 0                                                   # latent frames decoded so far

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, K, C, h, w) the next K latent frames -> their pixels (B, T, 3, 8h, 8w) in [-1, 1].

        T = 4K, plus 1 - 4 = -3 for the chunk holding the video's first frame (which decodes to one frame).
        """
        vae = self.codec.vae
        z = self.codec.denormalize(rearrange(latents, "b k c h w -> b c k h w").to(self.codec.device))
        x = vae.post_quant_conv(z.to(self.codec.dtype))                        # 1x1x1: no temporal state
        out = []
        for i in range(x.shape[2]):
            out.append(vae.decoder(
                x[:, :, i : i + 1], feat_cache=self._feat_map, feat_idx=[0], first_chunk=self.frames_done == 0
            ))                                                                  # (B, 3, 1 or 4, H, W)
            self.frames_done += 1
        pixels = torch.cat(out, dim=2).clamp(-1.0, 1.0)
        return rearrange(pixels.float(), "b c t h w -> b t c h w")
