"""Attention masks of the causal generator, built from the config (spec §1.5).

Masks are first built between latent frames, `(F_q, F_k)` booleans (True = may attend), then expanded to
tokens for `scaled_dot_product_attention`. Three layouts:

- block-causal: a query in block i sees every key in blocks <= i, its own block bidirectionally;
- windowed block-causal (rolling cache): additionally only the sink frames [0, S) and the last W - S frames
  up to the end of the query's block. This is exactly what the rolling KV cache keeps (see `kv_cache.py`),
  so the parallel forward under this mask equals cached chunk-by-chunk inference. The window W counts the
  sink frames, as the cache buffer does;
- teacher forcing: the sequence is [clean frames ; noisy frames]; clean queries follow the block-causal
  rule among clean keys; noisy queries see the noisy keys of their own block and clean keys of earlier blocks.
"""

from __future__ import annotations

from functools import lru_cache

import torch

__all__ = [
    "frame_blocks",
    "block_causal_frame_mask",
    "teacher_forcing_frame_mask",
    "expand_to_tokens",
    "block_causal_mask",
    "teacher_forcing_mask",
]


def frame_blocks(num_frames: int, frames_per_block: int, independent_first_frame: bool = False) -> torch.Tensor:
    """Block index of every latent frame, (F,)."""
    f = torch.arange(num_frames)
    if independent_first_frame:
        return torch.where(f == 0, 0, (f - 1) // frames_per_block + 1)
    return f // frames_per_block


def _block_end(blocks: torch.Tensor) -> torch.Tensor:
    """Exclusive end frame of the block of every frame, (F,)."""
    num_blocks = int(blocks.max()) + 1 if blocks.numel() else 0
    counts = torch.bincount(blocks, minlength=num_blocks)
    return torch.cumsum(counts, 0)[blocks]


def _window(blocks: torch.Tensor, local_attn_size: int, sink_size: int) -> torch.Tensor:
    """(F, F): key frame j lies inside query frame i's window (always True when global)."""
    num_frames = blocks.shape[0]
    if local_attn_size <= 0:
        return torch.ones(num_frames, num_frames, dtype=torch.bool)
    j = torch.arange(num_frames)[None, :]
    end = _block_end(blocks)[:, None]
    return (j < sink_size) | (j >= end - (local_attn_size - sink_size))


def block_causal_frame_mask(
    num_frames: int,
    frames_per_block: int,
    independent_first_frame: bool = False,
    local_attn_size: int = -1,
    sink_size: int = 0,
) -> torch.Tensor:
    """(F, F) bool mask of the block-causal layout, optionally windowed with sink frames."""
    blocks = frame_blocks(num_frames, frames_per_block, independent_first_frame)
    causal = blocks[None, :] <= blocks[:, None]
    return causal & _window(blocks, local_attn_size, sink_size)


def teacher_forcing_frame_mask(
    num_frames: int,
    frames_per_block: int,
    independent_first_frame: bool = False,
    local_attn_size: int = -1,
    sink_size: int = 0,
) -> torch.Tensor:
    """(2F, 2F) bool mask over [clean frames ; noisy frames]."""
    blocks = frame_blocks(num_frames, frames_per_block, independent_first_frame)
    window = _window(blocks, local_attn_size, sink_size)
    bq, bk = blocks[:, None], blocks[None, :]
    clean_clean = (bk <= bq) & window
    noisy_clean = (bk < bq) & window
    noisy_noisy = bk == bq
    top = torch.cat([clean_clean, torch.zeros_like(clean_clean)], dim=1)
    bottom = torch.cat([noisy_clean, noisy_noisy], dim=1)
    return torch.cat([top, bottom], dim=0)


def expand_to_tokens(frame_mask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """(F_q, F_k) -> (F_q*N_f, F_k*N_f)."""
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


@lru_cache(maxsize=32)
def _cached(kind: str, num_frames: int, tokens_per_frame: int, k: int, iff: bool, w: int, s: int) -> torch.Tensor:
    build = block_causal_frame_mask if kind == "causal" else teacher_forcing_frame_mask
    return expand_to_tokens(build(num_frames, k, iff, w, s), tokens_per_frame)


def block_causal_mask(config, num_frames: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """Token-level block-causal mask for a `WanConfig`, (N, N)."""
    m = _cached("causal", num_frames, tokens_per_frame, config.num_frame_per_block,
                config.independent_first_frame, config.local_attn_size, config.sink_size)
    return m.to(device) if device is not None else m


def teacher_forcing_mask(config, num_frames: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """Token-level teacher-forcing mask for a `WanConfig`, (2N, 2N)."""
    m = _cached("tf", num_frames, tokens_per_frame, config.num_frame_per_block,
                config.independent_first_frame, config.local_attn_size, config.sink_size)
    return m.to(device) if device is not None else m
