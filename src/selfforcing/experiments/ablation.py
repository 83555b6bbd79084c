"""The paper's comparison in the world: every method trained from one teacher and one init, scored alike.

Self-Forcing (Huang et al. 2025) compares, chunk-wise and frame-wise, the many-step causal baselines (Teacher
Forcing, Diffusion Forcing) with the few-step DMD family (CausVid = DF + DMD, TF + DMD) and Self-Forcing with three
losses (DMD, SiD, GAN); this module reruns that table on the synthetic world. The plan is data (`METHODS` x
`VARIANTS`); the stages run in order, each into its own folder, each skipped when its exported weights are
complete (so a killed run picks up where it stopped, a half-trained stage from its last checkpoint):

    OUT/teacher/                the bidirectional teacher, only if --teacher does not exist (`teacher-world`)
    OUT/ode-pairs/              teacher trajectories, only if the ODE inits are trained and --ode-pairs holds none
    OUT/<variant>/ode-init/     the ODE-regression init of the causal generator, per variant, unless --ode-inits
                                holds them (by default the committed run's, trained from the committed teacher)
    OUT/teacher-eval.json       the teacher's scores at the training length, the reference of every method
                                (reused from --ode-inits' folder when it holds them for the same weights and
                                settings, as the committed run's does; also copied beside the kept checkpoints)
    OUT/<variant>/<method>/     each method from its preset, then its scores (eval.json)
    OUT/checkpoints/<variant>/  the fp16 copies that are scored and kept: ode-init.safetensors, <method>.safetensors
                                (--checkpoints puts them elsewhere, e.g. checkpoints/ablation in the repository)
    OUT/results.json, OUT/results.md, OUT/drift.png

Variants: "chunk-wise" runs the presets as they are (3 latent frames a block); "frame-wise" sets
`model.num_frame_per_block=1` and starts the few-step methods from the frame-wise ODE init. TF / DF start from the
teacher's weights, as in the paper. Budgets are optimizer steps per stage kind (`--steps distill=600`): every method
of a kind trains for the same number of trainer steps; a distillation step always updates the critic and updates
the generator every `distill.generator_every` steps, so the results record both counts.

The quick mode is the same plan on the tiny models of the tests (teacher-tiny's 2-layer 32-wide network, 16x16
clips, the hash text encoder, 6-frame clips, 3 steps a stage): it checks the plumbing in under a minute, its scores
mean nothing (even real 16x16 renders score only ~65 of 100: the evaluator's tolerances are set for 64x64).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import torch

from ..config import get_preset
from ..io.checkpoints import cast_checkpoint
from ..training import checkpoint as ckpt
from ..training import parallel
from ..training.config import WORLD_ODE_PAIRS, TrainConfig, resolve_config, train_preset
from ..training.overrides import config_diff
from .evaluation import (LONG_VIDEO_SETTINGS, EvalSettings, drift_checkpoints, evaluate_cached, exported_step,
                         file_sha256)
from .results import plot_drift, results_markdown

__all__ = ["Method", "Variant", "METHODS", "VARIANTS", "STAGE_KINDS", "AblationConfig", "quick_config",
           "stage_config", "budget", "run_stage", "run_ablation"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Attributes:
        name: as shown in the table.
        slug: its folder under OUT/<variant>/ and its name on the command line.
        preset: the training preset (`training/config.py`).
        init: where the generator starts: the teacher's weights or the variant's ODE init.
    """

    name: str
    slug: str
    preset: str
    init: Literal["teacher", "ode-init"]


METHODS: tuple[Method, ...] = (
    Method("TF", "tf", "tf-world", "teacher"),
    Method("DF", "df", "df-world", "teacher"),
    Method("CausVid (DF+DMD)", "causvid", "causvid-world", "ode-init"),
    Method("TF+DMD", "tf-dmd", "tf-dmd-world", "ode-init"),
    Method("SF+DMD", "sf-dmd", "sf-dmd-world", "ode-init"),
    Method("SF+SiD", "sf-sid", "sf-sid-world", "ode-init"),
    Method("SF+GAN", "sf-gan", "sf-gan-world", "ode-init"),
)


