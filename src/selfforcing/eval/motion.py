"""Motion checks: is a tracked object's trajectory consistent with a named motion, and how fast is it?

Every motion of the world leaves a signature in the per-frame track (`tracks.Track`):

    linear (8 headings)   moves; the displacement over a frame points within 22.5 degrees of the heading
    bounce                moves along a diagonal +- 15 degrees (the sampler's headings) and never wraps
    orbit                 moves clockwise around the centre of a fitted circle of about ORBIT_RADIUS, at an
                          orbit's angular rate (2 pi ORBIT_RATE k / fps)
    spin                  stays put; the phase of c_n (n-fold shape) turns clockwise
    pulse                 stays put; the radius sqrt(area / k_shape) swings as much as a pulse must

`consistency` gives the fraction of frames (or, for pulse, the window) that show the signature; `rate`
measures the quantity the speed word scales (pixels / frame, or radians / frame) so it can be compared with
`expected_rate`.  y points down, so an increasing angle atan2(dy, dx) is clockwise on screen.
"""

import math
from dataclasses import dataclass

import numpy as np

from selfforcing.eval import shapes
from selfforcing.eval.tracks import Track
from selfforcing.world import vocab

BOUNCE_SPREAD = math.radians(15)       # the sampler turns bounce headings up to 15 degrees off the diagonal
HEADING_SLACK = math.radians(10)       # measurement slack on top of it
VELOCITY_LAG = 2                       # frames between the two positions of a displacement (halves jitter)
ORIENTATION_STRENGTH = 0.3             # |c_n| below this fraction of the template's leaves no orientation
PULSE_GRID = 41                        # angular frequencies tried by each round of the pulse fit
PULSE_SWING = (0.25, 0.75)             # swing / `pulse_range_needed`: no credit below, full credit above


def frame_speed(unit_per_second: float, size: int, fps: int) -> float:
    """Frame units per second -> pixels per frame."""
    return unit_per_second * size / fps


def move_min(size: int, fps: int) -> float:
    """Pixels per frame below which an object counts as standing still: half the slowest translation."""
    slow = vocab.SPEED_FACTOR["slow"]
    slowest = min(vocab.LINEAR_SPEED, vocab.BOUNCE_SPEED, 2 * math.pi * vocab.ORBIT_RADIUS * vocab.ORBIT_RATE)
    return 0.5 * frame_speed(slowest * slow, size, fps)


def expected_rate(motion: str, speed: str, size: int, fps: int) -> float:
    """What `rate` should measure for a motion at a speed: px / frame (linear, bounce, orbit), rad / frame
    (spin: turning; pulse: angular frequency of the size's swing)."""
    k = vocab.SPEED_FACTOR[speed]
    if motion in vocab.DIRECTIONS:
        return frame_speed(vocab.LINEAR_SPEED * k, size, fps)
    if motion == "bounce":
        return frame_speed(vocab.BOUNCE_SPEED * k, size, fps)
    if motion == "orbit":
        omega = 2 * math.pi * vocab.ORBIT_RATE * k / fps
        return 2 * vocab.ORBIT_RADIUS * size * math.sin(omega / 2)             # chord per frame
    if motion == "spin":
        return 2 * math.pi * vocab.SPIN_RATE * k / fps
    if motion == "pulse":
        return 2 * math.pi * vocab.PULSE_RATE * k / fps
    raise ValueError(f"unknown motion {motion!r}")


def _wrap(d: np.ndarray, period: float) -> np.ndarray:
    return (d + period / 2) % period - period / 2


