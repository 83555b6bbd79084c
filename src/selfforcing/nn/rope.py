"""3-D rotary position embedding of Wan2.1 (spec §1.4).

Each head's `d` values are `d/2` complex pairs (elements 2k, 2k+1). The first `d/2 - 2*(d//6)` pairs rotate
with the frame index, the next `d//6` with the row, the last `d//6` with the column. Frequencies are
`10000^(-arange(0, n, 2) / n)` with n = `d - 4*(d//6)` real dims for time and `2*(d//6)` for each of h, w.

The angles are computed on the fly in float64 for the positions actually used, which equals indexing
Wan's precomputed 1024-row table for any position below 1024 and has no upper limit, so rolling-cache
videos can run past 1024 latent frames.

Mixed RoPE (`WanConfig.rope_mixed`, Heo et al. 2024, "Rotary Position Embedding for Vision Transformer") gives
every pair of every head its own learned frequency vector (ω_t, ω_h, ω_w) and rotates it by
ω_t f + ω_h i + ω_w j. The attention logit of a pair then depends on ω_t Δf + ω_h Δi + ω_w Δj, so a head can
favour keys along a line through space-time, Δj = -(ω_t / ω_w) Δf: an object moving at that speed, where
the axial RoPE's logits are a sum of one function of Δf and one of Δi, Δj, which favours keys at a fixed
spatial offset in every frame. The frequencies start at the axial ones (`axial_frequencies`), so a model
gains mixed RoPE with its function unchanged.
"""

from __future__ import annotations

import torch

__all__ = ["rope_axis_dims", "rope_angles", "apply_rope", "axial_frequencies", "rope_positions", "mixed_rope_angles"]


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Real dims given to (time, height, width)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _inv_freq(dim: int, device) -> torch.Tensor:
    return 1.0 / torch.pow(10000.0, torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)


def rope_angles(
    head_dim: int, frame_positions: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation of every token, float32.

    Args:
        head_dim: d.
        frame_positions: (F,) absolute latent-frame index of each frame in the sequence.
        height, width: token grid of one frame.
    Returns:
        cos, sin: (F*height*width, d/2), token order frame-major, then h, then w.
    """
    device = frame_positions.device
    dt, dh, dw = rope_axis_dims(head_dim)
    f = frame_positions.to(torch.float64)
    ang_t = torch.outer(f, _inv_freq(dt, device))                                          # (F, dt/2)
    ang_h = torch.outer(torch.arange(height, dtype=torch.float64, device=device), _inv_freq(dh, device))
    ang_w = torch.outer(torch.arange(width, dtype=torch.float64, device=device), _inv_freq(dw, device))
    num_f = f.shape[0]
    ang = torch.cat(
        [
            ang_t[:, None, None, :].expand(num_f, height, width, -1),
            ang_h[None, :, None, :].expand(num_f, height, width, -1),
            ang_w[None, None, :, :].expand(num_f, height, width, -1),
        ],
        dim=-1,
    ).reshape(num_f * height * width, head_dim // 2)                                       # (N, d/2)
    return ang.cos().float(), ang.sin().float()


def axial_frequencies(head_dim: int) -> torch.Tensor:
    """The axial RoPE as mixed frequencies: (d/2, 3) float64, row k = (ω_t, ω_h, ω_w) of pair k, one of them
    non-zero (`rope_angles`'s frequency on its own axis)."""
    dt, dh, dw = rope_axis_dims(head_dim)
    freqs = torch.zeros(head_dim // 2, 3, dtype=torch.float64)
    bands = [0, dt // 2, dt // 2 + dh // 2, head_dim // 2]
    for axis, dim in enumerate((dt, dh, dw)):
        freqs[bands[axis]:bands[axis + 1], axis] = _inv_freq(dim, "cpu")
    return freqs


def rope_positions(frame_positions: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(F*height*width, 3) float64 (frame, row, column) of every token, frame-major as `rope_angles`."""
    device = frame_positions.device
    rows = torch.arange(height, dtype=torch.float64, device=device)
    cols = torch.arange(width, dtype=torch.float64, device=device)
    f, i, j = torch.meshgrid(frame_positions.to(torch.float64), rows, cols, indexing="ij")
    return torch.stack([f, i, j], dim=-1).reshape(-1, 3)


def mixed_rope_angles(positions: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of mixed RoPE, float32, differentiable in `freqs`.

    Args:
        positions: (N, 3) from `rope_positions`.
        freqs: (heads, d/2, 3), each pair's (ω_t, ω_h, ω_w).
    Returns:
        cos, sin: (N, heads, d/2). Angles in float64, so that late frames (rolling caches) keep their precision.
    """
    ang = torch.einsum("nc,hkc->nhk", positions.to(torch.float64), freqs.to(torch.float64))
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (2k, 2k+1) of x by the token's angles, in float32, returned in x's dtype.

    Args:
        x: (B, N, heads, d).
        cos, sin: (N, d/2), the same for every head (axial RoPE), or (N, heads, d/2) (mixed RoPE); or one set
            per sample, (B, N, 1 or heads, d/2), for tokens at different positions in each sample (masked
            training keeps different tokens in each).
    """
    x32 = x.float().unflatten(-1, (-1, 2))                                 # (B, N, h, d/2, 2)
    x_re, x_im = x32[..., 0], x32[..., 1]
    if cos.dim() == 2:
        c, s = cos[None, :, None, :], sin[None, :, None, :]
    else:
        c, s = (cos[None], sin[None]) if cos.dim() == 3 else (cos, sin)
    out = torch.stack([x_re * c - x_im * s, x_re * s + x_im * c], dim=-1)  # (B, N, h, d/2, 2)
    return out.flatten(-2).to(x.dtype)
