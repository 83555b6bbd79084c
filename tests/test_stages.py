"""The world pipeline stage by stage on tiny models: teacher -> ODE pairs -> ODE init -> Self-Forcing (DMD / SiD /
GAN), the DMD baselines (CausVid, TF + DMD) and causal diffusion (TF / DF), all through the trainer and the CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from selfforcing.algorithms.distillation import DistillConfig
from selfforcing.cli import main
from selfforcing.inference.loading import load_pipeline, read_pipeline_spec
from selfforcing.inference.pipeline import StreamingPipeline
from selfforcing.io.ode_pairs import ODEPairDataset
from selfforcing.training.config import (CausalDiffusionConfig, DataConfig, ODEInitConfig, ScheduleConfig,
                                         resolve_config, train_preset, train_preset_names)
from selfforcing.training.ode_pairs import ODEPairsConfig, generate_ode_pairs, pair_prompts
from selfforcing.training.trainer import Trainer

FRAMES = 6                                                     # two 3-frame blocks


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(v, module.state_dict()[k]) for k, v in before.items())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny bidirectional teacher trained for a few steps (hash text encoder, 16x16 clips)."""
    out = tmp_path_factory.mktemp("teacher")
    Trainer(resolve_config("teacher-tiny", ["schedule.steps=2", "checkpoint.every=0"], out_dir=str(out))).fit()
    return out / "model_ema.safetensors"


