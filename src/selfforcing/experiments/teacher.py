"""`selfforcing experiment teacher`: the world teacher in about an hour, in one command.

Two stages of the `teacher-world` preset (the measurements behind them: docs/world-teacher.md, docs/codec.md):

1. `short`: 2300 steps of 8 clips of 9 frames at a constant learning rate. A frame costs about the same in a
   9-frame clip as in a 21-frame one, and short clips show 2.5 times as many scenes a second;
2. `full`: 600 steps of 4 clips of 21 frames, the training length, from the first stage's EMA weights, at 3e-4.

Both run on the latents of the committed learned codec (`checkpoints/world/codec.safetensors`) unless `--codec`
names another one, or `none` for the lossless pixel codec. The teacher is written to OUT/teacher.safetensors (fp16,
its spec naming the codec relative to it) and, with `--eval N`, scored on the first N held-out prompts as
`selfforcing eval --checkpoint OUT/teacher.safetensors --n N` does (OUT/eval.json). A finished stage is skipped
and a killed one resumes from its last checkpoint, so the same command picks up where it stopped.

    selfforcing experiment teacher -o runs/teacher-hour [--codec FILE|none] [--eval 48] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..io.checkpoints import cast_checkpoint
from ..models.codec import learned_codec_channels
from ..training.config import resolve_config

__all__ = ["COMMITTED_CODEC", "TeacherRecipe", "recipe_overrides", "run_teacher_recipe"]

COMMITTED_CODEC = "checkpoints/world/codec.safetensors"


@dataclass(frozen=True)
class TeacherRecipe:
    """Attributes:
    out: output folder (OUT/short, OUT/full, OUT/teacher.safetensors, OUT/results.json).
    codec: the learned codec file the teacher works on; None: the lossless pixel codec.
    short_steps, short_frames, short_batch: the first stage (constant learning rate).
    full_steps, full_lr: the second stage, at the preset's clip length and batch, from the first one's EMA.
    overrides: more `--set KEY=VALUE` changes, applied to both stages after the recipe's own.
    short_overrides: more changes for the first stage only, after `overrides` (e.g. masked training, which the
        second stage, at the clip length the teacher samples, goes without).
    eval_n: held-out prompts to score the teacher on (0: none).
    preset: the training preset both stages start from.
    """

    out: str = "runs/teacher-hour"
    codec: str | None = COMMITTED_CODEC
    short_steps: int = 2300
    short_frames: int = 9
    short_batch: int = 8
    full_steps: int = 600
    full_lr: float = 3e-4
    overrides: tuple[str, ...] = ()
    short_overrides: tuple[str, ...] = ()
    eval_n: int = 0
    preset: str = "teacher-world"

    def __post_init__(self) -> None:
        if min(self.short_steps, self.short_frames, self.short_batch, self.full_steps) < 1:
            raise ValueError("the stages' steps, frames and batch size must be positive")
        if self.full_lr <= 0 or self.eval_n < 0:
            raise ValueError("full_lr must be positive and eval_n non-negative")


def recipe_overrides(recipe: TeacherRecipe) -> dict[str, list[str]]:
    """{stage: its `--set` list}: what `selfforcing train PRESET --out OUT/stage --set ...` runs for each stage."""
    codec = []
    if recipe.codec is not None:
        channels = learned_codec_channels(recipe.codec)                # FileNotFoundError: one line
        codec = [f"data.codec_file={recipe.codec}", f"model.in_dim={channels}", f"model.out_dim={channels}"]
    quiet = ["logging.sample_every=0", "data.num_workers=1"]            # no previews; a worker renders the world
    short = [f"data.num_frames={recipe.short_frames}", f"schedule.batch_size={recipe.short_batch}",
             f"schedule.steps={recipe.short_steps}", "optim.decay=constant", *quiet, "checkpoint.every=100"]
    init = Path(recipe.out) / "short" / "model_ema.safetensors"
    full = [f"teacher.init_from={init}", f"optim.lr={recipe.full_lr:g}", "optim.warmup_steps=50",
            f"schedule.steps={recipe.full_steps}", "ema.start_step=50", *quiet]
    return {"short": [*codec, *short, *recipe.overrides, *recipe.short_overrides],
            "full": [*codec, *full, *recipe.overrides]}


def run_teacher_recipe(recipe: TeacherRecipe) -> dict:
    """Train both stages (each skipped when complete, resumed when killed), write the fp16 teacher, score it with
    `recipe.eval_n` > 0, and return (and keep in OUT/results.json) what was done and measured."""
    from .ablation import _write_json, run_stage

    out = Path(recipe.out)
    if recipe.codec is not None and not Path(recipe.codec).is_file():
        raise FileNotFoundError(f"no codec file at {recipe.codec} (run from the repository root, or pass --codec "
                                "FILE, or --codec none for the pixel codec)")
    overrides = recipe_overrides(recipe)
    started = time.perf_counter()
    stages = {}
    for name in ("short", "full"):
        config = resolve_config(recipe.preset, overrides[name], str(out / name))
        stages[name] = run_stage(name, config, overrides[name])
    teacher = cast_checkpoint(out / "full" / "model_ema.safetensors", out / "teacher.safetensors", torch.float16)
    results = {"recipe": asdict(recipe), "stages": stages, "teacher": str(teacher),
               "train_wall_s": sum(s.get("wall_s", 0.0) for s in stages.values())}
    if recipe.eval_n:
        results["eval"] = score_teacher(teacher, recipe.eval_n, out / "eval.json")
    results["wall_s"] = time.perf_counter() - started
    _write_json(out / "results.json", results)
    return results


def score_teacher(teacher: Path, n: int, path: Path) -> dict:
    """`selfforcing eval --checkpoint TEACHER --n N --json` (its defaults: seed 0, batches of 8, 64 real clips
    for the Fréchet distance), written to `path`; returns the mean scores and the distance."""
    from ..eval import evaluate_videos
    from ..eval.cli import DEFAULT_REFERENCE, generate_heldout
    from .ablation import _write_json

    items, fps = generate_heldout(str(teacher), n, None, 0, batch_size=8)
    report = evaluate_videos(items, fps=fps, reference=DEFAULT_REFERENCE)
    _write_json(path, report.to_dict())
    return {**report.mean(), "standard_error": report.standard_error(), "frechet": report.frechet}


def format_teacher_results(results: dict) -> str:
    lines = [f"teacher: {results['teacher']} (training {results['train_wall_s'] / 60:.1f} min)"]
    for name, stage in results["stages"].items():
        wall = f", {stage['wall_s'] / 60:.1f} min" if "wall_s" in stage else ""
        lines.append(f"  {name}: {stage['status']} to step {stage['step']}{wall}")
    if "eval" in results:
        e, se = results["eval"], results["eval"]["standard_error"] or {}
        fd = "n/a" if e["frechet"] is None else f"{e['frechet']:.0f}"
        lines.append(f"  held-out prompts: total {e['total']:.1f}" + (f" ± {se['total']:.1f}" if se else "")
                     + f", semantic {e['semantic']:.1f}, quality {e['quality']:.1f}, temporal {e['temporal']:.1f},"
                     f" FD {fd}")
    return "\n".join(lines)
