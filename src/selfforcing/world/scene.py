"""Scene parameters: typed frozen dataclasses and the random scene sampler.

A `Scene` is everything needed to render a clip and to caption it: a background and one to three
`WorldObject`s.  Discrete attributes (shape, colour, size, motion, speed) come from `vocab`; the continuous
ones (start position, phase) are drawn by `place_object` so that the object starts fully visible and, for
linear motions, stays visible over a default-length clip where its speed allows.
"""

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np

from selfforcing.world import vocab
from selfforcing.world.vocab import (
    BACKGROUNDS, COLOURS, MOTIONS, ROTATION_SYMMETRIC, SHAPES, SIZES, SPEEDS,
)


@dataclass(frozen=True)
class WorldObject:
    """One object and the rule it moves by, forever.

    Attributes:
        shape, colour, size, motion, speed: names from `vocab.SHAPES`, `COLOURS`, `SIZES`, `MOTIONS`, `SPEEDS`.
        x, y: frame units in [0, 1], y down.  The centre at t = 0, except for "orbit" where it is the centre
            of the orbit's path.
        phase: in [0, 1).  Start angle for spin and orbit, start of the cycle for pulse, heading for bounce.
    """

    shape: str
    colour: str
    size: str
    motion: str
    speed: str
    x: float = 0.5
    y: float = 0.5
    phase: float = 0.0

    def __post_init__(self):
        for field, value, allowed in (("shape", self.shape, SHAPES), ("colour", self.colour, COLOURS),
                                      ("size", self.size, SIZES), ("motion", self.motion, MOTIONS),
                                      ("speed", self.speed, SPEEDS)):
            if value not in allowed:
                raise ValueError(f"unknown {field} {value!r}; expected one of {', '.join(allowed)}")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0 and 0.0 <= self.phase < 1.0):
            raise ValueError(f"x, y must lie in [0, 1] and phase in [0, 1), got {self.x}, {self.y}, {self.phase}")

    @property
    def attributes(self) -> tuple[str, str, str, str, str]:
        """The discrete attributes (shape, colour, size, motion, speed), i.e. what a caption can say."""
        return (self.shape, self.colour, self.size, self.motion, self.speed)


@dataclass(frozen=True)
class Scene:
    """A background and the objects drawn on it, back to front."""

    objects: tuple[WorldObject, ...]
    background: str = "black"

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {', '.join(BACKGROUNDS)}")
        if not self.objects:
            raise ValueError("a scene needs at least one object")
        object.__setattr__(self, "objects", tuple(self.objects))

    def to_dict(self) -> dict:
        """A JSON-ready dict; `Scene.from_dict` inverts it exactly."""
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        """Rebuild a scene written by `to_dict` (raises ValueError on unknown attributes)."""
        return cls(objects=tuple(WorldObject(**o) for o in d["objects"]), background=d["background"])


def stable_hash(text: str) -> int:
    """A 64-bit hash of a string that, unlike `hash`, is the same in every process and on every machine."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def attribute_key(scene: Scene) -> str:
    """Canonical string of a scene's discrete attributes (what its detailed caption says), in drawing order."""
    objects = ";".join(",".join(o.attributes) for o in scene.objects)
    return f"{scene.background}|{objects}"


def allowed_motions(shape: str) -> tuple[str, ...]:
    """Motions the sampler may pick for a shape: everything but spin for rotation-symmetric shapes."""
    return tuple(m for m in MOTIONS if not (m == "spin" and shape in ROTATION_SYMMETRIC))


def _extent(obj_shape: str, radius: float, motion: str) -> tuple[float, float, float, float]:
    """Largest (left, right, top, bottom) reach from the centre over the object's whole motion."""
    if motion == "spin":
        return (radius,) * 4                                     # any angle stays inside the circumdisc
    scale = radius * (1 + vocab.PULSE_AMPLITUDE) if motion == "pulse" else radius
    return tuple(scale * e for e in vocab.SHAPE_EXTENT[obj_shape])


def place_object(rng: np.random.Generator, shape: str, colour: str, size: str, motion: str, speed: str,
                 *, horizon_s: float = (vocab.CLIP_FRAMES - 1) / vocab.FPS) -> WorldObject:
    """Draw the start position and phase for an object with the given discrete attributes.

    The object starts fully inside the frame.  A linear mover is also placed upstream of its heading so it
    stays fully visible for `horizon_s` seconds when the free room allows (fast large ones wrap earlier).
    """
    r = vocab.SIZE_RADIUS[size]
    left, right, top, bottom = _extent(shape, r, motion)
    if motion == "orbit":
        left = right = top = bottom = r + vocab.ORBIT_RADIUS     # x, y is the orbit's centre
    lo_x, hi_x, lo_y, hi_y = left, 1 - right, top, 1 - bottom
    if motion in vocab.DIRECTIONS:
        dx, dy = vocab.DIRECTIONS[motion]
        travel = vocab.LINEAR_SPEED * vocab.SPEED_FACTOR[speed] * horizon_s / math.hypot(dx, dy)
        # Shrink the start interval on the side the object heads to (never below one point).
        hi_x = max(lo_x, hi_x - travel) if dx > 0 else hi_x
        lo_x = min(hi_x, lo_x + travel) if dx < 0 else lo_x
        hi_y = max(lo_y, hi_y - travel) if dy > 0 else hi_y
        lo_y = min(hi_y, lo_y + travel) if dy < 0 else lo_y
    x, y = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    return WorldObject(shape, colour, size, motion, speed, x=float(x), y=float(y), phase=float(rng.random()))


def sample_attributes(rng: np.random.Generator, num_objects: int) -> list[tuple[str, str, str, str, str]]:
    """Draw (shape, colour, size, motion, speed) for each object, uniformly, with distinct colours."""
    colours = rng.choice(len(COLOURS), size=num_objects, replace=False)
    out = []
    for c in colours:
        shape = SHAPES[rng.integers(len(SHAPES))]
        motions = allowed_motions(shape)
        out.append((shape, COLOURS[c], SIZES[rng.integers(len(SIZES))],
                    motions[rng.integers(len(motions))], SPEEDS[rng.integers(len(SPEEDS))]))
    return out


def sample_scene(rng: np.random.Generator, max_objects: int = vocab.MAX_OBJECTS, min_objects: int = 1) -> Scene:
    """Draw a random scene: a uniform object count in [min_objects, max_objects], uniform attributes,
    distinct colours (so objects can be told apart by colour), uniform background.

    Start centres are re-drawn a few times to avoid objects starting on top of each other.
    """
    if not 1 <= min_objects <= max_objects <= len(COLOURS):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(COLOURS)}, got {min_objects}, {max_objects}")
    num_objects = int(rng.integers(min_objects, max_objects + 1))
    attributes = sample_attributes(rng, num_objects)
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    objects: list[WorldObject] = []
    for attrs in attributes:
        for _ in range(8):
            obj = place_object(rng, *attrs)
            if all(_apart(obj, other) for other in objects):
                break
        objects.append(obj)
    return Scene(tuple(objects), background)


def _apart(a: WorldObject, b: WorldObject) -> bool:
    """Whether two objects' start discs do not overlap."""
    return math.hypot(a.x - b.x, a.y - b.y) >= vocab.SIZE_RADIUS[a.size] + vocab.SIZE_RADIUS[b.size]
