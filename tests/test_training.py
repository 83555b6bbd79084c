"""Training infrastructure: typed overrides, atomic checkpoints, exact resume, EMA, accumulation, a real step."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from selfforcing.training import checkpoint as ckpt
from selfforcing.training.cli import add_parser, run
from selfforcing.training.config import TrainConfig, load_config, resolve_config, train_preset
from selfforcing.training.data import MicroBatches, micro_positions, sample_index
from selfforcing.training.ema import EMA
from selfforcing.training.overrides import apply_overrides
from selfforcing.training.trainer import Trainer, lr_at


def tiny(tmp_path: Path, *overrides: str) -> TrainConfig:
    return resolve_config("teacher-tiny", list(overrides), out_dir=str(tmp_path))


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------- overrides
def test_overrides_are_parsed_and_typed():
    base = train_preset("teacher-world")
    cfg = apply_overrides(base, ["optim.lr=3e-4", "schedule.steps=2_000", "optim.betas=(0.9, 0.95)",
                                 "ema.enabled=false", "precision.autocast=bf16", "teacher.init_from=none",
                                 "model.num_layers=4", "model.patch_size=1,2,2"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.schedule.steps == 2000 and isinstance(cfg.schedule.steps, int)
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.ema.enabled is False and cfg.precision.autocast == "bf16"
    assert cfg.teacher.init_from is None and cfg.model.num_layers == 4 and cfg.model.patch_size == (1, 2, 2)
    assert base.optim.lr != 3e-4                                     # frozen: the base is untouched
    # all overrides are applied before the checks run, so their order does not matter
    a = apply_overrides(base, ["schedule.grad_accum=3", "schedule.batch_size=6"])
    b = apply_overrides(base, ["schedule.batch_size=6", "schedule.grad_accum=3"])
    assert a == b and a.schedule.grad_accum == 3


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("nope=1", "unknown config key 'nope'"),
    ("optim.lr.x=1", "is a value, not a section"),
    ("optim=1", "is a section"),
    ("optim.lr=abc", "optim.lr: 'abc' is not a number"),
    ("schedule.steps=1.5", "schedule.steps: '1.5' is not an integer"),
    ("ema.enabled=maybe", "is not a boolean"),
    ("precision.autocast=fp16", "is not one of"),
    ("optim.betas=0.9", "expected 2 values"),
    ("schedule.grad_accum=3", "not divisible"),
    ("lr", "not of the form key=value"),
    ("data.image_every=2", "needs data.image_batch_size"),
    ("data.image_every=-1", "must be non-negative"),
])
def test_bad_overrides_raise_one_line(override, message):
    with pytest.raises(ValueError, match=None) as info:
        apply_overrides(train_preset("teacher-world"), [override])
    text = str(info.value)
    assert message in text and "\n" not in text


def test_config_round_trips_and_json_files(tmp_path):
    cfg = train_preset("teacher-world-quick")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "teacher-tiny", "optim": {"lr": 0.01}, "schedule": {"steps": 7}}))
    loaded = load_config(str(path))
    assert loaded.optim.lr == 0.01 and loaded.schedule.steps == 7 and loaded.model == train_preset("teacher-tiny").model
    path.write_text(json.dumps({"optim": {"lr": 0.01, "bogus": 1}}))
    with pytest.raises(ValueError, match="unknown config key 'optim.bogus'"):
        load_config(str(path))
    with pytest.raises(ValueError, match="neither a training preset"):
        load_config("no-such-preset")


def test_cli_parses_and_reports_bad_input(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "teacher-tiny", "--set", "optim.lr=0.5", "schedule.steps=3",
                              "--out", str(tmp_path), "--print-config"])
    run(args)
    printed = json.loads(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.5 and printed["schedule"]["steps"] == 3 and printed["out_dir"] == str(tmp_path)
    with pytest.raises(ValueError, match="unknown config key"):
        run(parser.parse_args(["train", "teacher-tiny", "--set", "optim.nope=1"]))
    with pytest.raises(ValueError, match="no checkpoint"):
        run(parser.parse_args(["train", "teacher-tiny", "--out", str(tmp_path / "empty"), "--resume"]))


def test_resume_keeps_the_overrides_the_run_started_with(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    out = str(tmp_path / "run")
    run(parser.parse_args(["train", "teacher-tiny", "--set", "optim.lr=0.02", "schedule.steps=2",
                           "--out", out]))
    capsys.readouterr()
    run(parser.parse_args(["train", "teacher-tiny", "--set", "schedule.steps=4", "--out", out, "--resume",
                           "--print-config"]))
    printed = json.loads(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.02 and printed["schedule"]["steps"] == 4 and printed["out_dir"] == out
    run(parser.parse_args(["train", "teacher-tiny", "--set", "schedule.steps=4", "--out", out, "--resume"]))
    state = ckpt.load_state(ckpt.latest_checkpoint(Path(out) / "checkpoints"))
    assert state["step"] == 4 and state["config"]["optim"]["lr"] == 0.02
    with pytest.raises(ValueError, match="holds a 'teacher-tiny' run"):
        run(parser.parse_args(["train", "teacher-world-quick", "--out", out, "--resume"]))


# --------------------------------------------------------------------------------------------- checkpoints
def test_failed_checkpoint_write_leaves_the_old_one_intact(tmp_path, monkeypatch):
    path = ckpt.checkpoint_path(tmp_path, 1)
    ckpt.save_state(path, {"step": 1, "weights": torch.arange(4.0)})
    before = path.read_bytes()

    real_save = torch.save

    def crash_mid_write(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)       # a full file lands at the temporary name ...
        with open(f, "r+b") as fh:
            fh.truncate(10)                      # ... is cut short, and the process dies
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_state(path, {"step": 2, "weights": torch.zeros(4)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert ckpt.load_state(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]          # no temporary file left behind
    assert ckpt.latest_checkpoint(tmp_path) == path


def test_prune_keeps_the_newest(tmp_path):
    for step in (2, 4, 6, 8):
        ckpt.save_state(ckpt.checkpoint_path(tmp_path, step), {"step": step})
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [6, 8]


def test_resume_after_a_kill_is_bitwise_identical(tmp_path):
    cfg = dataclasses.replace(tiny(tmp_path / "a", "schedule.steps=5", "checkpoint.every=2", "checkpoint.keep=5"))
    straight = Trainer(cfg)
    straight.fit()

    killed_cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / "b"))
    killed = Trainer(killed_cfg)
    killed.fit(until=3)                          # checkpoint at step 2; step 3 is lost with the process
    del killed
    resumed = Trainer(killed_cfg, resume=True)
    assert resumed.step == 2
    resumed.fit()
    assert resumed.step == straight.step == 5

    for name, a in params(straight.networks["model"]).items():
        assert torch.equal(a, params(resumed.networks["model"])[name]), name
    for name, a in straight.emas["model"].shadow.items():
        assert torch.equal(a, resumed.emas["model"].shadow[name]), name
    opt_a, opt_b = straight.optimizers["model"].state_dict(), resumed.optimizers["model"].state_dict()
    for i, state in opt_a["state"].items():
        for key, value in state.items():
            assert torch.equal(value, opt_b["state"][i][key]), (i, key)
    # the final checkpoints agree too, config and step included
    a = ckpt.load_state(ckpt.latest_checkpoint(tmp_path / "a" / "checkpoints"))
    b = ckpt.load_state(ckpt.latest_checkpoint(tmp_path / "b" / "checkpoints"))
    assert a["step"] == b["step"] == 5 and TrainConfig.from_dict(a["config"]) == cfg


def test_exported_weights_load_with_their_config(tmp_path):
    from selfforcing.inference.loading import read_pipeline_spec
    from selfforcing.io.checkpoints import describe_checkpoint, load_transformer

    cfg = tiny(tmp_path, "schedule.steps=2")
    trainer = Trainer(cfg)
    trainer.fit()
    model = load_transformer(tmp_path / "model.safetensors")
    for k, v in trainer.networks["model"].state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    ema = load_transformer(tmp_path / "model_ema.safetensors")
    assert ema.config == cfg.model
    meta = describe_checkpoint(tmp_path / "model_ema.safetensors")["metadata"]
    assert TrainConfig.from_dict(json.loads(meta[ckpt.TRAIN_CONFIG_KEY])) == cfg
    assert json.loads(meta[ckpt.STEP_KEY]) == 2
    spec = read_pipeline_spec(tmp_path / "model.safetensors")
    assert spec.train_frames == cfg.data.num_frames and spec.sampling.shift == cfg.teacher.sample_shift


# ------------------------------------------------------------------------------------------------ pieces
def test_ema_math():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, decay=0.9, start_step=2)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net, step=1)                      # before start_step: a copy
    assert torch.equal(ema.shadow["weight"], net.weight)
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update(net, step=2)                      # 0.9 * 1 + 0.1 * 3
    assert torch.allclose(ema.shadow["weight"], torch.full((2, 3), 1.2))
    ema.update(net, step=3)                      # 0.9 * 1.2 + 0.1 * 3
    assert torch.allclose(ema.shadow["weight"], torch.full((2, 3), 1.38))
    with ema.swapped(net):
        assert torch.allclose(net.weight, torch.full((2, 3), 1.38))
    assert torch.equal(net.weight, torch.full((2, 3), 3.0))
    state = ema.state_dict()
    other = EMA(torch.nn.Linear(3, 2), decay=0.9)
    other.load_state_dict(state)
    assert torch.equal(other.shadow["weight"], ema.shadow["weight"])


def test_learning_rate_schedule():
    from selfforcing.training.config import OptimConfig

    o = OptimConfig(lr=1.0, warmup_steps=4, decay="cosine", min_lr_ratio=0.1)
    assert [lr_at(o, s, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(o, 4, 14) == pytest.approx(1.0) and lr_at(o, 13, 14) == pytest.approx(0.1)
    assert lr_at(dataclasses.replace(o, decay="constant"), 100, 14) == 1.0


def test_data_order_partitions_the_global_batch():
    positions = sorted(p for m in range(2) for r in range(2) for p in micro_positions(8, 2, 2, r, m))
    assert positions == list(range(8))
    epoch = [sample_index(g, 10, seed=3) for g in range(10)]
    assert sorted(epoch) == list(range(10)) and epoch != list(range(10))
    assert [sample_index(g, 10, seed=3) for g in range(10, 20)] != epoch      # a fresh order every epoch


def test_image_steps_take_single_frames_from_their_own_stream(tmp_path):
    cfg = tiny(tmp_path, "data.image_every=2", "data.image_batch_size=6", "schedule.steps=4")
    data, clips_only = MicroBatches(cfg), MicroBatches(tiny(tmp_path, "schedule.steps=4"))
    shapes = [tuple(data[k]["video"].shape[:2]) for k in range(4)]
    assert shapes == [(4, 3), (6, 1), (4, 3), (6, 1)]                    # steps 1 and 3 are image steps
    for k in (0, 2):                                                     # clip steps are untouched
        torch.testing.assert_close(data[k]["video"], clips_only[k]["video"])
        assert data[k]["captions"] == clips_only[k]["captions"]
    torch.testing.assert_close(data[1]["video"], data[1]["video"])      # a pure function of the step
    assert not torch.equal(data[1]["seeds"], data[3]["seeds"])
    # accumulation and ranks cut an image step like any other: together they see the same frames
    halves = [MicroBatches(dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, grad_accum=2)))[k]
              for k in (2, 3)]
    torch.testing.assert_close(torch.cat([h["video"] for h in halves]), data[1]["video"])


def test_colour_synonyms_change_only_the_captions_colour_words(tmp_path):
    plain, varied = MicroBatches(tiny(tmp_path)), MicroBatches(tiny(tmp_path, "data.colour_synonyms=1.0"))
    again = MicroBatches(tiny(tmp_path, "data.colour_synonyms=1.0"))
    changed = 0
    for k in range(3):
        a, b = plain[k], varied[k]
        torch.testing.assert_close(a["video"], b["video"])
        assert b["captions"] == again[k]["captions"]                    # a pure function of the sample seed
        for x, y in zip(a["captions"], b["captions"]):
            assert len(x.split()) == len(y.split())
            changed += x != y
    assert changed > 0
    with pytest.raises(ValueError, match="colour_synonyms"):
        tiny(tmp_path, "data.colour_synonyms=1.5")


def test_data_fps_moves_objects_further_per_frame(tmp_path):
    base = ("data.max_start_frame=0", "data.detailed_caption_prob=0")
    full = MicroBatches(tiny(tmp_path, *base, "data.num_frames=5"))[0]
    half = MicroBatches(tiny(tmp_path, *base, "data.num_frames=3", "data.fps=8"))[0]
    torch.testing.assert_close(half["video"], full["video"][:, ::2])    # every other frame of the 16-fps clip
    assert half["captions"] == full["captions"]
    with pytest.raises(ValueError, match="data.fps"):
        tiny(tmp_path, "data.fps=0")


@pytest.mark.parametrize("changes, message", [
    (("algorithm=ode-init",), "train the bidirectional teacher only"),
    (("data.source=prompts",), "needs data.source=world"),
    (("schedule.grad_accum=4",), "not divisible by schedule.grad_accum"),
])
def test_image_steps_refuse_what_they_cannot_train(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path, "data.image_every=2", "data.image_batch_size=6", *changes)


def test_resume_with_image_steps_is_bitwise_identical(tmp_path):
    cfg = tiny(tmp_path / "a", "schedule.steps=4", "checkpoint.every=2", "data.image_every=2",
               "data.image_batch_size=6")
    straight = Trainer(cfg)
    straight.fit()
    killed_cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / "b"))
    Trainer(killed_cfg).fit(until=3)            # checkpoint at step 2; step 3 (an image step) is lost
    resumed = Trainer(killed_cfg, resume=True)
    resumed.fit()
    for name, a in params(straight.networks["model"]).items():
        assert torch.equal(a, params(resumed.networks["model"])[name]), name


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    one = Trainer(tiny(tmp_path / "a", "schedule.steps=2", "schedule.batch_size=4", "checkpoint.every=0"))
    two = Trainer(tiny(tmp_path / "b", "schedule.steps=2", "schedule.batch_size=4", "schedule.grad_accum=2",
                       "checkpoint.every=0"))
    logs_one, logs_two = one.fit(), two.fit()
    assert logs_one["model/loss"] == pytest.approx(logs_two["model/loss"], rel=1e-5)
    for name, a in params(one.networks["model"]).items():
        torch.testing.assert_close(a, params(two.networks["model"])[name], rtol=1e-5, atol=1e-6)


def test_two_steps_give_finite_loss_and_change_the_weights(tmp_path):
    trainer = Trainer(tiny(tmp_path, "schedule.steps=2", "checkpoint.every=0"))
    before = params(trainer.networks["model"])
    logs = trainer.fit()
    after = params(trainer.networks["model"])
    assert trainer.step == 2 and torch.isfinite(torch.tensor(logs["model/loss"]))
    assert logs["model/grad_norm"] > 0
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)                      # every tensor moved, the zero-initialised head too


def test_bf16_autocast_option_runs(tmp_path):
    trainer = Trainer(tiny(tmp_path, "schedule.steps=1", "precision.autocast=bf16", "checkpoint.every=0",
                           "schedule.batch_size=1"))
    logs = trainer.fit()
    assert torch.isfinite(torch.tensor(logs["model/loss"]))
    assert next(trainer.networks["model"].parameters()).dtype == torch.float32


def test_auto_precision_is_resolved_for_the_device_and_stored(tmp_path):
    from selfforcing.training.parallel import native_bf16

    trainer = Trainer(tiny(tmp_path, "schedule.steps=2", "precision.autocast=auto", "checkpoint.every=2"))
    expected = "bf16" if native_bf16("cpu") else "fp32"
    assert trainer.config.precision.autocast == expected
    trainer.fit()
    stored = ckpt.load_state(ckpt.latest_checkpoint(tmp_path / "checkpoints"))["config"]
    assert stored["precision"]["autocast"] == expected           # what ran, not "auto"
    assert native_bf16("meta") is False                           # devices without matmuls never pick bf16


def test_activation_checkpointing_gives_the_same_weights(tmp_path):
    plain = Trainer(tiny(tmp_path / "a", "schedule.steps=2"))
    plain.fit()
    recomputed = Trainer(tiny(tmp_path / "b", "schedule.steps=2", "parallel.activation_checkpointing=true"))
    assert recomputed.networks["model"].gradient_checkpointing
    recomputed.fit()
    for name, a in params(plain.networks["model"]).items():
        torch.testing.assert_close(a, params(recomputed.networks["model"])[name], rtol=1e-5, atol=1e-6)


def test_mixed_rope_frequencies_train_at_their_own_learning_rate(tmp_path):
    """`optim.rope_lr_scale` scales the step of the mixed RoPE frequencies alone (no weight decay on them): AdamW's
    first step on a parameter moves it by about the learning rate, the frequencies by that times the scale.
    (Step 1 trains the zero-initialised head only; the frequencies take their first step at step 2, from the same
    state in both runs.)"""
    moved = {}
    for scale in (1.0, 10.0):
        trainer = Trainer(tiny(tmp_path / str(scale), "model.rope_mixed=true", f"optim.rope_lr_scale={scale}",
                               "optim.warmup_steps=0", "schedule.steps=2", "checkpoint.every=0"))
        before = params(trainer.networks["model"])
        trainer.fit()
        moved[scale] = {k: (v - before[k]).abs().max() for k, v in params(trainer.networks["model"]).items()}
    freqs = [k for k in moved[1.0] if k.endswith("self_attn.rope_freqs")]
    assert freqs and len(freqs) == trainer.config.model.num_layers
    for k in moved[1.0]:
        if k in freqs:
            assert 9.0 < moved[10.0][k] / moved[1.0][k] < 11.0, k
        else:
            assert torch.equal(moved[10.0][k], moved[1.0][k]), k
    groups = trainer.optimizers["model"].param_groups
    assert [g["weight_decay"] for g in groups] == [trainer.config.optim.weight_decay, 0.0]


def test_the_scene_loss_trains_a_probe_that_exports_leave_out(tmp_path):
    """teacher.scene_weight gives the model a probe, its batches the clips' labels (aligned with the videos),
    and its logs the scene loss; exported weights are the plain network, from which a run grows a fresh probe;
    resuming is exact."""
    from selfforcing.io.checkpoints import describe_checkpoint, load_transformer
    from selfforcing.world import LABEL_GROUPS

    cfg = tiny(tmp_path / "a", "teacher.scene_weight=0.5", "teacher.scene_layer=0", "schedule.steps=3",
               "checkpoint.every=2", "checkpoint.keep=5")
    item = MicroBatches(cfg)[0]
    labels, video = item["labels"], item["video"]                        # (b, F, G, H, W), (b, F, 3, H, W)
    assert labels.shape == (*video.shape[:2], len(LABEL_GROUPS), *video.shape[3:]) and labels.dtype == torch.uint8
    assert ((video.amax(2) > 0.2) == (labels[:, :, 1] > 0)).float().mean() > 0.95
    assert "labels" not in MicroBatches(tiny(tmp_path))[0]

    trainer = Trainer(cfg)
    model = trainer.networks["model"]
    assert model.config.probe == sum(len(words) + 1 for words in LABEL_GROUPS.values())
    logs = trainer.fit()
    assert 0 < logs["model/scene_loss"] < 10 and model.probe[0].weight.grad is not None
    exported = load_transformer(tmp_path / "a" / "model_ema.safetensors")
    assert exported.probe is None and exported.config == cfg.model
    assert describe_checkpoint(tmp_path / "a" / "model.safetensors")["config"]["probe"] == 0
    assert load_transformer(tmp_path / "a" / "model.safetensors").probe is None
    for k, v in exported.state_dict().items():
        assert torch.equal(v, trainer.emas["model"].shadow[k].to(v.dtype)), k

    grown = Trainer(tiny(tmp_path / "b", "teacher.scene_weight=0.5", "schedule.steps=1",
                         f"teacher.init_from={tmp_path / 'a' / 'model.safetensors'}"))
    for k, v in exported.state_dict().items():
        assert torch.equal(grown.networks["model"].state_dict()[k], model.state_dict()[k]), k
    assert grown.networks["model"].probe is not None

    resumed = Trainer(dataclasses.replace(cfg, out_dir=str(tmp_path / "c")))
    resumed.fit(until=2)
    resumed = Trainer(dataclasses.replace(cfg, out_dir=str(tmp_path / "c")), resume=True)
    resumed.fit()
    for k, v in params(model).items():
        assert torch.equal(v, params(resumed.networks["model"])[k]), k
    with pytest.raises(ValueError, match="world clips"):
        Trainer(tiny(tmp_path / "d", "teacher.scene_weight=0.5", "data.source=prompts"))
    with pytest.raises(ValueError, match="scene_layer 2 is not a block"):
        Trainer(tiny(tmp_path / "d", "teacher.scene_weight=0.5", "teacher.scene_layer=2"))


def test_a_self_conditioned_teacher_trains_exports_and_grows_from_a_plain_one(tmp_path):
    """model.self_cond trains the self-conditioning embedding from zero, exports it, and a run from a
    checkpoint without it grows it at zero with the other weights as they were."""
    from selfforcing.io.checkpoints import load_transformer

    plain = Trainer(tiny(tmp_path / "a", "schedule.steps=2"))
    plain.fit()
    trainer = Trainer(tiny(tmp_path / "b", "model.self_cond=true", "schedule.steps=2",
                           f"teacher.init_from={tmp_path / 'a' / 'model.safetensors'}"))
    model = trainer.networks["model"]
    assert torch.equal(model.self_cond_embedding.weight, torch.zeros_like(model.self_cond_embedding.weight))
    for k, v in plain.networks["model"].state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    trainer.fit()
    assert model.self_cond_embedding.weight.abs().sum() > 0
    exported = load_transformer(tmp_path / "b" / "model.safetensors")
    assert exported.config.self_cond
    torch.testing.assert_close(exported.self_cond_embedding.weight, model.self_cond_embedding.weight)


def test_masked_training_trains_the_mask_token_and_exports_the_plain_network(tmp_path):
    """teacher.mask_ratio gives the network a mask token (grown onto a checkpoint without one), trains it, and
    exports the plain network without it, which a later stage loads as it is."""
    from selfforcing.io.checkpoints import load_transformer

    plain = Trainer(tiny(tmp_path / "a", "schedule.steps=1"))
    plain.fit()
    trainer = Trainer(tiny(tmp_path / "b", "teacher.mask_ratio=0.5", "schedule.steps=2",
                           f"teacher.init_from={tmp_path / 'a' / 'model.safetensors'}"))
    model = trainer.networks["model"]
    assert model.config.mask_decoder == 1 and model.mask_token is not None
    for k, v in plain.networks["model"].state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    token = model.mask_token.detach().clone()
    trainer.fit()
    assert not torch.equal(model.mask_token, token)
    exported = load_transformer(tmp_path / "b" / "model.safetensors")
    assert exported.config.mask_decoder == 0 and exported.mask_token is None
    assert exported.state_dict().keys() == plain.networks["model"].state_dict().keys()
    for k, v in exported.state_dict().items():
        assert torch.equal(v, model.state_dict()[k].to(v.dtype)), k
    after = Trainer(tiny(tmp_path / "c", f"teacher.init_from={tmp_path / 'b' / 'model.safetensors'}"))
    assert after.networks["model"].mask_token is None
    with pytest.raises(ValueError, match="mask_decoder 2 leaves no block"):
        Trainer(tiny(tmp_path / "d", "teacher.mask_ratio=0.5", "teacher.mask_decoder=2"))


def test_a_causal_generator_starts_from_a_self_conditioned_teachers_plain_denoiser(tmp_path):
    """A generator (or a teacher without self-conditioning) initialised from a self-conditioned checkpoint
    takes every weight but the estimate's embedding: the function the teacher has when it reads no estimate."""
    from selfforcing.config import get_preset
    from selfforcing.io.checkpoints import load_transformer
    from selfforcing.training.trainer import _load_or_new

    Trainer(tiny(tmp_path / "a", "model.self_cond=true", "teacher.self_cond_prob=1", "schedule.steps=4")).fit()
    path = str(tmp_path / "a" / "model.safetensors")
    teacher = load_transformer(path)
    assert teacher.self_cond_embedding.weight.abs().sum() > 0
    causal = _load_or_new(path, teacher.config.replace(self_cond=False, causal=True, num_frame_per_block=1))
    plain = _load_or_new(path, teacher.config.replace(self_cond=False))
    for model in (causal, plain):
        assert model.self_cond_embedding is None
        kept = model.state_dict()
        assert kept.keys() == {k for k in teacher.state_dict() if not k.startswith("self_cond_embedding")}
        for k, v in kept.items():
            assert torch.equal(v, teacher.state_dict()[k]), k
    assert causal.config.causal and not plain.config.causal
    with pytest.raises(ValueError, match="bidirectional"):
        get_preset("tiny-causal").replace(self_cond=True)
