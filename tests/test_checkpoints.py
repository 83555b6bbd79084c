"""Every checkpoint layout saves and loads back the same function; wrong checkpoints fail loudly."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from selfforcing.config import get_preset
from selfforcing.io import (
    CheckpointError,
    describe_checkpoint,
    detect_layout,
    load_transformer,
    save_diffusers,
    save_transformer,
    save_wan,
)
from selfforcing.models.wan import WanDiT

# a .pt has no config: dim 64 is not a multiple of Wan's 128-wide heads, and text_len is Wan's 512 by default
TINY_PT = {"num_heads": 2, "text_len": 8}


def _random_model(seed=0, causal=False) -> WanDiT:
    torch.manual_seed(seed)
    model = WanDiT(get_preset("tiny-causal" if causal else "tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.05)   # the default init zeroes the head, which would hide a wrong load
    return model


def _inputs(model, frames=2):
    g = torch.Generator().manual_seed(1)
    cfg = model.config
    x = torch.randn(2, frames, cfg.in_dim, 4, 4, generator=g)                # (B, F, C, H, W)
    t = torch.tensor([900.0, 250.0])
    ctx = torch.randn(2, 5, cfg.text_dim, generator=g)                       # (B, L, text_dim)
    return x, t, ctx


def assert_same_function(a: WanDiT, b: WanDiT):
    x, t, ctx = _inputs(a)
    with torch.no_grad():
        assert torch.equal(a(x, t, ctx), b(x, t, ctx))


def _official_pt(path, generator: WanDiT, ema: WanDiT | None, fsdp=False):
    def wrap(model):
        out = {}
        for k, v in model.state_dict().items():
            if fsdp:   # as saved from FSDP + activation checkpointing
                k = k.replace("blocks.", "_fsdp_wrapped_module.blocks.")
                k = k.replace("ffn.", "_checkpoint_wrapped_module.ffn.")
            out[f"model.{k}"] = v.clone()
        return out

    ckpt = {"generator": wrap(generator)}
    if ema is not None:
        ckpt["generator_ema"] = wrap(ema)
        ckpt["critic"] = {"model.x": torch.zeros(1)}
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def model():
    return _random_model()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    """The tiny model saved in every layout."""
    root = tmp_path_factory.mktemp("ckpts")
    ema = _random_model(seed=1)
    return {
        "own": save_transformer(model, root / "own.safetensors", extra_metadata={"step": 7}),
        "wan": save_wan(model, root / "wan"),
        "wan_sharded": save_wan(model, root / "wan_sharded", max_shard_size=20_000),
        "diffusers": save_diffusers(model, root / "diffusers"),
        "diffusers_sharded": save_diffusers(model, root / "diffusers_sharded", max_shard_size=20_000),
        "pt": _official_pt(root / "self_forcing_dmd.pt", model, ema),
        "pt_fsdp": _official_pt(root / "fsdp.pt", ema, model, fsdp=True),
        "ode_init": _official_pt(root / "ode_init.pt", model, None),
        "ema": ema,
    }


@pytest.mark.parametrize(
    "name,layout",
    [("own", "selfforcing"), ("wan", "wan"), ("wan_sharded", "wan"), ("diffusers", "diffusers"),
     ("diffusers_sharded", "diffusers"), ("pt", "self-forcing-pt"), ("ode_init", "self-forcing-pt")],
)
def test_each_layout_loads_back_the_same_function(model, saved, name, layout):
    assert detect_layout(saved[name]) == layout
    overrides = TINY_PT if layout == "self-forcing-pt" else None
    loaded = load_transformer(saved[name], use_ema=False, causal=False, overrides=overrides)
    assert loaded.config == model.config
    assert_same_function(model, loaded)


def test_sharded_folders_have_an_index(saved):
    index = json.loads((saved["wan_sharded"] / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (saved["wan_sharded"] / "diffusion_pytorch_model.safetensors").exists()


def test_pipeline_roots(model, saved, tmp_path):
    pipe = tmp_path / "pipe"
    save_diffusers(model, pipe / "transformer")
    (pipe / "model_index.json").write_text("{}")
    assert detect_layout(pipe) == "diffusers"
    assert_same_function(model, load_transformer(pipe))
    # a Wan root also holds the VAE and T5 next to the DiT files
    (saved["wan"] / "Wan2.1_VAE.pth").write_bytes(b"not a dit")
    assert detect_layout(saved["wan"]) == "wan"
    # the weight file itself, given directly, uses the config.json beside it
    assert detect_layout(saved["wan"] / "diffusion_pytorch_model.safetensors") == "wan"
    assert_same_function(model, load_transformer(saved["wan"] / "diffusion_pytorch_model.safetensors"))


def test_wan_config_json_is_wans(saved):
    cfg = json.loads((saved["wan"] / "config.json").read_text())
    assert {k: cfg[k] for k in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "model_type")} == {
        "dim": 64, "ffn_dim": 128, "num_heads": 2, "num_layers": 2, "in_dim": 4, "out_dim": 4, "model_type": "t2v"}


def test_official_pt_defaults_and_ema_selection(model, saved):
    ema = saved["ema"]
    cfg = load_transformer(saved["pt"], overrides=TINY_PT).config
    assert cfg.causal and cfg.num_frame_per_block == 3                  # the released generator's layout

    def load(name, **kw):   # bidirectional, to compare with the bidirectional originals
        return load_transformer(saved[name], causal=False, overrides=TINY_PT, **kw)

    assert_same_function(ema, load("pt"))                               # use_ema=True by default
    assert_same_function(model, load("pt", use_ema=False))
    # FSDP / checkpoint-wrapper prefixes anywhere in the key; here generator_ema holds `model`
    assert_same_function(model, load("pt_fsdp"))
    assert_same_function(ema, load("pt_fsdp", use_ema=False))
    # ode_init.pt has only `generator`; asking for EMA falls back to it
    assert_same_function(model, load("ode_init"))


def test_official_pt_needs_heads_when_dim_is_not_a_multiple_of_128(saved):
    with pytest.raises(CheckpointError, match="num_heads"):
        load_transformer(saved["pt"])
    assert load_transformer(saved["pt"], config=get_preset("tiny")).config == get_preset("tiny")


def test_config_overrides_change_layout_not_weights(model, saved):
    loaded = load_transformer(
        saved["own"], causal=True, overrides={"num_frame_per_block": 1, "local_attn_size": 3, "sink_size": 1}
    )
    cfg = loaded.config
    assert (cfg.causal, cfg.num_frame_per_block, cfg.local_attn_size, cfg.sink_size) == (True, 1, 3, 1)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointError, match="unknown WanConfig fields"):
        load_transformer(saved["own"], overrides={"frames_per_block": 1})


def test_a_replacing_config_must_read_the_head_as_it_was_trained(model, saved, tmp_path):
    """Loading velocity weights as an "edm" head (or "edm" with another σ_d) would misread every output."""
    assert model.config.prediction == "velocity"
    with pytest.raises(CheckpointError, match="trained with prediction=velocity.*set model.prediction=velocity"):
        load_transformer(saved["own"], config=model.config.replace(prediction="edm"))
    edm = WanDiT(model.config.replace(prediction="edm", sigma_data=0.5))
    save_transformer(edm, tmp_path / "edm.safetensors")
    with pytest.raises(CheckpointError, match="sigma_data=0.5"):
        load_transformer(tmp_path / "edm.safetensors", config=edm.config.replace(sigma_data=1.0))
    with pytest.raises(CheckpointError, match="skip_scale=None.*skip_scale=0.2"):
        load_transformer(tmp_path / "edm.safetensors", config=edm.config.replace(skip_scale=0.2))
    assert load_transformer(tmp_path / "edm.safetensors", config=edm.config.replace(causal=True)).config.causal
    with pytest.raises(CheckpointError, match="prediction=velocity"):          # Wan's own layout: velocity
        load_transformer(saved["wan"], config=model.config.replace(prediction="edm"))


@pytest.mark.parametrize("field, module", [("refine", "refiner"), ("pos_embed", "pos_embedding")])
def test_an_optional_part_round_trips_and_can_be_added_to_a_model_without_one(tmp_path, field, module):
    """An output refiner or absolute grid positions grown onto a checkpoint start at zero (same function), train
    away from it, and survive our and Wan's layouts; plain loading into such a config is refused."""
    from selfforcing.training.trainer import _load_or_new

    plain = _random_model()
    save_transformer(plain, tmp_path / "plain.safetensors")
    grown = _load_or_new(str(tmp_path / "plain.safetensors"), plain.config.replace(**{field: 4})).eval()
    x, t, ctx = _inputs(plain)
    with torch.no_grad():
        assert torch.equal(grown(x, t, ctx), plain(x, t, ctx))   # the new part starts at zero
        for p in getattr(grown, module).parameters():
            p.normal_(std=0.05)
        changed = grown(x, t, ctx)
    assert not torch.allclose(changed, plain(x, t, ctx))
    for save, path in ((save_transformer, tmp_path / "grown.safetensors"), (save_wan, tmp_path / "grown-wan")):
        loaded = load_transformer(save(grown, path))
        assert getattr(loaded.config, field) == 4
        with torch.no_grad():
            assert torch.equal(loaded(x, t, ctx), changed)
    with pytest.raises(CheckpointError, match=module):                # its weights are named in the error
        load_transformer(tmp_path / "plain.safetensors", config=plain.config.replace(**{field: 4}))