@dataclass
class Trajectory:
    """A track over frames [start, stop), with the frames that can be trusted (present, not occluded).

    Attributes:
        x, y, mass: (N,); moments: {n: (N,) complex}; valid: (N,) bool; size, fps: of the video.
    """

    x: np.ndarray
    y: np.ndarray
    mass: np.ndarray
    moments: dict[int, np.ndarray]
    valid: np.ndarray
    size: int
    fps: int

    @classmethod
    def of(cls, track: Track, start: int, stop: int, valid: np.ndarray, size: int, fps: int) -> "Trajectory":
        """The window [start, stop) of a track; `valid` is (F,) over the whole video."""
        s = slice(start, stop)
        return cls(track.x[s], track.y[s], track.mass[s], {n: m[s] for n, m in track.moments.items()},
                   valid[s], size, fps)

    def displacement(self, lag: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame velocity over `lag` frames, wrapped on the torus: (M, 2) px / frame, and (M,) whether
        the raw (unwrapped) step crossed an edge, for the M frame pairs valid at both ends."""
        lag = max(1, min(lag, len(self.x) - 1))
        ok = self.valid[lag:] & self.valid[:-lag]
        raw = np.stack([self.x[lag:] - self.x[:-lag], self.y[lag:] - self.y[:-lag]], axis=1)[ok]   # (M, 2)
        wrapped = _wrap(raw, self.size)
        return wrapped / lag, (np.abs(raw - wrapped) > self.size / 4).any(axis=1)

    def unwrapped(self) -> np.ndarray:
        """(N, 2) positions with wrap-around undone (steps between valid frames wrapped), NaN where invalid."""
        out = np.full((len(self.x), 2), np.nan)
        idx = np.flatnonzero(self.valid)
        if len(idx):
            pts = np.stack([self.x[idx], self.y[idx]], axis=1)                    # (V, 2)
            steps = _wrap(np.diff(pts, axis=0), self.size)
            out[idx] = pts[0] + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
        return out

    def radius(self, shape: str) -> np.ndarray:
        """(N,) circumradius in pixels if the object is `shape`; NaN on invalid frames."""
        return np.where(self.valid, shapes.radius_from_area(self.mass, shape), np.nan)

    def turning(self, shape: str, lag: int = VELOCITY_LAG) -> np.ndarray:
        """Clockwise turning of `shape` (n-fold symmetric, n > 0), rad / frame, over `lag` frames, on the
        frames where the object shows an orientation: (M,).  The phase of c_n turns n times as fast."""
        lag = max(1, min(lag, len(self.x) - 1))
        n = shapes.SYMMETRY[shape]
        c = self.moments[n]
        strong = np.abs(c) >= ORIENTATION_STRENGTH * shapes.moment_strength(shape) * self.mass ** (1 + n / 2)
        ok = self.valid & strong
        ok = ok[lag:] & ok[:-lag]
        phase = np.angle(c)
        return (_wrap(phase[lag:] - phase[:-lag], 2 * math.pi) / (n * lag))[ok]


def _orbiting(traj: Trajectory, still: float) -> float:
    """Orbit check: fit a circle to the window's positions (Kasa's algebraic fit); the object must move, turn
    clockwise around the centre at an orbit's angular rate (half the slowest to twice the fastest), on a
    circle of about the world's orbit radius (half to twice)."""
    p = traj.unwrapped()                                                         # (N, 2)
    ok = np.isfinite(p[:, 0])
    if ok.sum() < 4:
        return 0.0
    x, y = p[ok, 0], p[ok, 1]
    (d, e, f), *_ = np.linalg.lstsq(np.stack([x, y, np.ones_like(x)], 1), -(x * x + y * y), rcond=None)
    centre = np.array([-d / 2, -e / 2])
    radius = math.sqrt(max(centre @ centre - f, 0.0))
    orbit_radius = vocab.ORBIT_RADIUS * traj.size
    if not orbit_radius / 2 <= radius <= 2 * orbit_radius:
        return 0.0
    lag = max(1, min(VELOCITY_LAG, len(p) - 1))
    phi = np.arctan2(p[:, 1] - centre[1], p[:, 0] - centre[0])                   # (N,) NaN where invalid
    turn = _wrap(phi[lag:] - phi[:-lag], 2 * math.pi) / lag                      # (N - lag,) clockwise > 0
    step = np.hypot(*(p[lag:] - p[:-lag]).T) / lag
    both = np.isfinite(turn)
    if not both.any():
        return 0.0
    lo = 0.5 * 2 * math.pi * vocab.ORBIT_RATE * vocab.SPEED_FACTOR["slow"] / traj.fps
    hi = 2.0 * 2 * math.pi * vocab.ORBIT_RATE * vocab.SPEED_FACTOR["fast"] / traj.fps
    return float(np.mean((step[both] >= still) & (turn[both] >= lo) & (turn[both] <= hi)))


def _closing(passed: np.ndarray) -> np.ndarray:
    """Forgive isolated failures between two passes (a bounce's reflection frame)."""
    out = passed.copy()
    out[1:-1] |= passed[:-2] & passed[2:]
    return out


def _diagonal_offset(v: np.ndarray) -> np.ndarray:
    """Angle between each displacement (M, 2) and its nearest diagonal, in [0, pi / 4]."""
    heading = np.arctan2(v[:, 1], v[:, 0])
    return np.abs(heading % (math.pi / 2) - math.pi / 4)


