"""Diffusion math, apart from the networks (DiT-style split): the flow-matching schedule and the samplers.

`FlowMatching` holds the project's one time convention, x_t = (1 - σ) x_0 + σ ε, v = ε - x_0, t = 1000 σ
(spec §3); the samplers are free functions that take a denoiser closure and know nothing about models or caches.
"""

from selfforcing.diffusion.flow import FlowMatching, shift_sigma
from selfforcing.diffusion.samplers import (
    MULTISTEP_SAMPLERS,
    cfg,
    euler_step,
    sample_dpmpp_2m,
    sample_euler,
    sample_few_step,
)

__all__ = [
    "FlowMatching",
    "shift_sigma",
    "cfg",
    "MULTISTEP_SAMPLERS",
    "euler_step",
    "sample_euler",
    "sample_dpmpp_2m",
    "sample_few_step",
]