@dataclass(frozen=True)
class Variant:
    """A block layout of the causal generator: its model preset (whose `num_frame_per_block` every stage of the
    variant takes) and the preset of its ODE init."""

    name: str
    model: str
    ode_init_preset: str

    @property
    def frames_per_block(self) -> int:
        return get_preset(self.model).num_frame_per_block


VARIANTS: tuple[Variant, ...] = (
    Variant("chunk-wise", "world-causal", "ode-init-world"),
    Variant("frame-wise", "world-causal-framewise", "ode-init-world-framewise"),
)

STAGE_KINDS = ("teacher", "ode-init", "distill", "causal-diffusion")       # the trainer's algorithm names
EXPORTS = {"teacher": "model_ema.safetensors"}                              # the rest export the generator
GENERATOR_EXPORT = "generator_ema.safetensors"
KEEP_DTYPE = torch.float16                      # the kept copies: half the size, scores within noise of fp32

# The comparison's budget: a sixth of the distillation and causal-diffusion presets' 600 / 400 steps, so that the
# 14 methods train in about two hours on a 2-core CPU (the ODE inits keep their presets' 400 steps).
DEFAULT_STEPS = {"distill": 100, "causal-diffusion": 100}

# The quick mode's world: teacher-tiny's network and data shapes on 6-frame clips (two chunk-wise blocks).
QUICK_FRAMES = 6
QUICK_STEPS = 3
# The committed teacher and the ODE inits the committed run trained from it (paths from the repository root).
COMMITTED_TEACHER = "checkpoints/world/teacher.safetensors"
COMMITTED_ODE_INITS = "checkpoints/ablation"
TEACHER_SCORES = "teacher-eval.json"            # in OUT, and beside the kept checkpoints (the committed run's too)
QUICK_PAIRS = 4
QUICK_MODEL_FIELDS = ("dim", "ffn_dim", "num_heads", "num_layers", "freq_dim", "text_dim", "text_len")
QUICK_DATA_FIELDS = ("size", "text_encoder", "text_max_length", "length", "max_objects", "max_start_frame")


@dataclass(frozen=True)
class AblationConfig:
    """What `run_ablation` trains and measures.

    Attributes:
        out: the output folder.
        teacher: the bidirectional teacher to reuse; None or a missing file: `teacher-world` is trained into
            OUT/teacher. Default: the committed one.
        ode_inits: a folder of ODE inits to reuse, `<variant>/ode-init.safetensors` (the layout of `checkpoints`);
            None, or a variant's file missing: the inits are trained from the teacher through the ODE pairs.
            Default: the committed run's, which were trained from the committed teacher: reuse them only with it.
        ode_pairs: stored teacher trajectories to reuse; None or an empty folder: `ode_pairs_n` trajectories are
            sampled into OUT/ode-pairs (resumable).
        ode_pairs_n, ode_pairs_steps: size of a sampled set, Euler steps per trajectory.
        steps: optimizer steps per stage kind (`STAGE_KINDS`); a kind left out keeps its preset's. Default:
            `DEFAULT_STEPS`.
        methods, variants: the slugs and variant names to run (all by default).
        eval: how each generator is scored.
        quick: the smoke-test world (see the module docstring).
        docs: also write the Markdown results here (e.g. docs/ablation.md).
        checkpoints: where the fp16 copies of the generators (and ODE inits) go, as <variant>/<method>.safetensors;
            these copies are what is scored, so they are the checkpoints the table came from. None: OUT/checkpoints.
        command: the command line, recorded in the results.
    """

    out: str = "runs/ablation"
    teacher: str | None = COMMITTED_TEACHER
    ode_inits: str | None = COMMITTED_ODE_INITS
    ode_pairs: str | None = WORLD_ODE_PAIRS
    ode_pairs_n: int = 256
    ode_pairs_steps: int = 16
    steps: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_STEPS))
    methods: tuple[str, ...] = tuple(m.slug for m in METHODS)
    variants: tuple[str, ...] = tuple(v.name for v in VARIANTS)
    eval: EvalSettings = field(default_factory=EvalSettings)
    quick: bool = False
    docs: str | None = None
    checkpoints: str | None = None
    command: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.steps) - set(STAGE_KINDS)
        if unknown:
            raise ValueError(f"unknown stage kind(s) {', '.join(sorted(unknown))} in steps; known: "
                             f"{', '.join(STAGE_KINDS)}")
        if any(n < 1 for n in self.steps.values()) or self.ode_pairs_n < 1:
            raise ValueError("steps and ode_pairs_n must be positive")
        for name, given, known in (("method", self.methods, [m.slug for m in METHODS]),
                                   ("variant", self.variants, [v.name for v in VARIANTS])):
            bad = [x for x in given if x not in known]
            if bad:
                raise ValueError(f"unknown {name} {', '.join(bad)}; known: {', '.join(known)}")
            if not given:
                raise ValueError(f"no {name} selected")


