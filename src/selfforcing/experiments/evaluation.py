"""Scoring one trained generator for the comparison: quality at the training length, speed, long-video drift.

Three measurements per generator, all with the oracle evaluator (`selfforcing.eval`):

1. **training length**: the first `num_prompts` held-out prompts rolled out at the training length (21 latent
   frames = 21 pixel frames with the world's codec), scored for total / quality / semantic / temporal;
2. **speed**: one training-length video streamed chunk by chunk, frames per second of generation (text encoding
   and decoding included, checkpoint loading excluded), the median of 3 runs after a warm-up;
3. **long videos**: `long_prompts` prompts rolled out to `long_factor` x the training length with a rolling
   KV cache (a window of the training length, rounded down to whole blocks, and one block of sink frames), and
   the drift curve: the total over each training-length window of frames. The table reports the first window
   (1x, before the cache rolls) and the windows ending at half and at the full long length (5x and 10x by
   default), and the change from the first to the last, video by video.

Multi-step generators (the TF / DF baselines: tens of guided steps per chunk) are orders of magnitude slower
than the 4-step distilled ones, so the long-video rollouts are capped by a time budget estimated from the
measured speed: fewer prompts, or none with the reason recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from ..eval.cli import generate_heldout
from ..eval.report import HEADLINE, evaluate_videos
from ..inference.loading import load_pipeline, make_text_encoder, read_pipeline_spec
from ..io.checkpoints import CONFIG_KEY
from ..training.checkpoint import STEP_KEY, atomic_write
from ..world import extend_prompt, heldout_prompts

__all__ = ["EvalSettings", "evaluate_generator", "rolling_cache", "drift_checkpoints", "exported_step",
           "file_sha256"]

log = logging.getLogger(__name__)

# The `EvalSettings` fields that only the long videos read: they do not change a bidirectional teacher's scores.
LONG_VIDEO_SETTINGS = ("long_factor", "long_prompts", "long_budget_s")


@dataclass(frozen=True)
class EvalSettings:
    """How each generator is scored.

    Attributes:
        num_prompts: held-out prompts rolled out at the training length.
        long_factor: long videos are this many times the training length.
        long_prompts: held-out prompts rolled out as long videos.
        long_budget_s: at most this many seconds of long-video generation per generator, estimated from the
            measured speed; prompts are dropped to fit (all of them: the long evaluation is skipped). Only the
            many-step TF / DF baselines reach it: on the 2-core CPU 3 to 6 of their 8 videos fit at the default
            (docs/comparison.md), the 4-step generators roll out all 8 in 60 to 90 s.
        window: frames per drift-curve window; None: the training length (so the windows end exactly at
            every multiple of it).
        reference: real videos for the Fréchet distance at the training length (0 skips it).
        seed: generation seed of the first prompt (+1 per prompt).
        device: torch device of generation.
        batch_size: prompts generated together (the same videos up to rounding, faster on a CPU); the speed is
            measured on one video at a time regardless.
    """

    num_prompts: int = 16
    long_factor: int = 10
    long_prompts: int = 8
    long_budget_s: float = 240.0
    window: int | None = None
    reference: int = 64
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.num_prompts < 1 or self.long_factor < 1 or self.long_prompts < 0 or self.batch_size < 1:
            raise ValueError("num_prompts, long_factor and batch_size must be positive, long_prompts non-negative")
        if self.long_budget_s < 0 or self.seed < 0:
            raise ValueError("long_budget_s and seed must be non-negative")
        if self.window is not None and self.window < 2:
            raise ValueError(f"the drift window needs at least 2 frames, got {self.window}")
        if self.reference < 0 or self.reference == 1:
            raise ValueError(f"reference must be 0 or at least 2, got {self.reference}")


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def exported_step(path: str | Path) -> int | None:
    """The training step recorded in weights exported by the trainer, None if there are none."""
    path = Path(path)
    if not path.is_file():
        return None
    step = _metadata(path).get(STEP_KEY)
    return int(step) if step is not None else None


def rolling_cache(frames_per_block: int, train_frames: int) -> dict:
    """WanConfig overrides of the long rollouts: a window of the training length in whole blocks, one block of
    sink frames (3 chunk-wise, 1 frame-wise)."""
    window = train_frames // frames_per_block * frames_per_block
    if window < 2 * frames_per_block:
        raise ValueError(f"a rolling window of {train_frames} frames cannot hold a sink block and a block of "
                         f"{frames_per_block} frames")
    return {"local_attn_size": window, "sink_size": frames_per_block}


def drift_checkpoints(long_factor: int) -> tuple[int, ...]:
    """Multiples of the training length at which the table reads the drift curve: the first window (the level
    the video starts at, against which the rest is drift), half way and the end."""
    return tuple(sorted({1, max(1, long_factor // 2), long_factor}))


SPEED_REPEATS = 3                      # timed streaming runs after the warm-up; the median is reported


@lru_cache(maxsize=4)
def _text_encoder(name: str, max_length: int, dim: int):
    """One text encoder per kind, shared by every generator (MiniLM takes seconds to load)."""
    if name == "hash":                                                  # the tiny models' stand-in
        from ..training.data import HashTextEncoder

        return HashTextEncoder(dim, max_length)
    return make_text_encoder(name, max_length)


def _finite(value):
    return value if value is None or math.isfinite(value) else None


def _stream_speed(checkpoint: Path, prompt: str, num_frames: int, settings: EvalSettings, encoder,
                  repeats: int = SPEED_REPEATS) -> dict:
    """Frames per second of streaming one video of `num_frames` latent frames: one untimed warm-up run, then the
    median of `repeats` timed runs (a single cold run varies by tens of percent on a shared CPU)."""
    pipe, _ = load_pipeline(checkpoint, device=settings.device, text_encoder=encoder)
    cuda = torch.device(settings.device).type == "cuda"
    runs = []
    for _ in range(repeats + 1):
        start, first, frames = time.perf_counter(), None, 0
        for chunk in pipe.stream(prompt, num_frames=num_frames, seeds=[settings.seed]):
            if cuda:
                torch.cuda.synchronize()
            first = first if first is not None else time.perf_counter() - start
            frames += chunk.frames.shape[1]
        runs.append((time.perf_counter() - start, first))
    timed = sorted(runs[1:])                                            # the warm-up run is left out
    seconds, first = timed[len(timed) // 2]
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds, "first_chunk_s": first,
            "runs": len(timed), "torch_threads": torch.get_num_threads(), "device": settings.device}


def _long_videos(checkpoint: Path, train_frames: int, block: int, fps_measured: float, window: int,
                 settings: EvalSettings, encoder) -> dict:
    """Long rollouts with a rolling cache and their drift curve (or why they were skipped)."""
    frames = settings.long_factor * train_frames
    cache = rolling_cache(block, train_frames)
    out = {"frames": frames, "factor": settings.long_factor, "window": window, **cache,
           "requested": settings.long_prompts}
    per_video_s = frames / fps_measured
    fit = min(settings.long_prompts, int(settings.long_budget_s // per_video_s))
    if fit == 0:
        reason = ("no long prompts requested" if settings.long_prompts == 0 else
                  f"one {frames}-frame video takes about {per_video_s:.0f} s at the measured {fps_measured:.3g} "
                  f"frames/s, over the long-video budget of {settings.long_budget_s:.0f} s")
        log.warning("%s: long videos skipped: %s", checkpoint, reason)
        return {**out, "num_videos": 0, "skipped": reason}
    if fit < settings.long_prompts:
        out["note"] = (f"{fit} of {settings.long_prompts} prompts: about {per_video_s:.0f} s a video at "
                       f"{fps_measured:.3g} frames/s, budget {settings.long_budget_s:.0f} s")
        log.warning("%s: %s", checkpoint, out["note"])
    start = time.perf_counter()
    items, fps = generate_heldout(str(checkpoint), fit, frames, settings.seed, settings.device, overrides=cache,
                                  text_encoder=encoder, batch_size=settings.batch_size)
    report = evaluate_videos(items, fps=fps, window=window, reference=0)
    drift = report.drift()
    curve = {"starts": drift["starts"], "stops": drift["stops"], **{k: drift[k] for k in HEADLINE}}
    at, per_video_at = {}, {}
    for k in drift_checkpoints(settings.long_factor):
        ends = [i for i, stop in enumerate(drift["stops"]) if stop == k * train_frames]
        at[f"{k}x"] = drift["total"][ends[0]] if ends else None
        per_video_at[f"{k}x"] = [float(s.drift.total[ends[0]]) for s in report.scores] if ends else None
    per_video_drift = [[float(t) for t in s.drift.total] for s in report.scores]
    return {**out, "num_videos": fit, "drift": curve, "at": at, "per_video_at": per_video_at,
            "per_video_drift": per_video_drift,
            "mean": {k: report.mean()[k] for k in HEADLINE}, "skipped": None, "wall_s": time.perf_counter() - start}


def evaluate_generator(checkpoint: str | Path, settings: EvalSettings) -> dict:
    """Score an exported causal generator (see the module docstring), or a bidirectional teacher at the training
    length only (its "speed" is None and its "long" skipped, with the reason).

    Returns:
        {"train_length": {frames, num_videos, total, quality, semantic, temporal, per_video, dimensions, frechet,
                          wall_s},
         "speed": {frames, seconds, fps, first_chunk_s, runs, torch_threads, device},
         "long": {frames, factor, window, local_attn_size, sink_size, num_videos, drift, at, per_video_at,
                  per_video_drift, skipped, ...},
         "wall_s"}.
        `per_video` holds each held-out video's headline scores, `per_video_at` each long video's total at the
        drift checkpoints and `per_video_drift` its whole drift curve (total per window), in prompt order: every
        generator sees the same prompts and seeds, so two generators' scores pair up video by video.
    """
    checkpoint = Path(checkpoint)
    spec = read_pipeline_spec(checkpoint)
    if spec is None:
        raise ValueError(f"{checkpoint} records no pipeline spec: export it with `selfforcing train`")
    model = json.loads(_metadata(checkpoint)[CONFIG_KEY])
    encoder = _text_encoder(spec.text_encoder, spec.text_max_length, model["text_dim"])
    started = time.perf_counter()

    items, fps = generate_heldout(str(checkpoint), settings.num_prompts, None, settings.seed, settings.device,
                                  text_encoder=encoder, batch_size=settings.batch_size)
    train_frames = int(items[0][1].shape[0])                                # pixel frames of the training length
    window = settings.window or train_frames
    report = evaluate_videos(items, fps=fps, window=window, reference=settings.reference)
    mean = report.mean()
    short = {"frames": train_frames, "num_videos": len(items), **{k: mean[k] for k in HEADLINE},
             "per_video": {k: [float(getattr(s, k)) for s in report.scores] for k in HEADLINE},
             "dimensions": mean["dimensions"], "frechet": _finite(report.frechet),
             "wall_s": time.perf_counter() - started}

    if not model.get("causal", True):                     # the teacher: one clip at once, nothing to stream
        reason = "a bidirectional model generates its whole clip at once: no streaming, no long videos"
        return {"train_length": short, "speed": None, "long": {"num_videos": 0, "skipped": reason},
                "wall_s": time.perf_counter() - started}
    short_prompt = heldout_prompts(1)[0][0]
    prompt = extend_prompt(short_prompt) if spec.prompt_extender == "world" else short_prompt
    speed = _stream_speed(checkpoint, prompt, spec.train_frames, settings, encoder)
    long = _long_videos(checkpoint, train_frames, model["num_frame_per_block"], speed["fps"], window, settings,
                        encoder)
    return {"train_length": short, "speed": speed, "long": long, "wall_s": time.perf_counter() - started}


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's contents (which weights were scored, or reused)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def evaluate_cached(checkpoint: str | Path, settings: EvalSettings, cache: str | Path, *,
                    reuse_from: Sequence[str | Path] = (), ignore: Sequence[str] = ()) -> tuple[dict, bool]:
    """`evaluate_generator`, reusing `cache` (a JSON file) when it holds the scores of the same weights (same
    file contents) under the same settings. Returns (scores, whether they were reused).

    Args:
        reuse_from: more caches to look in, read only (e.g. the ones committed beside a run's checkpoints); the
            first that matches is copied into `cache`.
        ignore: `EvalSettings` fields that do not change these scores, left out of the match (a bidirectional
            teacher is scored at the training length only, so the long-video settings do not touch its scores).
    """
    cache = Path(cache)
    used = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ignore}
    key = {"settings": used, "step": exported_step(checkpoint), "sha256": file_sha256(checkpoint)}
    for path in [cache, *map(Path, reuse_from)]:
        try:
            text = path.read_text() if path.is_file() else None
            stored = json.loads(text) if text is not None else None
        except (OSError, ValueError):
            log.warning("%s is unreadable: not reused", path)
            stored = None
        if isinstance(stored, dict) and {k: stored.get(k) for k in key} == key:
            if path != cache:                                   # found elsewhere: this run's cache gets a copy
                atomic_write(cache, lambda tmp: Path(tmp).write_text(text))
            return stored["scores"], True
    scores = evaluate_generator(checkpoint, settings)
    atomic_write(cache, lambda tmp: Path(tmp).write_text(json.dumps({**key, "scores": scores}, indent=2)))
    return scores, False
