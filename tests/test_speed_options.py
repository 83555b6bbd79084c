"""Inference speed options: FP8 linear layers (emulated on the CPU), torch.compile of the blocks, the bf16 /
fp16 emulation, and their wiring through `load_pipeline`, `selfforcing generate`, `bench` and `eval`."""

import copy
import json
import os

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from test_causal_model import cached_forward, inputs

from selfforcing.cli import main
from selfforcing.config import get_preset
from selfforcing.inference import loading, speed
from selfforcing.inference.loading import PIPELINE_METADATA_KEY, PipelineSpec, load_pipeline
from selfforcing.inference.pipeline import StreamingPipeline
from selfforcing.inference.speed import (
    Float8WeightLinear,
    SpeedOptions,
    apply_fp8,
    compile_model,
    emulate_precision,
    emulated_dtype,
)
from selfforcing.io.checkpoints import save_transformer
from selfforcing.models.wan import WanDiT


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def test_fp8_converts_only_the_block_linears(make_model):
    model = make_model()
    conversion = apply_fp8(model)
    assert conversion.backend == "emulated"
    assert len(conversion.layers) == 10 * model.config.num_layers  # self q k v o, cross q k v o, 2 FFN
    for block in model.blocks:
        linears = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
        assert not linears
        assert block.ffn[0].weight.dtype == torch.float8_e4m3fn
        assert block.self_attn.q.weight_scale.shape == (model.config.dim, 1)
    outside = [model.text_embedding[0], model.text_embedding[2], model.time_embedding[0],
               model.time_embedding[2], model.time_projection[1], model.head.head]
    assert all(type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 for m in outside)
    assert model.patch_embedding.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="already"):
        apply_fp8(model)


def test_fp8_output_is_close_to_fp32_but_not_equal(make_model):
    model = make_model()
    x, t, ctx = inputs(model.config, frames=4)
    fp8 = copy.deepcopy(model)
    apply_fp8(fp8)
    with torch.no_grad():
        ref, out = model(x, t, ctx), fp8(x, t, ctx)
    # e4m3 keeps 3 mantissa bits: a few per cent of error, more than bf16 weights (7 bits) give
    bf16_weights = copy.deepcopy(model)
    for m in bf16_weights.blocks.modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.data = m.weight.data.bfloat16().float()
    with torch.no_grad():
        bf16_err = relative_error(ref, bf16_weights(x, t, ctx))
    assert bf16_err < relative_error(ref, out) < 0.06


def test_fp8_state_dict_round_trips_and_survives_a_dtype_cast(make_model, tmp_path):
    model = make_model(seed=0)
    apply_fp8(model)
    path = tmp_path / "fp8.safetensors"
    save_file(model.state_dict(), str(path))
    other = make_model(seed=1)
    apply_fp8(other)
    other.load_state_dict(load_file(str(path)))
    x, t, ctx = inputs(model.config, batch=1, frames=2)
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), other(x, t, ctx))
    other.to(torch.bfloat16)  # moves the FP8 weights, but must not re-type them or their scales
    layer = other.blocks[0].ffn[0]
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
    assert layer.bias.dtype == layer.dequantized_weight().dtype == torch.bfloat16
    with torch.no_grad():
        assert relative_error(model(x, t, ctx), other(x, t, ctx)) < 0.05


@pytest.mark.parametrize("fp8", [False, True])
def test_cached_streaming_equals_parallel_forward(make_model, fp8):
    """The KV-cache invariant holds for the FP8 model against its own parallel forward."""
    model = make_model(num_frame_per_block=3)
    if fp8:
        apply_fp8(model)
    x, t, ctx = inputs(model.config, frames=9)
    with torch.no_grad():
        parallel = model(x, t, ctx)
        cached, _ = cached_forward(model, x, t, ctx, [3, 3, 3])
    assert (parallel - cached).abs().max() <= 1e-4


def _emulated_and_real(make_model, dtype: torch.dtype) -> tuple[WanDiT, WanDiT, WanDiT]:
    """A float32 model, a copy emulating `dtype` and a copy really cast to it."""
    model = make_model()
    emulated, real = copy.deepcopy(model), copy.deepcopy(model).to(dtype)
    emulate_precision(emulated, dtype)
    return model, emulated, real


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_emulated_precision_is_as_far_from_fp32_as_the_real_one(make_model, dtype):
    """The emulation changes the output by as much as really running in bf16 / fp16 does, and lands nearer
    the real low-precision output than float32 is (a no-op emulation would sit on float32)."""
    model, emulated, real = _emulated_and_real(make_model, dtype)
    x, t, ctx = inputs(model.config, frames=4)
    with torch.no_grad():
        ref, out, out_real = model(x, t, ctx), emulated(x, t, ctx), real(x, t, ctx)
    assert emulated.dtype == torch.float32 and emulated_dtype(emulated) == dtype
    real_err, err = relative_error(ref, out_real), relative_error(ref, out)
    assert 0 < real_err < (0.02 if dtype == torch.bfloat16 else 0.003)  # bf16 keeps 8 bits, fp16 11
    assert 0.5 * real_err < err < 2 * real_err
    assert relative_error(out_real, out) < 0.75 * real_err


