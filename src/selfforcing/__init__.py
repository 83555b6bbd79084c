"""selfforcing: autoregressive video diffusion trained by Self-Forcing (Huang et al. 2025)."""

__version__ = "0.1.0"
