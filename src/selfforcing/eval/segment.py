"""Palette segmentation: which pixels belong to which palette colour, from the pixels alone.

The world draws every object in one of eight palette colours over a dark background (every channel <= 64),
with one pixel of anti-aliasing, so each pixel is a blend p = (1 - alpha) b + alpha c of the background b and
one palette colour c (or, where two objects touch, of two palette colours).  This module inverts that model:

1. Background b: per pixel and per chunk of frames, the mean of its darkest cluster of frames (see
   `estimate_background`).
2. Candidates: pixels further than `FOREGROUND_LEVELS` from b.  For each, alpha and the residual distance
   to the segment b -> c are solved in closed form for all eight colours; the nearest segment labels it.
3. Off-palette: a pixel off its segments that no blend explains even without knowing b: not near any
   blend of a palette colour with some dark colour, nor of two colours present in the video.
4. Objects: a colour's solid pixels (alpha >= 1/2) that have enough same-colour neighbours (this removes
   isolated pixels of noise and the one-pixel seams where two objects blend into a third colour), dilated
   by one pixel to take back the anti-aliased rim.

Arrays are numpy float32; pixel values are in levels (0 .. 255).
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from selfforcing.world import vocab

PALETTE_RGB = np.array([vocab.PALETTE[c] for c in vocab.COLOURS], dtype=np.float32)   # (8, 3)
NUM_COLOURS = len(vocab.COLOURS)
BACKGROUND_MAX = max(max(rgb) for rgbs in vocab.BACKGROUND_COLOURS.values() for rgb in rgbs)  # 64

DARK_LEVELS = BACKGROUND_MAX + 16      # "dark" for the background estimate: 16 levels of slack for codecs
BIN_LEVELS = 8                         # channel-sum bins of the background estimate
MIN_SHARE = 0.05                       # of the frames: a darker cluster is noise, not the background
BACKGROUND_CHUNK = 16                  # frames per background estimate (pooled with the chunks either side)
FOREGROUND_LEVELS = 6                  # a pixel this far from the background (any channel) may be an object
ASSIGN_LEVELS = 48                     # nearest-segment distance that still labels a pixel: under half the
                                       # 100-level gap between palette colours (vocab.PALETTE's margin)
ALPHA_MIN = 0.02                       # fainter rims are left unlabelled (colours are ambiguous near b)
PALETTE_LEVELS = 12                    # an explained pixel lies within this of a blend (mp4 round trip ~1)
SOLID_ALPHA = 0.5                      # a pixel more than half covered is "solid"
MIN_NEIGHBOURS = 4                     # solid pixels of the colour in its 3x3 block (itself included)
LUT_STEP = 4                           # levels per cell of the off-palette look-up table (+-1.5 on tolerance)
_CHUNK = 1 << 18                       # (pixel, background) pairs solved at once, bounds temporary memory


@dataclass
class Segmentation:
    """Per-pixel palette labels of a video.

    Attributes:
        background: (F, H, W, 3) estimated background behind each frame, levels.
        label: (F, H, W) int8, palette index 0..7 or -1 (background-like or unexplained).
        alpha: (F, H, W) float32 coverage of the labelled colour (0 where unlabelled).
        off_palette: (F, H, W) bool, pixels no background/palette blend explains.
        supports: {palette index: (F, H, W) bool}, each colour's object pixels (solid core + rim), for the
            colours with any object pixel.
    """

    background: np.ndarray
    label: np.ndarray
    alpha: np.ndarray
    off_palette: np.ndarray
    supports: dict[int, np.ndarray]


def channel_max(x: np.ndarray) -> np.ndarray:
    """Max over the last (RGB) axis, written out: numpy reduces a length-3 axis ~5x slower."""
    return np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])


def channel_sum(x: np.ndarray) -> np.ndarray:
    """Sum over the last (RGB) axis, written out (see `channel_max`)."""
    return x[..., 0] + x[..., 1] + x[..., 2]


def box3(mask: np.ndarray) -> np.ndarray:
    """Count of set pixels in each 3x3 block, wrapping around the frame (linear movers live on a torus).

    Args:
        mask: (F, H, W) bool or uint8.
    Returns:
        (F, H, W) uint8.
    """
    m = mask.astype(np.uint8)
    rows = m + np.roll(m, 1, axis=1) + np.roll(m, -1, axis=1)                    # (F, H, W)
    return rows + np.roll(rows, 1, axis=2) + np.roll(rows, -1, axis=2)


def dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """Dilate (F, H, W) masks by `steps` pixels with a 3x3 square."""
    for _ in range(steps):
        mask = box3(mask) > 0
    return mask


def estimate_background(x: np.ndarray) -> np.ndarray:
    """The background behind every frame of `x` (F, H, W, 3), float32 levels -> (F, H, W, 3).

    Every palette colour is brighter (in channel sum) than every background, so blending an object in only
    raises a pixel's channel sum: the darkest frames of a pixel show its background, even under the rim of
    a slow object that uncovers it in only a few frames.  Noise also makes frames darker, though, so the
    estimate is the mean of the darkest *cluster* of dark frames: the lowest pair of `BIN_LEVELS` bins of
    channel sum holding at least `MIN_SHARE` of the frames (failing that, the lowest non-empty pair).
    It is taken per chunk of `BACKGROUND_CHUNK` frames over that chunk and its two neighbours, so a video
    that degrades late keeps a clean background early; a pixel with no dark frame near a chunk takes the
    whole video's estimate, and one never dark the median of the other pixels.
    """
    f, h, w, _ = x.shape
    dark = channel_max(x) <= DARK_LEVELS                                         # (F, H, W)
    if not dark.any():                                                           # nothing dark at all
        return np.broadcast_to(np.median(x, axis=0), x.shape)
    num_bins = int(3 * DARK_LEVELS // BIN_LEVELS) + 1                            # dark pixels sum to <= 3 x 80
    bins = np.where(dark, channel_sum(x) // BIN_LEVELS, num_bins).astype(np.int64).reshape(f, h * w)
    chunk = np.arange(f) // BACKGROUND_CHUNK                                     # (F,)
    k = int(chunk[-1]) + 1
    cell = (chunk[:, None] * (h * w) + np.arange(h * w)) * (num_bins + 1) + bins  # (F, HW)
    counts = np.bincount(cell.ravel(), minlength=k * h * w * (num_bins + 1)).reshape(k, h * w, num_bins + 1)
    padded = np.concatenate([np.zeros_like(counts[:1]), counts, np.zeros_like(counts[:1])])
    spans = [(max(j - 1, 0) * BACKGROUND_CHUNK, min((j + 2) * BACKGROUND_CHUNK, f)) for j in range(k)] + [(0, f)]
    pooled = np.concatenate([padded[:-2] + padded[1:-1] + padded[2:], counts.sum(0, keepdims=True)])
    pair = pooled[..., :num_bins - 1] + pooled[..., 1:num_bins]                  # (K + 1, HW, B - 1)
    need = np.maximum(1, np.ceil(MIN_SHARE * np.array([b - a for a, b in spans])))[:, None, None]
    enough = pair >= need
    lowest = np.where(enough.any(-1), enough.argmax(-1), (pair > 0).argmax(-1))  # (K + 1, HW)

    pixels = x.reshape(f, h * w, 3)
    background = np.zeros((k + 1, h * w, 3), dtype=np.float32)
    seen = np.zeros((k + 1, h * w), dtype=bool)
    for j, (a, b) in enumerate(spans):
        chosen = (bins[a:b] >= lowest[j]) & (bins[a:b] <= lowest[j] + 1)          # (n, HW)
        count = chosen.sum(axis=0)
        total = np.einsum("npc,np->pc", pixels[a:b], chosen.astype(np.float32))  # (HW, 3)
        background[j] = total / np.maximum(count, 1)[:, None]
        seen[j] = count > 0
    overall = background[-1]
    overall[~seen[-1]] = np.median(overall[seen[-1]], axis=0)
    background = np.where(seen[:-1, :, None], background[:-1], overall)          # (K, HW, 3)
    return background.reshape(k, h, w, 3)[chunk]                                  # (F, H, W, 3)


def _solve_segments(p: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest background->palette segment of each pixel.

    With q = p - b and d_c = c - b, alpha_c = clip(q.d_c / |d_c|^2, 0, 1) and the residual is
    |q - alpha_c d_c|; everything expands into (M, 8) matrix products, so no (M, 8, 3) array is built.

    Args:
        p, b: (M, 3) pixel and background levels, float32.
    Returns:
        label (M,) int, alpha (M,), residual (M,) of the nearest segment.
    """
    label = np.zeros(len(p), dtype=np.int64)
    alpha, residual = np.zeros(len(p), np.float32), np.zeros(len(p), np.float32)
    for i in range(0, len(p), _CHUNK):
        q, bb = p[i:i + _CHUNK] - b[i:i + _CHUNK], b[i:i + _CHUNK]                # (m, 3)
        qd = q @ PALETTE_RGB.T - (q * bb).sum(1, keepdims=True)                  # (m, 8) q . d_c
        dd = (PALETTE_RGB**2).sum(1) - 2 * bb @ PALETTE_RGB.T + (bb * bb).sum(1, keepdims=True)   # |d_c|^2
        a = np.clip(qd / np.maximum(dd, 1e-6), 0, 1)
        res2 = (q * q).sum(1, keepdims=True) - a * (2 * qd - a * dd)             # (m, 8)
        best = res2.argmin(axis=1)
        rows = np.arange(len(q))
        label[i:i + _CHUNK], alpha[i:i + _CHUNK] = best, a[rows, best]
        residual[i:i + _CHUNK] = np.sqrt(np.maximum(res2[rows, best], 0))
    return label, alpha, residual


