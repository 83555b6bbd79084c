"""The GAN discriminator of Self-Forcing + GAN (spec §4(d)): the critic's backbone plus register tokens.

Learned register tokens cross-attend to the backbone's hidden states after a few late blocks (13, 21, 29 of 30
in the published design, scaled to the depth of smaller models), each through a small pre-norm attention +
MLP block; a classification head (LayerNorm -> Linear -> SiLU -> Linear) turns the registers into one logit per
video. The backbone is the critic (fake score) itself, shared, so the discriminator costs one extra head.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from .wan import WanDiT

__all__ = ["default_tap_layers", "RegisterReadout", "Discriminator"]


def default_tap_layers(num_layers: int) -> tuple[int, ...]:
    """Blocks whose outputs the registers read: 13, 21, 29 for 30 layers, proportionally otherwise."""
    return tuple(sorted({max(0, round(f * num_layers) - 1) for f in (14 / 30, 22 / 30, 30 / 30)}))


class RegisterReadout(nn.Module):
    """Registers (R, D) cross-attend to one hidden state (B, N, D), then an MLP; both residual."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, registers: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(hidden.float())
        registers = registers + self.attn(self.norm_q(registers), kv, kv, need_weights=False)[0]
        return registers + self.mlp(self.norm_mlp(registers))


class Discriminator(nn.Module):
    """Logit of "real" for a noisy video, from the critic's hidden states.

    Args:
        backbone: the critic (bidirectional WanDiT), shared with the fake score.
        num_registers: learned register tokens (3 in the published design).
        tap_layers: blocks whose outputs are read; default `default_tap_layers`.
        score: the backbone stays a score network too (DMD2: one critic is both the fake score and the
            discriminator), so its output head keeps training and `forward(..., output="velocity")` reads it.
            Without it the output head is never used and is frozen (no gradient, no optimizer state).
    """

    def __init__(self, backbone: WanDiT, num_registers: int = 3, tap_layers: tuple[int, ...] | None = None,
                 *, score: bool = False):
        super().__init__()
        cfg = backbone.config
        self.backbone = backbone
        self.score = score
        if not score:
            backbone.head.requires_grad_(False)
        self.tap_layers = tap_layers or default_tap_layers(cfg.num_layers)
        self.registers = nn.Parameter(torch.randn(1, num_registers, cfg.dim) * 0.02)
        self.readouts = nn.ModuleList(RegisterReadout(cfg.dim, cfg.num_heads) for _ in self.tap_layers)
        self.classifier = nn.Sequential(
            nn.LayerNorm(num_registers * cfg.dim),
            nn.Linear(num_registers * cfg.dim, cfg.dim),
            nn.SiLU(),
            nn.Linear(cfg.dim, 1),
        )

    def head_parameters(self):
        """Parameters of the discriminator head (not the shared backbone)."""
        return [p for name, p in self.named_parameters() if not name.startswith("backbone.")]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                output: Literal["logit", "velocity"] = "logit") -> torch.Tensor:
        """x_t: (B, F, C, H, W) noisy video; t: (B,) -> logits (B,), or with output="velocity" the backbone's own
        prediction (B, F, C, H, W): the fake score of a `score` discriminator. One argument of `forward`, so
        either goes through a data-parallel wrapper."""
        if output == "velocity":
            if not self.score:
                raise ValueError("this discriminator's output head is frozen: build it with score=True to read "
                                 "the backbone's velocity")
            return self.backbone(x_t, t, context)
        if output != "logit":
            raise ValueError(f"unknown output {output!r}; choose logit or velocity")
        _, hidden = self.backbone(x_t, t, context, hidden_layers=self.tap_layers)
        registers = self.registers.expand(x_t.shape[0], -1, -1)              # (B, R, D)
        for readout, h in zip(self.readouts, hidden):
            registers = readout(registers, h)
        return self.classifier(registers.flatten(1)).squeeze(-1)             # (B,)
