"""`selfforcing experiment codec`: the learned-codec measurement runs end to end and reports what it measured."""

import json

import pytest
import torch

from selfforcing.cli import main
from selfforcing.experiments.codec import CodecExperimentConfig, FrameAutoencoder, run_codec_experiment
from selfforcing.models.codec import LearnedFrameCodec


def test_autoencoder_keeps_the_token_grid():
    ae = FrameAutoencoder(channels=16, width=16)
    recon, z = ae(torch.zeros(2, 3, 64, 64))
    assert z.shape == (2, 16, 16, 16) and recon.shape == (2, 3, 64, 64)   # as SpaceToDepthCodec(4), 16 channels


def test_codec_experiment_end_to_end(tmp_path):
    config = CodecExperimentConfig(out=str(tmp_path), channels=4, width=16, steps=2, batch_clips=1,
                                   frames_per_clip=2, n=2, reference=8, dit_batch=1, dit_frames=2)
    results = run_codec_experiment(config, progress=False)
    assert json.loads((tmp_path / "results.json").read_text())["psnr_db"] == results["psnr_db"]
    real, coded = results["scores"]["real"], results["scores"]["round_trip"]
    assert real["total"] > 90                                             # real clips score near the top
    assert coded["total"] < real["total"]                                 # an untrained codec loses
    assert 0 <= real["frechet"] < coded["frechet"]                        # and lands far from real clips
    assert set(results["dit_step_seconds"]) == {"pixel_48ch", "learned_4ch"}
    assert "learned codec" in (tmp_path / "results.md").read_text()
    codec = LearnedFrameCodec.from_file(tmp_path / "codec.safetensors")   # what a world run trains on
    assert codec.latent_channels == 4 and len(codec.norm.mean) == 4

    # scoring the stored codec again, without training, measures the same round trip
    assert main(["experiment", "codec", "-o", str(tmp_path / "score"), "--score", str(tmp_path / "codec.safetensors"),
                 "--n", "2", "--reference", "8"]) == 0
    scored = json.loads((tmp_path / "score" / "score.json").read_text())
    assert scored["psnr_db"] == pytest.approx(results["psnr_db"], abs=1e-3)
    assert scored["scores"]["round_trip"]["frechet"] == pytest.approx(coded["frechet"], rel=1e-3)
    assert main(["experiment", "codec", "-o", str(tmp_path / "nope"), "--score", str(tmp_path / "none.safetensors")]) == 2
    assert not (tmp_path / "nope" / "score.json").exists()


def test_cli_options_reach_the_config(monkeypatch, tmp_path):
    import argparse

    from selfforcing.experiments import cli, codec

    seen = {}
    monkeypatch.setattr(codec, "run_codec_experiment", lambda config: seen.setdefault("config", config))
    monkeypatch.setattr(codec, "format_codec_results", lambda results: "")
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["experiment", "codec", "-o", str(tmp_path), "--steps", "7", "--width", "32",
                              "--lr", "2e-3", "--bf16"])
    cli.run(args)
    c = seen["config"]
    assert (c.steps, c.width, c.lr, c.autocast, c.out) == (7, 32, 2e-3, "bf16", str(tmp_path))


def test_bad_codec_settings_are_refused():
    with pytest.raises(ValueError, match="multiple of 16"):
        CodecExperimentConfig(width=24)
    with pytest.raises(ValueError, match="autocast"):
        CodecExperimentConfig(autocast="fp8")
    with pytest.raises(ValueError, match="reference"):
        CodecExperimentConfig(reference=1)
