"""The Wan2.1 diffusion transformer, bidirectional and block-causal (spec §1).

One module serves the teacher and critic (`config.causal = False`, full attention) and the autoregressive
generator (`config.causal = True`): parameter names and shapes are exactly Wan2.1's, so the published Wan
and Self-Forcing weights load as they are (the optional parts, off for every Wan preset, add weights of their own:
the output refiner of `config.refine`, the absolute positions of `config.pos_embed`, the probe of `config.probe`,
the self-conditioning embedding of `config.self_cond`, the mask token of `config.mask_decoder`). The network
knows nothing about noise: it maps a noisy latent video, per-frame timesteps t in [0, 1000] and text embeddings
to a velocity prediction.

Forward modes of the causal model:
- training, no cache: one parallel pass over all frames under the block-causal (optionally windowed) mask;
- teacher forcing: `clean_x` is given; the sequence is [clean ; noisy] under the teacher-forcing mask and only
  the noisy half is returned;
- inference: `kv_cache` is given; `x` is one chunk starting at latent frame `start_frame`, which attends to
  everything in the cache and to itself.

Latents are (B, F, C, H, W) everywhere in this project; the Conv3d sees (B, C, F, H, W).
Numerics follow Wan2.1 under autocast: the residual stream, norms, time embedding and modulation are
float32, linear layers run in the parameters' dtype (a bf16 model runs its matmuls under bf16 autocast).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange

from ..config import WanConfig
from ..nn.attention import attention
from ..nn.masks import structured_mask
from ..nn.rope import apply_rope, axial_frequencies, mixed_rope_angles, rope_angles, rope_positions
from .kv_cache import CrossAttnCache, KVCache, KVContext

__all__ = ["WanDiT", "grow_depth", "sinusoidal_embedding"]


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding in float64: [cos(t w), sin(t w)], w = 10000^(-k/half) (spec §1.3)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    arg = torch.outer(t.reshape(-1).to(torch.float64), freqs)              # (B*F, half)
    return torch.cat([arg.cos(), arg.sin()], dim=1)                        # (B*F, dim)


class RMSNorm(nn.Module):
    """RMSNorm over the full width (across heads), computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm in float32, result in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, num_frames: int) -> torch.Tensor:
    """x * (1 + scale) + shift with one (shift, scale) per frame.

    x: (B, F*N_f, D); shift, scale: (B, F, D).
    """
    x = x.unflatten(1, (num_frames, -1))                                   # (B, F, N_f, D)
    return (x * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2)


def _gate(y: torch.Tensor, gate: torch.Tensor, num_frames: int) -> torch.Tensor:
    """y * gate with one gate per frame; y: (B, F*N_f, D), gate: (B, F, D)."""
    return (y.float().unflatten(1, (num_frames, -1)) * gate[:, :, None]).flatten(1, 2)


class _Projections(nn.Module):
    """q, k, v, o projections and the q / k RMSNorms shared by self- and cross-attention (Wan's names)."""

    def __init__(self, cfg: WanConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()


class SelfAttention(_Projections):
    def __init__(self, cfg: WanConfig, layer: int):
        super().__init__(cfg, layer)
        # mixed RoPE (`WanConfig.rope_mixed`): each head's pairs learn their (ω_t, ω_h, ω_w), from the axial ones
        self.rope_freqs = (
            nn.Parameter(axial_frequencies(cfg.head_dim).float()[None].repeat(cfg.num_heads, 1, 1))
            if cfg.rope_mixed else None
        )

    def forward(self, x, cos, sin, mask=None, kv_cache: KVCache | KVContext | None = None):
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))    # (B, N, h, d)
        k = self.norm_k(self.k(x)).unflatten(-1, (self.num_heads, -1))    # (B, N, h, d)
        v = self.v(x).unflatten(-1, (self.num_heads, -1))                  # (B, N, h, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = self.cached_kv(kv_cache, k, v)                          # (B, N_cache, h, d)
        return self.o(attention(q, k, v, mask))

    def cached_kv(self, kv_cache: KVCache | KVContext, k, v):
        """Write this chunk's keys and values into the cache, return all visible ones. Kept apart from the
        math so `compile_model` can leave it eager: the cache positions change every chunk."""
        return kv_cache.write(self.layer, k, v)


