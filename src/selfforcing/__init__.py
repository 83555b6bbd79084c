"""selfforcing: autoregressive video diffusion trained by Self-Forcing (Huang et al. 2025).

The public API:

    import selfforcing
    pipe, spec = selfforcing.load_pipeline()                 # the packaged default generator
    for chunk in pipe.stream("a red circle moves right", num_frames=21, seeds=[0]):
        ...                                                  # chunk.frames: (1, T, 3, H, W) in [-1, 1]

    model = selfforcing.load_transformer("self_forcing_dmd.pt")   # Wan / diffusers / Self-Forcing / own
"""

from .config import WanConfig, get_preset, preset_names
from .diffusion.flow import FlowMatching
from .inference.loading import PipelineSpec, load_pipeline
from .inference.pipeline import Chunk, GeneratedVideo, SamplingConfig, StreamingPipeline
from .io.checkpoints import CheckpointError, describe_checkpoint, load_transformer, save_transformer
from .models.kv_cache import CrossAttnCache, KVCache
from .models.wan import WanDiT

__version__ = "0.1.0"

__all__ = [
    "WanConfig",
    "get_preset",
    "preset_names",
    "WanDiT",
    "KVCache",
    "CrossAttnCache",
    "FlowMatching",
    "SamplingConfig",
    "StreamingPipeline",
    "Chunk",
    "GeneratedVideo",
    "PipelineSpec",
    "load_pipeline",
    "load_transformer",
    "save_transformer",
    "describe_checkpoint",
    "CheckpointError",
]
