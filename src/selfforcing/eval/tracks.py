"""Per-frame measurements of a video: one track per palette colour, plus frame-level quality signals.

`measure` runs once per video; every score (whole video or any window of frames, see `scores`) is then a
cheap function of these per-frame arrays.  A track holds, per frame, the object's area (sum of coverage),
centroid, compactness, complex moments c_n = sum alpha (dx + i dy)^n (their phases give the orientation of
an n-fold symmetric shape), mean colour of its solid pixels, whether it touches another object and whether
it is partly hidden by one (occlusion makes area and centroid unreliable), and on every `SHAPE_STRIDE`-th
frame the shape classified by `shapes`.

Coordinates are pixels with pixel j spanning [j, j + 1) (so centres at j + 1/2, as in the renderer), x right,
y down.  Centroids are taken on the torus: a circular mean first (an object split across an edge by
wrap-around has one centre), then the arithmetic mean of the wrapped offsets around it.
"""

from dataclasses import dataclass, field

import numpy as np

from selfforcing.eval import shapes
from selfforcing.eval.segment import Segmentation, channel_sum, dilate, segment
from selfforcing.world import vocab
from selfforcing.world.vocab import SHAPES

MAX_SPREAD = 4.0         # `Track.spread` of one object (any shape < 2, a ring ~1.7); more is scattered debris
MIN_MASS = 10.0          # px^2; the smallest object (a small triangle at the bottom of a pulse) covers ~17
SOLID_COLOUR_ALPHA = 0.9 # pixels this covered give the object's colour
SHAPE_STRIDE = 4         # classify the shape on every 4th frame (4 per 16-frame drift window)
MOMENT_ORDERS = (2, 3, 4)
OCCLUDED_MISMATCH = 0.06 # template distance (`shapes`) of a touching object beyond which it is partly hidden;
                         # a free-standing real render stays under 0.035


@dataclass
class Track:
    """One palette colour's object over the video; all arrays are (F,) (rgb (F, 3)), NaN where absent.

    Attributes:
        colour: palette name.
        mass: coverage sum, pixels^2 (0 where absent).
        x, y: centroid, pixels.
        spread: 2 pi sum alpha |d|^2 / mass^2, the second moment about the centroid relative to a disc of the
            same area: 1 for a disc, under 2 for every shape, large for scattered specks of noise.
        moments: {n: complex c_n} for n in 2, 3, 4.
        rgb: mean colour of the solid pixels, levels.
        contact: touches another tracked object this frame.
        occluded: touches one and no longer matches its usual shape: area and centroid are unreliable.
        shape: index into `vocab.SHAPES` on classified frames, -1 elsewhere.
    """

    colour: str
    mass: np.ndarray
    x: np.ndarray
    y: np.ndarray
    spread: np.ndarray
    moments: dict[int, np.ndarray]
    rgb: np.ndarray
    contact: np.ndarray
    occluded: np.ndarray
    shape: np.ndarray


@dataclass
class Measurements:
    """Everything the scores need from one video.

    Attributes:
        num_frames, size, fps: F, frame side in pixels, frames per second.
        tracks: {colour: Track} for every colour with an object in some frame.
        off_palette: (F,) fraction of pixels no background/palette blend explains.
        edge_blend, edge_variation: (F,) sum of alpha (1 - alpha) and of |grad alpha| around objects; their
            ratio gives the width of the objects' edges (see `scores`).
        flicker_sum, flicker_count: (F - 1,) summed |frame difference| (levels, channel mean) over the pixels
            away from every object in both frames, and how many such pixels there were.
        background_level: mean level of the estimated background.
        gradient: (F,) mean |grad| of the frame's luminance, levels per pixel.
    """

    num_frames: int
    size: int
    fps: int
    tracks: dict[str, Track]
    off_palette: np.ndarray
    edge_blend: np.ndarray
    edge_variation: np.ndarray
    flicker_sum: np.ndarray
    flicker_count: np.ndarray
    background_level: float
    gradient: np.ndarray
    segmentation: Segmentation | None = field(default=None, repr=False)


