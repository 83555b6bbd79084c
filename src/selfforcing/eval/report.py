"""Scoring a set of videos: per-video scores, their mean, the mean drift curve and the Fréchet distance.

A video folder is what `world.write_clips` writes (and what generation scripts should write): `NNNNN.mp4`
files and a `prompts.jsonl` with one JSON object per video holding its "file" and its prompt.  The prompt
scored against is the first of "prompt" (what the generator was given), "detailed", "short" that the line
has, so clips written by `write_clips` are scored against their detailed captions.
"""

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfforcing.eval.frechet import REFERENCE_SEED, frechet_distance, reference_features, video_features
from selfforcing.eval.scores import (
    DRIFT_WINDOW, GROUPS, TOTAL_WEIGHTS, VideoScores, expected_objects, score_measurements,
)
from selfforcing.eval.tracks import measure
from selfforcing.world import vocab
from selfforcing.world.io import PROMPTS_FILE, read_video

PROMPT_KEYS = ("prompt", "detailed", "short")
HEADLINE = ("total", "semantic", "quality", "temporal")
FRAME_DIMENSIONS = ("colour", "shape", "size", "count", "palette", "sharpness")   # what one frame can show
STILL_FRAMES = 8                  # a still is its frame held this long, enough for the shape classifier


def standard_error(values) -> float | None:
    """Standard error of the mean (sample standard deviation / √n) of the finite values; None under two."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


@dataclass
class Report:
    """Scores of a set of videos.

    Attributes:
        names, prompts, num_frames: per video, its name, the prompt it was scored against, its length.
        scores: per video `VideoScores` (with its drift curve).
        window: frames per drift window.
        frechet: Fréchet distance to the real reference set (None when skipped or under two videos).
        reference: how the reference set was made ({"n", "split", "seed", "num_frames"}), or None.
    """

    names: list[str]
    prompts: list[str]
    num_frames: list[int]
    scores: list[VideoScores]
    window: int = DRIFT_WINDOW
    frechet: float | None = None
    reference: dict | None = None

    def mean(self) -> dict:
        """Mean headline scores and dimensions over the videos (a dimension over the videos that have it)."""
        out = {k: float(np.mean([getattr(s, k) for s in self.scores])) for k in HEADLINE}
        names = [d for dims in GROUPS.values() for d in dims]
        out["dimensions"] = {d: float(np.mean([s.dimensions[d] for s in self.scores if d in s.dimensions]))
                             for d in names if any(d in s.dimensions for s in self.scores)}
        return out

    def standard_error(self) -> dict | None:
        """Standard error of each headline mean over the videos (sample standard deviation / √n): how far the
        means could move on another draw of prompts and seeds. None under two videos.

        Sampled videos vary a lot from one prompt and seed to the next: the committed world teacher's totals
        over 48 held-out prompts have a standard deviation of 8.4, so its mean total over 16 prompts has a
        standard error of about 2.4 points, and two such means can differ by 5 points by chance (README,
        "Evaluation")."""
        if len(self.scores) < 2:
            return None
        return {k: standard_error([float(getattr(s, k)) for s in self.scores]) for k in HEADLINE}

    def drift(self) -> dict:
        """Mean drift curve: each window index averaged over the videos long enough to have it."""
        curves = [s.drift for s in self.scores if s.drift is not None]
        longest = max(curves, key=lambda c: len(c.starts))
        out = {"window": self.window, "starts": longest.starts, "stops": longest.stops}
        for key in HEADLINE:
            out[key] = [float(np.mean([getattr(c, key)[i] for c in curves if len(c.starts) > i]))
                        for i in range(len(longest.starts))]
        out["dimensions"] = {d: [_nanmean([c.dimensions[d][i] for c in curves if len(c.starts) > i])
                                 for i in range(len(longest.starts))] for d in longest.dimensions}
        return out

    @staticmethod
    def _json_drift(drift: dict) -> dict:
        return {**drift, "dimensions": {d: [v if np.isfinite(v) else None for v in vs]
                                        for d, vs in drift["dimensions"].items()}}

    def to_dict(self) -> dict:
        """The JSON `selfforcing eval --json` prints: num_videos, weights, mean, standard_error, drift,
        frechet_distance, reference, videos (name, prompt, num_frames, total, semantic, quality, temporal,
        dimensions, drift)."""
        return {
            "num_videos": len(self.scores),
            "weights": TOTAL_WEIGHTS,
            "mean": self.mean(),
            "standard_error": self.standard_error(),
            "drift": self._json_drift(self.drift()),
            "frechet_distance": self.frechet,
            "reference": self.reference,
            "videos": [{"name": n, "prompt": p, "num_frames": f, **s.to_dict()}
                       for n, p, f, s in zip(self.names, self.prompts, self.num_frames, self.scores)],
        }


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if np.isfinite(v)]
    return float(np.mean(kept)) if kept else math.nan


def evaluate_videos(items: list[tuple[str, np.ndarray, str]], *, fps: int = vocab.FPS, window: int = DRIFT_WINDOW,
                    reference: int = 64, reference_split: str = "train", seed: int = REFERENCE_SEED) -> Report:
    """Score (name, uint8 video (F, H, W, 3), prompt) triples and, with two or more videos, their Fréchet
    distance to `reference` real videos rendered at the same length and size (0 skips it)."""
    if not items:
        raise ValueError("no videos to evaluate")
    for name, _, prompt in items:
        try:
            expected_objects(prompt)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    names, prompts, scores, features, frames = [], [], [], [], []
    for name, video, prompt in items:
        try:
            meas = measure(video, fps)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        names.append(name)
        prompts.append(prompt)
        scores.append(score_measurements(meas, prompt, window=window))
        features.append(video_features(meas))
        frames.append(int(video.shape[0]))
    report = Report(names, prompts, frames, scores, window=window)
    if reference > 0 and len(items) >= 2:
        num_frames, size = int(np.median(frames)), int(items[0][1].shape[1])
        real = reference_features(reference, num_frames, seed=seed, split=reference_split, size=size, fps=fps)
        report.frechet = frechet_distance(real, np.stack(features))
        report.reference = {"n": reference, "split": reference_split, "seed": seed, "num_frames": num_frames}
    return report


def read_video_folder(folder: str | os.PathLike, limit: int | None = None) -> list[tuple[str, np.ndarray, str]]:
    """(file name, video, prompt) for each line of a folder's prompts.jsonl (the first `limit` lines).

    Raises:
        ValueError: a missing folder or prompts.jsonl, a malformed line, a missing or unreadable video.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"video folder {str(root)!r} does not exist")
    index = root / PROMPTS_FILE
    if not index.is_file():
        raise ValueError(f"no {PROMPTS_FILE} in {str(root)!r}: expected one JSON line per video, with its "
                         f"'file' and prompt")
    items = []
    lines = [line for line in index.read_text().splitlines() if line.strip()]
    for number, line in enumerate(lines[:limit] if limit is not None else lines, start=1):
        try:
            record = json.loads(line)
            name = record["file"]
            prompt = next(record[k] for k in PROMPT_KEYS if isinstance(record.get(k), str))
            if not isinstance(name, str):
                raise TypeError
        except (json.JSONDecodeError, KeyError, StopIteration, TypeError, AttributeError):
            keys = ", ".join(PROMPT_KEYS)
            raise ValueError(f"{PROMPTS_FILE} line {number} needs a 'file' and one of {keys}") from None
        path = root / name
        if not path.is_file():
            raise ValueError(f"{PROMPTS_FILE} line {number}: video {str(path)!r} does not exist")
        try:
            video = read_video(path)
        except Exception as e:                               # imageio raises many types on a broken file
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot read video {str(path)!r}: {reason}") from None
        items.append((name, video, prompt))
    if not items:
        raise ValueError(f"{str(index)!r} lists no videos")
    return items


