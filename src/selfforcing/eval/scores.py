"""The oracle scores: semantic, quality, temporal and their total, for a whole video or any window of frames.

Every dimension is a number in [0, 1] (reported x100), 1 being what real rendered videos get: each compares a
measurement with its ideal through `ramp` (1 up to a tolerance that covers the renderer's own pixel-sampling
jitter, falling linearly to 0).  A group score is the mean of its dimensions, a per-object dimension the mean
over the objects the prompt names.  The object standing for a named one is the track of its colour (a
compact blob, `presence`); a named colour that never shows is a missing object and scores 0 on every
dimension, and an object present in part of the window has its scores scaled by that part.  Frames where an
object has vanished while touching another are "hidden behind it" and not scored (`hidden`); frames where it
touches one and has lost its shape are "occluded" and left out of its size, stability and motion checks.

Semantic (prompt adherence; what `world.parse_prompt` reads from the prompt, attributes it leaves out are
not scored):
    colour      fraction of frames showing an object of the named colour
    shape       fraction of the shape-classified frames (`tracks.SHAPE_STRIDE`) showing the named shape
    size        measured circumradius vs the named size: |log ratio| <= 0.1 full, >= 0.3 zero (sizes are
                x1.5 apart); a pulse's mean radius from its fit
    count       fraction of frames showing exactly as many objects as named
    motion      `motion.consistency`: the named motion with its direction (heading, clockwise turning)
    speed       `motion.rate` vs `motion.expected_rate`: |log ratio| <= log 1.25 full, >= log 2 zero (speeds
                are x2 apart); a linear mover's speed is measured along the named heading; with no speed
                word, the nearest of the three speeds (a plausibility check)
Quality (how the frames look):
    palette     fraction of off-palette pixels (`segment`): <= 0.2 % full, >= 5 % zero
    sharpness   edge width 6 sum a(1 - a) / sum |grad a| of the objects' coverage a (a linear ramp of width w
                gives w; the renderer's one-pixel smoothstep gives 0.5 - 0.85): <= 1 full, >= 2.5 zero
    stability   relative spread of each object's radius over the frames it touches nothing (for a pulse:
                rms residual of the pulse fit): <= 1.5 % full, >= 12 % zero
Temporal (how frames follow each other):
    flicker     mean |frame difference| away from the objects: <= 1 level full, >= 8 zero
    identity    fraction of frames in which each object is present with its colour within 24 levels of its
                median colour
    smoothness  worst of three median accelerations per object: centroid (allowing a fast orbit's
                centripetal pull), relative area (allowing a fast pulse) and orientation (spin is uniform)

Total = 0.4 semantic + 0.3 quality + 0.3 temporal.  VBench's total is likewise a weighted mean of its
normalised dimension groups (quality 4 : semantic 1); we give semantics more weight because the oracle
measures it exactly, where VBench relies on noisy detectors.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from selfforcing.eval import motion as motion_checks
from selfforcing.eval import shapes
from selfforcing.eval.motion import Trajectory, expected_rate
from selfforcing.eval.tracks import MAX_SPREAD, MIN_MASS, SHAPE_STRIDE, Measurements, Track, measure
from selfforcing.world import vocab
from selfforcing.world.prompts import PartialObject, parse_prompt

TOTAL_WEIGHTS = {"semantic": 0.4, "quality": 0.3, "temporal": 0.3}
GROUPS = {
    "semantic": ("colour", "shape", "size", "count", "motion", "speed"),
    "quality": ("palette", "sharpness", "stability"),
    "temporal": ("flicker", "identity", "smoothness"),
}
DRIFT_WINDOW = 16                 # frames per drift-curve window (16 frames = 1 s)

PRESENT_FRACTION = 0.2            # of an object's typical (75th percentile) area: below it, it is absent
SIZE_TOLERANCE = (0.1, 0.3)       # |log r / r_named|
SPEED_TOLERANCE = (math.log(1.25), math.log(2))
PALETTE_TOLERANCE = (0.002, 0.05)
EDGE_WIDTH = (1.0, 2.5)
STABILITY_TOLERANCE = (0.015, 0.12)
FLICKER_LEVELS = (1.0, 8.0)
COLOUR_DRIFT_LEVELS = 24.0
JITTER_PX = 0.1                   # px / frame^2 of centroid acceleration the renderer's sampling alone causes
ACCEL_SLACK_PX = 1.0              # beyond the allowance, this much more acceleration costs everything
AREA_ACCEL_SLACK = (0.03, 0.35)   # relative area acceleration: jitter on top of a fast pulse, then zero
TURN_ACCEL = (0.05, 0.3)          # rad / frame^2 of orientation acceleration


def ramp(value: float, full: float, zero: float) -> float:
    """1 for value <= full, 0 for value >= zero, linear in between (NaN counts as 0)."""
    if not np.isfinite(value):
        return 0.0
    return float(np.clip((zero - value) / (zero - full), 0.0, 1.0))


@dataclass
class DriftCurve:
    """Scores per window of frames, to plot degradation over a long rollout.

    Attributes:
        window: nominal frames per window; starts, stops: each window's frame range (a short tail is merged
            into the window before it).
        semantic, quality, temporal, total: one score per window, in [0, 100].
        dimensions: {name: one score per window}, NaN where a window cannot measure it.
    """

    window: int
    starts: list[int]
    stops: list[int]
    semantic: list[float]
    quality: list[float]
    temporal: list[float]
    total: list[float]
    dimensions: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready (NaN -> None)."""
        dimensions = {d: [v if np.isfinite(v) else None for v in vs] for d, vs in self.dimensions.items()}
        return {"window": self.window, "starts": self.starts, "stops": self.stops, "semantic": self.semantic,
                "quality": self.quality, "temporal": self.temporal, "total": self.total, "dimensions": dimensions}


