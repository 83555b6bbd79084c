"""Ground truth: where each object is, how big and how turned, at any frame.

An object's state is a closed-form function of time t = frame / fps, never integrated step by step, so any
frame can be computed directly (frame 10 000 costs the same as frame 0) and a clip rendered from frame s
equals the slice [s:] of a longer clip rendered from frame 0.  The oracle evaluator reads these states.
"""

import math
from dataclasses import dataclass

import numpy as np

from selfforcing.world import vocab
from selfforcing.world.scene import Scene, WorldObject


@dataclass(frozen=True)
class ObjectState:
    """An object's state at F consecutive frames, in frame units (multiply by the frame size for pixels).

    Attributes:
        x, y: (F,) centre, y down.  Linear movers wrap, so their centre lies in [0, 1) and the object may be
            split across opposite edges; every other object lies fully inside the frame.
        radius: (F,) circumradius r: the shape fits in the disc of radius r around (x, y).
        angle: (F,) clockwise rotation in radians (0 = upright: triangles point up).
    """

    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    angle: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.x)


def frame_times(start_frame: int, num_frames: int, fps: int = vocab.FPS) -> np.ndarray:
    """Times in seconds of frames [start_frame, start_frame + num_frames), float64, (F,)."""
    if start_frame < 0 or num_frames < 0:
        raise ValueError(f"start_frame and num_frames must be >= 0, got {start_frame}, {num_frames}")
    return np.arange(start_frame, start_frame + num_frames, dtype=np.float64) / fps


def _triangle_wave(u: np.ndarray, length: float) -> np.ndarray:
    """Reflect an unbounded coordinate u into [0, length]: the position of a ball bouncing between walls."""
    if length <= 0:
        return np.zeros_like(u)
    return length - np.abs(np.mod(u, 2 * length) - length)


def _bounce_heading(phase: float) -> tuple[float, float]:
    """Unit heading of a bouncing object: one of the four diagonals, turned by up to +-15 degrees, so it
    visits the whole frame instead of sliding along one wall."""
    quadrant, frac = divmod(4 * phase, 1.0)
    theta = math.pi / 4 + math.pi / 2 * quadrant + (frac - 0.5) * math.pi / 6
    return math.cos(theta), math.sin(theta)


def object_state(obj: WorldObject, start_frame: int, num_frames: int, fps: int = vocab.FPS) -> ObjectState:
    """The state of `obj` at frames [start_frame, start_frame + num_frames).

    Args:
        obj: the object and its motion rule.
        start_frame, num_frames: which frames (any start, however late).
        fps: frames per second; speeds are per second, so this sets the motion per frame.
    Returns:
        ObjectState with (F,) float64 arrays.
    """
    t = frame_times(start_frame, num_frames, fps)                      # (F,)
    r = vocab.SIZE_RADIUS[obj.size]
    k = vocab.SPEED_FACTOR[obj.speed]
    x, y = np.full_like(t, obj.x), np.full_like(t, obj.y)
    radius, angle = np.full_like(t, r), np.zeros_like(t)
    if obj.motion in vocab.DIRECTIONS:
        dx, dy = vocab.DIRECTIONS[obj.motion]
        v = vocab.LINEAR_SPEED * k / math.hypot(dx, dy)                # per axis, frame units / s
        x, y = np.mod(obj.x + dx * v * t, 1.0), np.mod(obj.y + dy * v * t, 1.0)
    elif obj.motion == "bounce":
        left, right, top, bottom = (r * e for e in vocab.SHAPE_EXTENT[obj.shape])
        hx, hy = _bounce_heading(obj.phase)
        v = vocab.BOUNCE_SPEED * k
        x = left + _triangle_wave(obj.x - left + hx * v * t, 1 - left - right)
        y = top + _triangle_wave(obj.y - top + hy * v * t, 1 - top - bottom)
    elif obj.motion == "spin":
        angle = 2 * math.pi * (obj.phase + vocab.SPIN_RATE * k * t)
    elif obj.motion == "pulse":
        radius = r * (1 + vocab.PULSE_AMPLITUDE * np.sin(2 * math.pi * (obj.phase + vocab.PULSE_RATE * k * t)))
    elif obj.motion == "orbit":
        phi = 2 * math.pi * (obj.phase + vocab.ORBIT_RATE * k * t)    # increasing phi is clockwise (y down)
        x = obj.x + vocab.ORBIT_RADIUS * np.cos(phi)
        y = obj.y + vocab.ORBIT_RADIUS * np.sin(phi)
    return ObjectState(x=x, y=y, radius=radius, angle=angle)


def scene_states(scene: Scene, start_frame: int, num_frames: int, fps: int = vocab.FPS) -> tuple[ObjectState, ...]:
    """`object_state` for every object of the scene, in drawing order."""
    return tuple(object_state(o, start_frame, num_frames, fps) for o in scene.objects)


def wraps(obj: WorldObject) -> bool:
    """Whether the object moves on a torus (linear motions) rather than staying inside the frame."""
    return obj.motion in vocab.DIRECTIONS