class CrossAttention(_Projections):
    def forward(self, x, context, cache: CrossAttnCache | None = None):
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))    # (B, N, h, d)
        k, v = self.text_kv(context, cache)                                # (B, L, h, d)
        # no key mask: all text_len tokens are attended, zero padding included, as in Wan
        return self.o(attention(q, k, v))

    def text_kv(self, context, cache: CrossAttnCache | None):
        """The text keys and values (B, L, h, d): projected from `context` (B, L, D), or read from the cache
        once filled. Kept apart so `compile_model` can leave it eager (the cache is filled on the first call)."""
        if cache is not None and cache.k[self.layer] is not None:
            return cache.k[self.layer], cache.v[self.layer]
        k = self.norm_k(self.k(context)).unflatten(-1, (self.num_heads, -1))      # (B, L, h, d)
        v = self.v(context).unflatten(-1, (self.num_heads, -1))                   # (B, L, h, d)
        if cache is not None:
            cache.k[self.layer], cache.v[self.layer] = k, v
        return k, v


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig, layer: int):
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg, layer)
        self.norm3 = (
            LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        )
        self.cross_attn = CrossAttention(cfg, layer)
        self.norm2 = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, cfg.dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(self, x, e0, context, cos, sin, mask=None, kv_cache=None, cross_cache=None):
        """x: (B, F*N_f, D) float32; e0: (B, F, 6, D) float32; context: (B, L, D)."""
        num_frames = e0.shape[1]
        m = (self.modulation[:, None] + e0).unbind(2)                      # 6 x (B, F, D)
        y = self.self_attn(_modulate(self.norm1(x), m[0], m[1], num_frames), cos, sin, mask, kv_cache)
        x = x + _gate(y, m[2], num_frames)
        x = x + self.cross_attn(self.norm3(x), context, cross_cache).float()
        y = self.ffn(_modulate(self.norm2(x), m[3], m[4], num_frames))
        return x + _gate(y, m[5], num_frames)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x, e):
        """x: (B, F*N_f, D); e: (B, F, D), the *unprojected* time embedding."""
        shift, scale = (self.modulation[:, None] + e[:, :, None]).unbind(2)  # 2 x (B, F, D)
        return self.head(_modulate(self.norm(x), shift, scale, e.shape[1]))


class Refiner(nn.Module):
    """The output refiner (`WanConfig.refine`): two 3x3 convolutions per frame over [head output, x_t, σ],
    added to the head output."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(cfg.out_dim + cfg.in_dim + 1, cfg.refine, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(cfg.refine, cfg.out_dim, kernel_size=3, padding=1)

    def forward(self, out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """out: (B, F, C_out, H, W) float32; x: (B, F, C_in, H, W); sigma: (B, F) -> refined out."""
        batch, frames, _, height, width = out.shape
        level = sigma.float()[:, :, None, None, None].expand(batch, frames, 1, height, width)
        y = torch.cat([out, x.float(), level], dim=2).flatten(0, 1).to(self.conv1.weight.dtype)
        y = self.conv2(F.silu(self.conv1(y)))
        return out + y.float().unflatten(0, (batch, frames))


class GridPosition(nn.Module):
    """Learned absolute position of a token in its frame (`WanConfig.pos_embed`): row[i] + column[j]."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.row = nn.Parameter(torch.zeros(cfg.pos_embed, cfg.dim))
        self.col = nn.Parameter(torch.zeros(cfg.pos_embed, cfg.dim))

    def forward(self, height: int, width: int) -> torch.Tensor:
        """(height * width, D) float32, token order h then w."""
        size = self.row.shape[0]
        if height > size or width > size:
            raise ValueError(f"a {height}x{width} token grid exceeds the position tables' {size}x{size} "
                             "(WanConfig.pos_embed)")
        return (self.row[:height, None].float() + self.col[None, :width].float()).flatten(0, 1)


