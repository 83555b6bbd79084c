"""`selfforcing experiment teacher`: the one-hour teacher recipe is the two documented training commands, runs end
to end, and picks up where it stopped."""

import json
from pathlib import Path

import pytest
import torch

from selfforcing.cli import main
from selfforcing.experiments.teacher import TeacherRecipe, recipe_overrides, run_teacher_recipe
from selfforcing.inference.loading import load_pipeline, read_pipeline_spec
from selfforcing.models.codec import FrameAutoencoder, LatentNorm, LearnedFrameCodec
from selfforcing.training.config import resolve_config

COMMITTED_CODEC = Path(__file__).resolve().parents[1] / "checkpoints" / "world" / "codec.safetensors"


def test_the_recipe_is_the_documented_commands():
    """docs/codec.md's two `selfforcing train teacher-world` commands, with OUT = runs/hour."""
    codec = f"data.codec_file={COMMITTED_CODEC} model.in_dim=16 model.out_dim=16"
    documented = {
        "short": f"{codec} data.num_frames=9 schedule.batch_size=8 schedule.steps=2300 optim.decay=constant "
                 "logging.sample_every=0 data.num_workers=1 checkpoint.every=100",
        "full": f"{codec} teacher.init_from=runs/hour/short/model_ema.safetensors optim.lr=3e-4 "
                "optim.warmup_steps=50 schedule.steps=600 ema.start_step=50 logging.sample_every=0 data.num_workers=1",
    }
    overrides = recipe_overrides(TeacherRecipe(out="runs/hour", codec=str(COMMITTED_CODEC)))
    for stage, command in documented.items():
        assert resolve_config("teacher-world", overrides[stage], "x") == \
            resolve_config("teacher-world", command.split(), "x")
    masked = recipe_overrides(TeacherRecipe(out="runs/hour", codec=str(COMMITTED_CODEC), short_steps=3600,
                                            overrides=("seed=1",), short_overrides=("teacher.mask_ratio=0.5",)))
    longer = [o.replace("schedule.steps=2300", "schedule.steps=3600") for o in overrides["short"]]
    assert masked["short"] == [*longer, "seed=1", "teacher.mask_ratio=0.5"] and longer != overrides["short"]
    assert masked["full"] == [*overrides["full"], "seed=1"]
    pixel = recipe_overrides(TeacherRecipe(out="runs/hour", codec=None))          # the pixel-space hour
    assert not any(o.startswith(("data.codec_file", "model.in_dim")) for o in pixel["short"] + pixel["full"])


def test_the_recipe_trains_both_stages_writes_and_scores_the_teacher_and_resumes(tmp_path, capsys):
    torch.manual_seed(0)
    codec = LearnedFrameCodec(FrameAutoencoder(channels=4, width=16), LatentNorm((0.0,) * 4, (1.0,) * 4))
    codec_file = codec.save(tmp_path / "codec.safetensors")
    tiny = ("data.text_encoder=minilm", "model.text_dim=384")           # a real text encoder: eval loads it
    recipe = TeacherRecipe(out=str(tmp_path / "hour"), codec=str(codec_file), short_steps=2, short_frames=3,
                           short_batch=4, full_steps=2, overrides=tiny, eval_n=2, preset="teacher-tiny")
    results = run_teacher_recipe(recipe)
    assert [s["status"] for s in results["stages"].values()] == ["trained", "trained"]
    stored = json.loads((tmp_path / "hour" / "full" / "stage.json").read_text())
    assert "teacher.init_from=" + str(tmp_path / "hour" / "short" / "model_ema.safetensors") in stored["overrides"]
    teacher = tmp_path / "hour" / "teacher.safetensors"
    assert read_pipeline_spec(teacher).codec == "frame-codec:../codec.safetensors"
    pipe, _ = load_pipeline(teacher)
    assert next(pipe.generator.parameters()).dtype == torch.float32    # fp16 on disk, fp32 on the CPU
    scores = json.loads((tmp_path / "hour" / "eval.json").read_text())
    assert scores["num_videos"] == 2 and results["eval"]["total"] == pytest.approx(scores["mean"]["total"])

    # the same command again: both stages are complete and skipped
    again = run_teacher_recipe(TeacherRecipe(**{**recipe.__dict__, "eval_n": 0}))
    assert [s["status"] for s in again["stages"].values()] == ["skipped", "skipped"]
    assert "eval" not in again


def test_bad_recipes_are_one_line(tmp_path, capsys):
    assert main(["experiment", "teacher", "-o", str(tmp_path), "--codec", str(tmp_path / "none.safetensors")]) == 2
    assert "no codec file" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not a codec")
    assert main(["experiment", "teacher", "-o", str(tmp_path), "--codec", str(tmp_path / "notes.txt")]) == 2
    assert "not a learned world codec" in capsys.readouterr().err
    assert not (tmp_path / "short").exists()
    with pytest.raises(ValueError, match="positive"):
        TeacherRecipe(short_steps=0)