def test_mixed_rope_grows_onto_a_checkpoint_with_its_function_unchanged(tmp_path):
    """Mixed RoPE frequencies start at the axial ones (same function), train away from them, and survive our and
    Wan's layouts; loading a checkpoint without them into a mixed-RoPE config is refused, naming them."""
    from selfforcing.training.trainer import _load_or_new

    plain = _random_model()
    save_transformer(plain, tmp_path / "plain.safetensors")
    grown = _load_or_new(str(tmp_path / "plain.safetensors"), plain.config.replace(rope_mixed=True)).eval()
    x, t, ctx = _inputs(plain)
    with torch.no_grad():
        assert torch.equal(grown(x, t, ctx), plain(x, t, ctx))
        for block in grown.blocks:
            block.self_attn.rope_freqs[..., 0] += 0.3           # couple time with space
        changed = grown(x, t, ctx)
    assert not torch.allclose(changed, plain(x, t, ctx))
    for save, path in ((save_transformer, tmp_path / "grown.safetensors"), (save_wan, tmp_path / "grown-wan")):
        loaded = load_transformer(save(grown, path))
        assert loaded.config.rope_mixed is True
        with torch.no_grad():
            assert torch.equal(loaded(x, t, ctx), changed)
    with pytest.raises(CheckpointError, match="rope_freqs"):
        load_transformer(tmp_path / "plain.safetensors", config=plain.config.replace(rope_mixed=True))