def _wrap(d: np.ndarray, period: float) -> np.ndarray:
    """Wrap a coordinate difference into [-period / 2, period / 2)."""
    return (d + period / 2) % period - period / 2


def _centroid(idx: np.ndarray, pos: np.ndarray, a: np.ndarray, mass: np.ndarray, period: int) -> tuple:
    """Torus centroid per frame and each pixel's offset from it.

    Args:
        idx: (P,) frame of each object pixel; pos: (P,) its coordinate (pixel centre); a: (P,) its coverage.
        mass: (F,) coverage sum per frame; period: frame side.
    Returns:
        centre (F,) and offset (P,).
    """
    f = len(mass)
    theta = 2 * np.pi * pos / period
    cos, sin = np.bincount(idx, a * np.cos(theta), f), np.bincount(idx, a * np.sin(theta), f)
    coarse = (np.arctan2(sin, cos) * period / (2 * np.pi)) % period             # (F,)
    d = _wrap(pos - coarse[idx], period)                                          # (P,)
    shift = np.bincount(idx, a * d, f) / np.maximum(mass, 1e-9)
    return coarse + shift, d - shift[idx]


def _track(colour: int, support: np.ndarray, seg: Segmentation, video: np.ndarray) -> Track:
    """Measure one colour's object from its support (F, H, W) bool; contact, occlusion and shape are filled
    in later, once every track is known."""
    f, h, w = support.shape
    idx, py, px = np.nonzero(support)                                             # (P,) each
    a = seg.alpha[idx, py, px].astype(np.float64)                                 # (P,)
    mass = np.bincount(idx, a, f)                                                 # (F,)
    x, dx = _centroid(idx, px + 0.5, a, mass, w)
    y, dy = _centroid(idx, py + 0.5, a, mass, h)
    spread = 2 * np.pi * np.bincount(idx, a * (dx * dx + dy * dy), f) / np.maximum(mass, 1e-9) ** 2
    z = dx + 1j * dy                                                              # (P,)
    moments = {n: np.bincount(idx, a * (z**n).real, f) + 1j * np.bincount(idx, a * (z**n).imag, f)
               for n in MOMENT_ORDERS}
    solid = a >= SOLID_COLOUR_ALPHA
    count = np.bincount(idx[solid], minlength=f)
    rgb = np.stack([np.bincount(idx[solid], video[idx[solid], py[solid], px[solid], k], f) for k in range(3)], 1)
    rgb = rgb / np.where(count > 0, count, np.nan)[:, None]                       # (F, 3)
    absent = mass <= 0
    x[absent], y[absent] = np.nan, np.nan
    return Track(vocab.COLOURS[colour], mass, x, y, spread, moments, rgb, contact=np.zeros(f, dtype=bool),
                 occluded=np.zeros(f, dtype=bool), shape=np.full(f, -1, dtype=np.int8))


def _patches(track: Track, alpha: np.ndarray, frames: np.ndarray) -> tuple:
    """The object's coverage around its centroid on the given frames, as `shapes.template_distance` takes it:
    patch (K, S, S), offset (K, 2), area (K,), moments {n: (K,)}."""
    f, h, w = alpha.shape
    mass = track.mass[frames]                                                     # (K,)
    r = shapes.patch_radius(mass)
    x0 = np.floor(track.x[frames]).astype(int) - r                                # (K,) patch corner
    y0 = np.floor(track.y[frames]).astype(int) - r
    rows = (y0[:, None] + np.arange(2 * r + 1)) % h                               # (K, S)
    cols = (x0[:, None] + np.arange(2 * r + 1)) % w
    patch = alpha[frames[:, None, None], rows[:, :, None], cols[:, None, :]]       # (K, S, S)
    offset = np.stack([track.x[frames] - x0, track.y[frames] - y0], axis=1)       # (K, 2)
    return patch, offset, mass, {n: m[frames] for n, m in track.moments.items()}


