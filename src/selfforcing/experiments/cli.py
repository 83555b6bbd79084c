"""`selfforcing experiment ablation`: train and score every method of the paper's comparison in the world.

The main CLI hands its subparsers to `add_parser` (which adds `experiment` and its sub-commands) and calls `run`
with the parsed arguments.

    selfforcing experiment ablation --checkpoints checkpoints/ablation --docs docs/ablation.md
    selfforcing experiment ablation --steps distill=600 causal-diffusion=400 ode-init=400
    selfforcing experiment ablation --methods sf-dmd causvid --variants chunk-wise
    selfforcing experiment ablation --quick -o /tmp/ablation-quick      # tiny models, under a minute

Every stage is skipped when its exported weights are complete and every score is cached next to them, so the
same command resumes a killed run. See `experiments/ablation.py` for the plan and the budgets.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path

from .ablation import (COMMITTED_ODE_INITS, COMMITTED_TEACHER, DEFAULT_STEPS, METHODS, STAGE_KINDS, VARIANTS,
                       AblationConfig, quick_config, run_ablation)
from .evaluation import EvalSettings

__all__ = ["add_parser", "run", "parse_steps", "command_line"]

# Options recorded in the reproducing command line, in order (dest names; flags are --dest-with-dashes).
_OPTIONS = ("out", "teacher", "ode_inits", "ode_pairs", "ode_pairs_n", "steps", "methods", "variants", "n",
            "long_factor", "long_prompts", "long_budget", "window", "reference", "seed", "device", "batch_size",
            "checkpoints", "docs", "quick")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `experiment` (with its sub-commands `ablation`, `codec` and `teacher`) on the main CLI's
    subparsers."""
    p = subparsers.add_parser("experiment", help="train and evaluate a whole experiment (the paper's comparison)")
    sub = p.add_subparsers(dest="experiment_command", required=True, metavar="EXPERIMENT")
    a = sub.add_parser("ablation", help="every method of the paper's comparison, chunk-wise and frame-wise",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("-o", "--out", default="runs/ablation", help="output folder (default: runs/ablation)")
    d = EvalSettings()                                              # the scoring defaults, named in the help
    a.add_argument("--teacher", default=None,
                   help=f"bidirectional teacher to distil (default: the committed {COMMITTED_TEACHER}; "
                        "trained into OUT/teacher if missing)")
    a.add_argument("--ode-inits", default=None, metavar="DIR",
                   help="ODE inits to reuse, DIR/<variant>/ode-init.safetensors (default: the committed run's, "
                        f"{COMMITTED_ODE_INITS}, unless --teacher is given); 'none': train them from the teacher")
    a.add_argument("--ode-pairs", default=None,
                   help="ODE pairs to train the ODE inits on (default: runs/ode-pairs-world; sampled into "
                        "OUT/ode-pairs if empty)")
    a.add_argument("--ode-pairs-n", type=int, default=None, help="trajectories to sample when needed (default: 256)")
    a.add_argument("--steps", nargs="+", default=[], metavar="KIND=N",
                   help=f"optimizer steps per stage kind ({', '.join(STAGE_KINDS)}); default: "
                        f"{' '.join(f'{k}={v}' for k, v in DEFAULT_STEPS.items())}, the rest their presets'")
    a.add_argument("--methods", nargs="+", default=None, choices=[m.slug for m in METHODS], metavar="METHOD",
                   help=f"methods to run (default: all: {', '.join(m.slug for m in METHODS)})")
    a.add_argument("--variants", nargs="+", default=None, choices=[v.name for v in VARIANTS], metavar="VARIANT",
                   help=f"variants to run (default: all: {', '.join(v.name for v in VARIANTS)})")
    a.add_argument("--n", type=int, default=None,
                   help=f"held-out prompts scored at the training length (default: {d.num_prompts})")
    a.add_argument("--long-factor", type=int, default=None,
                   help=f"long videos are this many times the training length (default: {d.long_factor})")
    a.add_argument("--long-prompts", type=int, default=None,
                   help=f"prompts rolled out as long videos (default: {d.long_prompts})")
    a.add_argument("--long-budget", type=float, default=None,
                   help="seconds of long-video generation per method, estimated from its measured speed; prompts "
                        f"are dropped (all: skipped, with the reason recorded) to fit (default: {d.long_budget_s:g})")
    a.add_argument("--window", type=int, default=None,
                   help="frames per drift-curve window (default: the training length)")
    a.add_argument("--reference", type=int, default=None,
                   help="real videos for the Fréchet distance at the training length "
                        f"(0: skip; default: {d.reference})")
    a.add_argument("--seed", type=int, default=None, help=f"generation seed of the first prompt (default: {d.seed})")
    a.add_argument("--device", default=None, help=f"torch device of training and generation (default: {d.device})")
    a.add_argument("--batch-size", type=int, default=None,
                   help=f"held-out prompts generated together when scoring (default: {d.batch_size}; the same "
                        "videos up to rounding)")
    a.add_argument("--checkpoints", default=None, metavar="DIR",
                   help="where the scored fp16 copies of the generators go, as VARIANT/METHOD.safetensors "
                        "(default: OUT/checkpoints)")
    a.add_argument("--docs", default=None, metavar="PATH", help="also write the Markdown results here")
    a.add_argument("--quick", action="store_true",
                   help="smoke test in under a minute: tiny models, 3 steps a stage, 2 prompts, 4x long videos")
    a.set_defaults(func=run)

    from .codec import __doc__ as codec_doc

    c = sub.add_parser("codec", help="pixel space or a learned latent space: train an autoencoder, measure both",
                       description=codec_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("-o", "--out", default="runs/codec", help="output folder (default: runs/codec)")
    c.add_argument("--channels", type=int, default=16, help="latent channels of the learned codec (default: 16)")
    c.add_argument("--steps", type=int, default=600, help="autoencoder training steps (default: 600)")
    c.add_argument("--width", type=int, default=64, help="the autoencoder's base width (default: 64)")
    c.add_argument("--lr", type=float, default=1e-3, help="the autoencoder's peak learning rate (default: 1e-3)")
    c.add_argument("--bf16", action="store_true", help="train the autoencoder under bf16 autocast (scoring stays fp32)")
    c.add_argument("--n", type=int, default=16, help="held-out clips scored (default: 16)")
    c.add_argument("--reference", type=int, default=64,
                   help="real training clips the Fréchet distances are measured against (0: none; default: 64)")
    c.add_argument("--score", default=None, metavar="CODEC",
                   help="score this codec file (a codec.safetensors) instead of training one: OUT/score.json")
    c.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    c.add_argument("--docs", default=None, metavar="PATH", help="also write the Markdown results here")
    c.set_defaults(func=run_codec)

    from .teacher import COMMITTED_CODEC, TeacherRecipe
    from .teacher import __doc__ as teacher_doc

    t = sub.add_parser("teacher", help="the world teacher in about an hour: two stages on the learned codec",
                       description=teacher_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("-o", "--out", default="runs/teacher-hour", help="output folder (default: runs/teacher-hour)")
    t.add_argument("--codec", default=COMMITTED_CODEC,
                   help=f"the learned codec to train on, or 'none' for the pixel codec (default: {COMMITTED_CODEC})")
    t.add_argument("--eval", type=int, default=0, metavar="N",
                   help="score the teacher on N held-out prompts (48: about 15 min on 2 CPU cores; default: 0)")
    t.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="more config changes for both stages, after the recipe's own")
    t.add_argument("--set-short", nargs="+", default=[], metavar="KEY=VALUE", dest="short_overrides",
                   help="more config changes for the first stage only, after --set (e.g. teacher.mask_ratio=0.5)")
    t.add_argument("--short-steps", type=int, default=TeacherRecipe.short_steps, metavar="N",
                   help=f"steps of the first stage (default: {TeacherRecipe.short_steps})")
    t.set_defaults(func=run_teacher)
    return p


def run_teacher(args: argparse.Namespace) -> dict:
    from .teacher import TeacherRecipe, format_teacher_results, run_teacher_recipe

    recipe = TeacherRecipe(out=args.out, codec=None if args.codec == "none" else args.codec, eval_n=args.eval,
                           overrides=tuple(args.overrides), short_overrides=tuple(args.short_overrides),
                           short_steps=args.short_steps)
    results = run_teacher_recipe(recipe)
    print(format_teacher_results(results))
    return results


def run_codec(args: argparse.Namespace) -> dict:
    from .codec import CodecExperimentConfig, format_codec_results, run_codec_experiment

    config = CodecExperimentConfig(out=args.out, channels=args.channels, width=args.width, steps=args.steps,
                                   lr=args.lr, autocast="bf16" if args.bf16 else "none", n=args.n,
                                   reference=args.reference, seed=args.seed)
    if args.score is not None:
        results, text = score_codec_file(args.score, config)
    else:
        results = run_codec_experiment(config)
        text = format_codec_results(results)
    if args.docs:
        Path(args.docs).parent.mkdir(parents=True, exist_ok=True)
        Path(args.docs).write_text(text + "\n")
    print(text)
    return results


def score_codec_file(path: str, config) -> tuple[dict, str]:
    """`score_codec` of the codec stored at `path` over `config.n` held-out clips; writes OUT/score.json."""
    from ..models.codec import LearnedFrameCodec
    from .ablation import _write_json
    from .codec import format_codec_scores, score_codec

    codec = LearnedFrameCodec.from_file(path)                   # FileNotFoundError / ValueError: one line
    results = {"codec": str(path), "n": config.n, "reference": config.reference,
               **score_codec(codec, config.n, reference=config.reference)}
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "score.json", results)
    return results, f"Codec {path}\n\n" + format_codec_scores(results, config.n)


def parse_steps(items: list[str]) -> dict[str, int]:
    """["distill=600", ...] -> {"distill": 600}; ValueError on a malformed item or unknown kind."""
    steps = {}
    for item in items:
        kind, sep, value = item.partition("=")
        if not sep or kind not in STAGE_KINDS or not value.strip().isdigit():
            raise ValueError(f"--steps {item!r}: expected KIND=N with KIND one of {', '.join(STAGE_KINDS)}")
        steps[kind] = int(value)
    return steps


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (options not given are left out)."""
    parts = ["selfforcing", "experiment", "ablation"]
    for dest in _OPTIONS:
        value, flag = getattr(args, dest, None), "--" + dest.replace("_", "-")
        if value is None or value is False or value == []:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def config_from_args(args: argparse.Namespace) -> AblationConfig:
    """The ablation the options ask for: quick or full defaults, then what was given."""
    if args.quick and (args.teacher or args.ode_pairs or args.ode_inits):
        raise ValueError("--quick trains its own tiny teacher, ODE pairs and inits: drop --teacher / --ode-pairs / "
                         "--ode-inits")
    base = quick_config(args.out) if args.quick else AblationConfig(out=args.out)
    given = {
        "seed": args.seed, "device": args.device, "num_prompts": args.n, "long_factor": args.long_factor,
        "long_prompts": args.long_prompts, "long_budget_s": args.long_budget, "window": args.window,
        "reference": args.reference, "batch_size": args.batch_size,
    }
    settings = dataclasses.replace(base.eval, **{k: v for k, v in given.items() if v is not None})
    if args.ode_inits is not None:                     # "none" trains them; the committed ones go with their teacher
        changes_inits = {"ode_inits": None if args.ode_inits.lower() == "none" else args.ode_inits}
    else:
        changes_inits = {"ode_inits": None} if args.teacher else {}
    changes = {"teacher": args.teacher, "ode_pairs": args.ode_pairs, "ode_pairs_n": args.ode_pairs_n,
               "methods": tuple(args.methods) if args.methods else None,
               "variants": tuple(args.variants) if args.variants else None}
    return dataclasses.replace(
        base, eval=settings, steps={**base.steps, **parse_steps(args.steps)}, docs=args.docs,
        checkpoints=args.checkpoints,
        command=command_line(args), **{k: v for k, v in changes.items() if v is not None}, **changes_inits,
    )


def run(args: argparse.Namespace) -> dict:
    """Run the sub-command; prints where the results went. Raises ValueError on bad options."""
    if args.experiment_command == "codec":
        return run_codec(args)
    if args.experiment_command == "teacher":
        return run_teacher(args)
    if args.experiment_command != "ablation":
        raise ValueError(f"unknown experiment {args.experiment_command!r}")
    config = config_from_args(args)
    results = run_ablation(config)
    print(f"wrote {config.out}/results.json and {config.out}/results.md"
          + (f" and {config.docs}" if config.docs else "")
          + (f"; drift plot {results['plot']}" if results.get("plot") else ""))
    return results
