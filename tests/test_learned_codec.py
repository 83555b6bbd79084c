"""A learned world codec (`LearnedFrameCodec`): stored in one file, read back exactly, and trained on and generated
through by a world run (`data.codec_file`) as the pixel codec is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from selfforcing.models.codec import FrameAutoencoder, LatentNorm, LearnedFrameCodec, learned_codec_channels
from selfforcing.training.config import resolve_config
from selfforcing.training.data import MicroBatches, make_text_encoder, to_batch
from selfforcing.training.trainer import Trainer


@pytest.fixture
def codec_file(tmp_path):
    torch.manual_seed(0)
    codec = LearnedFrameCodec(FrameAutoencoder(channels=4, width=16), LatentNorm((0.1, 0.2, -0.3, 0.0),
                                                                                   (1.0, 2.0, 0.5, 1.5)))
    return codec.save(tmp_path / "codec.safetensors"), codec


def test_codec_file_round_trips(codec_file):
    path, codec = codec_file
    loaded = LearnedFrameCodec.from_file(path)
    assert learned_codec_channels(path) == 4 and loaded.norm == codec.norm
    video = torch.rand(2, 3, 3, 16, 16) * 2 - 1                         # (B, T, 3, H, W)
    z = loaded.encode(video)
    assert z.shape == (2, 3, 4, 4, 4) and torch.equal(z, codec.encode(video))
    back = loaded.decode(z)
    assert back.shape == video.shape and back.abs().max() <= 1
    frame_by_frame = torch.cat([loaded.encode(video[:, t:t + 1]) for t in range(3)], dim=1)
    assert torch.allclose(frame_by_frame, z, atol=1e-6)                # per frame: no mixing across time
    raw = codec.module.encoder(video.flatten(0, 1)).unflatten(0, (2, 3))
    assert torch.allclose(codec.norm.denormalize(z), raw, atol=1e-5)   # the stored statistics normalise it



def test_bf16_encoding_is_close_to_fp32_and_used_by_bf16_runs(tmp_path, codec_file):
    path, codec = codec_file
    fast = LearnedFrameCodec.from_file(path, encode_bf16=True)
    video = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    z, z_bf16 = codec.encode(video), fast.encode(video)
    assert z_bf16.dtype == torch.float32 and not torch.equal(z_bf16, z)  # bf16 did run
    assert (z_bf16 - z).pow(2).mean().sqrt() < 0.05 * z.pow(2).mean().sqrt()
    assert torch.equal(fast.decode(z), codec.decode(z))                 # decoding stays fp32
    for autocast, bf16 in (("bf16", True), ("fp32", False)):
        cfg = resolve_config("teacher-tiny", [f"data.codec_file={path}", "model.in_dim=4", "model.out_dim=4",
                                              f"precision.autocast={autocast}"], out_dir=str(tmp_path))
        assert to_batch(cfg, make_text_encoder(cfg.data, cfg.model.text_dim), "cpu").codec.encode_bf16 is bf16

def test_other_files_are_refused(tmp_path):
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a learned world codec"):
        LearnedFrameCodec.from_file(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        learned_codec_channels(tmp_path / "missing.safetensors")
    (tmp_path / "notes.txt").write_text("not a codec")
    with pytest.raises(ValueError, match="not a learned world codec"):
        learned_codec_channels(tmp_path / "notes.txt")


def test_a_world_run_trains_and_generates_through_the_learned_codec(tmp_path, codec_file):
    from selfforcing.inference.loading import load_pipeline

    path, codec = codec_file
    cfg = resolve_config("teacher-tiny", [f"data.codec_file={path}", "model.in_dim=4", "model.out_dim=4",
                                          "schedule.steps=1"], out_dir=str(tmp_path / "run"))
    assert cfg.latent_channels == 4 and cfg.latent_size == (4, 4)
    text = make_text_encoder(cfg.data, cfg.model.text_dim)
    raw = MicroBatches(cfg)[0]
    batch = to_batch(cfg, text, "cpu")(raw)
    assert torch.equal(batch.x_0, codec.encode(raw["video"]))          # the run's latents are the codec's
    logs = Trainer(cfg).fit()
    assert np.isfinite(logs["model/loss"])
    pipe, spec = load_pipeline(tmp_path / "run" / "model_ema.safetensors", text_encoder=text)
    assert spec.codec == "frame-codec:../codec.safetensors"              # relative to the checkpoint's folder
    assert isinstance(pipe.codec, LearnedFrameCodec)
    video = pipe("a red circle", num_frames=2, seeds=0)
    assert video.frames.shape == (1, 2, 3, 16, 16)
    assert torch.allclose(video.frames, codec.decode(video.latents), atol=1e-6)


def test_a_checkpoint_finds_its_codec_from_anywhere_and_beside_it(tmp_path, codec_file, monkeypatch):
    import shutil

    from selfforcing.cli import main
    from selfforcing.inference.loading import load_pipeline, read_pipeline_spec, resolve_codec_file

    path, codec = codec_file
    cfg = resolve_config("teacher-tiny", [f"data.codec_file={path}", "model.in_dim=4", "model.out_dim=4",
                                          "schedule.steps=1"], out_dir=str(tmp_path / "run"))
    Trainer(cfg).fit()
    text = make_text_encoder(cfg.data, cfg.model.text_dim)
    model = tmp_path / "run" / "model_ema.safetensors"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                                        # the stored path is not the cwd's
    pipe, _ = load_pipeline(model, text_encoder=text)
    assert torch.equal(pipe.codec.encode(torch.zeros(1, 1, 3, 16, 16)), codec.encode(torch.zeros(1, 1, 3, 16, 16)))
    half = tmp_path / "a" / "b" / "half.safetensors"                    # an exported copy names it from its folder
    assert main(["export", str(model), "-o", str(half)]) == 0
    assert read_pipeline_spec(half).codec == "frame-codec:../../codec.safetensors"
    load_pipeline(half, text_encoder=text)
    shipped = tmp_path / "shipped"                                      # a model shipped beside its codec
    shipped.mkdir()
    shutil.copy(model, shipped / "teacher.safetensors")
    shutil.move(path, shipped / "codec.safetensors")
    spec = read_pipeline_spec(shipped / "teacher.safetensors")
    found = resolve_codec_file(spec.codec.split(":", 1)[1], shipped / "teacher.safetensors")
    assert found == shipped / "codec.safetensors"
    load_pipeline(shipped / "teacher.safetensors", text_encoder=text)
    (shipped / "codec.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no codec file at ../codec.safetensors"):
        load_pipeline(shipped / "teacher.safetensors", text_encoder=text)


def test_learned_codec_config_errors(tmp_path, codec_file):
    path, _ = codec_file
    with pytest.raises(ValueError, match="data.codec_file gives 4 latent channels"):
        resolve_config("teacher-tiny", [f"data.codec_file={path}"], out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="set one of them"):
        resolve_config("teacher-tiny", [f"data.codec_file={path}", "data.latent_shape=[4,4,4]"],
                       out_dir=str(tmp_path))


def test_ode_pairs_and_the_denoising_and_tracking_evals_read_a_learned_codec_model(tmp_path, codec_file, capsys):
    import dataclasses
    import json
    import math

    from selfforcing.cli import main
    from selfforcing.config import get_preset
    from selfforcing.inference.loading import PIPELINE_METADATA_KEY, PipelineSpec
    from selfforcing.io.ode_pairs import ODEPairDataset
    from selfforcing.io.checkpoints import save_transformer
    from selfforcing.models.wan import WanDiT
    from selfforcing.training.ode_pairs import ODEPairsConfig, generate_ode_pairs

    path, _ = codec_file
    cfg = resolve_config("teacher-tiny", [f"data.codec_file={path}", "model.in_dim=4", "model.out_dim=4",
                                          "schedule.steps=1"], out_dir=str(tmp_path / "teacher"))
    Trainer(cfg).fit()
    generate_ode_pairs(ODEPairsConfig(teacher=str(tmp_path / "teacher" / "model_ema.safetensors"),
                                      out=str(tmp_path / "pairs"), n=2, num_steps=4, num_frames=3, batch_size=2,
                                      guidance=2.0), progress=False)
    assert tuple(ODEPairDataset(tmp_path / "pairs").shape[1:]) == (3, 4, 4, 4)   # the codec's latent frames
    init = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="ode-pairs",
                                                             ode_pairs=str(tmp_path / "pairs")))
    assert MicroBatches(init)[0]["trajectory"].shape[-4:] == (3, 4, 4, 4)     # an ODE init on the codec reads them

    model = WanDiT(get_preset("world").replace(dim=64, ffn_dim=128, num_heads=2, num_layers=1, in_dim=4, out_dim=4))
    with torch.no_grad():
        model.head.head.weight.normal_(std=0.05)
    world = tmp_path / "world.safetensors"                               # 64x64 world clips through the codec
    spec = PipelineSpec(codec=f"frame-codec:{path}", train_frames=9)
    save_transformer(model, world, extra_metadata={PIPELINE_METADATA_KEY: json.dumps(spec.to_dict())})
    assert main(["eval", "--denoising", str(world), "--n", "2", "--json"]) == 0
    assert all(math.isfinite(r["x0_mse"]) for r in json.loads(capsys.readouterr().out))
    assert main(["eval", "--tracking", str(world), "--n", "2", "--json"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["tracking"])
