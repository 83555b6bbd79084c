"""Tests of the oracle evaluator: real renders score near the top, and each corruption loses on its score."""

import argparse
import json
import math
from types import SimpleNamespace

import numpy as np
import torch
import pytest

from selfforcing import world
from selfforcing.eval import (
    FEATURE_NAMES, FRAME_DIMENSIONS, GROUPS, TOTAL_WEIGHTS, drift_curve, evaluate_folder, evaluate_stills,
    evaluate_video, format_table, frechet_distance, measure, reference_features, still_scores, video_features,
)
from selfforcing.eval import cli as eval_cli
from selfforcing.eval.calibration import add_noise, blur, flicker, recolour, reverse
from selfforcing.eval.report import STILL_FRAMES
from selfforcing.world import vocab
from selfforcing.world.scene import Scene, place_object

FRAMES = 21                       # the training length of the world model, in frames


# --- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    """Held-out scenes covering every motion and 1, 2 and 3 objects (the first ones that add something)."""
    chosen, motions, counts = [], set(), set()
    for scene in world.heldout_scenes(64):
        if not {o.motion for o in scene.objects} <= motions or len(scene.objects) not in counts:
            chosen.append(scene)
            motions |= {o.motion for o in scene.objects}
            counts.add(len(scene.objects))
    assert motions == set(vocab.MOTIONS) and counts == {1, 2, 3}
    return chosen


@pytest.fixture(scope="module")
def real(scenes) -> list:
    return [evaluate_video(world.render(s, 0, FRAMES), world.detailed_caption(s)) for s in scenes]


def single_object_scenes(motions, seed: int = 0) -> list[Scene]:
    """One object per motion, random shape (spinning shapes are never round), colour, size, speed, background."""
    rng = np.random.default_rng(seed)
    out = []
    for motion in motions:
        shapes = [s for s in vocab.SHAPES if not (motion == "spin" and s in vocab.ROTATION_SYMMETRIC)]
        obj = place_object(rng, shapes[rng.integers(len(shapes))], vocab.COLOURS[rng.integers(8)],
                           vocab.SIZES[rng.integers(3)], motion, vocab.SPEEDS[rng.integers(3)])
        out.append(Scene((obj,), vocab.BACKGROUNDS[rng.integers(len(vocab.BACKGROUNDS))]))
    return out


# --- real videos score near the top -----------------------------------------------------------------------
def test_real_videos_score_near_the_top(scenes, real):
    for scene, s in zip(scenes, real):
        assert s.total >= 95 and s.semantic >= 90, (world.detailed_caption(scene), s.dimensions)
        for value in [s.semantic, s.quality, s.temporal, s.total, *s.dimensions.values()]:
            assert 0 <= value <= 100
    assert np.mean([s.total for s in real]) >= 98


def test_short_prompts_and_long_clips_score_near_the_top(scenes):
    for scene in scenes[:5]:
        s = evaluate_video(world.render(scene, 0, 64), world.short_caption(scene))
        assert s.total >= 95 and s.semantic >= 90, (world.short_caption(scene), s.dimensions)
        assert "size" not in s.dimensions                # a short caption says nothing about size


@pytest.mark.parametrize("seed", [0, 1])
def test_every_motion_alone_scores_near_the_top(seed):
    for scene in single_object_scenes(vocab.MOTIONS, seed):
        s = evaluate_video(world.render(scene, 0, FRAMES), world.detailed_caption(scene))
        assert s.semantic >= 95 and s.total >= 95, (world.detailed_caption(scene), s.dimensions)


def test_shapes_are_recognised_at_every_size():
    rng = np.random.default_rng(3)
    for shape in vocab.SHAPES:
        for size in vocab.SIZES:
            motion = "spin" if shape not in vocab.ROTATION_SYMMETRIC else "bounce"
            scene = Scene((place_object(rng, shape, "white", size, motion, "fast"),), "checker")
            track = measure(world.render(scene, 0, 17)).tracks["white"]
            seen = track.shape[track.shape >= 0]
            assert len(seen) >= 4 and (seen == vocab.SHAPES.index(shape)).all(), (shape, size, seen)


