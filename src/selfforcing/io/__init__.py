"""Checkpoints: our own safetensors, Wan2.1's original layout, diffusers, and official Self-Forcing `.pt`."""

from .checkpoints import (
    LAYOUTS,
    CheckpointError,
    describe_checkpoint,
    detect_layout,
    load_transformer,
    save_diffusers,
    save_transformer,
    save_wan,
)
from .layouts import (
    config_from_diffusers,
    config_from_wan,
    config_to_diffusers,
    config_to_wan,
    diffusers_to_wan_state_dict,
    wan_to_diffusers_state_dict,
)

__all__ = [
    "LAYOUTS",
    "CheckpointError",
    "describe_checkpoint",
    "detect_layout",
    "load_transformer",
    "save_diffusers",
    "save_transformer",
    "save_wan",
    "config_from_diffusers",
    "config_from_wan",
    "config_to_diffusers",
    "config_to_wan",
    "diffusers_to_wan_state_dict",
    "wan_to_diffusers_state_dict",
]
