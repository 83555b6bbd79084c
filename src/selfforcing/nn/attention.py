"""Multi-head attention through `scaled_dot_product_attention`.

SDPA has a backward on every device and takes boolean masks, so the same call trains and samples on the
CPU. On CUDA it dispatches to flash / memory-efficient kernels by itself (flash when there is no mask,
as in cached inference). A `BlockSparseMask` with spans (the teacher-forcing mask of training, windowed masks)
is computed on the CPU span by span, unmasked, skipping the blocks the mask removes: the same result up to
rounding, 1.5x faster for a teacher-forcing training step there; other devices get its dense mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masks import BlockSparseMask

__all__ = ["attention"]


def _sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockSparseMask) -> torch.Tensor:
    """SDPA per query span over its key ranges; q, k, v: (B, heads, N, d)."""
    outs = []
    for q0, q1, keys in mask.spans:
        if len(keys) == 1:
            (k0, k1), = keys
            ks, vs = k[:, :, k0:k1], v[:, :, k0:k1]
        else:
            ks = torch.cat([k[:, :, k0:k1] for k0, k1 in keys], dim=2)
            vs = torch.cat([v[:, :, k0:k1] for k0, k1 in keys], dim=2)
        outs.append(F.scaled_dot_product_attention(q[:, :, q0:q1], ks, vs))
    return torch.cat(outs, dim=2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | BlockSparseMask | None = None) -> torch.Tensor:
    """Scaled dot-product attention with scale 1/sqrt(d).

    Args:
        q: (B, N_q, heads, d); k, v: (B, N_k, heads, d), all one dtype.
        mask: optional (N_q, N_k) bool, True = may attend, or a `BlockSparseMask`.
    Returns:
        (B, N_q, heads*d).
    """
    dtype = v.dtype
    q, k, v = q.to(dtype).transpose(1, 2), k.to(dtype).transpose(1, 2), v.transpose(1, 2)
    if isinstance(mask, BlockSparseMask):
        if mask.spans is not None and q.device.type == "cpu":
            return _sparse(q, k, v, mask).transpose(1, 2).flatten(2)
        mask = mask.dense
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)         # (B, heads, N_q, d)
    return out.transpose(1, 2).flatten(2)                                  # (B, N_q, heads*d)