def test_mp4_round_trip_still_scores_near_the_top(tmp_path, scenes):
    world.write_clips(scenes[:4], tmp_path, num_frames=FRAMES)
    for clip in world.read_clips(tmp_path):
        s = evaluate_video(clip.video, clip.detailed)
        assert s.total >= 95 and s.semantic >= 90, (clip.detailed, s.dimensions)


# --- each corruption loses on its score ---------------------------------------------------------------------
def test_pure_noise_loses_everything(scenes):
    rng = np.random.default_rng(0)
    for scene in scenes[:4]:
        s = evaluate_video(rng.integers(0, 256, (FRAMES, 64, 64, 3), dtype=np.uint8), world.detailed_caption(scene))
        assert s.semantic <= 10 and s.quality <= 10 and s.temporal <= 10 and s.total <= 10


def test_frozen_frames_lose_motion(scenes, real):
    for scene, r in zip(scenes, real):
        v = world.render(scene, 0, FRAMES)
        s = evaluate_video(np.repeat(v[:1], FRAMES, axis=0), world.detailed_caption(scene))
        assert s.dimensions["motion"] <= 10 and s.dimensions["speed"] <= 10
        assert s.semantic <= r.semantic - 25


def test_shuffled_frames_lose_temporal(scenes, real):
    rng = np.random.default_rng(0)
    for scene, r in zip(scenes, real):
        v = world.render(scene, 0, FRAMES)
        s = evaluate_video(v[rng.permutation(FRAMES)], world.detailed_caption(scene))
        assert s.dimensions["smoothness"] <= 35 and s.temporal <= r.temporal - 20


def test_wrong_colour_loses_semantic(scenes, real):
    for scene, r in zip(scenes, real):
        s = evaluate_video(world.render(recolour(scene), 0, FRAMES), world.detailed_caption(scene))
        assert s.dimensions["colour"] <= 100 * (1 - 1 / len(scene.objects)) + 1
        assert s.semantic <= r.semantic - 20


def test_wrong_direction_loses_semantic():
    for scene in single_object_scenes(vocab.LINEAR_MOTIONS, seed=4):
        prompt = world.detailed_caption(scene)
        right = evaluate_video(world.render(scene, 0, FRAMES), prompt)
        wrong = evaluate_video(world.render(reverse(scene), 0, FRAMES), prompt)
        assert wrong.dimensions["motion"] <= 5 and wrong.dimensions["speed"] <= 5, prompt
        assert wrong.semantic <= right.semantic - 30


def test_blur_loses_quality(scenes, real):
    for scene, r in zip(scenes, real):
        s = evaluate_video(blur(world.render(scene, 0, FRAMES)), world.detailed_caption(scene))
        assert s.dimensions["sharpness"] <= 10 and s.quality <= r.quality - 25


def test_flicker_loses_temporal(scenes, real):
    for scene, r in zip(scenes, real):
        s = evaluate_video(flicker(world.render(scene, 0, FRAMES)), world.detailed_caption(scene))
        assert s.dimensions["flicker"] <= 10 and s.temporal <= r.temporal - 25


def test_drift_curve_drops_when_the_video_degrades_half_way(scenes):
    rng = np.random.default_rng(0)
    for scene in scenes[:3]:
        v = world.render(scene, 0, 96)
        v[48:] = add_noise(v[48:], 30, rng)
        curve = drift_curve(v, world.detailed_caption(scene), window=16)
        assert curve.starts == [0, 16, 32, 48, 64, 80] and curve.stops[-1] == 96
        early, late = np.array(curve.total[:3]), np.array(curve.total[3:])
        assert early.min() >= 95 and late.max() <= 85, curve.total
        assert max(curve.quality[3:]) <= min(curve.quality[:3]) - 20
        assert max(curve.temporal[3:]) <= min(curve.temporal[:3]) - 20