def evaluate_folder(folder: str | os.PathLike, *, limit: int | None = None, fps: int = vocab.FPS,
                    window: int = DRIFT_WINDOW, reference: int = 64, reference_split: str = "train",
                    seed: int = REFERENCE_SEED) -> Report:
    """Score every video of a folder against its prompt (see the module docstring for the layout)."""
    return evaluate_videos(read_video_folder(folder, limit), fps=fps, window=window, reference=reference,
                           reference_split=reference_split, seed=seed)


def format_table(report: Report) -> str:
    """A plain-text table: one row per video, the mean, its dimensions, the mean drift curve, the FD."""
    width = max(12, *(len(n) for n in report.names)) + 2
    head = f"{'video':<{width}}" + "".join(f"{k:>10}" for k in HEADLINE)
    rows = [head, "-" * len(head)]
    for name, s in zip(report.names, report.scores):
        rows.append(f"{name:<{width}}" + "".join(f"{getattr(s, k):>10.1f}" for k in HEADLINE))
    mean = report.mean()
    rows += ["-" * len(head), f"{'mean':<{width}}" + "".join(f"{mean[k]:>10.1f}" for k in HEADLINE)]
    error = report.standard_error()
    if error is not None:
        rows.append(f"{'± std. error':<{width}}" + "".join(f"{error[k]:>10.1f}" for k in HEADLINE))
    rows.append("")
    for group, dims in GROUPS.items():
        shown = "  ".join(f"{d} {mean['dimensions'][d]:.1f}" for d in dims if d in mean["dimensions"])
        rows.append(f"{group:<10}{shown}")
    weights = ", ".join(f"{v:g} {k}" for k, v in TOTAL_WEIGHTS.items())
    rows += [f"total = {weights}", ""]
    drift = report.drift()
    rows.append(f"drift (mean total per {report.window}-frame window):")
    windows = zip(drift["starts"], drift["stops"], drift["total"])
    rows.append("  " + "  ".join(f"[{a}:{b}) {t:.1f}" for a, b, t in windows))
    if report.frechet is not None:
        ref = report.reference
        rows += ["", f"Fréchet distance to {ref['n']} real {ref['split']} videos ({ref['num_frames']} frames): "
                     f"{report.frechet:.2f}"]
    return "\n".join(rows)


