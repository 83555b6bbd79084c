"""Rasterise a scene: signed-distance shapes, anti-aliased over one pixel, on a static background.

Each shape is a signed distance function (SDF) in the object's local frame, in units of its circumradius;
coverage is a smoothstep of the distance over one pixel, so sub-pixel motion changes the image smoothly.
All frames of a clip are rendered at once with vectorised numpy (float32), one object at a time, back to
front, each only inside the window of pixels it can reach during the clip.  Frame n depends only on the
scene and n, hence `render(s, a, n)[k] == render(s, 0, a + n)[a + k]`.
"""

from functools import lru_cache

import numpy as np
import torch

from selfforcing.world import vocab
from selfforcing.world.motion import object_state, wraps
from selfforcing.world.scene import Scene


# --- shapes: signed distance in units of the circumradius, negative inside -----------------------------------
def _sdf_box(u: np.ndarray, v: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    """Exact SDF of an axis-aligned box."""
    qx, qy = np.abs(u) - half_w, np.abs(v) - half_h
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _sdf_circle(u, v):
    return np.sqrt(u * u + v * v) - 1


def _sdf_ring(u, v):
    mid, half_width = (1 + vocab.RING_INNER) / 2, (1 - vocab.RING_INNER) / 2
    return np.abs(np.sqrt(u * u + v * v) - mid) - half_width


def _sdf_square(u, v):
    return _sdf_box(u, v, vocab.SQUARE_HALF_SIDE, vocab.SQUARE_HALF_SIDE)


def _sdf_diamond(u, v):
    a, b = vocab.DIAMOND_HALF_WIDTH, 1.0
    # Distance to the edge lines |u|/a + |v|/b = 1: exact inside, slightly short outside the tips.
    return (np.abs(u) / a + np.abs(v) / b - 1) * (a * b / np.hypot(a, b))


def _sdf_cross(u, v):
    long, thick = vocab.CROSS_HALF_LENGTH, vocab.CROSS_HALF_THICKNESS
    return np.minimum(_sdf_box(u, v, long, thick), _sdf_box(u, v, thick, long))


def _sdf_triangle(u, v):
    # Equilateral, centroid at the origin, apex up (v = -1, since y points down): the intersection of three
    # half-planes n . p <= inradius, with outward normals (0, 1) and (+-sqrt(3)/2, -1/2).
    s = np.sqrt(3) / 2
    d = np.maximum(v, np.maximum(s * u - 0.5 * v, -s * u - 0.5 * v))
    return d - vocab.TRIANGLE_INRADIUS


SDF = {"circle": _sdf_circle, "ring": _sdf_ring, "square": _sdf_square, "diamond": _sdf_diamond,
       "cross": _sdf_cross, "triangle": _sdf_triangle}


# --- backgrounds ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def background_image(name: str, size: int = vocab.FRAME_SIZE) -> np.ndarray:
    """The static background as a read-only float32 (H, W, 3) array in [0, 1]."""
    if name not in vocab.BACKGROUNDS:
        raise ValueError(f"unknown background {name!r}; expected one of {', '.join(vocab.BACKGROUNDS)}")
    colours = np.array(vocab.BACKGROUND_COLOURS[name], dtype=np.float32) / 255   # (1 or 2, 3)
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size                   # (H,) pixel centres
    rows, cols = np.meshgrid(centres, centres, indexing="ij")                     # (H, W)
    if name == "gradient":
        mix = rows[..., None]                                                     # (H, W, 1) top 0 -> bottom 1
    elif name == "checker":
        cells = np.floor(rows * vocab.PATTERN_CELLS) + np.floor(cols * vocab.PATTERN_CELLS)
        mix = (cells % 2)[..., None]
    elif name == "stripes":
        mix = (np.floor(rows * vocab.PATTERN_CELLS) % 2)[..., None]
    else:
        mix = np.zeros((size, size, 1), dtype=np.float32)
    image = colours[0] + mix * (colours[-1] - colours[0])                         # (H, W, 3)
    image = image.astype(np.float32)
    image.flags.writeable = False
    return image


# --- the renderer ---------------------------------------------------------------------------------------------
def coverage(sdf_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in pixels: 1 inside, 0 outside, a smoothstep over the
    one-pixel band centred on the edge."""
    a = np.clip(0.5 - sdf_px, 0.0, 1.0)
    return a * a * (3 - 2 * a)


def _window(centre: np.ndarray, reach: float, size: int, wrap: bool) -> slice:
    """Pixel indices along one axis that an object can touch over the clip: its centres' range widened by
    its circumradius and a margin.  Every SDF here grows at least half a pixel per pixel outside the
    circumdisc, so 3 pixels further out coverage is exactly 0 and skipping those pixels changes nothing."""
    lo, hi = float(centre.min()) - reach, float(centre.max()) + reach
    if wrap and (lo < 0 or hi > 1 or float(centre.max() - centre.min()) > 0.5):
        return slice(0, size)                                                    # crosses the seam
    margin = 3
    return slice(max(0, int(np.floor(lo * size)) - margin), min(size, int(np.ceil(hi * size)) + margin))


def _object_coverages(scene: Scene, start_frame: int, num_frames: int, size: int, fps: int):
    """Yield (object, rows, cols, alpha (F, h, w)) for each object, back to front: its anti-aliased coverage
    inside the window of pixels it can reach during the clip."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size                   # (W,) frame units
    px, py = centres[None, None, :], centres[None, :, None]                      # (1, 1, W), (1, H, 1)
    for obj in scene.objects:
        state = object_state(obj, start_frame, num_frames, fps)
        reach = float(state.radius.max())
        rows = _window(state.y, reach, size, wraps(obj))
        cols = _window(state.x, reach, size, wraps(obj))
        cx, cy, r = (a.astype(np.float32)[:, None, None] for a in (state.x, state.y, state.radius))  # (F, 1, 1)
        dx, dy = px[..., cols] - cx, py[:, rows] - cy                            # (F, 1, w), (F, h, 1)
        if wraps(obj):
            dx, dy = dx - np.round(dx), dy - np.round(dy)                        # nearest periodic copy
        cos = np.cos(state.angle).astype(np.float32)[:, None, None]              # (F, 1, 1)
        sin = np.sin(state.angle).astype(np.float32)[:, None, None]
        u = (cos * dx + sin * dy) / r                                            # (F, h, w) local, units of r
        v = (cos * dy - sin * dx) / r
        sdf_px = SDF[obj.shape](u, v) * (r * size)                               # (F, h, w) pixels
        yield obj, rows, cols, coverage(sdf_px)                                  # (F, h, w)


def render_float(scene: Scene, start_frame: int = 0, num_frames: int = vocab.CLIP_FRAMES, *,
                 size: int = vocab.FRAME_SIZE, fps: int = vocab.FPS) -> np.ndarray:
    """Render frames [start_frame, start_frame + num_frames) as float32 (F, H, W, 3) in [0, 1]."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    video = np.broadcast_to(background_image(scene.background, size), (num_frames, size, size, 3)).copy()
    for obj, rows, cols, alpha in _object_coverages(scene, start_frame, num_frames, size, fps):
        colour = np.array(vocab.PALETTE[obj.colour], dtype=np.float32) / 255     # (3,)
        window = video[:, rows, cols]                                            # (F, h, w, 3) view
        window += alpha[..., None] * (colour - window)                           # "over" compositing
    return video


def render_labels(scene: Scene, start_frame: int = 0, num_frames: int = vocab.CLIP_FRAMES, *,
                  size: int = vocab.FRAME_SIZE, fps: int = vocab.FPS) -> np.ndarray:
    """Which object each pixel of `render`'s frames shows: int8 (F, H, W), k + 1 for `scene.objects[k]` where
    its coverage is at least one half and no later (nearer) object's is, 0 for the background."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    labels = np.zeros((num_frames, size, size), dtype=np.int8)
    for k, (_, rows, cols, alpha) in enumerate(_object_coverages(scene, start_frame, num_frames, size, fps)):
        window = labels[:, rows, cols]                                           # (F, h, w) view
        window[alpha >= 0.5] = k + 1
    return labels


def render(scene: Scene, start_frame: int = 0, num_frames: int = vocab.CLIP_FRAMES, *,
           size: int = vocab.FRAME_SIZE, fps: int = vocab.FPS) -> np.ndarray:
    """Render frames [start_frame, start_frame + num_frames) of a scene.

    Args:
        scene: what to draw.
        start_frame: first frame index; any value, so clips can start late and be extended.
        num_frames: F.
        size: height = width in pixels.
        fps: frames per second (speeds are per second).
    Returns:
        uint8 array (F, H, W, 3).
    """
    video = render_float(scene, start_frame, num_frames, size=size, fps=fps)
    return (video * 255 + 0.5).astype(np.uint8)


# The two converters work in numpy: it is ~50x faster than torch's strided CPU kernels on these small arrays.
def to_tensor(video: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 tensor (F, 3, H, W) in [-1, 1]."""
    x = video.transpose(0, 3, 1, 2).astype(np.float32)                           # (F, 3, H, W)
    return torch.from_numpy(x / np.float32(127.5) - np.float32(1))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float tensor (F, 3, H, W) in [-1, 1] -> uint8 (F, H, W, 3), clamping out-of-range values."""
    x = x.detach().to("cpu", torch.float32).numpy()
    x = np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))                         # (F, H, W, 3)


def render_tensor(scene: Scene, start_frame: int = 0, num_frames: int = vocab.CLIP_FRAMES, *,
                  size: int = vocab.FRAME_SIZE, fps: int = vocab.FPS) -> torch.Tensor:
    """`render` as the model sees it: float32 (F, 3, H, W) in [-1, 1] (exactly `to_tensor(render(...))`)."""
    return to_tensor(render(scene, start_frame, num_frames, size=size, fps=fps))
