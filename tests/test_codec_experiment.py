"""`selfforcing experiment codec`: the learned-codec measurement runs end to end and reports what it measured."""

import json

import torch

from selfforcing.experiments.codec import CodecExperimentConfig, FrameAutoencoder, run_codec_experiment


def test_autoencoder_keeps_the_token_grid():
    ae = FrameAutoencoder(channels=16, width=8)
    recon, z = ae(torch.zeros(2, 3, 64, 64))
    assert z.shape == (2, 16, 16, 16) and recon.shape == (2, 3, 64, 64)   # as SpaceToDepthCodec(4), 16 channels


def test_codec_experiment_end_to_end(tmp_path):
    config = CodecExperimentConfig(out=str(tmp_path), channels=4, width=8, steps=2, batch_clips=1,
                                   frames_per_clip=2, n=2, dit_batch=1, dit_frames=2)
    results = run_codec_experiment(config, progress=False)
    assert json.loads((tmp_path / "results.json").read_text())["psnr_db"] == results["psnr_db"]
    assert results["scores"]["real"]["total"] > 90                        # real clips score near the top
    assert results["scores"]["round_trip"]["total"] < results["scores"]["real"]["total"]  # an untrained codec loses
    assert set(results["dit_step_seconds"]) == {"pixel_48ch", "learned_4ch"}
    assert "learned codec" in (tmp_path / "results.md").read_text()