def test_drift_windows_cover_the_video_and_merge_a_short_tail(scenes):
    curve = drift_curve(world.render(scenes[0], 0, 38), world.short_caption(scenes[0]), window=16)
    assert curve.starts == [0, 16] and curve.stops == [16, 38]       # the 6-frame tail joins the window before
    assert all(len(v) == 2 for v in (curve.semantic, curve.quality, curve.temporal, curve.total))


# --- distribution distance --------------------------------------------------------------------------------
def test_frechet_distance_of_real_vs_real_is_much_smaller_than_vs_corrupted():
    a, b = reference_features(16, FRAMES, seed=0), reference_features(16, FRAMES, seed=1)
    assert a.shape == (16, len(FEATURE_NAMES))
    assert frechet_distance(a, a) < 1e-6
    rng = np.random.default_rng(0)
    videos = [world.render(s, 0, FRAMES) for s in world.train_scenes(16, seed=1)]
    blurred = np.stack([video_features(measure(blur(v))) for v in videos])
    noisy = np.stack([video_features(measure(add_noise(v, 20, rng))) for v in videos])
    real_real = frechet_distance(a, b)
    assert 5 * real_real < frechet_distance(a, blurred)
    assert 5 * real_real < frechet_distance(a, noisy)


# --- folders and the CLI ----------------------------------------------------------------------------------
def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="selfforcing")
    eval_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *argv])


def test_cli_scores_a_folder_written_by_write_clips(tmp_path, capsys, scenes):
    world.write_clips(scenes[:3], tmp_path, num_frames=FRAMES)
    args = parse("--videos", str(tmp_path), "--json", "--reference", "8")
    report = args.func(args)
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"num_videos", "weights", "mean", "standard_error", "drift", "frechet_distance", "reference",
                        "videos"}
    assert out["num_videos"] == 3 and out["weights"] == TOTAL_WEIGHTS
    assert set(out["mean"]) == {"total", "semantic", "quality", "temporal", "dimensions"}
    assert set(out["mean"]["dimensions"]) == {d for dims in GROUPS.values() for d in dims}
    assert set(out["drift"]) >= {"window", "starts", "stops", "total", "semantic", "quality", "temporal"}
    assert set(out["videos"][0]) >= {"name", "prompt", "num_frames", "total", "semantic", "quality", "temporal",
                                     "dimensions", "drift"}
    assert out["videos"][0]["name"] == "00000.mp4" and out["mean"]["total"] >= 95
    assert math.isfinite(out["frechet_distance"]) and out["reference"]["n"] == 8
    assert report.mean()["total"] == pytest.approx(out["mean"]["total"])

    totals = [v["total"] for v in out["videos"]]                       # the spread of the mean over the videos
    assert out["standard_error"]["total"] == pytest.approx(np.std(totals, ddof=1) / math.sqrt(3))

    table = format_table(evaluate_folder(tmp_path, reference=0))
    assert "00002.mp4" in table and "mean" in table and "drift" in table and "std. error" in table
    assert evaluate_folder(tmp_path, limit=1, reference=0).standard_error() is None   # one video: no spread