def test_absolute_positions_refuse_a_grid_larger_than_their_tables():
    model = WanDiT(get_preset("tiny").replace(pos_embed=2))
    x, t, ctx = _inputs(model)                                  # a 4x4-latent frame: a 2x2 token grid fits
    model(x, t, ctx)
    with pytest.raises(ValueError, match="exceeds the position tables"):
        model(torch.randn(2, 2, x.shape[2], 6, 6), t, ctx)      # a 3x3 token grid does not


def test_causal_layout_survives_the_outside_layouts(tmp_path):
    causal = _random_model(causal=True).eval()
    for save in (save_wan, save_diffusers):
        assert load_transformer(save(causal, tmp_path / save.__name__)).config == causal.config


def test_dtype_and_device(model, saved):
    loaded = load_transformer(saved["diffusers"], dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert all(p.requires_grad for p in loaded.parameters())


def _corrupt(src, dst, edit):
    state = load_file(src)
    edit(state)
    save_file(state, dst, metadata={"format": "selfforcing",
                                    "selfforcing_config": json.dumps(get_preset("tiny").to_dict())})
    return dst


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda s: s.pop("blocks.1.cross_attn.norm_k.weight"), r"1 missing: blocks\.1\.cross_attn\.norm_k\.weight"),
        (lambda s: s.update({"blocks.0.extra.weight": torch.zeros(2)}), r"1 unexpected: blocks\.0\.extra\.weight"),
        (lambda s: s.update({"head.head.weight": torch.zeros(3, 64)}),
         r"1 mis-shaped: head\.head\.weight checkpoint \[3, 64\] vs model \[16, 64\]"),
    ],
)
def test_strict_errors_name_the_key(saved, tmp_path, edit, message):
    bad = _corrupt(saved["own"], tmp_path / "bad.safetensors", edit)
    with pytest.raises(CheckpointError, match=message):
        load_transformer(bad)


