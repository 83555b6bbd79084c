"""Exponential moving average of a network's weights (Polyak averaging).

After optimizer step s (counted from 1): if s < start_step the average is reset to the weights, otherwise

    ema ← decay · ema + (1 - decay) · θ.

The published Self-Forcing run uses decay 0.99 from step 200 (spec §4(b)). Works on plain parameters and on
FSDP2-sharded ones (the averages are sharded like the parameters, and gathered only to be saved).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from .parallel import full_tensor

__all__ = ["EMA"]


class EMA:
    """Shadow copies of a network's trainable parameters.

    Args:
        model: the (unwrapped or FSDP-sharded) network.
        decay: per-step decay in [0, 1).
        start_step: steps before which the average tracks the weights exactly.
    """

    def __init__(self, model: nn.Module, decay: float, start_step: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay, self.start_step = decay, start_step
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def _params(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: p for name, p in model.named_parameters() if name in self.shadow}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the weights after optimizer step `step` (1-based)."""
        params = self._params(model)
        if step < self.start_step:
            for name, p in params.items():
                self.shadow[name].copy_(p)
            return
        for name, p in params.items():
            self.shadow[name].mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for name, p in self._params(model).items():
            p.copy_(self.shadow[name])

    @contextmanager
    def swapped(self, model: nn.Module):
        """Run `model` with the averaged weights inside the block; the trained weights come back after."""
        saved = {name: p.detach().clone() for name, p in self._params(model).items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in self._params(model).items():
                    p.copy_(saved[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full (gathered) averages on the CPU. A collective for FSDP-sharded networks."""
        return {name: full_tensor(t).detach().cpu().clone() for name, t in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.shadow.keys() - state.keys(), state.keys() - self.shadow.keys()
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the network: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}")
        for name, t in self.shadow.items():
            full = state[name].to(device=t.device, dtype=t.dtype)
            if hasattr(t, "device_mesh"):                     # FSDP2 DTensor: keep only this rank's shard
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full, t.device_mesh, t.placements)
            t.copy_(full)
