"""How far each kind of damage moves the evaluator: real world videos against corrupted copies of them.

`calibration_table` renders held-out scenes, scores them as they are and after each corruption, and returns
the mean headline scores per condition; `selfforcing eval --calibrate` prints it. A trustworthy evaluator puts
real videos near 100 and each corruption clearly lower on the score that matches it (tests/test_eval.py).

Conditions: real; noise (uniform random pixels); frozen (the first frame repeated); shuffled (frames in random
order); wrong colour (the first object repainted in a colour the scene does not have, scored against the
original prompt); wrong direction (every linear mover reversed); blur (Gaussian, σ = 1 pixel); flicker (every
other frame 16 levels brighter).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..world import detailed_caption, heldout_scenes, render, vocab
from ..world.scene import Scene
from .report import HEADLINE
from .scores import evaluate_video

__all__ = ["blur", "flicker", "recolour", "reverse", "add_noise", "CONDITIONS", "calibration_table",
           "format_calibration"]

OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up", "up_right": "down_left",
            "down_left": "up_right", "up_left": "down_right", "down_right": "up_left"}


def blur(video: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur of every frame (wrapping at the edges); (F, H, W, 3) uint8."""
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    x = video.astype(np.float32)
    x = sum(w * np.roll(x, i - r, axis=1) for i, w in enumerate(k))
    x = sum(w * np.roll(x, i - r, axis=2) for i, w in enumerate(k))
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def flicker(video: np.ndarray, levels: float = 16) -> np.ndarray:
    """Every other frame brighter by `levels`."""
    offset = (np.arange(len(video)) % 2 * levels)[:, None, None, None]
    return np.clip(video.astype(np.float32) + offset, 0, 255).astype(np.uint8)


def recolour(scene: Scene) -> Scene:
    """The first object painted in a colour no object of the scene has."""
    new = next(c for c in vocab.COLOURS if c not in {o.colour for o in scene.objects})
    return dataclasses.replace(scene, objects=(dataclasses.replace(scene.objects[0], colour=new),) + scene.objects[1:])


def reverse(scene: Scene) -> Scene:
    """Every linear mover heading the opposite way."""
    objects = tuple(dataclasses.replace(o, motion=OPPOSITE.get(o.motion, o.motion)) for o in scene.objects)
    return dataclasses.replace(scene, objects=objects)


def add_noise(video: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(video + rng.normal(0, sigma, video.shape), 0, 255).astype(np.uint8)


def _condition(name: str, scene: Scene, frames: int, rng: np.random.Generator) -> np.ndarray:
    video = render(scene, 0, frames)
    if name == "real":
        return video
    if name == "noise":
        return rng.integers(0, 256, video.shape, dtype=np.uint8)
    if name == "frozen":
        return np.repeat(video[:1], frames, axis=0)
    if name == "shuffled":
        return video[rng.permutation(frames)]
    if name == "wrong colour":
        return render(recolour(scene), 0, frames)
    if name == "wrong direction":
        return render(reverse(scene), 0, frames)
    if name == "blur":
        return blur(video)
    if name == "flicker":
        return flicker(video)
    raise ValueError(f"unknown condition {name!r}")


CONDITIONS = ("real", "noise", "frozen", "shuffled", "wrong colour", "wrong direction", "blur", "flicker")


def calibration_table(n: int = 32, frames: int = 21, seed: int = 0) -> dict[str, dict[str, float]]:
    """{condition: {total, semantic, quality, temporal}} averaged over the first `n` held-out scenes.

    "wrong direction" is averaged over the scenes that have a linear mover (others are unchanged by it)."""
    scenes = heldout_scenes(n)
    table = {}
    for name in CONDITIONS:
        rng = np.random.default_rng(seed)
        chosen = [s for s in scenes if name != "wrong direction" or any(o.motion in OPPOSITE for o in s.objects)]
        scores = [evaluate_video(_condition(name, s, frames, rng), detailed_caption(s)) for s in chosen]
        table[name] = {k: float(np.mean([getattr(sc, k) for sc in scores])) for k in HEADLINE}
        table[name]["videos"] = len(chosen)
    return table


def format_calibration(table: dict[str, dict[str, float]]) -> str:
    lines = ["| condition | total | semantic | quality | temporal | videos |", "|---|---|---|---|---|---|"]
    for name, s in table.items():
        lines.append(f"| {name} | {s['total']:.1f} | {s['semantic']:.1f} | {s['quality']:.1f} | {s['temporal']:.1f} "
                     f"| {s['videos']} |")
    return "\n".join(lines)
