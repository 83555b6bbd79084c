"""Samplers for the flow ODE dx/dσ = v(x, σ) and the few-step (DMD) generator, as free functions.

In the spirit of k-diffusion the ODE samplers share one signature,

    sample_x(denoise, x, sigmas, *, callback=None) -> x_0

where `denoise(x_t, sigma) -> v_pred` returns the velocity (the Wan2.1 DiT output) for a 0-dim σ, `x` is pure
noise at `sigmas[0]` and `sigmas` descends to 0 (`FlowMatching.sampling_sigmas`). The few-step sampler
works on warped timesteps and an x_0-predicting network instead, because that is how the Self-Forcing
generator is trained and run (spec §5). None of these functions knows about models, prompts or KV caches:
the adapters that close over a network, its caches and CFG live with the inference code, so streaming and
offline generation call the same loop.

`callback(i, x, x_0)` (optional) is called after step i with the new state x and the step's clean
prediction x_0, e.g. for previews.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from selfforcing.diffusion.flow import FlowMatching

__all__ = ["cfg", "euler_step", "sample_euler", "sample_dpmpp_2m", "sample_few_step"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): uncond + scale·(cond - uncond).

    Linear, so it applies equally to velocity (spec §5, flow-space CFG) and x_0 predictions (spec §4(b)).
    """
    return uncond + scale * (cond - uncond)


def euler_step(x_t: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step of the flow ODE: x + v·(σ_next - σ) (spec §3). Stateless."""
    return x_t + v * (sigma_next - sigma)


def sample_euler(
    denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: Optional[Callback] = None
) -> torch.Tensor:
    """Euler integration of dx/dσ = v from σ = sigmas[0] to sigmas[-1] (first order, one call per step).

    Args:
        denoise: (x_t, sigma) -> v_pred, x_t (B, F, C, H, W), sigma 0-dim.
        x: (B, F, C, H, W) noise at sigmas[0].
        sigmas: (num_steps + 1,) descending.
    Returns:
        x at sigmas[-1] (the clean sample when it is 0).
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v_pred = denoise(x, sigmas[i])
        if callback is not None:
            x_0 = x - sigma * v_pred
        x = euler_step(x, v_pred, sigma, sigma_next)
        if callback is not None:
            callback(i, x, x_0)
    return x


def _log_snr(sigma: float) -> float:
    """λ = log(α / σ) with α = 1 - σ; -inf at pure noise, +inf at clean data."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log((1.0 - sigma) / sigma)


def sample_dpmpp_2m(
    denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: Optional[Callback] = None
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2) for x_t = α x_0 + σ ε with α = 1 - σ.

    A second-order multistep solver in x_0 space, one network call per step, in place of the UniPC solver
    the published TF / DF baselines use (spec §5; same order and cost, not bit-identical). With
    λ = log(α/σ), h_i = λ_{i+1} - λ_i and r_i = h_{i-1} / h_i:

        D_i     = (1 + 1/(2 r_i)) x̂_0,i - 1/(2 r_i) x̂_0,i-1                  (first order: D_i = x̂_0,i)
        x_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1}(1 - e^{-h_i}) D_i
                = (σ_{i+1}/σ_i) x_i + (α_{i+1} - σ_{i+1} α_i / σ_i) D_i          (finite even at σ_i = 1)

    The step after σ = 1 is first order by itself (h_{i-1} = ∞ makes the correction vanish), and the last
    step to σ = 0 is first order (x = x̂_0), as in k-diffusion / diffusers' `lower_order_final`.
    Arguments and return as `sample_euler`.
    """
    x_0_prev, h_prev = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        alpha, alpha_next = 1.0 - sigma, 1.0 - sigma_next
        v_pred = denoise(x, sigmas[i])
        x_0 = x - sigma * v_pred  # data prediction x̂_0,i
        h = _log_snr(sigma_next) - _log_snr(sigma)
        if x_0_prev is None or sigma_next == 0.0:
            D = x_0
        else:
            r = h_prev / h
            D = (1 + 1 / (2 * r)) * x_0 - (1 / (2 * r)) * x_0_prev
        x = (sigma_next / sigma) * x + (alpha_next - sigma_next * alpha / sigma) * D
        x_0_prev, h_prev = x_0, h
        if callback is not None:
            callback(i, x, x_0)
    return x


def sample_few_step(
    denoise_x0: Denoiser,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    flow: FlowMatching,
    generator: Optional[torch.Generator] = None,
    *,
    callback: Optional[Callback] = None,
) -> torch.Tensor:
    """Few-step generator sampling of Self-Forcing / DMD: the per-chunk denoising loop of Huang et al. 2025 (spec §5).

    For each warped timestep t_i: x̂_0 = G(x_t, t_i); unless it is the last, re-noise with fresh ε to the next
    one, x_t = (1 - σ_{i+1}) x̂_0 + σ_{i+1} ε. Unlike an ODE solver, every step jumps through the clean
    prediction, so the noise is fresh at each step; it is drawn from `generator` for reproducibility.

    Args:
        denoise_x0: (x_t, t) -> x_0 prediction; x_t (B, F, C, H, W), t a 0-dim timestep (float32).
        x: (B, F, C, H, W) pure noise at timesteps[0].
        timesteps: (S,) descending, e.g. `flow.warp_timesteps([1000, 750, 500, 250])`.
        flow: the schedule used to re-noise.
        generator: source of the fresh noise (on its own device; moved to x's device); None = global RNG.
    Returns:
        x_0: (B, F, C, H, W), the prediction at the last timestep.
    """
    gen_device = generator.device if generator is not None else x.device
    x_t = x
    for i in range(len(timesteps)):
        x_0 = denoise_x0(x_t, timesteps[i])
        if i + 1 < len(timesteps):
            eps = torch.randn(x_0.shape, generator=generator, device=gen_device, dtype=x_0.dtype).to(x_0.device)
            x_t = flow.add_noise(x_0, eps, timesteps[i + 1])
        else:
            x_t = x_0
        if callback is not None:
            callback(i, x_t, x_0)
    return x_0


MULTISTEP_SAMPLERS = {"euler": sample_euler, "dpmpp-2m": sample_dpmpp_2m}
