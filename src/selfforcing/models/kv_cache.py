"""KV caches of the causal generator (spec §1.5).

`KVCache` holds the self-attention keys (after RoPE) and values of every layer in one buffer
`(layers, B, S, heads, d)`. It is either *global* (S = every token of the video) or *rolling* (S = W frames
of tokens: S sink frames that are never evicted plus the most recent W - S frames). Each model call on a
chunk first calls `advance(start, n)` once, which applies the eviction rule and reserves the chunk's slots,
then every layer `write`s its new keys and values and attends to everything in the buffer.

Eviction rule (as the published code): when a *new* chunk does not fit, the oldest non-sink tokens are
dropped and the rest rolled left behind the sink. Re-running the *same* chunk (the next denoising step or
the cache-refill pass at `context_noise`) reuses, and so overwrites, its own slots. The buffer never
grows, so the cost of a chunk stays constant however long the video runs.

`CrossAttnCache` keeps the projected text keys and values of every layer: the text does not change
during a video, so they are computed on the first call only.

`KVContext` freezes what a gradient-carrying call attends to (the keys and values before its chunk), for
activation checkpointing: a block recomputed in the backward runs after the rollout has moved the cache on,
so it must read the context of its own call, not the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["KVCache", "KVContext", "CrossAttnCache"]


@dataclass
class KVCache:
    """Self-attention cache of all layers.

    Attributes:
        k, v: (layers, B, capacity, heads, d) buffers.
        tokens_per_frame: N_f.
        sink_tokens: tokens of the sink frames, never evicted (rolling only).
        rolling: evict old tokens when full (True) or refuse to overflow (False).
        global_end: absolute token index one past the last token ever written.
        local_end: end of the valid region inside the buffer.
    """

    k: torch.Tensor
    v: torch.Tensor
    tokens_per_frame: int
    sink_tokens: int = 0
    rolling: bool = False
    global_end: int = 0
    local_end: int = 0
    _chunk: int = 0

    @classmethod
    def empty(
        cls,
        config,
        batch_size: int,
        tokens_per_frame: int,
        num_frames: int,
        *,
        device=None,
        dtype: torch.dtype = torch.float32,
    ) -> "KVCache":
        """A cache for `config` (a WanConfig): rolling with W frames if `config.local_attn_size` > 0,
        else global with room for `num_frames` latent frames."""
        frames = config.local_attn_size if config.rolling else num_frames
        shape = (config.num_layers, batch_size, frames * tokens_per_frame, config.num_heads, config.head_dim)
        return cls(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            tokens_per_frame=tokens_per_frame,
            sink_tokens=config.sink_size * tokens_per_frame if config.rolling else 0,
            rolling=config.rolling,
        )

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def num_frames(self) -> int:
        """Frames currently visible in the buffer."""
        return self.local_end // self.tokens_per_frame

    def reset(self) -> None:
        """Forget everything; the buffers are reused for the next video."""
        self.global_end = self.local_end = self._chunk = 0

    def advance(self, start: int, num_tokens: int) -> None:
        """Reserve slots for tokens [start, start + num_tokens), evicting old tokens if needed.

        Call once per model call, before the layers `write`.
        """
        end = start + num_tokens
        if end > self.global_end:
            if start != self.global_end:
                raise ValueError(
                    f"chunks must be written in order: next chunk starts at token {self.global_end}, got {start}"
                )
            new = end - self.global_end
            if self.local_end + new > self.capacity:
                if not self.rolling:
                    raise ValueError(
                        f"the KV cache holds {self.capacity // self.tokens_per_frame} frames and is full; "
                        "generate fewer frames or use a rolling cache (local_attn_size)"
                    )
                evicted = self.local_end + new - self.capacity
                kept = self.local_end - evicted - self.sink_tokens
                if kept < 0:
                    raise ValueError("the rolling window is too small for the sink plus one chunk")
                src = slice(self.sink_tokens + evicted, self.sink_tokens + evicted + kept)
                dst = slice(self.sink_tokens, self.sink_tokens + kept)
                self.k[:, :, dst] = self.k[:, :, src].clone()
                self.v[:, :, dst] = self.v[:, :, src].clone()
                self.local_end -= evicted
            self.local_end += new
            self.global_end = end
        elif end != self.global_end or num_tokens != self._chunk:
            raise ValueError(
                f"only the last chunk can be re-run: it spans tokens up to {self.global_end} "
                f"({self._chunk} tokens), got [{start}, {end})"
            )
        self._chunk = num_tokens

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the current chunk's keys and values of one layer; return all visible ones.

        Args:
            k, v: (B, n, heads, d) with n the `num_tokens` of the last `advance`.
        Returns:
            keys, values: (B, local_end, heads, d).
        """
        n = k.shape[1]
        if n != self._chunk:
            raise ValueError(f"advance() reserved {self._chunk} tokens, got {n}")
        lo = self.local_end - n
        if k.requires_grad or v.requires_grad:
            # A training step with gradient (Self-Forcing's exit step): attend to the cached context as
            # constants plus the chunk's own keys, and leave the buffer free of autograd history. The
            # cache-refill pass that follows, without gradient, writes the chunk's slots.
            keys = torch.cat([self.k[layer, :, :lo], k.to(self.k.dtype)], dim=1)
            values = torch.cat([self.v[layer, :, :lo], v.to(self.v.dtype)], dim=1)
            return keys, values
        self.k[layer, :, lo : self.local_end] = k.to(self.k.dtype)
        self.v[layer, :, lo : self.local_end] = v.to(self.v.dtype)
        return self.k[layer, :, : self.local_end], self.v[layer, :, : self.local_end]

    def frozen_context(self) -> "KVContext":
        """The context of the chunk reserved by the last `advance`, as it is now (call after `advance`).

        A global cache only ever writes at or past the current chunk, so a view stays valid; a rolling cache
        moves tokens when it evicts, so its context is copied.
        """
        lo = self.local_end - self._chunk
        k, v = self.k[:, :, :lo], self.v[:, :, :lo]
        if self.rolling:
            k, v = k.clone(), v.clone()
        return KVContext(k=k, v=v, num_tokens=self._chunk)


@dataclass
class KVContext:
    """The cached keys and values a gradient-carrying chunk attends to, frozen (see the module docstring).

    `write` behaves like `KVCache.write` with gradient: the context as constants plus the chunk's own keys,
    nothing stored (the cache-refill pass without gradient writes the chunk).

    Attributes:
        k, v: (layers, B, n_ctx, heads, d) the tokens before the chunk.
        num_tokens: tokens of the chunk.
    """

    k: torch.Tensor
    v: torch.Tensor
    num_tokens: int

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, n, heads, d) of the chunk -> keys, values (B, n_ctx + n, heads, d)."""
        if k.shape[1] != self.num_tokens:
            raise ValueError(f"the context was frozen for a {self.num_tokens}-token chunk, got {k.shape[1]}")
        keys = torch.cat([self.k[layer], k.to(self.k.dtype)], dim=1)
        values = torch.cat([self.v[layer], v.to(self.v.dtype)], dim=1)
        return keys, values


@dataclass
class CrossAttnCache:
    """Projected text keys and values per layer, computed on the first call and reused after."""

    k: list[torch.Tensor | None]
    v: list[torch.Tensor | None]

    @classmethod
    def empty(cls, num_layers: int) -> "CrossAttnCache":
        return cls(k=[None] * num_layers, v=[None] * num_layers)

    @property
    def filled(self) -> bool:
        return all(k is not None for k in self.k)

    def reset(self) -> None:
        self.k = [None] * len(self.k)
        self.v = [None] * len(self.v)
