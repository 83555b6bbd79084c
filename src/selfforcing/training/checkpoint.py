"""Training checkpoints: the full state of a run in one file, written atomically; exported weights.

`checkpoints/step_00001000.pt` is a `torch.save` of

    {"format", "step", "config" (the resolved TrainConfig as a dict), "networks" {name: state dict},
     "optimizers" {update: state dict keyed by parameter names}, "ema" {name: state dict},
     "rng" {"torch", "numpy", "python"}, "world_size"}

with full (unsharded) CPU tensors, so a run can resume on any number of processes. The learning rate is a pure
function of the step and every random draw of the training loop is seeded from (seed, step, sample), so
nothing else is needed to continue bit for bit. Files are written to a temporary name in the same folder and
renamed with `os.replace`: a crash mid-write leaves the previous checkpoint (and no partial file) behind.

Weights are also exported as the project's `.safetensors` (`io.checkpoints.save_transformer`), which
`load_transformer` reads: `{network}.safetensors` (trained weights) and `{network}_ema.safetensors`, with the
train config, step, latent normalisation and a `PipelineSpec` in the metadata.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from ..config import WanConfig
from ..inference.loading import PIPELINE_METADATA_KEY, PipelineSpec, anchor_codec
from ..io.checkpoints import atomic_write, save_transformer
from ..models.wan import WanDiT

__all__ = [
    "FORMAT", "TRAIN_CONFIG_KEY", "LATENT_NORM_KEY", "STEP_KEY", "atomic_write", "save_state", "load_state",
    "checkpoint_path", "list_checkpoints", "latest_checkpoint", "prune_checkpoints", "rng_state",
    "set_rng_state", "export_weights",
]

log = logging.getLogger(__name__)

FORMAT = "selfforcing.train_state/1"
TRAIN_CONFIG_KEY = "selfforcing.train_config"
LATENT_NORM_KEY = "selfforcing.latent_norm"
STEP_KEY = "selfforcing.step"
_NAME = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in `folder`, oldest first (temporary files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for _, path in list_checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)


def rng_state() -> dict:
    """The global RNG states (torch CPU, numpy, python), in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_state(path: str | os.PathLike, state: dict) -> Path:
    """Atomically `torch.save` a training state (see the module docstring for its keys)."""
    return atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load_state(path: str | os.PathLike, *, mmap: bool = False) -> dict:
    """Read a training state written by `save_state` (tensors on the CPU; with `mmap` they are mapped from the
    file and read only when touched, for a caller that wants the config or the step alone)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - corrupt or foreign files raise many error types
        raise ValueError(f"cannot read training checkpoint {path}: {err}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a training checkpoint ({FORMAT})")
    return state


def export_weights(
    state: dict[str, torch.Tensor],
    model_config: WanConfig,
    path: str | os.PathLike,
    *,
    train_config: dict,
    step: int,
    spec: PipelineSpec,
    latent_norm: dict,
) -> Path:
    """Write a full state dict as the project's `.safetensors` with training metadata (atomically). A training
    probe (`WanConfig.probe`) and a masked training's mask token (`WanConfig.mask_decoder`) are left out: the
    exported network is the one that samples."""
    if model_config.probe:
        model_config = model_config.replace(probe=0, probe_layer=WanConfig().probe_layer)
        state = {k: v for k, v in state.items() if not k.startswith("probe.")}
    if model_config.mask_decoder:
        model_config = model_config.replace(mask_decoder=0)
        state = {k: v for k, v in state.items() if k != "mask_token"}
    with torch.device("meta"):
        model = WanDiT(model_config)
    model.load_state_dict(state, strict=True, assign=True)
    metadata = {
        PIPELINE_METADATA_KEY: json.dumps(anchor_codec(spec, path).to_dict()),
        TRAIN_CONFIG_KEY: json.dumps(train_config),
        STEP_KEY: str(step),
        LATENT_NORM_KEY: json.dumps(latent_norm),
    }
    return save_transformer(model, path, extra_metadata=metadata)