def _in_dark_blend(p: np.ndarray) -> np.ndarray:
    """Whether p = (1 - a) b' + a c for some palette c, a in [0, 1] and any dark b' (channels in
    [0, BACKGROUND_MAX]), within PALETTE_LEVELS per channel.  Independent of the background estimate.

    Per channel k the condition is a c_k - t <= p_k <= a c_k + (1 - a) B + t, two linear bounds on a;
    the pixel is explained when the intervals of the three channels meet inside [0, 1].

    Args:
        p: (M, 3) levels.
    Returns:
        (M,) bool.
    """
    t, big = PALETTE_LEVELS, float(BACKGROUND_MAX)
    explained = np.zeros(len(p), dtype=bool)
    for colour in PALETTE_RGB:
        lo, hi = np.zeros(len(p), np.float32), np.ones(len(p), np.float32)
        possible = np.ones(len(p), dtype=bool)
        for k, c in enumerate(colour.tolist()):
            if c > 0:                                                            # a <= (p + t) / c
                hi = np.minimum(hi, (p[:, k] + t) / c)
            if c > big:                                                          # a >= (p - B - t) / (c - B)
                lo = np.maximum(lo, (p[:, k] - big - t) / (c - big))
            elif c < big:                                                        # a <= (B + t - p) / (B - c)
                hi = np.minimum(hi, (big + t - p[:, k]) / (big - c))
            else:
                possible &= p[:, k] <= big + t
        explained |= possible & (lo <= hi)
    return explained