def pulse_fit(radius: np.ndarray, fps: int) -> tuple[float, float, float]:
    """Fit r(t) = a + b sin(omega t) + c cos(omega t): linear least squares for each omega of a log grid
    spanning the world's pulse rates (x3 either way), then a finer grid around the best.

    Args:
        radius: (N,) pixels, NaN on frames to ignore.
        fps: frames per second (sets the rates).
    Returns:
        omega (rad / frame), the mean radius a (pixels), and the rms residual relative to a.
    """
    t = np.flatnonzero(np.isfinite(radius)).astype(np.float64)
    r = radius[np.isfinite(radius)].astype(np.float64)
    if len(r) < 4:
        return 0.0, float(r.mean()) if len(r) else 0.0, 1.0
    lo, hi = expected_rate("pulse", "slow", 1, fps) / 3, expected_rate("pulse", "fast", 1, fps) * 3
    omega = np.geomspace(lo, hi, PULSE_GRID)
    for _ in range(2):                                                           # coarse, then fine
        x = np.stack([np.ones((len(omega), len(t))), np.sin(omega[:, None] * t), np.cos(omega[:, None] * t)],
                     axis=-1)                                                    # (W, N, 3)
        gram = x.transpose(0, 2, 1) @ x + 1e-9 * np.eye(3)                       # (W, 3, 3)
        beta = np.linalg.solve(gram, (x.transpose(0, 2, 1) @ r)[..., None])[..., 0]   # (W, 3)
        err = (((x @ beta[..., None])[..., 0] - r) ** 2).mean(-1)               # (W,)
        best = int(err.argmin())
        found = float(omega[best])
        step = omega[1] / omega[0]
        omega = found * np.geomspace(1 / step, step, PULSE_GRID)
    a = float(beta[best, 0])
    return found, a, float(np.sqrt(err[best]) / max(abs(a), 1e-9))


def pulse_range_needed(num_frames: int, speed: str | None, fps: int) -> float:
    """The smallest relative swing (max - min) / mean of the radius a real pulse shows in any `num_frames`
    window: the stretch around a peak of the sine, at the given speed (slow when unknown)."""
    omega = expected_rate("pulse", speed or "slow", 1, fps)
    sweep = min(math.pi, omega * (num_frames - 1) / 2)
    a = vocab.PULSE_AMPLITUDE
    return a * (1 - math.cos(sweep)) / (1 + a)


def consistency(traj: Trajectory, motion: str, shape: str | None, speed: str | None) -> float:
    """Fraction of the window in which the trajectory shows `motion` (see the module docstring), in [0, 1].

    Args:
        traj: the object over the window.
        motion: the expected motion.
        shape: the expected shape (picks n for spin and the area factor for pulse), None if unknown.
        speed: the expected speed word, None if unknown (only pulse uses it, for the swing it must show).
    """
    still = move_min(traj.size, traj.fps)
    v, wrapped = traj.displacement(VELOCITY_LAG)
    if len(v) == 0:
        return 0.0
    speed_px = np.hypot(v[:, 0], v[:, 1])
    if motion in vocab.DIRECTIONS:
        d = np.array(vocab.DIRECTIONS[motion], dtype=np.float64)
        cos = (v @ d) / np.maximum(speed_px * np.linalg.norm(d), 1e-9)
        return float(np.mean((speed_px >= still) & (cos >= math.cos(math.pi / 8))))
    if motion == "bounce":
        ok = (speed_px >= still) & (_diagonal_offset(v) <= BOUNCE_SPREAD + HEADING_SLACK) & ~wrapped
        return float(np.mean(_closing(ok)))
    if motion == "orbit":
        return _orbiting(traj, still)
    standing = speed_px < still
    if motion == "spin":
        n = shapes.SYMMETRY.get(shape or "", 0)
        if n == 0:                        # a round shape spins invisibly: standing still is all it can show
            return float(np.mean(standing))
        turn = traj.turning(shape)
        lo = 0.5 * expected_rate("spin", "slow", traj.size, traj.fps)
        turning = float(np.mean(turn >= lo)) if len(turn) else 0.0
        return float(np.mean(standing)) * turning
    if motion == "pulse":
        r = traj.radius(shape or "circle")
        r = r[np.isfinite(r)]
        if len(r) < 2:
            return 0.0
        swing = (r.max() - r.min()) / r.mean()
        lo, hi = (f * pulse_range_needed(len(traj.x), speed, traj.fps) for f in PULSE_SWING)
        return float(np.mean(standing)) * float(np.clip((swing - lo) / (hi - lo), 0, 1))
    raise ValueError(f"unknown motion {motion!r}")


def rate(traj: Trajectory, motion: str, shape: str | None) -> float:
    """The measured counterpart of `expected_rate` over the window (0 when nothing can be measured).  A
    linear mover's speed is taken along its named heading, so moving the wrong way is no speed at all."""
    if motion in vocab.DIRECTIONS:
        v, _ = traj.displacement(VELOCITY_LAG)
        d = np.array(vocab.DIRECTIONS[motion], dtype=np.float64)
        return float(np.median(v @ d / np.linalg.norm(d))) if len(v) else 0.0
    if motion in ("bounce", "orbit"):
        v, _ = traj.displacement(VELOCITY_LAG)
        return float(np.median(np.hypot(v[:, 0], v[:, 1]))) if len(v) else 0.0
    if motion == "spin":
        n = shapes.SYMMETRY.get(shape or "", 0)
        if n == 0:
            return float("nan")           # invisible: not scored
        turn = traj.turning(shape)
        return float(np.median(turn)) if len(turn) else 0.0
    if motion == "pulse":
        if consistency(traj, "pulse", shape, None) <= 0:
            return 0.0
        return pulse_fit(traj.radius(shape or "circle"), traj.fps)[0]
    raise ValueError(f"unknown motion {motion!r}")