@pytest.fixture(scope="module")
def pairs(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs")
    generate_ode_pairs(ODEPairsConfig(teacher=str(teacher), out=str(out), n=6, num_steps=4, num_frames=FRAMES,
                                      batch_size=4, guidance=2.0), progress=False)
    return out


def stage(tmp_path: Path, algorithm: str, teacher: Path, **changes):
    """teacher-tiny turned into a causal stage on FRAMES-frame clips."""
    base = resolve_config("teacher-tiny", out_dir=str(tmp_path))
    model = base.model.replace(causal=True, num_frame_per_block=3)
    data = dataclasses.replace(base.data, num_frames=FRAMES, **changes.pop("data", {}))
    return dataclasses.replace(base, algorithm=algorithm, model=model, data=data,
                               schedule=ScheduleConfig(steps=2, batch_size=2), **changes)


# ------------------------------------------------------------------------------------------------ ODE pairs
def test_ode_pairs_are_training_prompts_and_resume(teacher, pairs, tmp_path):
    data = ODEPairDataset(pairs)
    assert len(data) == 6 and data.shape[0] == 5 and data.shape[1] == FRAMES    # 4 kept states + clean
    assert [data[i][2] for i in range(6)] == pair_prompts(6)
    assert data.timesteps.tolist()[-1] == 0.0
    # a rerun with a larger n adds the missing trajectories and keeps the first ones
    first = data[0][0]
    generate_ode_pairs(ODEPairsConfig(teacher=str(teacher), out=str(pairs), n=8, num_steps=4, num_frames=FRAMES,
                                      batch_size=4, guidance=2.0), progress=False)
    grown = ODEPairDataset(pairs)
    assert len(grown) == 8 and torch.equal(grown[0][0], first)
    assert [grown[i][2] for i in range(8)] == pair_prompts(8)


def test_ode_pairs_cli_reports_bad_input(tmp_path, capsys):
    assert main(["ode-pairs", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "p")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="multiple of 4"):
        ODEPairsConfig(teacher="t", out="o", num_steps=6)


# ------------------------------------------------------------------------------------------------ ODE init
def test_ode_init_trains_and_exports_a_few_step_generator(teacher, pairs, tmp_path):
    cfg = stage(tmp_path, "ode-init", teacher, data={"source": "ode-pairs", "ode_pairs": str(pairs)},
                ode_init=ODEInitConfig(init_from=str(teacher)))
    trainer = Trainer(cfg)
    # the student starts from the teacher's weights (same names, causal attention)
    from selfforcing.io.checkpoints import load_transformer

    for k, v in load_transformer(teacher).state_dict().items():
        assert torch.equal(trainer.networks["generator"].state_dict()[k], v), k
    before = params(trainer.networks["generator"])
    result = trainer.fit()
    assert torch.isfinite(torch.tensor(result["generator/loss"]))
    assert changed(before, trainer.networks["generator"])
    spec = read_pipeline_spec(tmp_path / "generator_ema.safetensors")
    assert spec.sampling.num_inference_steps is None and spec.sampling.denoising_steps == (1000, 750, 500, 250)
    pipe, _ = load_pipeline(tmp_path / "generator_ema.safetensors", text_encoder=_hash(cfg))
    assert isinstance(pipe, StreamingPipeline)
    video = pipe("a red circle moves right", num_frames=FRAMES, seeds=[0])
    assert video.latents.shape[1] == FRAMES and torch.isfinite(video.latents).all()


def test_ode_init_without_pairs_is_one_clear_error(teacher, tmp_path):
    with pytest.raises(ValueError, match="ode_pairs"):
        DataConfig(source="ode-pairs")
    cfg = stage(tmp_path, "ode-init", teacher, data={"source": "ode-pairs", "ode_pairs": str(tmp_path / "none")})
    with pytest.raises(ValueError, match="no ODE pairs"):
        Trainer(cfg).fit()


def _hash(cfg):
    from selfforcing.training.data import HashTextEncoder

    return HashTextEncoder(cfg.model.text_dim, cfg.data.text_max_length)


# ------------------------------------------------------------------------------------------------ distillation
DISTILL_CASES = {
    "sf-dmd": dict(loss="dmd"),
    "sf-sid": dict(loss="sid"),
    "sf-gan": dict(loss="gan", gan_relativistic=True, r1_weight=0.1, r2_weight=0.1),
    "sf-dmd-gan": dict(loss="dmd", gan_weight=0.01, gan_critic_weight=0.1, gan_relativistic=True),
    "causvid": dict(loss="dmd", inputs="diffusion-forcing"),
    "tf-dmd": dict(loss="dmd", inputs="teacher-forcing"),
}


@pytest.mark.parametrize("case", sorted(DISTILL_CASES))
def test_distillation_updates_generator_and_critic_not_the_teacher(case, teacher, tmp_path):
    d = DistillConfig(teacher=str(teacher), generator_every=2, generator_lr=1e-3, critic_lr=1e-3, **DISTILL_CASES[case])
    source = "world" if d.needs_videos else "prompts"
    cfg = stage(tmp_path, "distill", teacher, distill=d, data={"source": source})
    trainer = Trainer(cfg)
    nets = trainer.networks
    assert ("real" in nets) == d.needs_teacher
    before = {k: params(v) for k, v in nets.items()}
    trainer.fit(until=1)                                       # step 0: critic and generator both update
    assert changed(before["generator"], nets["generator"]) and changed(before["critic"], nets["critic"])
    if "real" in nets:
        assert not changed(before["real"], nets["real"])
        assert not any(p.requires_grad for p in nets["real"].parameters())
    gen = params(nets["generator"])
    logs = trainer.train_step([trainer_batch(trainer)])        # step 1: the critic only (generator every 2)
    assert not changed(gen, nets["generator"])
    assert "critic/loss" in logs and "generator/loss" not in logs
    assert all(torch.isfinite(v) for v in logs.values())
    assert (tmp_path / "generator_ema.safetensors").exists() is False       # nothing exported before a save
    trainer.save()
    assert (tmp_path / "generator_ema.safetensors").exists() and not (tmp_path / "critic.safetensors").exists()


def trainer_batch(trainer):
    from selfforcing.training.data import make_loader, make_text_encoder, to_batch

    cfg = trainer.config
    raw = next(iter(make_loader(cfg, trainer.step)))
    return to_batch(cfg, make_text_encoder(cfg.data, cfg.model.text_dim), "cpu")(raw)


def test_distillation_learning_rates_are_per_update(teacher, tmp_path):
    d = DistillConfig(teacher=str(teacher), generator_lr=3e-4, critic_lr=7e-5)
    trainer = Trainer(stage(tmp_path, "distill", teacher, distill=d, data={"source": "prompts"}))
    assert trainer.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(3e-4)
    assert trainer.optimizers["critic"].param_groups[0]["lr"] == pytest.approx(7e-5)


def test_self_forcing_needs_no_videos(teacher, tmp_path):
    cfg = stage(tmp_path, "distill", teacher, distill=DistillConfig(teacher=str(teacher)), data={"source": "prompts"})
    batch = trainer_batch(Trainer(cfg))
    assert batch.x_0 is None and batch.context.shape[0] == 2
    gan = stage(tmp_path, "distill", teacher, distill=DistillConfig(teacher=str(teacher), loss="gan"),
                data={"source": "prompts"})
    with pytest.raises(ValueError, match="real clips"):
        Trainer(gan).fit(until=1)


def test_long_rollout_scores_the_last_window(teacher, tmp_path):
    d = DistillConfig(teacher=str(teacher), rollout_frames=2 * FRAMES, generator_every=1)
    cfg = stage(tmp_path, "distill", teacher, distill=d, data={"source": "prompts"})
    cfg = dataclasses.replace(cfg, model=cfg.model.replace(local_attn_size=6, sink_size=3))
    trainer = Trainer(cfg)
    batch = trainer_batch(trainer)
    from selfforcing.algorithms.base import SampleRNG

    video, _ = trainer.algorithm.generate(batch, SampleRNG(batch.seeds).generator())
    assert video.shape[1] == FRAMES and video.requires_grad
    logs = trainer.train_step([batch])
    assert torch.isfinite(logs["generator/loss"])


@pytest.mark.parametrize("loss", ["dmd", "gan"])
def test_distillation_resume_is_bitwise_identical(loss, teacher, tmp_path):
    d = DistillConfig(teacher=str(teacher), generator_every=2, loss=loss)
    cfg = stage(tmp_path / "a", "distill", teacher, distill=d, data={"source": "world" if loss == "gan" else "prompts"})
    cfg = dataclasses.replace(cfg, schedule=ScheduleConfig(steps=4, batch_size=2),
                              checkpoint=dataclasses.replace(cfg.checkpoint, every=2, keep=3))
    straight = Trainer(cfg)
    straight.fit()
    killed_cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / "b"))
    killed = Trainer(killed_cfg)
    killed.fit(until=3)
    resumed = Trainer(killed_cfg, resume=True)
    assert resumed.step == 2
    resumed.fit()
    for net in ("generator", "critic"):
        for k, v in params(straight.networks[net]).items():
            assert torch.equal(v, resumed.networks[net].state_dict()[k]), (net, k)