def evaluate_stills(items: list[tuple[str, np.ndarray, str]], *, fps: int = vocab.FPS) -> Report:
    """Score the first frame of each (name, uint8 video (F, H, W, 3), prompt) as a still picture: the frame is
    held for `STILL_FRAMES` frames and scored as a video, of which only `FRAME_DIMENSIONS` mean anything
    (`still_scores`). For image models, and for the first frames of video models, against the same prompts."""
    held = [(name, np.repeat(video[:1], STILL_FRAMES, axis=0), prompt) for name, video, prompt in items]
    return evaluate_videos(held, fps=fps, window=STILL_FRAMES, reference=0)


def _frame_scores(dimensions: dict) -> dict:
    dims = {d: dimensions[d] for d in FRAME_DIMENSIONS if d in dimensions}
    return {"frame": float(np.mean(list(dims.values()))), "dimensions": dims}


def still_scores(report: Report) -> dict:
    """The JSON `selfforcing eval --stills --json` prints: num_stills, mean ("frame": the mean of the frame
    dimensions, and each of them) and per still its name, prompt, frame score and dimensions."""
    return {
        "num_stills": len(report.scores),
        "mean": _frame_scores(report.mean()["dimensions"]),
        "stills": [{"name": n, "prompt": p, **_frame_scores(s.dimensions)}
                   for n, p, s in zip(report.names, report.prompts, report.scores)],
    }


def format_stills(report: Report) -> str:
    """A plain-text table of `still_scores`: one row per still (frame score and dimensions), then the mean."""
    scores = still_scores(report)
    width = max(12, *(len(n) for n in report.names)) + 2
    columns = ("frame", *FRAME_DIMENSIONS)
    head = f"{'still':<{width}}" + "".join(f"{k:>10}" for k in columns)

    def row(name: str, s: dict) -> str:
        values = [s["frame"]] + [s["dimensions"].get(d, math.nan) for d in FRAME_DIMENSIONS]
        return f"{name:<{width}}" + "".join(f"{v:>10.1f}" for v in values)

    rows = [head, "-" * len(head), *(row(s["name"], s) for s in scores["stills"])]
    rows += ["-" * len(head), row("mean", scores["mean"]),
             f"frame = mean of {', '.join(FRAME_DIMENSIONS)} (each frame held {STILL_FRAMES} frames)"]
    return "\n".join(rows)
