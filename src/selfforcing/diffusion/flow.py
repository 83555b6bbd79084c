"""Rectified flow matching with a shifted time grid: the project's one time convention (spec §3).

Every noisy latent in the project is

    x_t = (1 - σ) x_0 + σ ε,        v = dx_t/dσ = ε - x_0,        t = 1000 σ,

with σ ∈ [0, 1] (σ = 1 is pure noise), `v` the velocity the Wan2.1 DiT predicts (spec §1.3, step 6) and `t`
the timestep fed to its sinusoidal embedding. `FlowMatching` is a frozen, stateless description of the
schedule; every function is pure and takes `t` explicitly (there is no internal step index).

Training grid. Wan2.1 / Self-Forcing train on 1000 shifted steps: `s = linspace(1, 0, 1001)[:-1]`,
`σ = shift·s / (1 + (shift - 1)·s)` (`shift_sigma`), `timesteps = 1000 σ`. The grid is kept in **float32** and
computed with the same operations as the published code, because the released checkpoints were trained and
are sampled at exactly these float32 values (e.g. the warped step 833.3333 of `warp_timesteps`).

Timestep → σ (`sigma_of`). The published scheduler never computes σ from t: it snaps t to the *nearest* grid
entry and uses that entry's σ, both to add noise and to convert a velocity to x_0. Two consequences:
  * t = 0 ("clean", used e.g. for the context re-noise with `context_noise = 0`) maps to the last grid entry,
    σ ≈ 0.005 at shift 5, so "clean" inputs silently receive a little noise;
  * off-grid t (the continuous DMD timesteps of spec §4(b)) are rounded, by up to ~2.5 near t = 0, so the
    noise level differs from the t the model is told.
The default here (`snap_to_grid=False`) is the exact map σ = t / 1000: what the network sees as t is exactly
the noise level, t = 0 is clean, and every on-grid t (all warped steps, all `sample_timesteps` draws) gets
the same σ as before up to float rounding — so the released weights behave identically. Set
`snap_to_grid=True` only to reproduce the published code bit-for-bit (parity tests against it, or ablations
that must match its training numerics); the velocity ↔ x_0 conversions then also run in float64, as there.

Shapes: latents are `[B, F, C, H, W]`; `t` is a scalar, `[B]` (per sample) or `[B, F]` (per frame) and is
broadcast against x from the *leading* dims (not torch's trailing-dims rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["FlowMatching", "shift_sigma"]


def shift_sigma(s: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """The timestep shift of SD3 / Wan2.1: σ = shift·s / (1 + (shift - 1)·s).

    Maps [0, 1] onto itself monotonically, fixing 0 and 1; shift > 1 spends more steps at high noise.
    Works elementwise on tensors (keeping their dtype) and on Python floats.
    """
    return shift * s / (1 + (shift - 1) * s)


def _expand_like(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Right-pad sigma's shape with ones so it broadcasts against x from the leading dims."""
    if sigma.ndim > x.ndim:
        raise ValueError(f"t of shape {tuple(sigma.shape)} cannot broadcast against x of shape {tuple(x.shape)}")
    # (B,) -> (B, 1, 1, 1, 1); (B, F) -> (B, F, 1, 1, 1)
    return sigma.reshape(*sigma.shape, *([1] * (x.ndim - sigma.ndim)))


