"""Wan VAE codec: both layouts load the same VAE, frame arithmetic, normalisation, streaming == one-shot."""

import pytest
import torch

pytest.importorskip("diffusers")

from selfforcing.models.wan_vae import (  # noqa: E402
    LATENTS_MEAN,
    LATENTS_STD,
    WAN_VAE_CHECKPOINT,
    WanVAE,
    diffusers_to_wan_vae_state_dict,
    find_wan_vae,
    vae_config_from_wan_state,
    wan_vae_to_diffusers_state_dict,
)
from wan_fixtures import LATENT_CHANNELS, make_tiny_wan_dir  # noqa: E402

H = W = 32   # pixels; latents are 4 x 4


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    return {layout: make_tiny_wan_dir(root / layout, layout) for layout in ("original", "diffusers")}


@pytest.fixture(scope="module")
def codecs(dirs):
    return {layout: WanVAE.from_pretrained(d) for layout, d in dirs.items()}


def _video(frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, frames, 3, H, W, generator=g) * 2 - 1               # (B, T, 3, H, W)


def _latents(frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, frames, LATENT_CHANNELS, H // 8, W // 8, generator=g)  # (B, F, C, h, w)


def test_layouts_are_detected(dirs):
    assert find_wan_vae(dirs["original"]) == ("original", dirs["original"] / WAN_VAE_CHECKPOINT)
    assert find_wan_vae(dirs["original"] / WAN_VAE_CHECKPOINT)[0] == "original"
    assert find_wan_vae(dirs["diffusers"]) == ("diffusers", dirs["diffusers"] / "vae")


def test_both_layouts_load_the_same_vae(codecs):
    a, b = codecs["original"].vae.state_dict(), codecs["diffusers"].vae.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = _video(5)
    torch.testing.assert_close(codecs["original"].encode(x), codecs["diffusers"].encode(x), rtol=0, atol=0)


def test_original_names_agree_with_diffusers_own_converter(dirs, codecs):
    """diffusers' `convert_wan_vae_to_diffusers` (scripts/convert_wan_to_diffusers.py) maps our tiny
    Wan2.1_VAE.pth onto exactly the diffusers state dict: the original-layout names are Wan's."""
    single_file = pytest.importorskip("diffusers.loaders.single_file_utils")
    original = torch.load(dirs["original"] / WAN_VAE_CHECKPOINT, weights_only=True)
    converted = single_file.convert_wan_vae_to_diffusers(original)
    expected = codecs["diffusers"].vae.state_dict()
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)


@pytest.mark.parametrize("num_res_blocks", [1, 2, 3])
def test_key_mapping_round_trips_and_recovers_the_config(num_res_blocks):
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan(num_res_blocks=num_res_blocks)     # Wan2.1's real sizes otherwise
    state = vae.state_dict()
    original = diffusers_to_wan_vae_state_dict(state, num_res_blocks)
    assert wan_vae_to_diffusers_state_dict(original).keys() == state.keys()
    cfg = vae_config_from_wan_state({k: tuple(v.shape) for k, v in original.items()})
    assert cfg["base_dim"] == 96 and cfg["z_dim"] == 16 and cfg["dim_mult"] == [1, 2, 4, 4]
    assert cfg["num_res_blocks"] == num_res_blocks and cfg["temperal_downsample"] == [False, True, True]
    if num_res_blocks == 2:
        assert len(original) == 194 and "decoder.upsamples.4.shortcut.weight" in original


def test_frame_arithmetic(codecs):
    codec = codecs["original"]
    assert (codec.latent_channels, codec.spatial_factor, codec.temporal_factor) == (16, 8, 4)
    assert codec.num_pixel_frames(21) == 81 and codec.num_latent_frames(81) == 21   # spec §0: 81 -> 21
    assert codec.num_pixel_frames(1) == 1
    z = codec.encode(_video(9))
    assert z.shape == (1, 3, 16, H // 8, W // 8)                               # 9 = 1 + 4 + 4 frames -> 3 latent frames
    assert codec.decode(z).shape == (1, 9, 3, H, W)
    with pytest.raises(ValueError):
        codec.encode(_video(8))


def test_normalisation_constants_are_applied(codecs):
    codec = codecs["diffusers"]
    mean, std = torch.tensor(LATENTS_MEAN), torch.tensor(LATENTS_STD)
    assert torch.equal(codec.mean, mean) and torch.equal(codec.std, std)
    assert torch.equal(codecs["original"].mean, mean) and torch.equal(codecs["original"].std, std)
    assert LATENTS_MEAN[0] == -0.7571 and LATENTS_STD[-1] == 1.9160     # spec §2
    x = _video(5)
    mu = codec.vae.encode(x.permute(0, 2, 1, 3, 4)).latent_dist.mean                   # (B, C, F, h, w)
    expected = ((mu - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(codec.encode(x), expected)
    z = _latents(1)
    raw = codec.vae.decode((z.permute(0, 2, 1, 3, 4) * std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1))).sample
    torch.testing.assert_close(codec.decode(z), raw.permute(0, 2, 1, 3, 4))


@pytest.mark.parametrize("chunk", [3, 1])
def test_streaming_decode_equals_one_shot(codecs, chunk):
    codec = codecs["original"]
    z = _latents(6, seed=chunk)
    full = codec.decode(z)                                               # (1, 21, 3, H, W)
    stream = codec.decoder()
    parts = [stream.decode(z[:, i : i + chunk]) for i in range(0, 6, chunk)]
    assert [p.shape[1] for p in parts] == ([9, 12] if chunk == 3 else [1, 4, 4, 4, 4, 4])
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-5


def test_streams_are_independent_of_each_other_and_of_one_shot_decodes(codecs):
    codec = codecs["diffusers"]
    za, zb = _latents(4, seed=5), _latents(4, seed=6)
    sa, sb = codec.decoder(), codec.decoder()
    parts_a, parts_b = [], []
    for i in range(0, 4, 2):
        parts_a.append(sa.decode(za[:, i : i + 2]))
        codec.decode(zb[:, :1])                                          # must not touch the streams' caches
        parts_b.append(sb.decode(zb[:, i : i + 2]))
    assert (torch.cat(parts_a, 1) - codec.decode(za)).abs().max() <= 1e-5
    assert (torch.cat(parts_b, 1) - codec.decode(zb)).abs().max() <= 1e-5