# ------------------------------------------------------------------------------------------------ TF / DF
@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_causal_diffusion_trains_and_exports_a_multistep_generator(teacher_forcing, teacher, tmp_path):
    cfg = stage(tmp_path, "causal-diffusion", teacher,
                causal=CausalDiffusionConfig(teacher_forcing=teacher_forcing, init_from=str(teacher), sample_steps=4))
    trainer = Trainer(cfg)
    before = params(trainer.networks["generator"])
    result = trainer.fit()
    assert changed(before, trainer.networks["generator"]) and result["generator/loss"] > 0
    spec = read_pipeline_spec(tmp_path / "generator_ema.safetensors")
    assert spec.sampling.num_inference_steps == 4 and spec.sampling.guidance_scale == cfg.causal.guidance
    pipe, _ = load_pipeline(tmp_path / "generator_ema.safetensors", text_encoder=_hash(cfg))
    assert pipe("a blue square", num_frames=FRAMES, seeds=[1]).latents.shape[1] == FRAMES


# ------------------------------------------------------------------------------------------------ presets
def test_world_stage_presets_chain_their_outputs():
    names = set(train_preset_names())
    assert {"ode-init-world", "sf-dmd-world", "sf-sid-world", "sf-gan-world", "sf-dmd-world-framewise",
            "sf-dmd-world-long", "causvid-world", "tf-dmd-world", "tf-world", "df-world"} <= names
    teacher_out = Path(train_preset("teacher-world").out_dir) / "model_ema.safetensors"
    init = train_preset("ode-init-world")
    assert init.ode_init.init_from == str(teacher_out) and init.data.source == "ode-pairs"
    ode_out = Path(init.out_dir) / "generator_ema.safetensors"
    for name in ("sf-dmd-world", "sf-sid-world", "sf-gan-world", "sf-dmd-gan-world", "causvid-world", "tf-dmd-world",
                 "sf-dmd-world-long"):
        cfg = train_preset(name)
        assert cfg.algorithm == "distill" and cfg.distill.generator_init == str(ode_out), name
        assert cfg.distill.teacher == str(teacher_out)
        assert cfg.data.source == ("world" if cfg.distill.needs_videos else "prompts"), name
        assert cfg.model.causal and cfg.model.num_frame_per_block == 3
    assert train_preset("sf-dmd-world-framewise").model.num_frame_per_block == 1
    long = train_preset("sf-dmd-world-long")
    assert long.model.local_attn_size > 0 and long.distill.rollout_frames > long.data.num_frames
