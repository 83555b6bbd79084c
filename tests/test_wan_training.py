"""The real-scale path on tiny models saved in the real Wan2.1 layout: ODE pairs from a Wan teacher with UMT5 and a
prompt file -> ODE init -> Self-Forcing DMD on Wan latents (the `*-wan1.3b` presets shrunk by overrides), and the
exported generator streamed by `selfforcing generate --model-dir`."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("ftfy")

from selfforcing.algorithms.rollout import self_forcing_rollout  # noqa: E402
from selfforcing.cli import main  # noqa: E402
from selfforcing.config import get_preset  # noqa: E402
from selfforcing.diffusion.flow import FlowMatching  # noqa: E402
from selfforcing.inference.loading import read_pipeline_spec  # noqa: E402
from selfforcing.io.ode_pairs import ODEPairDataset  # noqa: E402
from selfforcing.models.wan import WanDiT  # noqa: E402
from selfforcing.training.config import resolve_config, train_preset  # noqa: E402
from selfforcing.training.ode_pairs import ODEPairsConfig, generate_ode_pairs  # noqa: E402
from selfforcing.training.trainer import Trainer  # noqa: E402
from wan_fixtures import TEXT_DIM, make_tiny_wan_dir  # noqa: E402

FRAMES = 6                       # two 3-frame chunks
LATENT = (16, 4, 4)              # Wan's 16 channels; 32x32 pixels through the VAE's stride 8
PROMPTS = ["a red cat runs on the beach", "a blue car in the city at night", "a bird flies over the forest"]


def tiny_overrides(wan_dir: Path, prompts: Path) -> list[str]:
    """The real-scale preset shrunk to the tiny Wan fixtures: what a user changes with --set."""
    return [
        "device=cpu", "precision.autocast=fp32", "model.dim=64", "model.ffn_dim=128", "model.num_heads=2",
        "model.num_layers=2", "model.freq_dim=32", f"model.text_dim={TEXT_DIM}",
        f"data.text_encoder_path={wan_dir}", f"data.prompts_file={prompts}", f"data.num_frames={FRAMES}",
        "data.latent_shape=16,4,4", "schedule.steps=2", "schedule.batch_size=2", "checkpoint.every=0",
        "logging.every=1", "logging.tensorboard=false", "logging.progress=false",
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-train")
    wan_dir = make_tiny_wan_dir(root / "Wan2.1-T2V-tiny", "original")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:2] + ["", PROMPTS[2]]) + "\n")   # a blank line is skipped
    return wan_dir, prompts


@pytest.fixture(scope="module")
def pairs(files, tmp_path_factory) -> Path:
    wan_dir, prompts = files
    out = tmp_path_factory.mktemp("pairs")
    assert main(["ode-pairs", str(wan_dir), "-o", str(out), "--n", "4", "--steps", "4", "--frames", str(FRAMES),
                 "--batch-size", "2", "--guidance", "2", "--prompts", str(prompts), "--text-encoder-path",
                 str(wan_dir), "--latent-shape", *map(str, LATENT), "--dtype", "float32"]) == 0   # not "auto":
    return out                                                  # the part-wise set below is compared in float32


@pytest.fixture(scope="module")
def ode_init(files, pairs, tmp_path_factory) -> Trainer:
    wan_dir, prompts = files
    out = tmp_path_factory.mktemp("ode-init")
    config = resolve_config("ode-init-wan1.3b", tiny_overrides(wan_dir, prompts) + [
        f"data.ode_pairs={pairs}", f"ode_init.init_from={wan_dir}"], out_dir=str(out))
    trainer = Trainer(config)
    trainer.fit()
    return trainer


def test_ode_pairs_from_a_wan_folder_with_umt5_and_a_prompt_file(pairs):
    data = ODEPairDataset(pairs)
    assert len(data) == 4 and data.shape == (5, FRAMES, *LATENT)              # 4 kept states + the clean end
    assert [data[i][2] for i in range(4)] == PROMPTS + PROMPTS[:1]            # line i, cycling, blanks skipped
    assert all(torch.isfinite(data[i][0]).all() for i in range(4))


def test_ode_pairs_in_parts_read_as_one_set(files, pairs, tmp_path):
    """Two processes (ranks given explicitly here) write their shares in part folders; together they are the
    single-process set."""
    wan_dir, prompts = files
    for rank in range(2):
        generate_ode_pairs(ODEPairsConfig(
            teacher=str(wan_dir), out=str(tmp_path), n=4, num_steps=4, num_frames=FRAMES, batch_size=2, guidance=2.0,
            prompts_file=str(prompts), text_encoder_path=str(wan_dir), latent_shape=LATENT, rank=rank, world_size=2,
            dtype="float32",                                                   # as the single-process set
        ), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-000-of-002", "part-001-of-002"]
    parts, single = ODEPairDataset(tmp_path), ODEPairDataset(pairs)
    order = [0, 2, 1, 3]                                                       # rank 0 holds 0, 2; rank 1 holds 1, 3
    for i, j in enumerate(order):
        assert parts[i][2] == single[j][2]
        torch.testing.assert_close(parts[i][0], single[j][0], rtol=0, atol=2e-3)   # stored as float16


def test_ode_init_on_wan_latents_exports_a_wan_vae_generator(ode_init):
    assert ode_init.config.data.text_encoder == "umt5" and ode_init.config.latent_size == LATENT[1:]
    out = Path(ode_init.config.out_dir)
    spec = read_pipeline_spec(out / "generator_ema.safetensors")
    assert (spec.codec, spec.text_encoder, spec.prompt_extender) == ("wan-vae", "umt5", None)
    assert (spec.height, spec.width, spec.train_frames, spec.text_max_length) == (32, 32, FRAMES, 512)
    assert spec.sampling.denoising_steps == (1000, 750, 500, 250)


def test_self_forcing_dmd_on_wan_latents_then_generate_with_model_dir(files, ode_init, tmp_path):
    wan_dir, prompts = files
    init = Path(ode_init.config.out_dir) / "generator_ema.safetensors"
    config = resolve_config("sf-dmd-wan1.3b", tiny_overrides(wan_dir, prompts) + [
        f"distill.teacher={wan_dir}", f"distill.generator_init={init}", "distill.generator_every=1"],
        out_dir=str(tmp_path))
    trainer = Trainer(config)
    nets = trainer.networks
    assert nets["generator"].gradient_checkpointing and nets["critic"].gradient_checkpointing
    before = {k: copy.deepcopy(v.state_dict()) for k, v in nets.items()}
    result = trainer.fit()
    assert all(torch.isfinite(torch.tensor(result[k])) for k in ("generator/loss", "critic/loss"))
    for name in ("generator", "critic"):
        assert any(not torch.equal(v, nets[name].state_dict()[k]) for k, v in before[name].items()), name
    assert all(torch.equal(v, nets["real"].state_dict()[k]) for k, v in before["real"].items())
    exported = tmp_path / "generator_ema.safetensors"
    assert read_pipeline_spec(exported).codec == "wan-vae"
    video = tmp_path / "out.mp4"
    assert main(["generate", "a red cat", "-o", str(video), "--model-dir", str(wan_dir), "--checkpoint",
                 str(exported), "--frames", "9", "--height", "32", "--width", "32"]) == 0
    assert video.stat().st_size > 0


def test_world_generate_refuses_a_wan_latent_generator(ode_init, tmp_path, capsys):
    exported = Path(ode_init.config.out_dir) / "generator_ema.safetensors"
    assert main(["generate", "a cat", "-o", str(tmp_path / "x.mp4"), "--checkpoint", str(exported)]) == 2
    assert "--model-dir" in capsys.readouterr().err


def test_wan_presets_follow_the_published_recipe():
    """Spec §4: AdamW β = (0, 0.999), generator lr 2e-6, critic lr 4e-7 (SiD 2e-6), EMA 0.99 from step 200,
    generator every 5th step, 600 steps, grad clip 10, bf16, activation checkpointing, FSDP, global batch 64."""
    init, dmd, sid = (train_preset(n) for n in ("ode-init-wan1.3b", "sf-dmd-wan1.3b", "sf-sid-wan1.3b"))
    for cfg in (init, dmd, sid):
        assert cfg.model == get_preset("self-forcing-1.3b")
        assert cfg.data.latent_shape == (16, 60, 104) and cfg.data.num_frames == 21
        assert cfg.data.text_encoder == "umt5" and cfg.data.text_max_length == 512
        assert cfg.precision.autocast == "bf16" and cfg.parallel.strategy == "fsdp"
        assert cfg.parallel.activation_checkpointing and cfg.schedule.batch_size == 64
        assert cfg.schedule.grad_clip == 10.0 and cfg.logging.sample_every == 0
    assert init.algorithm == "ode-init" and init.data.source == "ode-pairs"
    assert dmd.data.source == sid.data.source == "prompt-file"
    assert dmd.distill.generator_init == str(Path(init.out_dir) / "generator_ema.safetensors")
    assert dmd.distill.teacher == init.ode_init.init_from == init.data.text_encoder_path
    for cfg in (dmd, sid):
        d = cfg.distill
        assert cfg.optim.betas == (0.0, 0.999) and cfg.optim.weight_decay == 0.01
        assert (cfg.ema.decay, cfg.ema.start_step, cfg.schedule.steps) == (0.99, 200, 600)
        assert (d.generator_lr, d.generator_every, d.guidance) == (2e-6, 5, 3.0)
    assert (dmd.distill.loss, dmd.distill.critic_lr) == ("dmd", 4e-7)
    assert (sid.distill.loss, sid.distill.critic_lr, sid.distill.sid_alpha) == ("sid", 2e-6, 1.0)


def test_latent_space_configs_fail_clearly(files):
    wan_dir, _ = files
    with pytest.raises(ValueError, match="latent channels"):
        resolve_config("sf-dmd-wan1.3b", ["data.latent_shape=48,60,104"])
    with pytest.raises(ValueError, match="read no videos"):
        resolve_config("sf-dmd-wan1.3b", ["data.source=world"])
    with pytest.raises(ValueError, match="prompts_file"):
        resolve_config("sf-dmd-wan1.3b", ["data.prompts_file=none"])
    with pytest.raises(ValueError, match="text_encoder_path"):
        resolve_config("sf-dmd-wan1.3b", ["data.text_encoder_path=none"])
    with pytest.raises(ValueError, match="sample_every"):
        resolve_config("sf-dmd-wan1.3b", ["logging.sample_every=100"])
    with pytest.raises(ValueError, match="not divisible by the patch"):
        resolve_config("sf-dmd-wan1.3b", ["data.latent_shape=16,61,104"])
    with pytest.raises(ValueError, match="latent shape"):
        ODEPairsConfig(teacher=str(wan_dir), out="o", text_encoder_path=str(wan_dir))


@pytest.mark.parametrize("window", [{}, {"local_attn_size": 4, "sink_size": 2}])
def test_activation_checkpointing_in_the_rollout_gives_the_same_gradients(window):
    """Recomputed blocks read the context frozen at their call, not the cache the rollout has moved on (global
    and rolling caches), so gradients are exactly those of the stored activations."""
    torch.manual_seed(0)
    stored = WanDiT(get_preset("tiny-causal").replace(**window))
    with torch.no_grad():
        for p in stored.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    recomputed = copy.deepcopy(stored)
    recomputed.gradient_checkpointing = True
    flow = FlowMatching(shift=5.0)
    timesteps = flow.warp_timesteps(torch.tensor([1000.0, 750, 500, 250], dtype=torch.float64))
    context, noise = torch.randn(2, 8, 24), torch.randn(2, 8, 4, 4, 4)        # 4 chunks of 2 frames
    results = []
    for model in (stored, recomputed):
        out = self_forcing_rollout(model, context, noise, flow=flow, timesteps=timesteps, exit_step=2,
                                   rng=torch.Generator().manual_seed(1))
        out.video.square().mean().backward()
        results.append((out.video.detach(), {k: p.grad for k, p in model.named_parameters()}))
    assert torch.equal(results[0][0], results[1][0])
    for k, grad in results[0][1].items():
        assert torch.equal(grad, results[1][1][k]), k


def test_encode_videos_then_self_forcing_gan_on_wan_latents(files, tmp_path):
    """The GAN variant at real scale: captioned mp4 files -> Wan VAE latents (`encode-videos`) -> real clips of
    `sf-gan-wan1.3b` (data.source=latents)."""
    import imageio.v3 as iio

    from selfforcing.models.wan_vae import WanVAE
    from selfforcing.training.encode_videos import fit_frames

    wan_dir, _ = files
    clips = tmp_path / "clips"
    assert main(["world", "render", "--n", "3", "-o", str(clips), "--frames", "21"]) == 0
    out = tmp_path / "latents"
    assert main(["encode-videos", str(clips), "-o", str(out), "--model-dir", str(wan_dir), "--frames", "21",
                 "--height", "32", "--width", "32", "--batch-size", "2"]) == 0
    stored = ODEPairDataset(out)
    assert len(stored) == 3 and stored.shape == (1, FRAMES, *LATENT)
    states, timesteps, prompt = stored[1]
    assert timesteps.tolist() == [0.0] and prompt.endswith(".")            # the detailed caption
    video = iio.imread(clips / "00001.mp4")
    expected = WanVAE.from_pretrained(wan_dir).encode(fit_frames(video, 32, 32)[None])[0]
    torch.testing.assert_close(states[0], expected, atol=2e-3, rtol=1e-2)     # stored in fp16
    assert main(["encode-videos", str(clips), "-o", str(out), "--model-dir", str(wan_dir), "--frames", "21",
                 "--height", "32", "--width", "32"]) == 2                       # never appends to a set
    assert main(["encode-videos", str(clips), "-o", str(tmp_path / "x"), "--model-dir", str(wan_dir),
                 "--frames", "20"]) == 2

    overrides = [o for o in tiny_overrides(wan_dir, Path("unused")) if not o.startswith("data.prompts_file")]
    config = resolve_config("sf-gan-wan1.3b", overrides + [
        f"data.latents={out}", f"distill.teacher={wan_dir}", "distill.generator_init=none",
        "distill.generator_every=1"], out_dir=str(tmp_path / "run"))
    assert (config.data.source, config.distill.loss) == ("latents", "gan")
    result = Trainer(config).fit()
    assert all(torch.isfinite(torch.tensor(result[k])) for k in ("generator/loss", "critic/loss"))

    from selfforcing.training.data import MicroBatches

    with pytest.raises(ValueError, match="have 6 frames but data.num_frames is 3"):
        MicroBatches(resolve_config("sf-gan-wan1.3b", overrides + [f"data.latents={out}", "data.num_frames=3"]))
