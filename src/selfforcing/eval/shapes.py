"""Shape classification by analysis by synthesis: redraw each candidate shape where the object is and compare.

For one object in one frame we know its coverage patch (alpha), its centroid, its area (the sum of alpha) and
its complex moments c_n = sum alpha (dx + i dy)^n.  For each of the six shapes s:

1. the circumradius that gives the measured area: r_s = sqrt(area / k_s), with k_s the area of shape s at
   r = 1 (integrated from the renderer's own signed distance functions);
2. the rotation: an n-fold symmetric shape turned by theta multiplies c_n by e^{i n theta}, so
   theta = (arg c_n(observed) - arg c_n(s at angle 0)) / n, refined by trying theta +- `ANGLE_STEP`;
3. the template: the renderer's anti-aliased coverage of s at that centre, radius and angle.

The shape is the one whose template is nearest in normalised L1 distance sum |a - t| / sum (a + t).  A real
render matches its own template up to the centroid's sub-pixel error; the other five shapes miss by
about 0.1 - 0.3.
"""

import math
from functools import lru_cache

import numpy as np

from selfforcing.world.renderer import SDF, coverage
from selfforcing.world.vocab import SHAPES

# Rotational symmetry order of each shape (0: round, no orientation), the n of the moment c_n that sees it.
SYMMETRY = {"circle": 0, "ring": 0, "diamond": 2, "triangle": 3, "square": 4, "cross": 4}
ANGLE_STEP = math.radians(4)
_GRID = 600                      # cells per side of the integration grid over [-1, 1]^2


@lru_cache(maxsize=1)
def shape_constants() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per shape, in `SHAPES` order, three (6,) arrays: the area at circumradius 1; the phase of c_n at
    angle 0; and the scale-free strength |c_n| / area^(1 + n/2) (0 for round shapes)."""
    t = (np.arange(_GRID) + 0.5) * (2.0 / _GRID) - 1.0                          # cell centres over [-1, 1]
    u, v = np.meshgrid(t, t)                                                     # (G, G), v down
    cell = (2.0 / _GRID) ** 2
    areas, phases, strengths = [], [], []
    for name in SHAPES:
        inside = SDF[name](u, v) < 0                                             # (G, G)
        area = inside.sum() * cell
        n = SYMMETRY[name]
        c_n = ((u + 1j * v)[inside] ** n).sum() * cell if n else 0.0
        areas.append(area)
        phases.append(np.angle(c_n))
        strengths.append(abs(c_n) / area ** (1 + n / 2) if n else 0.0)
    return np.array(areas), np.array(phases), np.array(strengths)


def moment_strength(shape: str) -> float:
    """|c_n| / area^(1 + n/2) of a perfect `shape` (n its symmetry order): how clearly c_n shows its turn."""
    return float(shape_constants()[2][SHAPES.index(shape)])


def radius_from_area(area: np.ndarray, shape: str) -> np.ndarray:
    """Circumradius (pixels) of `shape` with the given area (pixels^2)."""
    return np.sqrt(area / shape_constants()[0][SHAPES.index(shape)])


def patch_radius(area: np.ndarray) -> int:
    """Half-width of a patch that holds any shape of this area: the least compact shape's circumradius + 2."""
    return int(math.ceil(float(np.max(np.sqrt(area / shape_constants()[0].min()))))) + 2


def template_distance(patch: np.ndarray, offset: np.ndarray, area: np.ndarray, moments: dict[int, np.ndarray],
                      shape: str) -> np.ndarray:
    """Normalised L1 distance between observed patches and the best-turned template of one shape.

    Args:
        patch: (K, S, S) observed coverage, centred on the object.
        offset: (K, 2) the centroid (x, y) in patch pixel coordinates (pixel j spans [j, j + 1)).
        area: (K,) sum of the coverage, pixels^2.
        moments: {n: (K,) complex c_n} for n = 2, 3, 4.
        shape: the candidate.
    Returns:
        (K,) distances in [0, 1].
    """
    k, s = patch.shape[:2]
    areas, phases, _ = shape_constants()
    r = np.sqrt(area / areas[SHAPES.index(shape)])                               # (K,)
    n = SYMMETRY[shape]
    if n:
        theta0 = (np.angle(moments[n]) - phases[SHAPES.index(shape)]) / n        # (K,)
        theta = theta0[:, None] + ANGLE_STEP * np.array([-1.0, 0.0, 1.0])        # (K, A)
    else:
        theta = np.zeros((k, 1))
    centres = np.arange(s) + 0.5
    dx = (centres[None, :] - offset[:, :1])[:, None, None, :]                    # (K, 1, 1, S)
    dy = (centres[None, :] - offset[:, 1:])[:, None, :, None]                    # (K, 1, S, 1)
    cos, sin = np.cos(theta)[..., None, None], np.sin(theta)[..., None, None]    # (K, A, 1, 1)
    rr = r[:, None, None, None]
    u, v = (cos * dx + sin * dy) / rr, (cos * dy - sin * dx) / rr                # (K, A, S, S)
    template = coverage(SDF[shape](u, v) * rr)                                   # (K, A, S, S)
    observed = patch[:, None]
    dist = np.abs(observed - template).sum((2, 3)) / np.maximum((observed + template).sum((2, 3)), 1e-6)
    return dist.min(axis=1)


def classify(patch: np.ndarray, offset: np.ndarray, area: np.ndarray,
             moments: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The nearest shape per patch (see `template_distance` for the arguments).

    Returns:
        (K,) index into `SHAPES`, and (K, 6) distances to every shape's template.
    """
    dist = np.stack([template_distance(patch, offset, area, moments, s) for s in SHAPES], axis=1)   # (K, 6)
    return dist.argmin(axis=1), dist