def test_cli_generates_the_heldout_set_from_a_checkpoint(tmp_path, capsys, monkeypatch):
    from selfforcing.inference import loading

    def fake_load_pipeline(path, **_):
        """A 'generator' that renders the scene its (extended) prompt describes, three frames a chunk."""
        def stream(prompts, *, num_frames, seeds):
            video = torch.stack([world.render_tensor(world.scene_from_prompt(p, np.random.default_rng(s)), 0,
                                                     num_frames) for p, s in zip(prompts, seeds, strict=True)])
            given.extend(prompts)
            for start in range(0, num_frames, 3):
                yield SimpleNamespace(frames=video[:, start:start + 3])               # (B, T, 3, H, W)

        codec = SimpleNamespace(temporal_factor=1, num_pixel_frames=lambda n: n)
        return SimpleNamespace(codec=codec, stream=stream), loading.PipelineSpec(train_frames=FRAMES)

    given = []
    monkeypatch.setattr(loading, "load_pipeline", fake_load_pipeline)
    checkpoint = tmp_path / "generator.safetensors"
    checkpoint.write_bytes(b"")
    args = parse("--checkpoint", str(checkpoint), "--n", "3", "--reference", "0", "--seed", "5")
    report = args.func(args)
    shorts = [short for short, _ in world.heldout_prompts(3)]
    assert given == [world.extend_prompt(p) for p in shorts] == report.prompts
    assert report.num_frames == [FRAMES] * 3 and report.mean()["total"] >= 95
    assert "heldout-002" in capsys.readouterr().out


def test_stills_score_real_frames_near_the_top_and_lose_on_damage(scenes):
    """A real first frame held still scores ~100 on every frame dimension; noise loses all, a wrong colour its colour."""
    items = [(f"s{i}", world.render(s, 0, 1), world.detailed_caption(s)) for i, s in enumerate(scenes)]
    real = still_scores(evaluate_stills(items))["mean"]
    assert set(real["dimensions"]) == set(FRAME_DIMENSIONS) and real["frame"] >= 95
    rng = np.random.default_rng(0)
    noise = [(n, rng.integers(0, 256, v.shape, dtype=np.uint8), p) for n, v, p in items]
    assert still_scores(evaluate_stills(noise))["mean"]["frame"] <= 10
    wrong = [(f"s{i}", world.render(recolour(s), 0, 1), world.detailed_caption(s)) for i, s in enumerate(scenes)]
    assert still_scores(evaluate_stills(wrong))["mean"]["dimensions"]["colour"] <= real["dimensions"]["colour"] - 30


def test_cli_stills_from_a_folder_and_from_a_causal_checkpoint(tmp_path, capsys, monkeypatch, scenes):
    from selfforcing.inference import loading

    world.write_clips(scenes[:3], tmp_path, num_frames=6)
    args = parse("--videos", str(tmp_path), "--stills", "--json")
    args.func(args)
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"num_stills", "mean", "stills"} and out["num_stills"] == 3
    assert out["mean"]["frame"] >= 95 and set(out["stills"][0]) == {"name", "prompt", "frame", "dimensions"}

    def fake_load_pipeline(path, **_):
        """A causal 'generator' of 3-frame blocks that renders the scene its prompt describes."""
        def stream(prompts, *, num_frames, seeds):
            asked.extend([num_frames] * len(prompts))
            yield SimpleNamespace(frames=torch.stack([world.render_tensor(
                world.scene_from_prompt(p, np.random.default_rng(s)), 0, num_frames) for p, s in zip(prompts, seeds)]))

        config = SimpleNamespace(causal=True, independent_first_frame=False, num_frame_per_block=3)
        codec = SimpleNamespace(temporal_factor=1, num_pixel_frames=lambda n: n)
        return SimpleNamespace(codec=codec, stream=stream, config=config), loading.PipelineSpec(train_frames=FRAMES)

    asked = []
    monkeypatch.setattr(loading, "load_pipeline", fake_load_pipeline)
    checkpoint = tmp_path / "generator.safetensors"
    checkpoint.write_bytes(b"")
    args = parse("--checkpoint", str(checkpoint), "--n", "2", "--stills")
    report = args.func(args)
    assert asked == [3, 3] and report.num_frames == [STILL_FRAMES] * 2
    table = capsys.readouterr().out
    assert "heldout-001" in table and "sharpness" in table and "drift" not in table