def _shapes_and_occlusion(track: Track, alpha: np.ndarray) -> None:
    """Classify the shape on every `SHAPE_STRIDE`-th frame and find the frames where the object is partly
    hidden: touching another object and no longer matching the template of its usual shape.

    Args:
        track: filled in place (`shape`, `occluded`).
        alpha: (F, H, W) the object's coverage.
    """
    f = len(track.mass)
    big = track.mass >= MIN_MASS
    stride = np.flatnonzero(big & (np.arange(f) % SHAPE_STRIDE == 0))
    if len(stride) == 0:
        track.occluded = track.contact.copy()
        return
    best, _ = shapes.classify(*_patches(track, alpha, stride))
    free = ~track.contact[stride]
    usual = SHAPES[np.bincount(best[free] if free.any() else best).argmax()]
    touching = np.flatnonzero(track.contact & big)
    track.occluded = track.contact & ~big
    if len(touching):
        mismatch = shapes.template_distance(*_patches(track, alpha, touching), usual)
        track.occluded[touching] = mismatch > OCCLUDED_MISMATCH
    keep = ~track.occluded[stride]
    track.shape[stride[keep]] = best[keep]


def measure(video: np.ndarray, fps: int = vocab.FPS, *, keep_segmentation: bool = False) -> Measurements:
    """Segment a video and measure every per-frame signal the scores use.

    Args:
        video: uint8 (F, H, W, 3), square frames.
        fps: frames per second (speeds in the world are per second).
        keep_segmentation: keep the per-pixel labels in the result (for debugging and plots).
    """
    check_video(video)
    f, h, w, _ = video.shape
    seg = segment(video)
    tracks, supports = {}, {}
    for c, support in seg.supports.items():
        track = _track(c, support, seg, video)
        if ((track.mass >= MIN_MASS) & (track.spread <= MAX_SPREAD)).any():
            tracks[c], supports[c] = track, support

    grown = {c: dilate(s) for c, s in supports.items()}
    for c, track in tracks.items():
        others = [g for d, g in grown.items() if d != c]
        if others:
            track.contact = (grown[c] & np.logical_or.reduce(others)).any(axis=(1, 2))
        _shapes_and_occlusion(track, np.where(supports[c], seg.alpha, 0))

    # Edge statistics of the objects' coverage, two pixels around their solid cores.
    near = np.logical_or.reduce(list(grown.values())) if grown else np.zeros((f, h, w), dtype=bool)
    a = np.where(near & (seg.label >= 0), seg.alpha, 0).astype(np.float32)       # (F, H, W)
    grad = np.hypot(a - np.roll(a, 1, axis=2), a - np.roll(a, 1, axis=1))
    edge_blend, edge_variation = (a * (1 - a)).sum((1, 2)), grad.sum((1, 2))

    # Flicker: change between consecutive frames away from all objects (and their halo) in both frames.
    x = video.astype(np.float32)
    away = ~dilate(near)                                                          # (F, H, W)
    both = away[1:] & away[:-1]                                                   # (F-1, H, W)
    diff = channel_sum(np.abs(x[1:] - x[:-1])) / 3                                # (F-1, H, W)
    luma = channel_sum(x) / 3                                                     # (F, H, W)
    gradient = np.hypot(luma - np.roll(luma, 1, axis=2), luma - np.roll(luma, 1, axis=1)).mean((1, 2))
    return Measurements(
        num_frames=f, size=w, fps=fps,
        tracks={vocab.COLOURS[c]: t for c, t in sorted(tracks.items())},
        off_palette=seg.off_palette.mean((1, 2)),
        edge_blend=edge_blend, edge_variation=edge_variation,
        flicker_sum=(diff * both).sum((1, 2)), flicker_count=both.sum((1, 2)),
        background_level=float(seg.background.mean()), gradient=gradient,
        segmentation=seg if keep_segmentation else None,
    )


def check_video(video: np.ndarray) -> None:
    """Raise ValueError unless `video` is a uint8 (F, H, W, 3) array of square frames with F >= 1."""
    if not isinstance(video, np.ndarray) or video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        shape = getattr(video, "shape", None)
        raise ValueError(f"expected a uint8 numpy video of shape (F, H, W, 3), got {type(video).__name__} {shape}")
    if video.shape[0] < 1 or video.shape[1] != video.shape[2] or video.shape[1] < 8:
        raise ValueError(f"expected at least one square frame of 8+ pixels, got shape {video.shape}")
