"""Multi-head attention through `scaled_dot_product_attention`.

SDPA has a backward on every device and takes boolean masks, so the same call trains and samples on the
CPU. On CUDA it dispatches to flash / memory-efficient kernels by itself (flash when there is no mask,
as in cached inference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention with scale 1/sqrt(d).

    Args:
        q: (B, N_q, heads, d); k, v: (B, N_k, heads, d), all one dtype.
        mask: optional (N_q, N_k) bool, True = may attend.
    Returns:
        (B, N_q, heads*d).
    """
    dtype = v.dtype
    q, k = q.to(dtype), k.to(dtype)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )                                                                       # (B, heads, N_q, d)
    return out.transpose(1, 2).flatten(2)                                  # (B, N_q, heads*d)