def test_bad_input_raises_one_line_value_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        evaluate_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="prompts.jsonl"):
        evaluate_folder(tmp_path)
    (tmp_path / "00000.mp4").write_bytes(b"not a video")
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"file": "00000.mp4", "short": "a red ball"}) + "\n")
    with pytest.raises(ValueError, match="cannot read video") as err:
        evaluate_folder(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"file": "00000.mp4"}) + "\n")
    with pytest.raises(ValueError, match="needs a 'file'"):
        evaluate_folder(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        eval_cli.run(parse("--checkpoint", str(tmp_path / "nope.pt")))
    with pytest.raises(ValueError, match="uint8"):
        evaluate_video(np.zeros((4, 64, 64, 3), dtype=np.float32), "a red ball")
    with pytest.raises(ValueError, match="square"):
        evaluate_video(np.zeros((4, 32, 64, 3), dtype=np.uint8), "a red ball")
    with pytest.raises(ValueError, match="cannot find an object"):
        evaluate_video(np.zeros((4, 64, 64, 3), dtype=np.uint8), "nothing to see here")


def test_main_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from selfforcing.cli import main

    assert main(["eval", "--videos", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selfforcing: error:") and "does not exist" in err and "\n" not in err


def test_calibration_table_orders_real_above_every_corruption(capsys):
    args = parse("--calibrate", "--n", "4", "--json")
    table = args.func(args)
    assert json.loads(capsys.readouterr().out) == table
    assert table["real"]["total"] >= 95 and table["noise"]["total"] < 10
    for name, scores in table.items():
        if name != "real":
            assert scores["total"] < table["real"]["total"] - 5, name


def test_speed_options_reach_the_generator(tmp_path, monkeypatch):
    import torch

    from selfforcing.inference import loading

    seen = {}

    def fake_load_pipeline(path, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(loading, "load_pipeline", fake_load_pipeline)
    checkpoint = tmp_path / "generator.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(ValueError, match="stop here"):
        eval_cli.run(parse("--checkpoint", str(checkpoint), "--dtype", "float16", "--fp8"))
    assert seen["dtype"] == torch.float16 and seen["fp8"] and not seen["compile"]


class _Reader(torch.nn.Module):
    """A velocity model whose x0 estimate of frame c is the mean over frames f of the noisy input, each shifted
    back by `follow` times a rightward motion of `speed` latent cells a frame: follow = 1 reads every frame where
    the object is, follow = 0 at frame c's place."""

    def __init__(self, speed: float, follow: float, causal: bool = False):
        super().__init__()
        self.speed, self.follow, self.causal = speed, follow, causal

    def forward(self, x, t, context):
        frames = x.shape[1]
        seen = [range(c + 1 if self.causal else frames) for c in range(frames)]
        x0 = torch.stack([sum(torch.roll(x[:, f], -round(self.follow * (f - c) * self.speed), dims=-1)
                              for f in seen[c]) / len(seen[c]) for c in range(frames)], 1)
        return (x - x0) / (t / 1000)[:, :, None, None, None]


@pytest.mark.parametrize("follow, low, high", [(1.0, 0.9, 1.1), (0.0, -0.1, 0.1)])
@pytest.mark.parametrize("causal", [False, True])
def test_motion_tracking_tells_a_model_that_follows_the_object_from_one_that_reads_in_place(follow, low, high, causal):
    from selfforcing.eval.denoising import motion_tracking, tracking_scenes
    from selfforcing.models.codec import SpaceToDepthCodec

    scenes = tracking_scenes(2, motions=("right",))
    from selfforcing.world.vocab import FPS, LINEAR_SPEED, SPEED_FACTOR

    speed = LINEAR_SPEED * SPEED_FACTOR["fast"] / FPS * 16      # latent cells a frame (16 cells across)
    no_text = lambda caps: torch.zeros(len(caps), 1, 1)  # noqa: E731
    result = motion_tracking(_Reader(speed, follow, causal), SpaceToDepthCodec(4), no_text, scenes, frames=21)
    assert low < result["tracking"] < high
    assert all(low < r["tracking"] < high and r["motion"] == "right" for r in result["per_clip"])