def quick_config(out: str, **changes) -> AblationConfig:
    """The smoke test: every method and variant on tiny models, 3 steps a stage, 2 prompts, 4x long videos."""
    base = AblationConfig(
        out=out, teacher=None, ode_inits=None, ode_pairs=None, ode_pairs_n=QUICK_PAIRS, ode_pairs_steps=4,
        steps={kind: QUICK_STEPS for kind in STAGE_KINDS}, quick=True,
        eval=EvalSettings(num_prompts=2, long_factor=4, long_prompts=1, reference=0),
    )
    return dataclasses.replace(base, **changes)


def selected(config: AblationConfig) -> tuple[list[Variant], list[Method]]:
    return ([v for v in VARIANTS if v.name in config.variants], [m for m in METHODS if m.slug in config.methods])


# ------------------------------------------------------------------------------------------------ stage configs
def _quick_overrides() -> list[str]:
    """The world presets shrunk to teacher-tiny's network and data (whose teacher the quick stages distil)."""
    tiny = train_preset("teacher-tiny")
    return ([f"model.{k}={getattr(tiny.model, k)}" for k in QUICK_MODEL_FIELDS]
            + [f"data.{k}={getattr(tiny.data, k)}" for k in QUICK_DATA_FIELDS]
            + [f"data.num_frames={QUICK_FRAMES}", "schedule.batch_size=2", "logging.tensorboard=false",
               "logging.sample_every=0", "logging.progress=false", "checkpoint.every=0",
               "causal.sample_steps=4"])


def _common(config: AblationConfig, kind: str) -> list[str]:
    out = [f"schedule.steps={config.steps[kind]}"] if kind in config.steps else []
    return out + ([f"device={config.eval.device}"] if config.eval.device != "cpu" else [])


def stage_config(config: AblationConfig, preset: str, variant: Variant, out_dir: Path, *, teacher: str,
                 init: str | None = None, pairs: str | None = None) -> tuple[TrainConfig, list[str]]:
    """A causal stage of `variant`: the preset with the variant's block size, the run's teacher / init / pairs,
    the budget of its kind (and the tiny world in quick mode). Returns the config and the overrides applied.

    Args:
        init: the generator's starting weights (the teacher for TF / DF, the ODE init for the DMD family).
        pairs: the ODE pairs (the ODE init stage).
    """
    kind = train_preset(preset).algorithm
    overrides = _quick_overrides() if config.quick else []
    overrides += [f"model.num_frame_per_block={variant.frames_per_block}", *_common(config, kind)]
    if kind == "ode-init":
        overrides += [f"ode_init.init_from={teacher}", f"data.ode_pairs={pairs}"]
    elif kind == "causal-diffusion":
        overrides += [f"causal.init_from={init or teacher}"]
    elif kind == "distill":
        overrides += [f"distill.teacher={teacher}", f"distill.generator_init={init or teacher}"]
    else:
        raise ValueError(f"{preset} trains {kind!r}, not a causal generator stage")
    return resolve_config(preset, overrides, str(out_dir)), overrides