def _near_pair_blend(p: np.ndarray, c1: int, c2: int) -> np.ndarray:
    """Whether p (M, 3) lies within PALETTE_LEVELS of the segment between palette colours c1 and c2."""
    a, d = PALETTE_RGB[c1], PALETTE_RGB[c2] - PALETTE_RGB[c1]
    q = [p[:, k] - a[k] for k in range(3)]                                       # 3 x (M,), channels apart
    s = np.clip(sum(q[k] * d[k] for k in range(3)) / float(d @ d), 0, 1)        # (M,) position on the segment
    return sum((q[k] - s * d[k]) ** 2 for k in range(3)) <= PALETTE_LEVELS**2


@lru_cache(maxsize=1)
def _dark_blend_table() -> np.ndarray:
    """`_in_dark_blend` on the look-up grid: (L, L, L) bool."""
    return _in_dark_blend(_lut_colours()).reshape((256 // LUT_STEP,) * 3)


@lru_cache(maxsize=NUM_COLOURS * NUM_COLOURS)
def _pair_table(c1: int, c2: int) -> np.ndarray:
    """`_near_pair_blend` on the look-up grid: (L, L, L) bool."""
    return _near_pair_blend(_lut_colours(), c1, c2).reshape((256 // LUT_STEP,) * 3)


@lru_cache(maxsize=64)
def explained_table(colours: tuple[int, ...]) -> np.ndarray:
    """Which colours some blend explains without knowing the background: a palette colour over any dark
    background, or a blend of two of `colours` (those present in the video).  A look-up table indexed by
    levels // LUT_STEP, (L, L, L) bool, so a video's pixels are tested at the cost of a gather."""
    table = _dark_blend_table().copy()
    for i, c1 in enumerate(colours):
        for c2 in colours[i + 1:]:
            table |= _pair_table(c1, c2)
    return table


@lru_cache(maxsize=1)
def _lut_colours() -> np.ndarray:
    """Centres of the look-up table's cells, (L^3, 3) levels."""
    centres = np.arange(0, 256, LUT_STEP, dtype=np.float32) + (LUT_STEP - 1) / 2
    return np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), -1).reshape(-1, 3)


def _pair_keys(p: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pack uint8 (M, 3) pixels and backgrounds into (M,) int64 keys, 8 bits per channel."""
    p, b = p.astype(np.int64), b.astype(np.int64)
    return (p[:, 0] << 40) | (p[:, 1] << 32) | (p[:, 2] << 24) | (b[:, 0] << 16) | (b[:, 1] << 8) | b[:, 2]


def segment(video: np.ndarray) -> Segmentation:
    """Label every pixel of a video with a palette colour, its coverage, or off-palette.

    Args:
        video: uint8 (F, H, W, 3).
    """
    x = video.astype(np.float32)                                                 # (F, H, W, 3)
    f, h, w, _ = x.shape
    background = estimate_background(x)                                          # (F, H, W, 3)
    candidate = channel_max(np.abs(x - background)) > FOREGROUND_LEVELS          # (F, H, W)
    flat = np.flatnonzero(candidate)                                             # (M,)

    # Videos of the world hold few distinct (pixel, background) pairs: solve each pair once.
    b_uint8 = np.round(background.reshape(-1, 3)[flat]).astype(np.uint8)         # (M, 3)
    keys, inverse = np.unique(_pair_keys(video.reshape(-1, 3)[flat], b_uint8), return_inverse=True)
    p = ((keys[:, None] >> np.array([40, 32, 24])) & 255).astype(np.float32)     # (U, 3)
    b = ((keys[:, None] >> np.array([16, 8, 0])) & 255).astype(np.float32)
    lab, a, res = _solve_segments(p, b)                                          # (U,) each
    keep = (res <= ASSIGN_LEVELS) & (a >= ALPHA_MIN)
    label = np.full(f * h * w, -1, dtype=np.int8)
    alpha = np.zeros(f * h * w, dtype=np.float32)
    doubt = np.zeros(f * h * w, dtype=bool)                                      # off the b -> c segments
    label[flat] = np.where(keep, lab, -1)[inverse]
    alpha[flat] = np.where(keep, a, 0)[inverse]
    doubt[flat] = (res > PALETTE_LEVELS)[inverse]
    label, alpha = label.reshape(f, h, w), alpha.reshape(f, h, w)

    supports = {}
    solid = alpha >= SOLID_ALPHA
    counts = np.bincount(label[solid & (label >= 0)].astype(np.int64), minlength=NUM_COLOURS)
    for c in np.flatnonzero(counts >= MIN_NEIGHBOURS):
        mine = label == c
        core = mine & solid
        core &= box3(core) >= MIN_NEIGHBOURS
        if core.any():
            supports[int(c)] = (box3(core) > 0) & mine

    # Off-palette: in doubt (or on a background that is not dark, which garbage videos have) and explained
    # by no blend at all.
    doubt = doubt.reshape(f, h, w) | (~candidate & (channel_max(background) > DARK_LEVELS))
    cell = video // LUT_STEP                                                     # (F, H, W, 3)
    explained = explained_table(tuple(sorted(supports)))[cell[..., 0], cell[..., 1], cell[..., 2]]
    return Segmentation(background, label, alpha, doubt & ~explained, supports)
