"""The command line: a real generate run, and one clear line plus exit 2 for every kind of bad input."""

import json
import math

import imageio.v3 as iio
import pytest
import torch

from selfforcing.cli import main
from selfforcing.config import get_preset
from selfforcing.inference.loading import PIPELINE_METADATA_KEY, PipelineSpec
from selfforcing.io.checkpoints import save_transformer
from selfforcing.models.wan import WanDiT


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small random world generator saved with its pipeline spec."""
    cfg = get_preset("world-causal").replace(dim=64, ffn_dim=128, num_heads=2, num_layers=1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "gen.safetensors"
    save_transformer(WanDiT(cfg), path, extra_metadata={PIPELINE_METADATA_KEY: json.dumps(PipelineSpec(train_frames=6).to_dict())})
    return path


def test_generate_writes_video(checkpoint, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert main(["generate", "a red circle moves right", "-o", str(out), "--checkpoint", str(checkpoint),
                 "--frames", "9", "--seed", "3"]) == 0
    frames = iio.imread(out)
    assert frames.shape == (9, 64, 64, 3)
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temporary files left behind


def test_info(checkpoint, capsys):
    assert main(["info", str(checkpoint), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "selfforcing" and info["num_params"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "  ", "-o", "{tmp}/a.mp4"], "prompt is empty"),
        (["generate", "x", "-o", "{tmp}/a.mp4", "--frames", "4", "--checkpoint", "{ckpt}"], "multiple of 3"),
        (["generate", "x", "-o", "{tmp}/a.mp4", "--frames", "-3"], "positive"),
        (["generate", "x", "-o", "{tmp}/a.mp4", "--seed", "-1"], "non-negative"),
        (["generate", "x", "-o", "{tmp}/missing/a.mp4"], "does not exist"),
        (["generate", "x", "-o", "{tmp}/a.txt"], "video file"),
        (["generate", "x", "-o", "{tmp}/a.mp4", "--checkpoint", "{tmp}/nope.pt"], "does not exist"),
        (["generate", "x", "-o", "{tmp}/a.mp4", "--checkpoint", "{junk}"], "neither"),
        (["info", "{tmp}/nope"], "does not exist"),
        (["info", "{junk}"], "neither"),
        (["generate", "x", "-o", "{tmp}/a.mp4", "--device", "banana"], "not a torch device"),
        (["generate", "x", "-o", "{tmp}/a.mp4", "--device", "cuda:99"], "CUDA device"),
        (["generate", "x", "-o", "{tmp}/a.mp4", "--device", "xla"], "no xla device"),
        (["ode-pairs", "{ckpt}", "-o", "{tmp}/pairs", "--device", "cuda:99"], "CUDA device"),
        (["train", "teacher-tiny", "--out", "{tmp}/run", "--set", "device=cuda:99"], "device=cuda:99"),
        (["eval", "--denoising", "{tmp}/nope.safetensors"], "does not exist"),
        (["eval", "--tracking", "{tmp}/nope.safetensors"], "does not exist"),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path, checkpoint, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    args = [a.format(tmp=tmp_path, ckpt=checkpoint, junk=junk) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".partial*"))


def test_incompatible_checkpoint(tmp_path, capsys):
    path = tmp_path / "tiny.safetensors"
    save_transformer(WanDiT(get_preset("tiny-causal")), path)
    assert main(["generate", "x", "-o", str(tmp_path / "a.mp4"), "--checkpoint", str(path)]) == 2
    assert "channels" in capsys.readouterr().err


def test_bench_quick_json(capsys):
    assert main(["bench", "--json", "--quick", "--preset", "tiny-causal", "--height", "4", "--width", "4",
                 "--frames", "6", "--window", "4", "--skip", "peak"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stream"]["fps"] > 0 and report["kv_cache"]["speedup"] > 0
    assert report["rolling"]["latent_frames"] >= 10 * report["rolling"]["window_frames"]


def test_generate_with_a_bidirectional_teacher(tmp_path):
    """A teacher checkpoint samples all frames at once with guidance, through the same command."""
    from selfforcing.inference.pipeline import SamplingConfig

    cfg = get_preset("world").replace(dim=64, ffn_dim=128, num_heads=2, num_layers=1)
    spec = PipelineSpec(train_frames=4, sampling=SamplingConfig(num_inference_steps=2, guidance_scale=2.0, shift=8.0))
    path = tmp_path / "teacher.safetensors"
    save_transformer(WanDiT(cfg), path, extra_metadata={PIPELINE_METADATA_KEY: json.dumps(spec.to_dict())})
    out = tmp_path / "t.mp4"
    assert main(["generate", "a blue square", "-o", str(out), "--checkpoint", str(path), "--frames", "5"]) == 0
    assert iio.imread(out).shape == (5, 64, 64, 3)


def test_sampling_flags_change_a_teacher_recipe_and_refuse_a_few_step_generator(checkpoint, tmp_path, capsys):
    """--sample-shift / --sample-steps / --guidance / --sampler replace a multi-step model's stored recipe (and
    change its samples: the same weights and seed give different videos at another shift or solver); a few-step
    generator, trained for its own step list, is refused with one line."""
    from selfforcing.cli import build_parser
    from selfforcing.diffusion.samplers import MULTISTEP_SAMPLERS
    from selfforcing.inference.loading import read_pipeline_spec, with_sampling
    from selfforcing.inference.loading import load_pipeline
    from selfforcing.inference.pipeline import SamplingConfig

    cfg = get_preset("world").replace(dim=64, ffn_dim=128, num_heads=2, num_layers=1)
    model = WanDiT(cfg)
    with torch.no_grad():
        model.head.head.weight.normal_(0, 0.05)          # the head starts at zero: every video would be grey
    spec = PipelineSpec(train_frames=4, sampling=SamplingConfig(num_inference_steps=4, guidance_scale=2.0, shift=8.0))
    path = tmp_path / "teacher.safetensors"
    save_transformer(model, path, extra_metadata={PIPELINE_METADATA_KEY: json.dumps(spec.to_dict())})

    pipe, changed = load_pipeline(path, sampling={"shift": 3.0, "steps": 2})
    recipe = changed.sampling
    assert (recipe.shift, recipe.num_inference_steps, recipe.guidance_scale, recipe.sampler) == (3.0, 2, 2.0, "euler")
    assert pipe.sampling == changed.sampling
    assert load_pipeline(path, sampling={"sampler": "dpmpp-2m"})[0].sampling.sampler == "dpmpp-2m"
    args = build_parser().parse_args(["eval", "--checkpoint", str(path), "--sampler", "dpmpp-2m"])
    assert args.sampler == "dpmpp-2m" and set(MULTISTEP_SAMPLERS) == {"euler", "dpmpp-2m"}    # every solver offered
    with pytest.raises(ValueError, match="unknown sampler"):                     # the API: one clear error
        with_sampling(read_pipeline_spec(path), sampler="heun")
    videos = {}
    for shift in ("8", "3"):
        out = tmp_path / f"shift{shift}.mp4"
        assert main(["generate", "a blue square", "-o", str(out), "--checkpoint", str(path), "--frames", "4",
                     "--sample-shift", shift]) == 0
        videos[shift] = iio.imread(out).astype(int)
    out = tmp_path / "dpm.mp4"
    assert main(["generate", "a blue square", "-o", str(out), "--checkpoint", str(path), "--frames", "4",
                 "--sampler", "dpmpp-2m"]) == 0
    assert abs(iio.imread(out).astype(int) - videos["8"]).max() > 5     # another solver (codec rounding: <= 2)
    stored = tmp_path / "stored.mp4"
    assert main(["generate", "a blue square", "-o", str(stored), "--checkpoint", str(path), "--frames", "4"]) == 0
    assert abs(iio.imread(stored).astype(int) - videos["8"]).max() <= 2       # 8 is the stored shift
    assert abs(videos["3"] - videos["8"]).max() > 10

    capsys.readouterr()
    for argv in (["generate", "a red circle", "-o", str(tmp_path / "x.mp4"), "--checkpoint", str(checkpoint),
                  "--sample-shift", "3"],
                 ["eval", "--checkpoint", str(checkpoint), "--n", "1", "--guidance", "2"],
                 ["generate", "a red circle", "-o", str(tmp_path / "y.mp4"), "--checkpoint", str(path),
                  "--sample-steps", "0"],
                 ["eval", "--calibrate", "--guidance", "2"],
                 ["eval", "--checkpoint", str(checkpoint), "--n", "1", "--sampler", "euler"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and any(w in err[0] for w in ("few-step generator", "must be positive", "use them with"))
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "y.mp4").exists()


def test_generate_past_the_training_length_rolls_the_cache(checkpoint, tmp_path, caplog):
    import logging

    out = tmp_path / "long.mp4"
    with caplog.at_level(logging.INFO):
        assert main(["generate", "a red circle moves right", "-o", str(out), "--checkpoint", str(checkpoint),
                     "--frames", "30"]) == 0
    assert "rolling cache of 6 frames (3 sink)" in caplog.text
    assert iio.imread(out).shape[0] == 30


def test_eval_denoising_measures_the_x0_error_per_noise_level(checkpoint, tmp_path, capsys):
    """Every noise level is reported, the noisy input's own error grows with σ, and a velocity model that
    predicts v = 0 (x̂0 = x_t: it leaves its input as it is) scores exactly the input's error."""
    from selfforcing.eval.denoising import DEFAULT_SIGMAS

    assert main(["eval", "--denoising", str(checkpoint), "--n", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["sigma"] for r in rows] == list(DEFAULT_SIGMAS)
    assert [r["input_mse"] for r in rows] == sorted(r["input_mse"] for r in rows)
    assert all(r["x0_mse"] >= 0 and r["x0_mse"] != r["input_mse"] for r in rows)   # a random x0 head

    still = WanDiT(get_preset("world-causal").replace(dim=64, ffn_dim=128, num_heads=2, num_layers=1,
                                                      prediction="velocity"))
    with torch.no_grad():
        still.head.head.weight.zero_()
        still.head.head.bias.zero_()
    path = tmp_path / "still.safetensors"
    save_transformer(still, path, extra_metadata={PIPELINE_METADATA_KEY: json.dumps(PipelineSpec(train_frames=6).to_dict())})
    assert main(["eval", "--denoising", str(path), "--n", "2", "--json"]) == 0
    for r in json.loads(capsys.readouterr().out):
        assert r["x0_mse"] == pytest.approx(r["input_mse"], rel=1e-5)


def test_eval_tracking_reports_one_ratio_per_clip(checkpoint, tmp_path, capsys):
    """A random bidirectional world model reads every frame: a finite ratio per clip. A fresh one (zero head:
    its x0 estimate is constant) reads none, which is reported as such, not as a number."""
    model = WanDiT(get_preset("world").replace(dim=64, ffn_dim=128, num_heads=2, num_layers=1))
    with torch.no_grad():
        model.head.head.weight.normal_(std=0.05)
    path = tmp_path / "random.safetensors"
    spec = json.dumps(PipelineSpec(train_frames=9).to_dict())
    save_transformer(model, path, extra_metadata={PIPELINE_METADATA_KEY: spec})
    assert main(["eval", "--tracking", str(path), "--n", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sigma"] == 0.9 and math.isfinite(result["tracking"])
    assert [r["motion"] for r in result["per_clip"]] == ["right", "left", "down", "up"]
    assert all(math.isfinite(r["tracking"]) for r in result["per_clip"])
    assert main(["eval", "--tracking", str(checkpoint), "--n", "1"]) == 0          # the fresh generator
    assert "tracking n/a" in capsys.readouterr().out


def test_heldout_videos_do_not_depend_on_the_batch_size(tmp_path):
    """Prompt i keeps seed + i in any batch: generated together or one at a time, the same videos up to rounding,
    for a causal generator and for a bidirectional teacher (per-sample noise, guidance per sample)."""
    from selfforcing.eval.cli import generate_heldout
    from selfforcing.inference.pipeline import SamplingConfig

    torch.manual_seed(0)
    sampling = SamplingConfig(num_inference_steps=2, guidance_scale=2.0, shift=8.0)
    for preset, spec in (("world-causal", PipelineSpec(train_frames=6)),
                         ("world", PipelineSpec(train_frames=4, sampling=sampling))):
        model = WanDiT(get_preset(preset).replace(dim=64, ffn_dim=128, num_heads=2, num_layers=1))
        with torch.no_grad():
            model.head.head.weight.normal_(0, 0.05)      # the head starts at zero: every video would be grey
        path = tmp_path / f"{preset}.safetensors"
        save_transformer(model, path, extra_metadata={PIPELINE_METADATA_KEY: json.dumps(spec.to_dict())})
        one, _ = generate_heldout(str(path), 3, None, seed=4, batch_size=1)
        together, _ = generate_heldout(str(path), 3, None, seed=4, batch_size=2)
        assert [name for name, _, _ in one] == [name for name, _, _ in together]
        assert [prompt for _, _, prompt in one] == [prompt for _, _, prompt in together]
        for (_, a, _), (_, b, _) in zip(one, together):
            assert a.shape == b.shape and abs(a.astype(int) - b.astype(int)).max() <= 2
        assert abs(one[0][1].astype(int) - one[1][1].astype(int)).max() > 10       # the videos differ