def budget(config: TrainConfig) -> dict:
    """Optimizer steps of a stage and the updates of each network (the trainer updates a network at step s when
    s % every == 0, s = 0 .. steps - 1)."""
    steps, every = config.schedule.steps, 1
    if config.algorithm == "distill":
        every = config.distill.generator_every
    return {"algorithm": config.algorithm, "steps": steps, "batch_size": config.schedule.batch_size,
            "generator_every": every, "generator_updates": math.ceil(steps / every),
            "critic_updates": steps if config.algorithm == "distill" else 0,
            "generator_samples": math.ceil(steps / every) * config.schedule.batch_size}


# ------------------------------------------------------------------------------------------------ running
def _write_json(path: Path, data) -> None:
    ckpt.atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str) + "\n"))


def _stored_config(path: Path) -> TrainConfig | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        stored = (f.metadata() or {}).get(ckpt.TRAIN_CONFIG_KEY)
    return TrainConfig.from_dict(json.loads(stored)) if stored else None


def run_stage(name: str, config: TrainConfig, overrides: list[str]) -> dict:
    """Train one stage unless its exported EMA weights already reached `schedule.steps`; a stage with a training
    checkpoint resumes from it. Returns the stage's record (also kept in OUT_DIR/stage.json)."""
    out = Path(config.out_dir)
    target = out / EXPORTS.get(config.algorithm, GENERATOR_EXPORT)
    record_file = out / "stage.json"
    done = exported_step(target)
    if done is not None and done >= config.schedule.steps:
        stored = _stored_config(target)
        ignored = {"out_dir"} | ({"precision.autocast"} if config.precision.autocast == "auto" else set())
        changed = sorted(set(config_diff(stored, config)) - ignored) if stored is not None else []
        if changed:
            log.warning("%s: reusing %s, trained with a different config (%s)", name, target, ", ".join(changed))
        earlier = json.loads(record_file.read_text()) if record_file.is_file() else {}
        log.info("%s: %s is complete (step %d): skipped", name, target, done)
        return {**earlier, "stage": name, "out": str(out), "weights": str(target), "status": "skipped",
                "step": done, "earlier_status": earlier.get("status"), "config_changes": changed}
    resume = ckpt.latest_checkpoint(out / config.checkpoint.dir) is not None
    log.info("%s: %s into %s", name, "resuming" if resume else "training", out)
    started = time.perf_counter()
    trainer = _trainer(config, resume)
    try:
        trainer.fit()
        if exported_step(target) != trainer.step:               # resumed from a final checkpoint never exported
            trainer.save()
    finally:
        parallel.shutdown(trainer.ctx)
    record = {"stage": name, "out": str(out), "weights": str(target), "status": "resumed" if resume else "trained",
              "step": trainer.step, "wall_s": time.perf_counter() - started, "overrides": overrides,
              "budget": budget(config)}
    _write_json(record_file, record)
    return record


def keep_checkpoint(weights: str | Path, dst: Path) -> Path:
    """The fp16 copy of exported weights that the ablation scores and keeps (rewritten only when `weights` is
    newer, so an unchanged stage leaves its kept copy, and the scores cached for it, alone)."""
    weights = Path(weights)
    if not (dst.is_file() and exported_step(dst) == exported_step(weights)
            and dst.stat().st_mtime_ns >= weights.stat().st_mtime_ns):
        dst.parent.mkdir(parents=True, exist_ok=True)
        cast_checkpoint(weights, dst, KEEP_DTYPE)
    return dst


def _trainer(config: TrainConfig, resume: bool):
    from ..training.trainer import Trainer

    return Trainer(config, resume=resume)


def _teacher(config: AblationConfig) -> tuple[str, dict]:
    """The teacher to distil: the given one, or one trained into OUT/teacher."""
    if config.teacher is not None and Path(config.teacher).is_file():
        return config.teacher, {"stage": "teacher", "status": "reused", "weights": config.teacher}
    if config.teacher is not None:
        log.warning("teacher %s does not exist: training teacher-world into %s/teacher", config.teacher, config.out)
    if config.quick:
        preset, overrides = "teacher-tiny", [f"data.num_frames={QUICK_FRAMES}", "checkpoint.every=0"]
    else:
        preset, overrides = "teacher-world", []
    overrides += _common(config, "teacher")
    train_config = resolve_config(preset, overrides, str(Path(config.out) / "teacher"))
    record = run_stage("teacher", train_config, overrides)
    return record["weights"], record