def test_emulated_bf16_rounds_weights_and_matmuls_like_the_real_cast(make_model):
    """Every weight equals the real bf16 model's, and every matmul before the first attention kernel (time
    and text embeddings, patch embedding, q / k / v with their RMSNorms) gives the real bf16 output bit for
    bit: a weight-only emulation would differ almost everywhere. (Past the first attention the kernels'
    blockwise softmax differs, so later layers match only statistically.)"""
    model, emulated, real = _emulated_and_real(make_model, torch.bfloat16)
    real_weights = real.state_dict()
    for name, w in emulated.state_dict().items():
        assert w.dtype == torch.float32 and torch.equal(w, real_weights[name].float()), name
    names = ["time_embedding", "time_projection", "patch_embedding", "text_embedding"] + [
        f"blocks.0.{attn}.{layer}" for attn in ("self_attn", "cross_attn") for layer in ("k", "v", "norm_k")
    ] + ["blocks.0.self_attn.q", "blocks.0.self_attn.norm_q"]
    outputs = {}

    def keep(key):
        def hook(module, args, out):
            outputs.setdefault(key, out.float())   # the first call (the blocks run once each)
        return hook

    for tag, m in (("emulated", emulated), ("real", real)):
        for name in names:
            m.get_submodule(name).register_forward_hook(keep((tag, name)))
    x, t, ctx = inputs(model.config, frames=4)
    with torch.no_grad():
        emulated(x, t, ctx), real(x, t, ctx)
    for name in names:
        differ = (outputs["emulated", name] != outputs["real", name]).float().mean().item()
        assert differ < 0.01, f"{name}: {differ:.1%} of the values differ from the real bf16 model's"


def test_emulated_attention_rounds_probabilities_like_the_bf16_kernel(monkeypatch):
    """Attention under the emulation rounds the unnormalised probabilities as the bf16 flash kernel does:
    it lands nearer the real kernel's output than float32 attention on rounded q, k, v; chunking the
    queries (to bound memory) changes nothing."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 48, 16, generator=g) for _ in range(3))         # (B, h, N, d)
    mask = (torch.rand(48, 48, generator=g) > 0.3) | torch.eye(48, dtype=torch.bool)
    real = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=mask).float()
    plain = F.scaled_dot_product_attention(*(x.bfloat16().float() for x in (q, k, v)), attn_mask=mask)
    plain = plain.bfloat16().float()
    with speed._LowPrecisionMatmuls(torch.bfloat16):
        emulated = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        monkeypatch.setattr(speed, "ATTENTION_CHUNK", 2 * 2 * 48 * 5)         # 5 query rows a chunk
        chunked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert relative_error(real, emulated) < 0.6 * relative_error(real, plain)
    assert relative_error(emulated, chunked) < 1e-3  # at most a rare rounding flip


def test_emulate_precision_refuses_what_it_cannot_emulate(make_model):
    with pytest.raises(ValueError, match="cannot emulate"):
        emulate_precision(make_model(), "float8_e4m3fn")
    with pytest.raises(ValueError, match="must be float32"):
        emulate_precision(make_model().to(torch.bfloat16), "bfloat16")
    model = make_model()
    emulate_precision(model, "float16")
    with pytest.raises(ValueError, match="already emulates"):
        emulate_precision(model, "bfloat16")
    with pytest.raises(ValueError, match="float32"):
        SpeedOptions(dtype="bfloat16", emulate_dtype="bfloat16")
    assert emulated_dtype(SpeedOptions(dtype="float32", emulate_dtype="bfloat16").apply(make_model())) == torch.bfloat16


def _compiled_graphs(make_model, num_layers: int, backend: str) -> tuple[int, float]:
    """Graphs torch.compile made for a streamed video, and the largest difference to eager."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = make_model(num_layers=num_layers)
    ctx = torch.randn(1, 5, model.config.text_dim)
    pipe = StreamingPipeline(model, (4, 6))
    eager = pipe(prompt_embeds=ctx, num_frames=6, seeds=0).latents
    assert compile_model(model, backend=backend) == num_layers
    compiled = pipe(prompt_embeds=ctx, num_frames=6, seeds=0).latents
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    return graphs, (eager - compiled).abs().max().item()


def test_compile_traces_blocks_once_for_all_layers(make_model):
    """Regional compilation: the blocks share their graphs, however many layers there are. Traced with the
    `aot_eager` backend, which checks tracing and graph breaks without inductor's C++ build."""
    graphs_2, diff = _compiled_graphs(make_model, 2, "aot_eager")
    graphs_4, _ = _compiled_graphs(make_model, 4, "aot_eager")
    assert diff <= 1e-5
    assert 0 < graphs_2 == graphs_4


