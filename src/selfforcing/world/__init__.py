"""A synthetic text-to-video world: procedurally rendered clips small enough to train every stage on a CPU.

One to three coloured shapes move by closed-form rules (linear with wrap-around, bounce, spin, pulse, orbit)
over a dark background, at 16 fps and 64x64 pixels by default.  Every clip is deterministic from its
`Scene`, can start at any frame and be extended forever, and comes with captions at two levels of detail;
`motion.object_state` gives the ground truth an oracle evaluator needs.

Files, one concept each: `vocab` (attribute vocabularies and their physical meaning), `scene` (dataclasses,
sampling), `motion` (ground-truth states), `renderer` (rasteriser), `captions`, `prompts` (parser, extender),
`splits` (train / held-out), `dataset`, `io` (mp4 + prompts.jsonl), `cli`.
"""

from selfforcing.world.captions import caption_variant, detailed_caption, short_caption
from selfforcing.world.dataset import LABEL_GROUPS, WorldDataConfig, WorldDataset, collate_world, label_maps
from selfforcing.world.io import Clip, read_clips, read_video, write_clips, write_video
from selfforcing.world.motion import ObjectState, object_state, scene_states
from selfforcing.world.prompts import (
    DEFAULTS, ParsedPrompt, PartialObject, extend_prompt, parse_prompt, scene_from_prompt,
)
from selfforcing.world.renderer import render, render_float, render_labels, render_tensor, to_tensor, to_uint8
from selfforcing.world.scene import Scene, WorldObject, attribute_key, sample_scene
from selfforcing.world.splits import (
    HELDOUT_SIZE, heldout_prompts, heldout_scenes, is_heldout, split_key, train_scene, train_scenes,
)
from selfforcing.world.vocab import (
    BACKGROUNDS, CLIP_FRAMES, COLOURS, FPS, FRAME_SIZE, MOTIONS, PALETTE, SHAPES, SIZES, SPEEDS,
)

__all__ = [
    "BACKGROUNDS", "CLIP_FRAMES", "COLOURS", "DEFAULTS", "FPS", "FRAME_SIZE", "HELDOUT_SIZE", "LABEL_GROUPS",
    "MOTIONS", "PALETTE", "SHAPES", "SIZES", "SPEEDS", "Clip", "ObjectState", "ParsedPrompt", "PartialObject",
    "Scene", "WorldDataConfig", "WorldDataset", "WorldObject", "attribute_key", "caption_variant", "collate_world",
    "detailed_caption", "extend_prompt", "heldout_prompts", "heldout_scenes", "is_heldout", "label_maps",
    "object_state", "parse_prompt", "read_clips", "read_video", "render", "render_float", "render_labels",
    "render_tensor", "sample_scene", "scene_from_prompt", "scene_states", "short_caption", "split_key", "to_tensor",
    "to_uint8", "train_scene", "train_scenes", "write_clips", "write_video",
]