def _reused_inits(config: AblationConfig, variants: list[Variant]) -> dict[str, Path] | None:
    """{variant: its ODE init} from `config.ode_inits`, or None when they are to be trained (not given, or one
    is missing: the variants share the ODE pairs, so they are trained together)."""
    if config.ode_inits is None:
        return None
    found = {v.name: Path(config.ode_inits) / v.name / "ode-init.safetensors" for v in variants}
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        log.warning("ODE init %s does not exist: training the ODE inits", ", ".join(missing))
        return None
    log.info("reusing the ODE inits in %s", config.ode_inits)
    return found


def _count_pairs(folder: Path) -> int:
    from ..io.ode_pairs import ODEPairDataset

    try:
        return len(ODEPairDataset(folder))
    except (ValueError, FileNotFoundError):
        return 0


def _ode_pairs(config: AblationConfig, teacher: str, num_frames: int) -> tuple[str, dict]:
    """The ODE pairs: the given set, or `ode_pairs_n` trajectories sampled (or completed) in OUT/ode-pairs."""
    from ..training.ode_pairs import ODEPairsConfig, generate_ode_pairs

    if config.ode_pairs is not None and _count_pairs(Path(config.ode_pairs)):
        n = _count_pairs(Path(config.ode_pairs))
        log.info("reusing %d ODE pairs in %s", n, config.ode_pairs)
        return config.ode_pairs, {"stage": "ode-pairs", "status": "reused", "out": config.ode_pairs, "n": n}
    out = Path(config.out) / "ode-pairs"
    before = _count_pairs(out)
    if before >= config.ode_pairs_n:
        return str(out), {"stage": "ode-pairs", "status": "skipped", "out": str(out), "n": before}
    started = time.perf_counter()
    generate_ode_pairs(ODEPairsConfig(teacher=teacher, out=str(out), n=config.ode_pairs_n,
                                      num_steps=config.ode_pairs_steps, num_frames=num_frames,
                                      batch_size=min(8, config.ode_pairs_n)),
                       device=config.eval.device, progress=not config.quick)
    return str(out), {"stage": "ode-pairs", "status": "resumed" if before else "trained", "out": str(out),
                      "n": config.ode_pairs_n, "wall_s": time.perf_counter() - started}


