"""Train / held-out split of scenes, and the fixed held-out evaluation set.

The rule.  A scene's *split key* is the sorted list of its objects' (shape, colour, motion) triples, which is
exactly what its short caption says (size, speed, background, positions and object order are left out).
The scene is held out when the first 8 bytes of sha256(key), read little-endian, are divisible by
`HELDOUT_MODULUS`; otherwise it is a training scene.  `train_scene` rejects held-out keys, so no training
clip ever shows a held-out combination, whatever its size, speed, background or layout, and no training
caption (short or detailed, in any phrasing) describes one.  About 1 / `HELDOUT_MODULUS` of all keys are
held out.  A held-out single-object triple may still appear inside a training scene with other objects:
the held-out unit is the whole combination of objects.

The held-out evaluation set is the first `HELDOUT_SIZE` distinct held-out keys drawn by `sample_scene` from
`HELDOUT_SEED`; it is fixed forever (changing any constant here changes the benchmark).
"""

from functools import lru_cache

import numpy as np

from selfforcing.world import vocab
from selfforcing.world.captions import detailed_caption, short_caption
from selfforcing.world.scene import Scene, sample_scene, stable_hash

HELDOUT_MODULUS = 16
HELDOUT_SEED = 20250610
HELDOUT_SIZE = 64
_MAX_DRAWS = 100_000       # rejection sampling accepts 15/16 of training draws; this bound is never reached


def split_key(scene: Scene) -> str:
    """The sorted (shape, colour, motion) triples of a scene, as a canonical string."""
    return ";".join(sorted(f"{o.shape},{o.colour},{o.motion}" for o in scene.objects))


def is_heldout(scene: Scene) -> bool:
    """Whether a scene belongs to the held-out split (see the module docstring)."""
    return stable_hash(split_key(scene)) % HELDOUT_MODULUS == 0


def train_scene(seed: int, index: int, max_objects: int = vocab.MAX_OBJECTS) -> Scene:
    """The training scene number `index` of stream `seed`: `sample_scene` from a generator seeded by
    (seed, index), re-drawn until it is not held out.  Independent of how many scenes are drawn in total."""
    rng = np.random.default_rng([seed, index])
    for _ in range(_MAX_DRAWS):
        scene = sample_scene(rng, max_objects=max_objects)
        if not is_heldout(scene):
            return scene
    raise RuntimeError("could not draw a training scene")


def train_scenes(n: int, seed: int = 0, max_objects: int = vocab.MAX_OBJECTS) -> list[Scene]:
    """`n` training scenes: `train_scene(seed, i)` for i in range(n)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return [train_scene(seed, i, max_objects) for i in range(n)]


@lru_cache(maxsize=4)
def heldout_scenes(n: int = HELDOUT_SIZE) -> tuple[Scene, ...]:
    """The fixed held-out evaluation scenes: the first `n` distinct held-out split keys drawn from
    `HELDOUT_SEED` (the first `n` of a larger set are the same scenes)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng(HELDOUT_SEED)
    scenes, keys = [], set()
    for _ in range(_MAX_DRAWS * n):
        scene = sample_scene(rng)
        key = split_key(scene)
        if is_heldout(scene) and key not in keys:
            scenes.append(scene)
            keys.add(key)
            if len(scenes) == n:
                return tuple(scenes)
    raise RuntimeError(f"could not draw {n} held-out scenes")


def heldout_prompts(n: int = HELDOUT_SIZE) -> list[tuple[str, str]]:
    """(short caption, detailed caption) of each held-out scene, in order."""
    return [(short_caption(s), detailed_caption(s)) for s in heldout_scenes(n)]