@dataclass(frozen=True)
class FlowMatching:
    """Shifted rectified-flow schedule (spec §3).

    Attributes:
        shift: timestep shift; 5 for the Self-Forcing generator, 8 for the teacher / critic / ODE pairs (spec §3).
        num_train_timesteps: N, size of the training grid and the scale of t (t = N σ).
        snap_to_grid: compatibility mode, see the module docstring: σ of the nearest grid entry instead of t / N.
    """

    shift: float = 5.0
    num_train_timesteps: int = 1000
    snap_to_grid: bool = False

    # ----------------------------------------------------------------------------------------- the grid
    @property
    def sigmas(self) -> torch.Tensor:
        """(N,) float32 training σ, from 1 down to σ(1/N) (≈ 0.005 at shift 5), descending."""
        n = self.num_train_timesteps
        s = torch.linspace(1, 0, n + 1)[:-1]  # (N,) float32 as in the published code
        return shift_sigma(s, self.shift)

    @property
    def timesteps(self) -> torch.Tensor:
        """(N,) float32 training timesteps N·σ, starting at N, descending."""
        return self.sigmas * self.num_train_timesteps

    def timestep_of(self, sigma: torch.Tensor) -> torch.Tensor:
        """σ → the model's timestep input t = N σ."""
        return sigma * self.num_train_timesteps

    def _nearest_index(self, t: torch.Tensor) -> torch.Tensor:
        """Index of the grid entry nearest to each t (first one on ties, as torch.argmin)."""
        grid = self.timesteps.to(t.device)
        return (grid - t.to(torch.float32)[..., None]).abs().argmin(dim=-1)  # (...) -> (..., N) -> (...)

    def sigma_of(self, t: torch.Tensor | float) -> torch.Tensor:
        """Timestep t ∈ [0, N] (any shape) → σ of the same shape.

        Exactly t / N by default; with `snap_to_grid` the σ of the nearest grid entry (float32), so that
        t = 0 gives σ ≈ 0.005 at shift 5 like the published code.
        """
        t = torch.as_tensor(t)
        if self.snap_to_grid:
            return self.sigmas.to(t.device)[self._nearest_index(t)]
        return t.to(torch.promote_types(t.dtype, torch.float32)) / self.num_train_timesteps

    def _math_dtype(self, x: torch.Tensor) -> torch.dtype:
        # The published conversions run in float64; elsewhere float32 (or x's dtype if wider) is plenty.
        return torch.float64 if self.snap_to_grid else torch.promote_types(x.dtype, torch.float32)

    # ------------------------------------------------------------------------------ forward process
    def add_noise(self, x_0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """x_t = (1 - σ) x_0 + σ ε (spec §3).

        Args:
            x_0, eps: (B, F, C, H, W) clean latents and Gaussian noise.
            t: scalar, (B,) or (B, F) timesteps in [0, N].
        Returns:
            x_t: (B, F, C, H, W), computed in float32 (or wider) and returned in the inputs' promoted dtype.
        """
        out_dtype = torch.promote_types(x_0.dtype, eps.dtype)
        math_dtype = torch.promote_types(out_dtype, torch.float32)
        sigma = _expand_like(self.sigma_of(t).to(x_0.device, math_dtype), x_0)  # (B, F, 1, 1, 1)
        x_t = (1 - sigma) * x_0.to(math_dtype) + sigma * eps.to(math_dtype)
        return x_t.to(out_dtype)

    @staticmethod
    def target_velocity(x_0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The flow-matching regression target v = ε - x_0 (spec §3)."""
        return eps - x_0

    def x0_from_velocity(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """x_0 = x_t - σ v; returned in v's dtype. x_t, v: (B, F, C, H, W); t: scalar, (B,) or (B, F)."""
        dtype = self._math_dtype(v)
        sigma = _expand_like(self.sigma_of(t).to(v.device, dtype), v)  # (B, F, 1, 1, 1)
        return (x_t.to(dtype) - sigma * v.to(dtype)).to(v.dtype)

    def velocity_from_x0(self, x_t: torch.Tensor, x_0: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """v = (x_t - x_0) / σ; returned in x_0's dtype. Undefined at σ = 0 (t = 0 without snapping)."""
        dtype = self._math_dtype(x_0)
        sigma = _expand_like(self.sigma_of(t).to(x_0.device, dtype), x_0)  # (B, F, 1, 1, 1)
        return ((x_t.to(dtype) - x_0.to(dtype)) / sigma).to(x_0.dtype)

    # -------------------------------------------------------------------------------- inference grids
    def warp_timesteps(self, steps: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Few-step denoising list warped onto the grid: `cat(timesteps, [0])[N - steps]` (spec §3).

        `[1000, 750, 500, 250]` at shift 5 → `[1000, 937.5, 833.33, 625.0]` (float32, as the released
        generator was trained on). A step of 0 maps to t = 0.
        """
        steps = torch.as_tensor(steps)
        if steps.is_floating_point() and not torch.equal(steps, steps.round()):
            raise ValueError(f"denoising steps must be integers, got {steps.tolist()}")
        steps = steps.long()
        n = self.num_train_timesteps
        if steps.min() < 0 or steps.max() > n:
            raise ValueError(f"denoising steps must lie in [0, {n}], got {steps.tolist()}")
        grid = torch.cat([self.timesteps, torch.zeros(1)])  # (N + 1,)
        return grid[n - steps]

    def sampling_sigmas(self, num_steps: int) -> torch.Tensor:
        """(num_steps + 1,) float64 σ for multi-step ODE samplers: uniform in s from 1 to 0, then shifted.

        The first entry is 1 (pure noise), the last is 0 (clean). float64 because solver coefficients take
        ratios and logs of σ; samplers cast what they need.
        """
        if num_steps < 1:
            raise ValueError("num_steps must be at least 1")
        s = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)  # (num_steps + 1,)
        return shift_sigma(s, self.shift)

    # ------------------------------------------------------------------------------------ training
    @property
    def training_weights(self) -> torch.Tensor:
        """(N,) float32 diffusion-training weights over the grid (spec §3).

        y = exp(-2((t - N/2)/N)²), w = (y - min y)·N / Σ(y - min y): zero at the noisiest entry, Σw = N.
        """
        n = self.num_train_timesteps
        t = self.timesteps
        y = torch.exp(-2 * ((t - n / 2) / n) ** 2)
        y_shifted = y - y.min()
        return y_shifted * (n / y_shifted.sum())

    def training_weight(self, t: torch.Tensor | float) -> torch.Tensor:
        """Weight of the (baseline) diffusion loss at t, looked up at the nearest grid entry (any shape)."""
        t = torch.as_tensor(t)
        return self.training_weights.to(t.device)[self._nearest_index(t)]

    def sample_timesteps(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Training timesteps drawn uniformly from the grid (TF / DF / CausVid baselines, spec §4(e)).

        For one t per block, draw shape (B, num_blocks) and `repeat_interleave` over the block's frames.
        Random numbers come from `generator`'s device; the result is moved to `device` (default: that device).
        """
        gen_device = generator.device if generator is not None else torch.device("cpu")
        index = torch.randint(0, self.num_train_timesteps, tuple(shape), generator=generator, device=gen_device)
        return self.timesteps.to(gen_device)[index].to(device or gen_device)

    def sample_dmd_timesteps(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        min_t: float = 20.0,
        max_t: float = 980.0,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """DMD / critic timesteps (spec §4(b)): t ~ U[0, N), shifted with `shift`, clamped to [min_t, max_t].

        The defaults 20 and 980 are the published `min_step = 0.02 N`, `max_step = 0.98 N`. The published
        trainer shares one t across a sample's frames: draw (B, 1) and expand.
        """
        gen_device = generator.device if generator is not None else torch.device("cpu")
        n = self.num_train_timesteps
        u = torch.rand(tuple(shape), generator=generator, device=gen_device)  # U[0, 1)
        t = n * shift_sigma(u, self.shift)
        return t.clamp(min_t, max_t).to(device or gen_device)
