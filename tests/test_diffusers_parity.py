"""Our WanDiT and diffusers' WanTransformer3DModel compute the same function from the same weights."""

import json

import pytest
import torch
from safetensors.torch import load_file

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers  # noqa: E402

from selfforcing.config import WanConfig  # noqa: E402
from selfforcing.io import (  # noqa: E402
    config_from_diffusers,
    config_to_diffusers,
    diffusers_to_wan_state_dict,
    load_transformer,
    save_diffusers,
    wan_to_diffusers_state_dict,
)
from selfforcing.models.wan import WanDiT  # noqa: E402

TEXT_LEN = 8
# head_dim 32: both RoPEs give (12, 10, 10) real dims to (t, h, w), all even as get_1d_rotary_pos_embed needs
DIFFUSERS_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4,
    text_dim=24, freq_dim=32, ffn_dim=128, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6,
)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = WanTransformer3DModel(**DIFFUSERS_CONFIG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.05)   # nothing zero (the head starts at zero in both inits), nothing trivial
    return model


def _inputs(batch=2, frames=3, height=4, width=6, length=5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, frames, 4, height, width, generator=g)          # (B, F, C, H, W)
    # off-grid t too: diffusers builds the sinusoid in float32, Wan in float64 (a ~1e-6 difference here)
    t = torch.tensor([937.5, 3.7])[:batch]
    ctx = torch.randn(batch, length, 24, generator=g)                       # (B, L, text_dim)
    return x, t, ctx


def _run_diffusers(model, x, t, ctx):
    # our model zero-pads the context to text_len and attends to every token: give diffusers the same
    padded = torch.nn.functional.pad(ctx, (0, 0, 0, TEXT_LEN - ctx.shape[1]))
    out = model(x.permute(0, 2, 1, 3, 4), t, padded, return_dict=False)[0]  # (B, C, F, H, W)
    return out.permute(0, 2, 1, 3, 4)                                       # (B, F, C, H, W)


def _ours_from(hf_model) -> WanDiT:
    cfg = WanConfig.from_dict(config_from_diffusers(hf_model.config, text_len=TEXT_LEN))
    model = WanDiT(cfg).eval()
    model.load_state_dict(diffusers_to_wan_state_dict(hf_model.state_dict()), strict=True)
    return model


def test_config_mapping(hf_model):
    cfg = WanConfig.from_dict(config_from_diffusers(hf_model.config, text_len=TEXT_LEN))
    assert (cfg.dim, cfg.num_heads, cfg.head_dim, cfg.num_layers) == (64, 2, 32, 2)
    assert (cfg.in_dim, cfg.out_dim, cfg.text_dim, cfg.freq_dim, cfg.ffn_dim) == (4, 4, 24, 32, 128)
    back = config_to_diffusers(cfg)
    assert {k: back[k] for k in DIFFUSERS_CONFIG} == {**DIFFUSERS_CONFIG, "patch_size": [1, 2, 2]}


def test_key_mapping_matches_diffusers_own_converter():
    ours = WanDiT(WanConfig.from_dict(config_from_diffusers(DIFFUSERS_CONFIG, text_len=TEXT_LEN)))
    state = ours.state_dict()
    theirs = convert_wan_transformer_to_diffusers(dict(state))
    assert sorted(theirs) == sorted(wan_to_diffusers_state_dict(state))


def test_same_output_as_diffusers(hf_model):
    ours = _ours_from(hf_model)
    x, t, ctx = _inputs()
    with torch.no_grad():
        v_ours = ours(x, t, ctx)
        v_hf = _run_diffusers(hf_model, x, t, ctx)
    assert v_ours.shape == v_hf.shape == x.shape
    assert v_hf.abs().mean() > 1e-2                      # a non-trivial function
    assert (v_ours - v_hf).abs().max() <= 1e-4


def test_round_trip_is_bit_identical(hf_model):
    ours = _ours_from(hf_model)
    there = wan_to_diffusers_state_dict(ours.state_dict())
    assert there.keys() == hf_model.state_dict().keys()
    back = diffusers_to_wan_state_dict(there)
    for k, v in ours.state_dict().items():
        assert torch.equal(back[k], v), k


def test_saved_folders_load_in_both_libraries(hf_model, tmp_path):
    ours = _ours_from(hf_model)
    x, t, ctx = _inputs()
    with torch.no_grad():
        v_ours = ours(x, t, ctx)

        # ours -> diffusers library (from_config + load_state_dict: from_pretrained needs `accelerate` here)
        folder = save_diffusers(ours, tmp_path / "ours")
        reloaded_hf = WanTransformer3DModel.from_config(json.loads((folder / "config.json").read_text())).eval()
        reloaded_hf.load_state_dict(load_file(folder / "diffusion_pytorch_model.safetensors"), strict=True)
        assert (_run_diffusers(reloaded_hf, x, t, ctx) - v_ours).abs().max() <= 1e-4

        hf_model.save_pretrained(tmp_path / "hf")                        # diffusers library -> ours
        loaded = load_transformer(tmp_path / "hf", overrides={"text_len": TEXT_LEN})
        assert torch.equal(loaded(x, t, ctx), v_ours)
