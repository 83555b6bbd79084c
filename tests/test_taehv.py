"""TAEHV, the tiny Wan 2.1 decoder: the published file's layout, frame arithmetic, causal streaming."""

import pytest
import torch

from selfforcing.models.taehv import TAEHVCodec, TAEHVDecoderNet

LATENT = (16, 4, 4)


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return TAEHVCodec(TAEHVDecoderNet())


def _latents(frames: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, frames, *LATENT, generator=torch.Generator().manual_seed(seed))


def test_state_dict_has_the_published_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in TAEHVDecoderNet().state_dict().items()}
    expected = {
        "decoder.1.weight": (256, 16, 3, 3), "decoder.1.bias": (256,),
        "decoder.3.conv.0.weight": (256, 512, 3, 3), "decoder.5.conv.4.bias": (256,),
        "decoder.7.conv.weight": (256, 256, 1, 1),                 # x1 time grow
        "decoder.8.weight": (128, 256, 3, 3),
        "decoder.9.conv.0.weight": (128, 256, 3, 3),
        "decoder.13.conv.weight": (256, 128, 1, 1),                # x2 time grow
        "decoder.14.weight": (64, 128, 3, 3),
        "decoder.19.conv.weight": (128, 64, 1, 1),
        "decoder.20.weight": (64, 64, 3, 3),
        "decoder.22.weight": (3, 64, 3, 3), "decoder.22.bias": (3,),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert "decoder.8.bias" not in shapes and not any(".skip" in k for k in shapes)
    assert len(shapes) == 2 + 9 * 6 + 3 + 3 + 2


def test_loading_a_file_ignores_the_encoder_and_trims_a_double_time_grow(tmp_path):
    source = TAEHVDecoderNet()
    state = {k: v.clone() for k, v in source.state_dict().items()}
    extra_rows = torch.randn(256, 256, 1, 1)
    state["decoder.7.conv.weight"] = torch.cat([extra_rows, state["decoder.7.conv.weight"]])   # trained with x2
    state["encoder.0.weight"] = torch.randn(64, 3, 3, 3)
    torch.save(state, tmp_path / "taew2_1.pth")
    loaded = TAEHVCodec.from_file(tmp_path)                        # a folder holding taew2_1.pth
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value), key

    state["decoder.22.weight"] = torch.randn(3, 32, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="decoder.22.weight"):
        TAEHVCodec.from_file(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        TAEHVCodec.from_file(tmp_path / "missing.pth")


def test_frame_count_and_range_match_the_wan_vae(codec):
    for frames in (1, 2, 5):
        video = codec.decode(_latents(frames))
        assert video.shape == (1, codec.num_pixel_frames(frames), 3, 32, 32)
        assert video.min() >= -1 and video.max() <= 1
    assert codec.num_latent_frames(81) == 21
    with pytest.raises(ValueError):
        codec.num_latent_frames(80)
    with pytest.raises(NotImplementedError, match="decoder only"):
        codec.encode(torch.zeros(1, 5, 3, 32, 32))


@pytest.mark.parametrize("chunks", [(1, 3, 3), (3, 3, 1), (2, 2, 2, 1), (1,) * 7])
def test_streaming_decode_equals_one_shot(codec, chunks):
    z = _latents(sum(chunks), batch=2)
    whole = codec.decode(z)
    stream, start, parts = codec.decoder(), 0, []
    for k in chunks:
        parts.append(stream.decode(z[:, start:start + k]))
        start += k
    assert [p.shape[1] for p in parts] == [4 * k - (3 if i == 0 else 0) for i, k in enumerate(chunks)]
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-5, rtol=1e-5)


def test_the_future_never_changes_the_past_and_samples_stay_apart(codec):
    z = _latents(5, batch=2)
    base = codec.decode(z)
    changed = z.clone()
    changed[:, 3] += 1.0
    after = codec.decode(changed)
    first_affected = 4 * 3 - 3                                    # latent frame k decodes to frames 4k-3 .. 4k
    torch.testing.assert_close(after[:, :first_affected], base[:, :first_affected])
    assert not torch.allclose(after[:, first_affected:first_affected + 4], base[:, first_affected:first_affected + 4])

    other = z.clone()
    other[1] = _latents(5, seed=7)[0]
    torch.testing.assert_close(codec.decode(other)[0], base[0])