def test_strict_errors_use_the_file_names_of_diffusers(saved, tmp_path):
    folder = save_diffusers(_random_model(), tmp_path / "d")
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["blocks.0.attn1.to_q.weight"] = torch.zeros(64, 32)
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.self_attn\.q\.weight \(as blocks\.0\.attn1\.to_q\.weight\)"):
        load_transformer(folder)


def test_missing_and_junk_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_transformer(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError):
        load_transformer(junk)
    with pytest.raises(CheckpointError):
        detect_layout(junk)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint layout matches"):
        load_transformer(tmp_path / "empty")
    torch.save({"optimizer": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="generator"):
        load_transformer(tmp_path / "other.pt")


def test_describe_checkpoint(model, saved):
    num_params = sum(p.numel() for p in model.parameters())
    for name in ("own", "wan", "wan_sharded", "diffusers", "pt"):
        info = describe_checkpoint(saved[name])
        assert info["num_params"] == num_params, name
        assert info["dtypes"] == ["float32"]
        assert info["config"]["dim"] == 64 and info["config"]["num_layers"] == 2
    own = describe_checkpoint(saved["own"])
    assert own["layout"] == "selfforcing" and own["config"] == model.config.to_dict()
    assert own["metadata"] == {"step": "7"}
    pt = describe_checkpoint(saved["pt"])
    assert pt["config"]["num_heads"] is None            # not inferable for a 64-wide model
    assert pt["metadata"]["entries"] == ["critic", "generator", "generator_ema"]


def test_save_is_atomic_and_overwrites(model, tmp_path):
    path = tmp_path / "m.safetensors"
    save_transformer(_random_model(seed=3), path)
    save_transformer(model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]   # no temporary files left behind
    assert_same_function(model, load_transformer(path))


def test_export_casts_weights_and_keeps_metadata(tmp_path, capsys):
    from selfforcing.cli import main
    from selfforcing.inference.loading import PIPELINE_METADATA_KEY
    from selfforcing.io.checkpoints import describe_checkpoint, load_transformer, save_transformer

    model = WanDiT(get_preset("tiny"))
    src = save_transformer(model, tmp_path / "m.safetensors", extra_metadata={PIPELINE_METADATA_KEY: {"fps": 8}})
    assert main(["export", str(src), "-o", str(tmp_path / "h.safetensors")]) == 0
    half = load_transformer(tmp_path / "h.safetensors")
    assert half.dtype == torch.float16 and half.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(half.state_dict()[k], v.half()), k
    assert describe_checkpoint(tmp_path / "h.safetensors")["metadata"][PIPELINE_METADATA_KEY] == '{"fps": 8}'
    assert main(["export", str(tmp_path / "none.safetensors"), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()


def test_a_model_grows_deeper_from_a_checkpoint_with_its_function_unchanged(tmp_path):
    from selfforcing.training.trainer import _load_or_new

    plain = _random_model()
    save_transformer(plain, tmp_path / "plain.safetensors")
    layers = plain.config.num_layers
    grown = _load_or_new(str(tmp_path / "plain.safetensors"), plain.config.replace(num_layers=2 * layers)).eval()
    assert len(grown.blocks) == 2 * layers
    x, t, ctx = _inputs(plain)
    with torch.no_grad():
        torch.testing.assert_close(grown(x, t, ctx), plain(x, t, ctx), rtol=0, atol=1e-6)   # the copies are silent
        assert torch.equal(grown.blocks[2].self_attn.q.weight, plain.blocks[1].self_attn.q.weight)
        grown.blocks[1].ffn[2].weight.normal_(std=0.05)                                     # a copy that has trained
        assert not torch.allclose(grown(x, t, ctx), plain(x, t, ctx))
    both = _load_or_new(str(tmp_path / "plain.safetensors"), plain.config.replace(num_layers=3 * layers, refine=4))
    assert len(both.blocks) == 3 * layers and both.refiner is not None
    with torch.no_grad():
        torch.testing.assert_close(both.eval()(x, t, ctx), plain(x, t, ctx), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=f"multiple of {layers}"):
        _load_or_new(str(tmp_path / "plain.safetensors"), plain.config.replace(num_layers=layers + 1))