@dataclass
class VideoScores:
    """The oracle's scores of one video, all in [0, 100].

    Attributes:
        semantic, quality, temporal, total: group scores and their weighted total (`TOTAL_WEIGHTS`).
        dimensions: the dimensions behind them (see the module docstring); a dimension the prompt gives no
            handle on (e.g. size for a short prompt) is left out.
        drift: the same scores per window of frames.
    """

    semantic: float
    quality: float
    temporal: float
    total: float
    dimensions: dict[str, float]
    drift: DriftCurve | None = None

    def to_dict(self) -> dict:
        out = {"semantic": self.semantic, "quality": self.quality, "temporal": self.temporal, "total": self.total,
               "dimensions": self.dimensions}
        if self.drift is not None:
            out["drift"] = self.drift.to_dict()
        return out


def windows(num_frames: int, window: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of `window` frames covering the video; a tail under half a window joins the
    window before it."""
    if window < 2:
        raise ValueError(f"the drift window needs at least 2 frames, got {window}")
    bounds = [(s, min(s + window, num_frames)) for s in range(0, num_frames, window)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < window / 2:
        bounds[-2:] = [(bounds[-2][0], num_frames)]
    return bounds


def expected_objects(prompt: str) -> tuple[PartialObject, ...]:
    """The objects a prompt names (`world.parse_prompt`); ValueError if it names none."""
    objects = parse_prompt(prompt).objects
    if not objects:
        raise ValueError(f"cannot find an object in prompt {prompt!r}")
    return objects


# --- per-video bookkeeping -------------------------------------------------------------------------------------
def presence(track: Track) -> np.ndarray:
    """(F,) whether the object is there: one compact blob (`Track.spread` <= MAX_SPREAD) with an area of at
    least MIN_MASS and PRESENT_FRACTION of its typical area."""
    compact = track.spread <= MAX_SPREAD
    seen = track.mass[compact & (track.mass > 0)]
    typical = np.percentile(seen, 75) if len(seen) else 0.0
    return compact & (track.mass >= max(MIN_MASS, PRESENT_FRACTION * typical))


def match(expected: tuple[PartialObject, ...], tracks: dict[str, Track]) -> list[str | None]:
    """The track colour standing for each named object: its colour, or for an object named without one the
    largest unclaimed track; None when missing."""
    claimed, out = set(), []
    for obj in expected:
        colour = obj.colour if obj.colour in tracks and obj.colour not in claimed else None
        out.append(colour)
        if colour:
            claimed.add(colour)
    for i, obj in enumerate(expected):
        if obj.colour is None:
            free = [c for c in tracks if c not in claimed]
            if free:
                out[i] = max(free, key=lambda c: tracks[c].mass.sum())
                claimed.add(out[i])
    return out


def hidden(track: Track, present: np.ndarray) -> np.ndarray:
    """(F,) frames where the object is absent but was touching another object on both sides of the gap (or
    on the one side the video has): it is hidden behind that object, not gone, and is not scored there."""
    out = np.zeros(len(present), dtype=bool)
    absent = np.flatnonzero(~present)
    if len(absent) == 0:
        return out
    runs = np.split(absent, np.flatnonzero(np.diff(absent) > 1) + 1)
    for run in runs:
        sides = [track.contact[i] for i in (run[0] - 1, run[-1] + 1) if 0 <= i < len(present)]
        if sides and all(sides):
            out[run] = True
    return out


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def _shape_of(obj: PartialObject, track: Track, start: int, stop: int) -> str:
    """The named shape, else the one measured most often in the window, else circle."""
    if obj.shape:
        return obj.shape
    seen = track.shape[start:stop]
    seen = seen[seen >= 0]
    return vocab.SHAPES[np.bincount(seen).argmax()] if len(seen) else "circle"


def _smoothness(traj: Trajectory, shape: str) -> float | None:
    """Worst of the centroid, relative-area and orientation acceleration ramps (module docstring)."""
    ok = traj.valid[2:] & traj.valid[1:-1] & traj.valid[:-2]
    if not ok.any():
        return None
    w = traj.size
    p = np.stack([traj.x, traj.y], axis=1)                                        # (N, 2)
    step = (p[1:] - p[:-1] + w / 2) % w - w / 2                                   # (N-1, 2) wrapped
    accel = np.hypot(*(step[1:] - step[:-1]).T)[ok]                              # (M,) px / frame^2
    orbit_fast = 2 * math.pi * vocab.ORBIT_RATE * vocab.SPEED_FACTOR["fast"] / traj.fps
    allow = vocab.ORBIT_RADIUS * w * orbit_fast**2 + JITTER_PX                 # centripetal of a fast orbit
    scores = [ramp(float(np.median(accel)), allow, allow + ACCEL_SLACK_PX)]

    m = traj.mass
    area = (np.abs(m[2:] - 2 * m[1:-1] + m[:-2]) / np.maximum(m[1:-1], 1e-9))[ok]
    pulse_fast = 2 * math.pi * vocab.PULSE_RATE * vocab.SPEED_FACTOR["fast"] / traj.fps
    a = vocab.PULSE_AMPLITUDE
    allow = 2 * a * pulse_fast**2 / (1 - a) + AREA_ACCEL_SLACK[0]              # area ~ r^2 at a pulse's trough
    scores.append(ramp(float(np.median(area)), allow, allow + AREA_ACCEL_SLACK[1]))

    n = shapes.SYMMETRY[shape]
    if n:
        c = traj.moments[n]
        strong = traj.valid & (np.abs(c) >= motion_checks.ORIENTATION_STRENGTH * shapes.moment_strength(shape)
                               * traj.mass ** (1 + n / 2))
        both = strong[2:] & strong[1:-1] & strong[:-2]
        if both.any():
            period = 2 * math.pi / n
            turn = (np.diff(np.angle(c)) / n + period / 2) % period - period / 2   # (N-1,) rad / frame
            jerk = np.abs((np.diff(turn) + period / 2) % period - period / 2)[both]
            scores.append(ramp(float(np.median(jerk)), *TURN_ACCEL))
    return min(scores)


def _object_dimensions(obj: PartialObject, track: Track | None, present: np.ndarray | None, hide: np.ndarray | None,
                       meas: Measurements, start: int, stop: int) -> dict[str, float | None]:
    """Every per-object dimension of one named object over [start, stop), in [0, 1] (None: not scored).

    Args:
        obj: what the prompt says; track, present, hide: its track, `presence` and `hidden` (None: missing).
        meas: the video's measurements; start, stop: the window.
    """
    named = {"colour": obj.colour is not None, "shape": obj.shape is not None, "size": obj.size is not None,
             "motion": obj.motion is not None, "speed": obj.motion is not None,
             "stability": True, "identity": True, "smoothness": True}
    out: dict[str, float | None] = {k: None for k in named}
    if track is None or not present[start:stop].any():
        if track is not None and hide[start:stop].all():
            return out                                      # hidden all window long: nothing to score
        return {k: (0.0 if v else None) for k, v in named.items()}
    here, counted = present[start:stop], ~hide[start:stop]
    share = float(here[counted].mean())
    valid = here & ~track.occluded[start:stop]
    hidden_behind = valid.sum() < 3                         # partly hidden all window long: its centroid still
    if hidden_behind:                                       # moves with it, its area and size do not
        valid = here
    full_valid = np.zeros(meas.num_frames, dtype=bool)
    full_valid[start:stop] = valid
    traj = Trajectory.of(track, start, stop, full_valid, meas.size, meas.fps)
    shape = _shape_of(obj, track, start, stop)

    if named["colour"]:
        out["colour"] = share
    if named["shape"]:
        sampled = np.arange(start, stop)
        judged = (track.shape[sampled] >= 0) | ~(present | hide)[sampled]    # classified, or plainly absent
        sampled = sampled[(sampled % SHAPE_STRIDE == 0) & judged]
        if len(sampled):
            out["shape"] = float(np.mean(track.shape[sampled] == vocab.SHAPES.index(obj.shape)))
    # Size and its stability from the frames where the object touches nothing, when there are enough.
    radius = traj.radius(shape)
    alone = ~track.contact[start:stop]
    if (alone & valid).sum() >= 3:
        radius = np.where(alone, radius, np.nan)
    pulse_r0, pulse_residual = None, None
    if obj.motion == "pulse":
        _, pulse_r0, pulse_residual = motion_checks.pulse_fit(radius, meas.fps)
    if named["size"] and not hidden_behind:
        r = pulse_r0 if pulse_r0 is not None else float(np.nanmedian(radius))
        r_named = vocab.SIZE_RADIUS[obj.size] * meas.size
        out["size"] = share * ramp(abs(math.log(max(r, 1e-9) / r_named)), *SIZE_TOLERANCE)
    if named["motion"] and stop - start > 1:                # one frame shows no motion either way
        out["motion"] = share * motion_checks.consistency(traj, obj.motion, shape, obj.speed)
        measured = motion_checks.rate(traj, obj.motion, shape)
        if np.isfinite(measured):
            speeds = [obj.speed] if obj.speed else list(vocab.SPEEDS)
            gaps = [abs(math.log(max(measured, 1e-9) / expected_rate(obj.motion, s, meas.size, meas.fps)))
                    for s in speeds]
            out["speed"] = share * ramp(min(gaps), *SPEED_TOLERANCE)

    if pulse_residual is not None:
        spread = pulse_residual
    else:
        r = radius[np.isfinite(radius)]
        spread = float(r.std() / r.mean()) if len(r) > 1 else 0.0
    out["stability"] = None if hidden_behind else share * ramp(spread, *STABILITY_TOLERANCE)
    rgb = track.rgb[start:stop]
    solid = track.rgb[present & np.isfinite(track.rgb[:, 0])]
    reference = np.median(solid, axis=0) if len(solid) else np.full(3, np.nan)
    steady = np.linalg.norm(rgb - reference, axis=1) <= COLOUR_DRIFT_LEVELS     # NaN compares False
    out["identity"] = float(np.mean((here & steady)[counted]))
    # Smoothness over every frame the object shows (an occlusion's centroid shift is a rare outlier for the
    # medians, while frames picked out by occlusion would hide a jumbled order).
    shown = np.zeros(meas.num_frames, dtype=bool)
    shown[start:stop] = here
    smooth = _smoothness(Trajectory.of(track, start, stop, shown, meas.size, meas.fps), shape)
    out["smoothness"] = None if smooth is None else share * smooth
    return out


def score_window(meas: Measurements, expected: tuple[PartialObject, ...], start: int, stop: int) -> dict[str, float]:
    """All dimensions over frames [start, stop), in [0, 1]; dimensions that cannot be scored are left out.

    Args:
        meas: the video's measurements.
        expected: the named objects.
        start, stop: the window.
    """
    matched = match(expected, meas.tracks)
    present = {c: presence(t) for c, t in meas.tracks.items()}
    hide = {c: hidden(t, present[c]) for c, t in meas.tracks.items()}
    per_object = [_object_dimensions(obj, meas.tracks.get(c), present.get(c), hide.get(c), meas, start, stop)
                  for obj, c in zip(expected, matched)]
    dims: dict[str, float | None] = {}
    for name in ("colour", "shape", "size", "motion", "speed", "stability", "identity", "smoothness"):
        dims[name] = _mean([o[name] for o in per_object])

    frames = stop - start
    shown = sum((p[start:stop].astype(int) for p in present.values()), np.zeros(frames, dtype=int))
    counted = ~np.logical_or.reduce([hide[c][start:stop] for c in matched if c] + [np.zeros(frames, bool)])
    dims["count"] = float(np.mean((shown == len(expected))[counted])) if counted.any() else None
    dims["palette"] = ramp(float(meas.off_palette[start:stop].mean()), *PALETTE_TOLERANCE)
    variation = meas.edge_variation[start:stop].sum()
    width = 6 * meas.edge_blend[start:stop].sum() / variation if variation > 0 else math.inf
    dims["sharpness"] = ramp(float(width), *EDGE_WIDTH)
    if frames > 1:
        pairs = slice(start, stop - 1)
        count = meas.flicker_count[pairs].sum()
        dims["flicker"] = ramp(float(meas.flicker_sum[pairs].sum() / count), *FLICKER_LEVELS) if count else 1.0
    return {k: v for k, v in dims.items() if v is not None}


def combine(dims: dict[str, float]) -> tuple[dict[str, float], float]:
    """Group means x100 (a group with no dimension scores 0) and the weighted total."""
    groups = {g: 100 * float(np.mean([dims[d] for d in names if d in dims])) if any(d in dims for d in names)
              else 0.0 for g, names in GROUPS.items()}
    return groups, sum(TOTAL_WEIGHTS[g] * groups[g] for g in GROUPS)


def score_measurements(meas: Measurements, prompt: str, *, window: int = DRIFT_WINDOW) -> VideoScores:
    """Scores of an already measured video (see `evaluate_video`)."""
    expected = expected_objects(prompt)

    def scored(start: int, stop: int) -> tuple[dict[str, float], dict[str, float], float]:
        dims = score_window(meas, expected, start, stop)
        groups, total = combine(dims)
        return dims, groups, total

    dims, groups, total = scored(0, meas.num_frames)
    bounds = windows(meas.num_frames, window)
    per_window = [scored(s, e) for s, e in bounds]
    names = [d for names in GROUPS.values() for d in names]
    drift = DriftCurve(
        window=window, starts=[s for s, _ in bounds], stops=[e for _, e in bounds],
        semantic=[g["semantic"] for _, g, _ in per_window], quality=[g["quality"] for _, g, _ in per_window],
        temporal=[g["temporal"] for _, g, _ in per_window], total=[t for _, _, t in per_window],
        dimensions={d: [100 * w[0][d] if d in w[0] else math.nan for w in per_window] for d in names},
    )
    return VideoScores(semantic=groups["semantic"], quality=groups["quality"], temporal=groups["temporal"],
                       total=total, dimensions={d: 100 * v for d, v in dims.items()}, drift=drift)


def evaluate_video(video: np.ndarray, prompt: str, *, fps: int = vocab.FPS,
                   window: int = DRIFT_WINDOW) -> VideoScores:
    """Score one video against its prompt, from its pixels alone.

    Args:
        video: uint8 (F, H, W, 3), square frames, as `world.render` or `world.read_video` return.
        prompt: the text the video was generated from (short or detailed).
        fps: its frame rate (the world's speeds are per second).
        window: frames per drift-curve window.
    Returns:
        VideoScores, with the drift curve.
    Raises:
        ValueError: a malformed video or a prompt that names no object.
    """
    expected_objects(prompt)                                # fail on a bad prompt before the work
    return score_measurements(measure(video, fps), prompt, window=window)


def drift_curve(video: np.ndarray, prompt: str, *, fps: int = vocab.FPS, window: int = DRIFT_WINDOW) -> DriftCurve:
    """Every score per window of `window` frames (see `DriftCurve`)."""
    return evaluate_video(video, prompt, fps=fps, window=window).drift