@pytest.mark.skipif(not os.environ.get("SELFFORCING_TEST_INDUCTOR"),
                    reason="inductor builds about ten C++ kernels for the blocks (20-60 s on a 2-core CPU); "
                           "set SELFFORCING_TEST_INDUCTOR=1 to run it")
def test_compile_with_inductor_matches_eager(make_model):
    _, diff = _compiled_graphs(make_model, 2, "inductor")
    assert diff <= 1e-4


def test_speed_options_validate_and_apply(make_model):
    with pytest.raises(ValueError, match="dtype"):
        SpeedOptions(dtype="int8")
    with pytest.raises(ValueError, match="compile mode"):
        SpeedOptions(compile=True, compile_mode="fastest")
    with pytest.raises(ValueError, match="not CUDA"):
        apply_fp8(make_model(), backend="torchao")
    model = SpeedOptions(dtype="bfloat16", fp8=True).apply(make_model())
    assert model.dtype == torch.bfloat16
    assert isinstance(model.blocks[0].self_attn.o, Float8WeightLinear)
    assert model.blocks[0].self_attn.o.bias.dtype == torch.bfloat16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = get_preset("world-causal").replace(dim=64, ffn_dim=128, num_heads=2, num_layers=1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "gen.safetensors"
    save_transformer(WanDiT(cfg), path,
                     extra_metadata={PIPELINE_METADATA_KEY: json.dumps(PipelineSpec(train_frames=6).to_dict())})
    return path


def test_load_pipeline_fp8(checkpoint):
    pipe, _ = load_pipeline(checkpoint, fp8=True)
    assert isinstance(pipe.generator.blocks[0].ffn[2], Float8WeightLinear)
    plain, _ = load_pipeline(checkpoint, text_encoder=pipe.text_encoder)
    assert type(plain.generator.blocks[0].ffn[2]) is torch.nn.Linear


def test_load_pipeline_emulate_dtype(checkpoint):
    pipe, _ = load_pipeline(checkpoint, emulate_dtype="bfloat16")
    assert pipe.generator.dtype == torch.float32 and emulated_dtype(pipe.generator) == torch.bfloat16
    with pytest.raises(ValueError, match="--emulate-dtype"):
        load_pipeline(checkpoint, dtype=torch.float16, emulate_dtype="bfloat16", text_encoder=pipe.text_encoder)


def test_eval_emulate_dtype_reaches_load_pipeline(checkpoint, monkeypatch):
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(loading, "load_pipeline", spy)
    assert main(["eval", "--checkpoint", str(checkpoint), "--emulate-dtype", "float16"]) == 2
    assert seen["emulate_dtype"] == "float16" and seen["dtype"] is None


def test_eval_refuses_emulate_dtype_with_a_low_precision_dtype_in_one_line(checkpoint, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint), "--dtype", "bfloat16", "--emulate-dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--emulate-dtype" in err[0] and "--dtype bfloat16" in err[0]


def test_generate_flags_reach_load_pipeline(checkpoint, tmp_path, monkeypatch, capsys):
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(loading, "load_pipeline", spy)
    args = ["generate", "x", "-o", str(tmp_path / "a.mp4"), "--checkpoint", str(checkpoint)]
    assert main(args + ["--compile", "--fp8", "--dtype", "bfloat16"]) == 2
    assert seen["compile"] and seen["fp8"] and seen["dtype"] == torch.bfloat16
    assert main(args) == 2
    assert not seen["compile"] and not seen["fp8"] and seen["dtype"] is None
    assert "stopped by the test" in capsys.readouterr().err


def test_generate_with_fp8_writes_video(checkpoint, tmp_path):
    out = tmp_path / "v.mp4"
    assert main(["generate", "a red circle", "-o", str(out), "--checkpoint", str(checkpoint), "--frames", "3",
                 "--fp8"]) == 0
    assert out.is_file()


def test_fp8_on_cuda_without_bfloat16_is_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    """Where torchao can run (faked here), FP8 needs a bfloat16 model: said in one line, exit status 2."""
    monkeypatch.setattr(speed, "_torchao_usable", lambda model: None)
    assert main(["generate", "x", "-o", str(tmp_path / "a.mp4"), "--checkpoint", str(checkpoint),
                 "--fp8", "--dtype", "float32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bfloat16" in err[0]
    assert not list(tmp_path.glob("*.mp4"))


def test_bench_fp8(capsys):
    assert main(["bench", "--json", "--quick", "--preset", "tiny-causal", "--height", "4", "--width", "4",
                 "--frames", "4", "--dtype", "float32", "--fp8", "--skip", "peak", "kv", "rolling"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["fp8"] and report["config"]["fp8_backend"] == "emulated"
    assert report["stream"]["fps"] > 0
