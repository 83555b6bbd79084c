"""Distribution distance: the Fréchet distance between generated and real world videos on oracle features.

Like FVD, but the feature extractor is the oracle's own measurements instead of an I3D network, so each
coordinate means something.  Per video (`video_features`, `FEATURE_NAMES`):

    colour_<c> (8)      mean object area of each palette colour per frame, as a fraction of the frame
    off_palette         fraction of off-palette pixels
    background          mean background level / 255
    count               mean number of objects per frame
    log_area            mean log of the objects' area (fraction of the frame)
    area_swing          mean over objects of the std over time of log area (pulsing)
    speed               median object speed, frame widths per second
    accel               median centroid acceleration, frame widths per second^2
    spread              mean `Track.spread` (compactness) of the objects
    edge_width          objects' edge width (see `scores`), pixels
    gradient            mean luminance gradient of the frames / 255 (edges of objects and backgrounds)
    flicker             mean |frame difference| away from the objects / 255
    contact             fraction of object-frames touching another object

Both sets are standardised with the real set's mean and std (floored at `STD_FLOOR`, so a feature that is
constant in real videos, like off_palette, still counts) before d^2 = |mu_1 - mu_2|^2
+ Tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2) (Dowson and Landau 1982; Heusel et al. 2017).  The real set
is rendered on the fly from `world.train_scenes` (or the held-out scenes), deterministic from its seed.
"""

from functools import lru_cache

import numpy as np

from selfforcing.eval.scores import presence
from selfforcing.eval.tracks import Measurements, measure
from selfforcing.world import vocab
from selfforcing.world.renderer import render
from selfforcing.world.splits import heldout_scenes, train_scenes

FEATURE_NAMES = tuple(f"colour_{c}" for c in vocab.COLOURS) + (
    "off_palette", "background", "count", "log_area", "area_swing", "speed", "accel", "spread", "edge_width",
    "gradient", "flicker", "contact",
)
STD_FLOOR = 0.01
REFERENCE_SEED = 0


def video_features(meas: Measurements) -> np.ndarray:
    """The oracle feature vector (`FEATURE_NAMES`) of one measured video: (D,) float64."""
    f, w = meas.num_frames, meas.size
    colour = np.zeros(len(vocab.COLOURS))
    log_area, swing, speed, accel, spread, contact, count = [], [], [], [], [], [], np.zeros(f)
    for name, track in meas.tracks.items():
        here = presence(track)
        count += here
        if not here.any():
            continue
        colour[vocab.COLOURS.index(name)] = np.where(here, track.mass, 0).mean() / (w * w)
        log_a = np.log(track.mass[here] / (w * w))
        log_area.append(log_a.mean())
        swing.append(log_a.std())
        spread.append(track.spread[here].mean())
        contact.append(track.contact[here].mean())
        p = np.stack([track.x, track.y], axis=1)                                 # (F, 2)
        step = (p[1:] - p[:-1] + w / 2) % w - w / 2                              # (F-1, 2) wrapped
        both = here[1:] & here[:-1]
        if both.any():
            speed.append(np.median(np.hypot(*step[both].T)) * meas.fps / w)
        three = both[1:] & both[:-1]
        if three.any():
            accel.append(np.median(np.hypot(*(step[1:] - step[:-1])[three].T)) * meas.fps**2 / w)
    variation = meas.edge_variation.sum()
    pairs = meas.flicker_count.sum()
    return np.array([
        *colour, float(meas.off_palette.mean()), meas.background_level / 255, float(count.mean()),
        _mean(log_area), _mean(swing), _mean(speed), _mean(accel), _mean(spread),
        6 * meas.edge_blend.sum() / variation if variation > 0 else 0.0,
        float(meas.gradient.mean()) / 255, float(meas.flicker_sum.sum() / pairs) / 255 if pairs else 0.0,
        _mean(contact),
    ])


def _mean(values: list[float]) -> float:
    """Mean of a possibly empty list (0 when empty: no object, no motion)."""
    return float(np.mean(values)) if values else 0.0


def frechet_distance(real: np.ndarray, fake: np.ndarray, *, std_floor: float = STD_FLOOR) -> float:
    """Fréchet distance between two sets of feature vectors, standardised by the first (real) set.

    Args:
        real: (N, D) features of real videos (N >= 2).
        fake: (M, D) features of the videos to compare (M >= 2).
        std_floor: lower bound of the per-feature scale.
    Returns:
        d^2 >= 0 (0 for identical sets).
    """
    real, fake = np.atleast_2d(np.asarray(real, np.float64)), np.atleast_2d(np.asarray(fake, np.float64))
    if len(real) < 2 or len(fake) < 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need two (N >= 2, D) feature sets of the same width, got {real.shape} and {fake.shape}")
    centre, scale = real.mean(0), np.maximum(real.std(0), std_floor)
    a, b = (real - centre) / scale, (fake - centre) / scale
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)              # (D, D)
    root_a = _sqrt_psd(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)                          # eigenvalues of S_a^1/2 S_b S_a^1/2
    trace = np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    return float(max(((mu_a - mu_b) ** 2).sum() + trace, 0.0))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


@lru_cache(maxsize=8)
def reference_features(n: int = 64, num_frames: int = vocab.CLIP_FRAMES, *, seed: int = REFERENCE_SEED,
                       split: str = "train", size: int = vocab.FRAME_SIZE, fps: int = vocab.FPS) -> np.ndarray:
    """Oracle features of `n` real rendered videos: (n, D), cached.

    Args:
        n: number of videos.
        num_frames, size, fps: rendered like the videos they are compared with.
        seed: the `train_scenes` stream (ignored for the fixed held-out set).
        split: "train" (`train_scenes(n, seed)`) or "heldout" (`heldout_scenes(n)`).
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    scenes = train_scenes(n, seed) if split == "train" else heldout_scenes(n)
    features = [video_features(measure(render(s, 0, num_frames, size=size, fps=fps), fps)) for s in scenes]
    out = np.stack(features)
    out.flags.writeable = False
    return out
