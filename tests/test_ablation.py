"""`selfforcing experiment ablation`: the quick mode end to end (every method x variant, resumable), the plan's
configs at full size, and the table / plot formatting as pure functions of a results dict."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from selfforcing.cli import build_parser, main
from selfforcing.experiments import METHODS, VARIANTS, AblationConfig, quick_config, run_ablation
from selfforcing.experiments.ablation import budget, stage_config
from selfforcing.experiments.cli import config_from_args, parse_steps
from selfforcing.experiments.evaluation import (EvalSettings, _long_videos, drift_checkpoints, exported_step,
                                                rolling_cache)
from selfforcing.experiments.results import (drift_series, format_against_teacher, format_budgets, format_paired,
                                             format_table, plot_drift, results_markdown, standard_error)
from selfforcing.training.checkpoint import TRAIN_CONFIG_KEY
from selfforcing.training.config import train_preset

ROWS = {(m.name, v.name) for m in METHODS for v in VARIANTS}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """One quick ablation (tiny models, 3 steps a stage), run through the command line."""
    out = tmp_path_factory.mktemp("ablation")
    docs = out / "docs" / "ablation.md"
    assert main(["experiment", "ablation", "--quick", "-o", str(out / "run"), "--docs", str(docs)]) == 0
    return out


def _dtypes(path: Path) -> set:
    from safetensors.torch import load_file

    return {t.dtype for t in load_file(str(path)).values() if t.is_floating_point()}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# ------------------------------------------------------------------------------------------------ quick mode
def test_quick_mode_scores_every_method_and_variant(quick):
    results = json.loads((quick / "run" / "results.json").read_text())
    assert results["complete"] and results["quick"]
    assert {(m["method"], m["variant"]) for m in results["methods"]} == ROWS
    for m in results["methods"]:
        short, long, speed = m["eval"]["train_length"], m["eval"]["long"], m["eval"]["speed"]
        assert all(_finite(short[k]) and 0 <= short[k] <= 100 for k in ("total", "quality", "semantic", "temporal"))
        assert short["frames"] == 6 and short["num_videos"] == 2
        assert sum(short["per_video"]["total"]) / 2 == pytest.approx(short["total"])     # scores pair up per video
        assert [len(v) for v in long["per_video_at"].values()] == [long["num_videos"]] * 3
        assert [len(c) for c in long["per_video_drift"]] == [4] * long["num_videos"]
        assert sum(long["per_video_at"]["4x"]) / long["num_videos"] == pytest.approx(long["at"]["4x"])
        assert long["skipped"] is None and long["frames"] == 24 and set(long["at"]) == {"1x", "2x", "4x"}
        assert all(_finite(v) for v in long["at"].values()) and long["drift"]["stops"] == [6, 12, 18, 24]
        assert _finite(speed["fps"]) and speed["fps"] > 0 and speed["runs"] == 3
        assert long["sink_size"] == (3 if m["variant"] == "chunk-wise" else 1)
        b = m["budget"]
        if b["algorithm"] == "distill":                     # critic every step, generator every 5th (step 0)
            assert (b["steps"], b["generator_updates"], b["critic_updates"]) == (3, 1, 3)
            assert m["init_budget"]["algorithm"] == "ode-init"
        else:
            assert (b["steps"], b["generator_updates"], b["critic_updates"]) == (3, 3, 0)
            assert m["init"] == "teacher" and m["init_budget"] is None
        kept = quick / "run" / "checkpoints" / m["variant"] / f"{m['slug']}.safetensors"
        assert m["checkpoint"] == str(kept) and _dtypes(kept) == {torch.float16}        # the scored copy is fp16
    assert _dtypes(quick / "run" / "checkpoints" / "frame-wise" / "ode-init.safetensors") == {torch.float16}
    assert (json.loads((quick / "run" / "checkpoints" / "teacher-eval.json").read_text())
            == json.loads((quick / "run" / "teacher-eval.json").read_text()))      # the teacher's scores kept too
    assert [s["stage"] for s in results["stages"][:4]] == ["teacher", "ode-pairs", "chunk-wise/ode-init",
                                                            "frame-wise/ode-init"]
    assert all(s["status"] == "trained" and s["wall_s"] >= 0 for s in results["stages"])
    assert results["command"].startswith("selfforcing experiment ablation") and "--quick" in results["command"]
    assert results["machine"]["torch_threads"] >= 1 and results["settings"]["drift_checkpoints"] == [1, 2, 4]
    markdown = (quick / "run" / "results.md").read_text()
    docs = (quick / "docs" / "ablation.md").read_text()
    if results["plot"] is not None:                            # with matplotlib: a copy of the plot beside the page
        assert (quick / "docs" / "ablation-drift.png").is_file() and "](ablation-drift.png)" in docs
    assert markdown == docs.replace("ablation-drift.png", "drift.png")
    assert "| SF+GAN | frame-wise |" in markdown and "Total @4x" in markdown
    assert "| TF+DMD | frame-wise |" in markdown.split("video by video")[1]      # the paired table
    teacher = results["teacher"]["eval"]                    # the reference: the training length only
    assert len(teacher["train_length"]["per_video"]["total"]) == 2 and teacher["speed"] is None
    assert teacher["long"]["num_videos"] == 0 and "bidirectional" in teacher["long"]["skipped"]
    assert "## Against the teacher, video by video" in markdown
    assert f"torch {torch.__version__}) in " in markdown and "of wall-clock." in markdown    # a fresh run: no reuse


def test_rerun_skips_finished_stages_and_resumes_unfinished_ones(quick, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(quick / "run", out)
    weights = sorted(out.glob("*/*/generator_ema.safetensors")) + [out / "teacher" / "model_ema.safetensors"]
    assert len(weights) == 2 * (len(METHODS) + 1) + 1
    stamps = {p: p.stat().st_mtime_ns for p in weights}
    results = run_ablation(quick_config(str(out)))
    assert {s["status"] for s in results["stages"]} == {"skipped"}
    assert all(m["eval"]["reused"] for m in results["methods"]) and results["teacher"]["eval"]["reused"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert "of wall-clock (what an earlier run had trained or scored was reused)." in (out / "results.md").read_text()
    # a stage killed after its last checkpoint but before the export, and one asked for more steps
    (out / "frame-wise" / "sf-dmd" / "generator_ema.safetensors").unlink()
    results = run_ablation(quick_config(str(out), methods=("sf-dmd",), variants=("frame-wise",)))
    status = {s["stage"]: (s["status"], s["step"]) for s in results["stages"] if "step" in s}
    assert status["frame-wise/sf-dmd"] == ("resumed", 3)
    assert (out / "frame-wise" / "sf-dmd" / "generator_ema.safetensors").exists()
    more = dict(quick_config(str(out)).steps, distill=4)
    results = run_ablation(quick_config(str(out), methods=("causvid",), variants=("frame-wise",), steps=more))
    status = {s["stage"]: (s["status"], s["step"]) for s in results["stages"] if "step" in s}
    assert status["frame-wise/causvid"] == ("resumed", 4)
    kept = out / "checkpoints" / "frame-wise" / "causvid.safetensors"
    assert json.loads((out / "frame-wise" / "causvid" / "eval.json").read_text())["step"] == 4
    assert results["methods"][0]["checkpoint"] == str(kept) and exported_step(kept) == 4
    assert status["frame-wise/ode-init"] == ("skipped", 3)
    assert not any(m["eval"]["reused"] for m in results["methods"])       # new weights, new scores


def test_given_ode_inits_are_reused_and_the_methods_start_from_them(quick, tmp_path):
    """With --ode-inits the pairs and inits are not trained: the methods start from the given files."""
    kept = quick / "run" / "checkpoints"
    config = quick_config(str(tmp_path / "run"), teacher=str(quick / "run" / "teacher" / "model_ema.safetensors"),
                          ode_inits=str(kept), methods=("sf-dmd",), variants=("chunk-wise",))
    results = run_ablation(config)
    stages = {s["stage"]: s for s in results["stages"]}
    assert list(stages) == ["teacher", "chunk-wise/ode-init", "chunk-wise/sf-dmd"]       # no ODE pairs
    assert results["teacher"]["eval"]["reused"]              # its scores kept beside the inits: not generated again
    assert (tmp_path / "run" / "teacher-eval.json").read_text() == (kept / "teacher-eval.json").read_text()
    init = stages["chunk-wise/ode-init"]
    assert init["status"] == "reused" and init["weights"] == str(kept / "chunk-wise" / "ode-init.safetensors")
    assert init["step"] == 3 and len(init["sha256"]) == 64
    with safe_open(str(tmp_path / "run" / "chunk-wise" / "sf-dmd" / "generator_ema.safetensors"), "pt") as f:
        stored = json.loads(f.metadata()[TRAIN_CONFIG_KEY])
    assert stored["distill"]["generator_init"] == init["weights"]
    assert results["methods"][0]["init_budget"]["algorithm"] == "ode-init"
    assert not (tmp_path / "run" / "ode-pairs").exists()


def test_ode_inits_default_to_the_committed_ones_with_the_committed_teacher_only(tmp_path):
    from selfforcing.experiments.ablation import COMMITTED_ODE_INITS, COMMITTED_TEACHER

    def config(*options):
        return config_from_args(build_parser().parse_args(["experiment", "ablation", "-o", str(tmp_path), *options]))

    assert (config().teacher, config().ode_inits) == (COMMITTED_TEACHER, COMMITTED_ODE_INITS)
    assert config("--teacher", "t.safetensors").ode_inits is None             # another teacher: train its inits
    assert config("--ode-inits", "none").ode_inits is None
    assert config("--teacher", "t.safetensors", "--ode-inits", "mine").ode_inits == "mine"
    assert "--ode-inits mine" in config("--ode-inits", "mine").command


def test_cached_scores_follow_the_weights_contents_not_just_the_step(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from selfforcing.experiments import evaluation
    from selfforcing.training.checkpoint import STEP_KEY

    calls = []
    monkeypatch.setattr(evaluation, "evaluate_generator",
                        lambda path, settings: calls.append(path) or {"n": len(calls)})
    weights, cache, settings = tmp_path / "g.safetensors", tmp_path / "eval.json", EvalSettings()
    save_file({"w": torch.zeros(2)}, str(weights), metadata={STEP_KEY: "7"})
    assert evaluation.evaluate_cached(weights, settings, cache) == ({"n": 1}, False)
    assert evaluation.evaluate_cached(weights, settings, cache) == ({"n": 1}, True)
    assert evaluation.evaluate_cached(weights, dataclasses.replace(settings, seed=1), cache) == ({"n": 2}, False)
    save_file({"w": torch.ones(2)}, str(weights), metadata={STEP_KEY: "7"})         # same step, other weights
    assert evaluation.evaluate_cached(weights, dataclasses.replace(settings, seed=1), cache) == ({"n": 3}, False)


def test_scores_cached_elsewhere_are_reused_and_copied_when_they_match(tmp_path, monkeypatch):
    """A committed cache (read only) is reused for the same weights and settings; settings named in `ignore` do
    not break the match (a teacher's long-video settings), any other does."""
    from safetensors.torch import save_file

    from selfforcing.experiments import evaluation
    from selfforcing.experiments.evaluation import LONG_VIDEO_SETTINGS

    calls = []
    monkeypatch.setattr(evaluation, "evaluate_generator",
                        lambda path, settings: calls.append(path) or {"n": len(calls)})
    weights, settings = tmp_path / "t.safetensors", EvalSettings()
    save_file({"w": torch.zeros(2)}, str(weights))
    committed, cache = tmp_path / "committed" / "teacher-eval.json", tmp_path / "run" / "teacher-eval.json"
    assert evaluation.evaluate_cached(weights, settings, committed, ignore=LONG_VIDEO_SETTINGS) == ({"n": 1}, False)
    stored = committed.read_text()
    other_budget = dataclasses.replace(settings, long_budget_s=1.0, long_prompts=2)
    assert evaluation.evaluate_cached(weights, other_budget, cache, reuse_from=[tmp_path / "nope.json", committed],
                                      ignore=LONG_VIDEO_SETTINGS) == ({"n": 1}, True)
    assert cache.read_text() == stored and committed.read_text() == stored          # copied, the source untouched
    cache.unlink()
    assert evaluation.evaluate_cached(weights, other_budget, cache, reuse_from=[committed]) == ({"n": 2}, False)
    assert evaluation.evaluate_cached(weights, dataclasses.replace(settings, seed=3), cache, reuse_from=[committed],
                                      ignore=LONG_VIDEO_SETTINGS) == ({"n": 3}, False)
    assert committed.read_text() == stored
    cache.write_text("{not json")                                       # a broken cache is scored again, not fatal
    assert evaluation.evaluate_cached(weights, settings, cache) == ({"n": 4}, False)


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    assert main(["experiment", "ablation", "--quick", "-o", str(tmp_path), "--steps", "critic=3"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["experiment", "ablation", "--quick", "-o", str(tmp_path), "--teacher", "t.safetensors"]) == 2
    assert "--quick" in capsys.readouterr().err
    assert parse_steps(["distill=600", "causal-diffusion=120"]) == {"distill": 600, "causal-diffusion": 120}
    args = build_parser().parse_args(["experiment", "ablation", "--checkpoints", "ck", "--steps", "ode-init=7"])
    config = config_from_args(args)                 # the committed run's budgets by default, --steps on top
    assert config.steps == {"distill": 100, "causal-diffusion": 100, "ode-init": 7} and config.checkpoints == "ck"
    assert "--checkpoints ck" in config.command and config.eval.num_prompts == 16
    with pytest.raises(ValueError, match="unknown method"):
        AblationConfig(methods=("sf-foo",))


# ------------------------------------------------------------------------------------------------ the plan
def test_full_plan_resolves_every_stage_from_its_preset(tmp_path):
    config = AblationConfig(out=str(tmp_path), steps={"distill": 100})
    for variant in VARIANTS:
        init, _ = stage_config(config, variant.ode_init_preset, variant, tmp_path, teacher="T.safetensors",
                               pairs="P")
        assert init.ode_init.init_from == "T.safetensors" and init.data.ode_pairs == "P"
        assert init.model.num_frame_per_block == variant.frames_per_block
        for method in METHODS:
            cfg, overrides = stage_config(config, method.preset, variant, tmp_path / method.slug,
                                          teacher="T.safetensors", init="I.safetensors" if method.init == "ode-init"
                                          else None)
            preset = train_preset(method.preset)
            assert cfg.model.num_frame_per_block == variant.frames_per_block and cfg.out_dir.endswith(method.slug)
            assert cfg.model.dim == preset.model.dim and cfg.data.size == 64
            if cfg.algorithm == "distill":
                assert cfg.distill.teacher == "T.safetensors" and cfg.distill.generator_init == "I.safetensors"
                assert cfg.distill.loss == preset.distill.loss and cfg.schedule.steps == 100
                assert budget(cfg)["generator_updates"] == 100 // cfg.distill.generator_every
            else:
                assert cfg.causal.init_from == "T.safetensors"
                assert cfg.schedule.steps == preset.schedule.steps        # not overridden: the preset's
    assert {v.frames_per_block for v in VARIANTS} == {3, 1}


def test_rolling_cache_and_drift_checkpoints():
    assert rolling_cache(3, 21) == {"local_attn_size": 21, "sink_size": 3}
    assert rolling_cache(1, 21) == {"local_attn_size": 21, "sink_size": 1}
    assert rolling_cache(3, 8) == {"local_attn_size": 6, "sink_size": 3}
    with pytest.raises(ValueError):
        rolling_cache(3, 5)
    assert drift_checkpoints(10) == (1, 5, 10) and drift_checkpoints(4) == (1, 2, 4) and drift_checkpoints(1) == (1,)


def test_slow_generators_skip_long_videos_with_the_reason(tmp_path):
    settings = EvalSettings(long_prompts=4, long_budget_s=60)
    out = _long_videos(tmp_path / "never-loaded.safetensors", 21, 3, 0.5, 21, settings, encoder=None)
    assert out["num_videos"] == 0 and "budget of 60 s" in out["skipped"] and "420 s" in out["skipped"]


# ------------------------------------------------------------------------------------------------ formatting
def _row(method, variant, total, at10=None, fps=12.345, skipped=None):
    long = {"frames": 210, "num_videos": 0 if skipped else 4, "requested": 4, "window": 21, "local_attn_size": 21,
            "sink_size": 3, "skipped": skipped, "at": None if skipped else {"1x": total + 1, "5x": total - 5,
                                                                                "10x": at10},
            "drift": None if skipped else {"stops": [21, 42], "total": [total, total - 5]}}
    return {"method": method, "variant": variant, "init_budget": None if method == "TF" else {"steps": 400},
            "budget": {"algorithm": "distill", "steps": 600, "generator_updates": 120, "critic_updates": 600,
                       "batch_size": 4},
            "train": {"status": "trained", "wall_s": 125.0},
            "eval": {"train_length": {"frames": 21, "num_videos": 8, "total": total, "quality": 80.0,
                                      "semantic": 70.25, "temporal": 90.0},
                     "speed": {"fps": fps}, "long": long}}


def fake_results():
    return {"command": "selfforcing experiment ablation", "quick": False,
            "machine": {"platform": "Linux", "cpu_count": 2, "torch_threads": 2, "cuda": None},
            "settings": {"drift_checkpoints": [1, 5, 10]},
            "methods": [_row("SF+DMD", "chunk-wise", 81.04, at10=70.0),
                        _row("TF", "frame-wise", 60.0, fps=0.0123, skipped="one video takes 9000 s")]}


def test_format_table_has_one_row_per_method_and_variant():
    table = format_table(fake_results()).splitlines()
    assert table[0] == ("| Method | Variant | Total | Quality | Semantic | Temporal | Total @1x | Total @5x "
                        "| Total @10x | Change 1x → 10x | FPS |")
    assert table[1].startswith("| --- | --- | ---: |")
    assert table[2] == "| SF+DMD | chunk-wise | 81.0 | 80.0 | 70.2 | 90.0 | 82.0 | 76.0 | 70.0 | -12.0 | 12.3 |"
    assert table[3] == "| TF | frame-wise | 60.0 | 80.0 | 70.2 | 90.0 | – | – | – | – | 0.0123 |"
    budgets = format_budgets(fake_results()).splitlines()
    assert budgets[2] == "| SF+DMD | chunk-wise | distill | 600 | 120 | 600 | 4 | ODE init (400) | 2.1 min |"
    assert "| teacher |" in budgets[3]


def _with_videos(row, totals, at1, at5, at10, semantic=None):
    row["eval"]["train_length"]["per_video"] = {"total": totals, **({"semantic": semantic} if semantic else {})}
    row["eval"]["long"]["per_video_at"] = {"1x": at1, "5x": at5, "10x": at10}
    return row


def test_paired_differences_against_sf_dmd():
    """Differences pair up video by video: a constant offset has zero error however spread the videos are."""
    results = fake_results()
    results["methods"] = [
        _with_videos(_row("SF+DMD", "chunk-wise", 40.0), [30.0, 40.0, 50.0], [22.0, 33.0], [20.0, 30.0], [12.0, 30.0],
                     semantic=[10.0, 20.0, 30.0]),
        _with_videos(_row("TF+DMD", "chunk-wise", 42.0), [32.0, 41.0, 53.0], [25.0], [25.0], [20.0],
                     semantic=[13.0, 23.0]),
        _with_videos(_row("TF", "chunk-wise", 45.0), [35.0, 45.0, 55.0], [21.0, 31.0], [21.0, 31.0], [11.0, 28.0]),
        _row("DF", "chunk-wise", 30.0),                                             # no per-video scores: no row
        _with_videos(_row("TF", "frame-wise", 45.0), [1.0, 2.0], [1.0], [1.0], None),   # no SF+DMD there
    ]
    assert standard_error([2.0, 1.0, 3.0]) == pytest.approx(1 / math.sqrt(3)) and standard_error([1.0]) is None
    rows = format_paired(results).splitlines()
    assert rows[0] == ("| Method | Variant | Δ total | Δ quality | Δ semantic | Δ temporal | Δ total @1x | Δ total @5x "
                       "| Δ total @10x | Δ change 1x → 10x |")
    assert rows[2:] == ["| TF+DMD | chunk-wise | +2.0 ± 0.6 (3) | – | +3.0 ± 0.0 (2) | – | +3.0 (1) | +5.0 (1) "
                        "| +8.0 (1) | +5.0 (1) |",
                        "| TF | chunk-wise | +5.0 ± 0.0 (3) | – | – | – | -1.5 ± 0.5 (2) | +1.0 ± 0.0 (2) "
                        "| -1.5 ± 0.5 (2) | +0.0 ± 0.0 (2) |"]
    results["methods"][0]["eval"]["long"]["at"] = {"1x": 27.5, "5x": 25.0, "10x": 21.0}
    sf = format_table(results).splitlines()[2]                  # the change 1x -> 10x, video by video: -10, -3
    assert sf.endswith("| 27.5 | 25.0 | 21.0 | -6.5 ± 3.5 | 12.3 |")
    assert format_table(results).splitlines()[2].startswith("| SF+DMD | chunk-wise | 40.0 ± 5.8 | 80.0 |")
    page = results_markdown(results)
    assert "## Against SF+DMD, video by video" in page and "± its standard error" in page
    assert format_paired(fake_results()) is None and "Against SF+DMD" not in results_markdown(fake_results())


def test_every_method_against_the_teacher_video_by_video():
    results = fake_results()
    results["methods"] = [_with_videos(_row("SF+DMD", "chunk-wise", 40.0), [30.0, 40.0, 50.0], [1.0], [1.0], [1.0])]
    assert format_against_teacher(results) is None                 # no teacher scores: no table
    results["teacher"] = {"eval": {"train_length": {
        **{k: 50.0 for k in ("quality", "semantic", "temporal")}, "total": 42.0,
        "per_video": {"total": [31.0, 42.0, 53.0], **{k: [50.0] * 3 for k in ("quality", "semantic", "temporal")}}}}}
    rows = format_against_teacher(results).splitlines()
    assert rows[0] == "| Method | Variant | Δ total | Δ quality | Δ semantic | Δ temporal |"
    assert rows[2].startswith("| Teacher (many steps, guidance) | bidirectional | 42.0 ± 6.4 | 50.0 ± 0.0 |")
    assert rows[3] == "| SF+DMD | chunk-wise | -2.0 ± 0.6 (3) | – | – | – |"
    assert "## Against the teacher, video by video" in results_markdown(results)


def test_markdown_notes_skips_and_links_the_plot():
    page = results_markdown(fake_results(), plot_link="drift.png")
    assert page.startswith("# ") and format_table(fake_results()) in page
    assert "TF (frame-wise): long videos skipped: one video takes 9000 s." in page
    assert "![Total score per window over the long videos](drift.png)" in page
    assert "Quick mode" not in page
    assert drift_series(fake_results()) == {"chunk-wise": [("SF+DMD", [21, 42], [81.04, 76.04])], "frame-wise": []}


def test_drift_plot_is_skipped_with_a_warning_without_matplotlib(tmp_path, monkeypatch, caplog):
    for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)                    # None in sys.modules: ImportError
    assert plot_drift(fake_results(), tmp_path / "drift.png") is None
    assert "matplotlib is not installed" in caplog.text and not (tmp_path / "drift.png").exists()


def test_drift_plot_draws_both_variants(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_drift(fake_results(), tmp_path / "drift.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = fake_results()
    empty["methods"] = empty["methods"][1:]                     # only a skipped long evaluation: nothing to draw
    assert plot_drift(empty, tmp_path / "none.png") is None