class WanDiT(nn.Module):
    """Wan2.1 text-to-video DiT; `config.causal` selects the block-causal generator."""

    def __init__(self, config: WanConfig):
        super().__init__()
        self.config = cfg = config
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList([WanBlock(cfg, i) for i in range(cfg.num_layers)])
        self.head = Head(cfg)
        self.refiner = Refiner(cfg) if cfg.refine else None
        self.pos_embedding = GridPosition(cfg) if cfg.pos_embed else None
        self.probe = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.probe)) \
            if cfg.probe else None
        self.self_cond_embedding = nn.Conv3d(cfg.out_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size,
                                             bias=False) if cfg.self_cond else None
        # masked training (`config.mask_decoder`): stands in for the masked tokens in the last blocks
        self.mask_token = nn.Parameter(torch.empty(cfg.dim)) if cfg.mask_decoder else None
        # activation checkpointing: recompute each block in the backward instead of keeping its activations
        # (a runtime switch, not part of the config). With a KV cache, whose contents move on between the
        # forward and the backward, the recomputed blocks read the context frozen at the call (`KVContext`)
        self.gradient_checkpointing = False
        self.init_weights()

    def init_weights(self) -> None:
        """Wan2.1's initialisation: Xavier-uniform linears with zero bias, N(0, 0.02) text and time
        embeddings, and a zero output head so a fresh model predicts zero velocity."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for m in list(self.text_embedding) + list(self.time_embedding):
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        nn.init.zeros_(self.head.head.bias)
        if self.refiner is not None:
            nn.init.zeros_(self.refiner.conv2.weight)
            nn.init.zeros_(self.refiner.conv2.bias)
        if self.self_cond_embedding is not None:
            nn.init.zeros_(self.self_cond_embedding.weight)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        if self.pos_embedding is not None:
            nn.init.zeros_(self.pos_embedding.row)
            nn.init.zeros_(self.pos_embedding.col)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def tokens_per_frame(self, height: int, width: int) -> int:
        return self.config.tokens_per_frame(height, width)

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """(B, L, text_dim) -> (B, text_len, D), zero-padding to text_len before the projection."""
        length = context.shape[1]
        if length > self.config.text_len:
            raise ValueError(f"context has {length} tokens, more than text_len={self.config.text_len}")
        context = F.pad(context, (0, 0, 0, self.config.text_len - length))
        return self.text_embedding(context.to(self.dtype))

    def _time(self, t: torch.Tensor, batch: int, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """t: (B,) or (B, F) -> e (B, F, D) and e0 (B, F, 6, D), float32."""
        if t.dim() == 1:
            t = t[:, None].expand(batch, num_frames)
        if t.shape != (batch, num_frames):
            raise ValueError(f"t must be (B,) or (B, F) = ({batch}, {num_frames}), got {tuple(t.shape)}")
        with torch.autocast(t.device.type, enabled=False):
            s = sinusoidal_embedding(self.config.freq_dim, t).to(self.dtype)   # (B*F, freq_dim)
            e = self.time_embedding(s)                                         # (B*F, D)
            e0 = self.time_projection(e).unflatten(1, (6, -1))                 # (B*F, 6, D)
        return e.float().unflatten(0, (batch, num_frames)), e0.float().unflatten(0, (batch, num_frames))

    def _patchify(self, x: torch.Tensor, x0_cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, C, H, W) -> (B, F*h*w, D) float32, with the absolute positions of `config.pos_embed` and the
        self-conditioning estimate `x0_cond` (B, F, C_out, H, W) of `config.self_cond`."""
        x = self.patch_embedding(rearrange(x, "b f c h w -> b c f h w").to(self.dtype))
        if x0_cond is not None:
            x = x + self.self_cond_embedding(rearrange(x0_cond, "b f c h w -> b c f h w").to(self.dtype))
        h, w = x.shape[-2:]
        tokens = rearrange(x, "b d f h w -> b f (h w) d").float()         # (B, F, N_f, D)
        if self.pos_embedding is not None:
            tokens = tokens + self.pos_embedding(h, w)
        return tokens.flatten(1, 2)

    def _unpatchify(self, x: torch.Tensor, num_frames: int, h: int, w: int) -> torch.Tensor:
        """(B, F*h*w, C*ph*pw) -> (B, F, C, h*ph, w*pw)."""
        _, ph, pw = self.config.patch_size
        return rearrange(x, "b (f h w) (p q c) -> b f c (h p) (w q)", f=num_frames, h=h, w=w, p=ph, q=pw)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        *,
        clean_x: torch.Tensor | None = None,
        clean_t: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        cross_cache: CrossAttnCache | None = None,
        start_frame: int = 0,
        hidden_layers: tuple[int, ...] = (),
        probe: bool = False,
        x0_cond: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]] | tuple[torch.Tensor, torch.Tensor]:
        """Predict the flow (velocity) of a noisy latent video (with `config.prediction` "x0" or "edm" the
        head predicts the clean video, directly or preconditioned, and the velocity it implies is returned).

        Args:
            x: (B, F, C, H, W) noisy latents (one chunk when `kv_cache` is given).
            t: (B,) or (B, F) timesteps in [0, 1000].
            context: (B, L, text_dim) text embeddings, L <= text_len.
            clean_x, clean_t: teacher forcing: clean context frames (B, F, C, H, W) and their timesteps.
            kv_cache, cross_cache: inference caches (causal model only).
            start_frame: absolute latent-frame index of x[:, 0] (RoPE offset and cache position).
            hidden_layers: also return the token states (B, N, D) after these blocks (the GAN
                discriminator reads them).
            probe: also return the training probe's outputs (B, N, config.probe), float32, read from the token
                states after block `config.probe_layer` (no caches, no teacher forcing, no hidden_layers).
            x0_cond: (B, F, C_out, H, W) an estimate of the clean video for self-conditioning (`config.self_cond`),
                e.g. the previous sampling step's; None reads as zeros.
            keep: (B, F, K) int64, masked training (`config.mask_decoder`): the K < h*w tokens of each frame
                (indices into its row-major token grid) that the blocks before the last `config.mask_decoder`
                see; the others enter the last blocks as the mask token, and their output is inferred from the
                kept ones. None: every token everywhere, the plain network.
        Returns:
            v_pred: (B, F, C_out, H, W), float32; with hidden_layers, (v_pred, [hidden states]); with probe,
            (v_pred, probe outputs).
        """
        cfg = self.config
        if (kv_cache is not None or clean_x is not None) and not cfg.causal:
            raise ValueError("KV caches and teacher forcing need a causal model (config.causal=True)")
        if kv_cache is not None and clean_x is not None:
            raise ValueError("teacher forcing is a training mode; it does not take a KV cache")
        if x.dim() != 5 or x.shape[2] != cfg.in_dim:
            raise ValueError(f"x must be (B, F, {cfg.in_dim}, H, W), got {tuple(x.shape)}")
        if probe and (self.probe is None or hidden_layers or kv_cache is not None or clean_x is not None):
            raise ValueError("probe=True needs a model with a probe (config.probe > 0), without hidden_layers, "
                             "KV caches or teacher forcing")
        if x0_cond is not None:
            if self.self_cond_embedding is None:
                raise ValueError("x0_cond needs a self-conditioned model (config.self_cond=True)")
            expected = (*x.shape[:2], cfg.out_dim, *x.shape[3:])
            if tuple(x0_cond.shape) != expected:
                raise ValueError(f"x0_cond must be {expected}, got {tuple(x0_cond.shape)}")
        if keep is not None:
            if self.mask_token is None or kv_cache is not None or clean_x is not None or hidden_layers or probe:
                raise ValueError("keep (masked training) needs a model with config.mask_decoder > 0, without KV "
                                 "caches, teacher forcing, hidden_layers or the probe")
            tokens = cfg.tokens_per_frame(*x.shape[-2:])
            if keep.dim() != 3 or tuple(keep.shape[:2]) != tuple(x.shape[:2]) or not 0 < keep.shape[2] < tokens:
                raise ValueError(f"keep must be (B, F, K) = ({x.shape[0]}, {x.shape[1]}, K) with 0 < K < {tokens} "
                                 f"tokens a frame, got {tuple(keep.shape)}")
        layers = (*hidden_layers, cfg.probe_layer) if probe else hidden_layers
        autocast = (
            torch.autocast(x.device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        )
        with autocast:
            v_pred, hidden = self._forward(
                x, t, context, clean_x, clean_t, kv_cache, cross_cache, start_frame, layers, x0_cond, keep
            )
            if probe:
                return v_pred, self.probe(hidden[0]).float()                 # (B, N, probe)
        return (v_pred, hidden) if hidden_layers else v_pred

    def _forward(self, x, t, context, clean_x, clean_t, kv_cache, cross_cache, start_frame, hidden_layers,
                 x0_cond=None, keep=None):
        cfg = self.config
        batch, num_frames, _, height, width = x.shape
        _, ph, pw = cfg.patch_size
        h, w = height // ph, width // pw
        tokens_per_frame = cfg.tokens_per_frame(height, width)
        positions = torch.arange(start_frame, start_frame + num_frames, device=x.device)

        e, e0 = self._time(t, batch, num_frames)                            # (B, F, D), (B, F, 6, D)
        tokens = self._patchify(x, x0_cond)                                 # (B, F*N_f, D)
        mask = None
        if clean_x is not None:
            if clean_t is None:
                clean_t = torch.zeros(batch, num_frames, device=x.device)
            ce, ce0 = self._time(clean_t, batch, num_frames)
            tokens = torch.cat([self._patchify(clean_x), tokens], dim=1)    # (B, 2*F*N_f, D)
            e, e0 = torch.cat([ce, e], dim=1), torch.cat([ce0, e0], dim=1)  # (B, 2F, ...)
            positions = positions.repeat(2)                                 # same RoPE for both halves
            mask = structured_mask("tf", cfg, num_frames, tokens_per_frame, x.device)
        elif cfg.causal and kv_cache is None:
            mask = structured_mask("causal", cfg, num_frames, tokens_per_frame, x.device)

        if cfg.rope_mixed:                                                  # (N, h, d/2), one pair a block
            grid = rope_positions(positions, h, w)
            rope = [mixed_rope_angles(grid, block.self_attn.rope_freqs) for block in self.blocks]
        else:
            rope = [rope_angles(cfg.head_dim, positions, h, w)] * len(self.blocks)      # (N, d/2)
        if kv_cache is not None:
            kv_cache.advance(start_frame * tokens_per_frame, tokens.shape[1])
        if torch.is_grad_enabled():
            cross_cache = None  # cached text keys carry no gradient to the cross-attention weights
        if cross_cache is not None and cross_cache.filled:
            ctx = None
        else:
            ctx = self.embed_text(context)                                  # (B, text_len, D)

        encoder = len(self.blocks)                                          # blocks before the mask token joins
        if keep is not None:                                                # masked training: the kept tokens only
            encoder -= cfg.mask_decoder
            full = tokens
            index = (keep + torch.arange(num_frames, device=x.device)[:, None] * tokens_per_frame).flatten(1)
            tokens = full.gather(1, index[..., None].expand(-1, -1, full.shape[-1]))   # (B, F*K, D)
            kept_rope = [tuple(a[index].unsqueeze(2) if a.dim() == 2 else a[index] for a in pair)
                         for pair in rope[:encoder]]                        # (B, F*K, 1 or h, d/2)
            rope = kept_rope + rope[encoder:]

        hidden = []
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        frozen = kv_cache.frozen_context() if recompute and kv_cache is not None else None
        for i, block in enumerate(self.blocks):
            if keep is not None and i == encoder:                           # every token again, masked ones new
                masked = self.mask_token.float().expand_as(full)
                tokens = masked.scatter(1, index[..., None].expand(-1, -1, full.shape[-1]), tokens)
            cos, sin = rope[i]
            if recompute:
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, e0, ctx, cos, sin, mask, frozen, None,
                                                           use_reentrant=False)
            else:
                tokens = block(tokens, e0, ctx, cos, sin, mask, kv_cache, cross_cache)
            if i in hidden_layers:
                hidden.append(tokens)

        out = self.head(tokens, e).float()                                  # (B, F'*N_f, C*ph*pw)
        if clean_x is not None:
            out, e = out[:, num_frames * tokens_per_frame :], e[:, num_frames:]
        out = self._unpatchify(out, num_frames, h, w)                       # (B, F, C, H, W)
        sigma = (t.float() / 1000).expand(batch, num_frames) if t.dim() == 2 else \
            (t.float() / 1000)[:, None].expand(batch, num_frames)           # (B, F)
        if self.refiner is not None:
            out = self.refiner(out, x, sigma)
        if cfg.prediction != "velocity":
            sigma = sigma[:, :, None, None, None]                           # (B, F, 1, 1, 1)
            if cfg.prediction == "x0":                                      # v = (x_t - x0) / σ
                out = (x.float() - out) / sigma.clamp(min=cfg.min_sigma)
            else:                                                           # "edm": see WanConfig.prediction
                var = cfg.sigma_data ** 2
                s2 = (cfg.skip_scale if cfg.skip_scale is not None else cfg.sigma_data) ** 2
                d = (1 - sigma) ** 2 * s2 + sigma ** 2
                c_f = (sigma ** 2 * var + s2 ** 2 * (1 - sigma) ** 2).sqrt()  # c_out / σ times D
                out = ((sigma - s2 * (1 - sigma)) * x.float() - c_f * out) / d
        return out, hidden


GROWN_OUTPUTS = ("self_attn.o.", "cross_attn.o.", "ffn.2.")     # a block's writes into the residual stream


def grow_depth(model: WanDiT, num_layers: int) -> WanDiT:
    """`model` deepened to `num_layers` blocks, a multiple of its own, with its function unchanged.

    Each block is followed by copies of itself whose writes into the residual stream (the self- and
    cross-attention output projections and the FFN's last linear) are zero, so a copy adds nothing until it
    trains; it starts with its original's features, not random ones. Every other weight is the model's own.
    """
    layers = model.config.num_layers
    if num_layers < layers or num_layers % layers:
        raise ValueError(f"a model of {layers} blocks grows to a multiple of {layers} blocks, not {num_layers}")
    factor = num_layers // layers
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    for i, block in enumerate(model.blocks):
        for copy in range(factor):
            for name, value in block.state_dict().items():
                silent = copy > 0 and name.startswith(GROWN_OUTPUTS)
                state[f"blocks.{i * factor + copy}.{name}"] = torch.zeros_like(value) if silent else value.clone()
    grown = WanDiT(model.config.replace(num_layers=num_layers)).to(dtype=model.dtype)
    grown.load_state_dict(state)
    return grown