def machine() -> dict:
    """Where the numbers were measured."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def run_ablation(config: AblationConfig) -> dict:
    """Run the plan (see the module docstring) and write OUT/results.json, OUT/results.md and OUT/drift.png.

    Returns:
        the results: {"command", "machine", "quick", "checkpoints" (the folder of the kept fp16 copies), "settings",
        "teacher": {weights, eval (at the training length only)}, "stages": [training stage records in order],
        "methods": [one entry per method x variant: method, slug, variant, preset, init, weights (the trainer's
        export), checkpoint (its kept copy, the one scored), budget, init_budget, train, eval], "wall_s",
        "complete"}.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    kept = Path(config.checkpoints) if config.checkpoints is not None else out / "checkpoints"
    started = time.perf_counter()
    variants, methods = selected(config)
    results = {
        "command": config.command, "machine": machine(), "quick": config.quick, "checkpoints": str(kept),
        "settings": {**dataclasses.asdict(config),
                     "drift_checkpoints": list(drift_checkpoints(config.eval.long_factor))},
        "stages": [], "methods": [], "complete": False,
    }

    def save() -> None:
        results["wall_s"] = time.perf_counter() - started
        _write_json(out / "results.json", results)

    teacher, record = _teacher(config)
    results["stages"].append(record)
    committed = [Path(config.ode_inits) / TEACHER_SCORES] if config.ode_inits is not None else []
    scores, reused = evaluate_cached(teacher, config.eval, out / TEACHER_SCORES, reuse_from=committed,
                                     ignore=LONG_VIDEO_SETTINGS)
    if (kept / TEACHER_SCORES).resolve() != (out / TEACHER_SCORES).resolve():
        ckpt.atomic_write(kept / TEACHER_SCORES, lambda tmp: shutil.copyfile(out / TEACHER_SCORES, tmp))
    results["teacher"] = {"weights": teacher, "eval": {**scores, "reused": reused}}
    log.info("teacher: %s, total %.1f at the training length", "scores reused" if reused else "scored",
             scores["train_length"]["total"])
    inits: dict[str, dict] = {}                                 # variant -> the ODE init's stage record
    init_budgets: dict[str, dict] = {}
    needs_init = any(m.init == "ode-init" for m in methods)
    reused = _reused_inits(config, variants) if needs_init else None
    for variant, path in (reused or {}).items():
        inits[variant] = {"stage": f"{variant}/ode-init", "status": "reused", "weights": str(path),
                          "step": exported_step(path), "sha256": file_sha256(path),
                          "kept": str(keep_checkpoint(path, kept / variant / "ode-init.safetensors"))}
        stored = _stored_config(path)
        init_budgets[variant] = budget(stored) if stored is not None else None
        results["stages"].append(inits[variant])
    if needs_init and reused is None:
        init_preset = train_preset(variants[0].ode_init_preset)
        frames = QUICK_FRAMES if config.quick else init_preset.data.num_frames
        pairs, record = _ode_pairs(config, teacher, frames)
        results["stages"].append(record)
        for variant in variants:
            train_config, overrides = stage_config(config, variant.ode_init_preset, variant,
                                                   out / variant.name / "ode-init", teacher=teacher, pairs=pairs)
            inits[variant.name] = run_stage(f"{variant.name}/ode-init", train_config, overrides)
            inits[variant.name]["kept"] = str(keep_checkpoint(inits[variant.name]["weights"],
                                                              kept / variant.name / "ode-init.safetensors"))
            init_budgets[variant.name] = budget(train_config)
            results["stages"].append(inits[variant.name])
    save()

    for variant in variants:
        for method in methods:
            init = inits[variant.name]["weights"] if method.init == "ode-init" else teacher
            folder = out / variant.name / method.slug
            train_config, overrides = stage_config(config, method.preset, variant, folder, teacher=teacher, init=init)
            record = run_stage(f"{variant.name}/{method.slug}", train_config, overrides)
            record["kept"] = str(keep_checkpoint(record["weights"], kept / variant.name / f"{method.slug}.safetensors"))
            results["stages"].append(record)
            scores, reused = evaluate_cached(record["kept"], config.eval, folder / "eval.json")
            log.info("%s / %s: %s, total %.1f at the training length", variant.name, method.name,
                     "scores reused" if reused else "scored", scores["train_length"]["total"])
            results["methods"].append({
                "method": method.name, "slug": method.slug, "variant": variant.name, "preset": method.preset,
                "init": method.init, "weights": record["weights"], "checkpoint": record["kept"],
                "budget": budget(train_config),
                "init_budget": init_budgets[variant.name] if method.init == "ode-init" else None,
                "train": {k: record.get(k) for k in ("status", "step", "wall_s")},
                "eval": {**scores, "reused": reused},
            })
            save()

    plot = plot_drift(results, out / "drift.png")
    results["plot"] = str(plot) if plot is not None else None
    results["complete"] = True
    save()
    pages = {out / "results.md": plot}
    if config.docs:                                  # the docs page gets its own copy of the plot, beside it
        docs = Path(config.docs)
        docs.parent.mkdir(parents=True, exist_ok=True)
        pages[docs] = Path(shutil.copyfile(plot, docs.with_name(f"{docs.stem}-drift.png"))) if plot else None
    for page, image in pages.items():
        markdown = results_markdown(results, plot_link=image.name if image is not None else None)
        ckpt.atomic_write(page, lambda tmp: Path(tmp).write_text(markdown))
        log.info("wrote %s", page)
    return results
