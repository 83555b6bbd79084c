"""load_wan_pipeline: a Self-Forcing .pt + a Wan2.1 folder (either layout) stream decoded video chunks."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("ftfy")

from selfforcing.inference.wan import detect_wan_layout, load_wan_pipeline  # noqa: E402
from selfforcing.io.checkpoints import load_transformer  # noqa: E402
from wan_fixtures import make_self_forcing_pt, make_tiny_wan_dir  # noqa: E402

SIZE = dict(height=32, width=32)   # 4 x 4 latents, 2 x 2 tokens a frame
PROMPT = "a red cat runs on the beach"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    dirs = {layout: make_tiny_wan_dir(root / layout, layout) for layout in ("original", "diffusers")}
    return dirs, make_self_forcing_pt(root / "checkpoints" / "self_forcing_dmd.pt")


@pytest.fixture(scope="module")
def pipes(files):
    dirs, pt = files
    return {layout: load_wan_pipeline(d, pt, text_device="cpu", **SIZE) for layout, d in dirs.items()}


def test_spec_is_self_forcings(pipes):
    pipe, spec = pipes["original"]
    assert (spec.height, spec.width, spec.fps, spec.train_frames) == (32, 32, 16, 21)
    assert (spec.codec, spec.text_encoder, spec.prompt_extender, spec.text_max_length) == ("wan-vae", "umt5", None, 512)
    assert spec.sampling.denoising_steps == (1000, 750, 500, 250) and spec.sampling.warp and spec.sampling.shift == 5
    warped = torch.tensor([1000.0, 937.5, 833.3333, 625.0], dtype=torch.float64)      # spec §3
    torch.testing.assert_close(pipe.timesteps().double(), warped)
    assert pipe.latent_size == (4, 4)
    g = pipe.generator.config
    assert g.causal and g.num_frame_per_block == 3 and g.text_len == 512
    assert pipes["diffusers"][1] == spec


def test_both_layouts_detected(files):
    dirs, _ = files
    assert detect_wan_layout(dirs["original"]) == "original"
    assert detect_wan_layout(dirs["diffusers"]) == "diffusers"


def test_stream_yields_decoded_chunks_with_causal_frame_count(pipes):
    pipe, _ = pipes["original"]
    chunks = list(pipe.stream(PROMPT, num_frames=6, seeds=0))
    assert [c.latents.shape for c in chunks] == [(1, 3, 16, 4, 4)] * 2
    assert [c.frames.shape[1] for c in chunks] == [9, 12]               # first latent frame -> 1 pixel frame
    frames = torch.cat([c.frames for c in chunks], 1)
    assert frames.shape == (1, 4 * (6 - 1) + 1, 3, 32, 32)
    assert frames.dtype == torch.float32 and frames.abs().max() <= 1 and frames.std() > 0
    latents = torch.cat([c.latents for c in chunks], 1)
    assert (pipe.codec.decode(latents) - frames).abs().max() <= 1e-5   # streamed decode == one-shot decode


def test_layouts_give_the_same_video_and_seeds_are_deterministic(pipes):
    a = pipes["original"][0](PROMPT, num_frames=3, seeds=7)
    b = pipes["diffusers"][0](PROMPT, num_frames=3, seeds=7)
    again = pipes["original"][0](PROMPT, num_frames=3, seeds=7)
    other = pipes["original"][0](PROMPT, num_frames=3, seeds=8)
    assert a.frames.shape == (1, 9, 3, 32, 32)
    assert torch.equal(a.latents, again.latents) and torch.equal(a.frames, again.frames)
    torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=1e-5)
    assert not torch.allclose(a.latents, other.latents)


def test_generator_weights_come_from_the_checkpoint(files, pipes):
    dirs, pt = files
    ema = load_transformer(pt, use_ema=True, overrides={"num_heads": 2, "text_len": 512}).state_dict()
    raw = load_transformer(pt, use_ema=False, overrides={"num_heads": 2, "text_len": 512}).state_dict()
    loaded = pipes["diffusers"][0].generator.state_dict()
    assert all(torch.equal(loaded[k], ema[k]) for k in ema)
    pipe, _ = load_wan_pipeline(dirs["original"], pt, use_ema=False, overrides={"num_frame_per_block": 1}, **SIZE)
    assert pipe.generator.config.num_frame_per_block == 1
    assert all(torch.equal(pipe.generator.state_dict()[k], raw[k]) for k in raw)


def test_without_checkpoint_the_base_transformer_is_made_causal(files):
    dirs, _ = files
    pipe, _ = load_wan_pipeline(dirs["diffusers"], None, **SIZE)
    base = load_transformer(dirs["original"]).state_dict()
    assert pipe.generator.config.causal
    assert all(torch.equal(pipe.generator.state_dict()[k], base[k]) for k in base)


def test_bad_sizes_and_folders_fail_clearly(files, tmp_path):
    dirs, pt = files
    with pytest.raises(ValueError, match="multiples of 16"):
        load_wan_pipeline(dirs["original"], pt, height=40, width=32)
    with pytest.raises(FileNotFoundError):
        load_wan_pipeline(tmp_path / "missing", pt)
    with pytest.raises(FileNotFoundError):
        load_wan_pipeline(tmp_path, pt)                                    # a folder without Wan files


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_cli_generate_with_model_dir(tmp_path, layout):
    """`selfforcing generate --model-dir WAN_DIR --checkpoint self_forcing_dmd.pt` end to end on tiny models."""
    from selfforcing.cli import main
    import imageio.v3 as iio

    model_dir = make_tiny_wan_dir(tmp_path / "wan", layout=layout)
    ckpt = make_self_forcing_pt(tmp_path / "self_forcing_dmd.pt")
    out = tmp_path / "v.mp4"
    assert main(["generate", "a cat", "-o", str(out), "--model-dir", str(model_dir), "--checkpoint", str(ckpt),
                 "--height", "32", "--width", "32", "--frames", "21", "--low-memory"]) == 0
    assert iio.imread(out).shape[0] == 21
    assert main(["generate", "a cat", "-o", str(out), "--model-dir", str(model_dir), "--frames", "20",
                 "--height", "32", "--width", "32"]) == 2


def test_cli_generate_with_the_taehv_decoder(files, tmp_path):
    """--taehv swaps the Wan VAE for the tiny decoder: same frame count, a clear error without --model-dir."""
    from selfforcing.cli import main
    from selfforcing.models.taehv import TAEHVDecoderNet
    import imageio.v3 as iio

    dirs, pt = files
    torch.manual_seed(0)
    taehv = tmp_path / "taew2_1.pth"
    torch.save(TAEHVDecoderNet().state_dict(), taehv)
    out = tmp_path / "v.mp4"
    assert main(["generate", "a cat", "-o", str(out), "--model-dir", str(dirs["original"]), "--checkpoint", str(pt),
                 "--height", "32", "--width", "32", "--frames", "9", "--taehv", str(taehv)]) == 0
    assert iio.imread(out).shape == (9, 32, 32, 3)
    assert main(["generate", "a cat", "-o", str(out), "--taehv", str(taehv)]) == 2
    assert main(["generate", "a cat", "-o", str(out), "--model-dir", str(dirs["original"]),
                 "--taehv", str(tmp_path / "missing.pth")]) == 2


def test_text_encoder_leaves_a_small_gpu(monkeypatch):
    """The original keeps UMT5 off GPUs with under 40 GB free; CPU runs keep it with the generator."""
    from selfforcing.inference import wan

    assert wan.default_text_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (24 * 1024**3, 80 * 1024**3))
    assert wan.default_text_device(torch.device("cuda:0")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * 1024**3, 80 * 1024**3))
    assert wan.default_text_device(torch.device("cuda:0")) == torch.device("cuda:0")
