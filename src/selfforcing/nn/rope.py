"""3-D rotary position embedding of Wan2.1 (spec §1.4).

Each head's `d` values are `d/2` complex pairs (elements 2k, 2k+1). The first `d/2 - 2*(d//6)` pairs rotate
with the frame index, the next `d//6` with the row, the last `d//6` with the column. Frequencies are
`10000^(-arange(0, n, 2) / n)` with n = `d - 4*(d//6)` real dims for time and `2*(d//6)` for each of h, w.

The angles are computed on the fly in float64 for the positions actually used, which equals indexing
Wan's precomputed 1024-row table for any position below 1024 and has no upper limit, so rolling-cache
videos can run past 1024 latent frames.
"""

from __future__ import annotations

import torch

__all__ = ["rope_axis_dims", "rope_angles", "apply_rope"]


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


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (2k, 2k+1) of x by the token's angles, in float32, returned in x's dtype.

    Args:
        x: (B, N, heads, d).
        cos, sin: (N, d/2).
    """
    x32 = x.float().unflatten(-1, (-1, 2))                                 # (B, N, h, d/2, 2)
    x_re, x_im = x32[..., 0], x32[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]                    # (1, N, 1, d/2)
    out = torch.stack([x_re * c - x_im * s, x_re * s + x_im * c], dim=-1)  # (B, N, h, d/2, 2)
    return out.flatten(-2).to(x.dtype)
