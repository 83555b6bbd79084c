"""`selfforcing bench`: speed of streaming inference, measured as ratios within one run.

Sections:
- peak: this machine's bf16 (or the chosen dtype's) matmul rate, the ceiling for the FLOP/s below;
- stream: frames per second and first-chunk latency of streaming generation (4 steps + cache refill per
  chunk), and the achieved FLOP/s of the generator against the peak;
- kv: the speed-up of the KV cache over recomputing the whole visible context for every chunk;
- rolling: per-chunk time of a rolling cache (window W) at the start vs after 10 W frames: it must stay flat
  (each chunk's median over repeated runs, so bursts of other load on a shared machine do not skew the
  ratio); and the rolling cache against recomputing the window from scratch every chunk.

All models have random weights (speed does not depend on them); the text embeddings are random too, so
only the generator is timed. Pixel frames are counted as the Wan VAE makes them (4 per latent frame after
a first single frame) for Wan-sized latents, and one per latent frame for the synthetic world.

`compile` and `fp8` apply `inference/speed.py` to every model; with `compile` each pipeline runs once
untimed first, so compilation is not counted. FP8 without torchao on an FP8 GPU is emulated (weight-only)
and is not faster.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass

import torch

from .config import get_preset
from .inference.pipeline import SamplingConfig, StreamingPipeline
from .inference.speed import Float8WeightLinear, SpeedOptions
from .models.wan import WanDiT

__all__ = ["BenchConfig", "run_bench", "format_report", "dit_flops", "matmul_peak"]


@dataclass(frozen=True)
class BenchConfig:
    preset: str = "world-causal"
    height: int = 16
    width: int = 16
    frames: int = 21
    device: str = "cpu"
    dtype: str = "auto"
    window: int = 9
    quick: bool = False
    skip: tuple[str, ...] = ()
    compile: bool = False
    fp8: bool = False


def dit_flops(cfg, query_tokens: int, key_tokens: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward over `query_tokens` attending to `key_tokens`,
    with the text keys and values cached (their projection is excluded)."""
    d, n, nk, lt = cfg.dim, query_tokens, key_tokens, cfg.text_len
    per_layer = (
        2 * n * d * d * 4          # self-attention q, k, v, o
        + 2 * 2 * n * nk * d       # QK^T and AV
        + 2 * n * d * d * 2        # cross-attention q, o
        + 2 * 2 * n * lt * d       # cross-attention scores and values
        + 2 * 2 * n * d * cfg.ffn_dim
    )
    patch = 2 * n * d * cfg.in_dim * cfg.patch_size[1] * cfg.patch_size[2] * 2  # embedding and head
    return float(cfg.num_layers * per_layer + patch)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype, size: int = 2048, reps: int = 10) -> float:
    """Measured FLOP/s of a square matmul."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - t0)


def _pixel_frames(latent_frames: int, latent_h: int) -> int:
    wan_sized = latent_h >= 32
    return 4 * (latent_frames - 1) + 1 if wan_sized else latent_frames


def _timed_stream(pipe: StreamingPipeline, embeds, num_frames: int, device: str) -> list[float]:
    """Wall-clock time at which each chunk is yielded, from the start."""
    marks = []
    _sync(device)
    t0 = time.perf_counter()
    for _ in pipe.stream(prompt_embeds=embeds, num_frames=num_frames, seeds=0):
        _sync(device)
        marks.append(time.perf_counter() - t0)
    return marks


def _model(cfg, device, dtype, bc: BenchConfig) -> WanDiT:
    with torch.device(device):
        model = WanDiT(cfg)
    model = model.to(dtype=dtype).eval()
    SpeedOptions(compile=bc.compile, fp8=bc.fp8).apply(model)
    return model


def _warm_up(bc: BenchConfig, *pipes_and_frames) -> None:
    """With `compile`, run each (pipeline, frames) once untimed so that every cache length is compiled."""
    if bc.compile:
        for pipe, embeds, frames in pipes_and_frames:
            _timed_stream(pipe, embeds, frames, bc.device)


def fastest_dtype(device: str) -> tuple[torch.dtype, dict[str, float]]:
    """The matmul dtype this machine runs fastest, with the measured peaks (bf16 is ~7x faster than fp32
    on CPUs with AMX, ~100x slower on AVX2-only CPUs)."""
    candidates = [torch.float32, torch.bfloat16] + ([torch.float16] if device.startswith("cuda") else [])
    peaks = {str(dt).removeprefix("torch."): matmul_peak(device, dt, size=512 if device == "cpu" else 4096, reps=3)
             for dt in candidates}
    best = max(peaks, key=peaks.get)
    return getattr(torch, best), peaks


def run_bench(bc: BenchConfig) -> dict:
    peaks: dict[str, float] = {}
    if bc.dtype == "auto":
        dtype, peaks = fastest_dtype(bc.device)
    else:
        dtype = getattr(torch, bc.dtype)
    cfg = get_preset(bc.preset).replace(causal=True)
    latent = (bc.height, bc.width)
    tokens_per_frame = cfg.tokens_per_frame(*latent)
    k = cfg.num_frame_per_block
    frames = bc.frames - bc.frames % k
    embeds = torch.randn(1, cfg.text_len, cfg.text_dim, device=bc.device)
    reps = 1 if bc.quick else 3
    report: dict = {
        "machine": {
            "device": torch.cuda.get_device_name() if bc.device.startswith("cuda") else platform.processor() or "cpu",
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
    }
    model = _model(cfg, bc.device, dtype, bc)
    emulated = any(isinstance(m, Float8WeightLinear) for m in model.modules())
    report["config"] = {**bc.__dict__, "dtype": str(dtype).removeprefix("torch."), "frames": frames, "tokens_per_frame": tokens_per_frame,
                        "params": sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()),
                        "fp8_backend": ("emulated" if emulated else "torchao") if bc.fp8 else None}
    steps = len(SamplingConfig().denoising_steps)

    if "peak" not in bc.skip:
        report["peak_flops"] = matmul_peak(bc.device, dtype)
        report["matmul_peaks_by_dtype"] = peaks

    if "stream" not in bc.skip:
        pipe = StreamingPipeline(model, latent)
        _timed_stream(pipe, embeds, frames if bc.compile else k, bc.device)  # warm-up
        runs = [_timed_stream(pipe, embeds, frames, bc.device) for _ in range(reps)]
        total = statistics.median(r[-1] for r in runs)
        first = statistics.median(r[0] for r in runs)
        # per chunk: `steps` denoising calls + 1 refill, each over K frames attending to the cache
        flops, seen = 0.0, 0
        for _ in range(frames // k):
            seen += k
            flops += (steps + 1) * dit_flops(cfg, k * tokens_per_frame, seen * tokens_per_frame)
        pixel = _pixel_frames(frames, bc.height)
        report["stream"] = {
            "latent_frames": frames,
            "pixel_frames": pixel,
            "seconds": total,
            "fps": pixel / total,
            "first_chunk_latency_s": first,
            "achieved_flops": flops / total,
        }
        if "peak_flops" in report:
            report["stream"]["fraction_of_peak"] = report["stream"]["achieved_flops"] / report["peak_flops"]

    if "kv" not in bc.skip:
        cached = StreamingPipeline(model, latent)
        recompute = StreamingPipeline(model, latent, use_kv_cache=False)
        _warm_up(bc, (cached, embeds, frames), (recompute, embeds, frames))
        t_cache = statistics.median(_timed_stream(cached, embeds, frames, bc.device)[-1] for _ in range(reps))
        t_re = statistics.median(_timed_stream(recompute, embeds, frames, bc.device)[-1] for _ in range(reps))
        report["kv_cache"] = {"cached_s": t_cache, "recompute_s": t_re, "speedup": t_re / t_cache}

    if "rolling" not in bc.skip:
        window = max(bc.window - bc.window % k, 2 * k)
        rolling_cfg = cfg.replace(local_attn_size=window, sink_size=0)
        rolling = _model(rolling_cfg, bc.device, dtype, bc)
        long = 10 * window + window
        _warm_up(bc, (StreamingPipeline(rolling, latent), embeds, long),
                 (StreamingPipeline(rolling, latent, use_kv_cache=False), embeds, long))
        # the median over repeated runs of each chunk's time resists bursts of other load on a shared machine
        runs = [_timed_stream(StreamingPipeline(rolling, latent), embeds, long, bc.device) for _ in range(reps)]
        per_chunk = [statistics.median(b - a for a, b in chunk_pairs) for chunk_pairs in
                     zip(*[list(zip([0.0] + m[:-1], m)) for m in runs])]
        marks = [statistics.median(m[-1] for m in runs)]
        n = window // k                                                    # chunks per window
        start = statistics.median(per_chunk[n : 2 * n])                   # cache just full
        end = statistics.median(per_chunk[-n:])                            # after 10 windows
        window_re = _timed_stream(StreamingPipeline(rolling, latent, use_kv_cache=False), embeds, long, bc.device)
        report["rolling"] = {
            "window_frames": window,
            "latent_frames": long,
            "chunk_s_at_start": start,
            "chunk_s_after_10_windows": end,
            "ratio_end_over_start": end / start,
            "repetitions": reps,
            "fps_rolling_cache": _pixel_frames(long, bc.height) / marks[-1],
            "fps_recompute_window": _pixel_frames(long, bc.height) / window_re[-1],
        }
    return report


def format_report(r: dict) -> str:
    lines = [f"machine: {r['machine']['device']} ({r['machine']['cpu_threads']} threads, torch {r['machine']['torch']})",
             f"model: {r['config']['preset']} ({r['config']['params'] / 1e6:.1f} M params, {r['config']['dtype']}"
             + (f", FP8 {r['config']['fp8_backend']}" if r['config'].get('fp8_backend') else "")
             + (", compiled" if r['config'].get('compile') else "")
             + f"), {r['config']['tokens_per_frame']} tokens/frame"]
    if "peak_flops" in r:
        lines.append(f"matmul peak: {r['peak_flops'] / 1e9:.1f} GFLOP/s")
    if "stream" in r:
        s = r["stream"]
        lines.append(f"stream: {s['pixel_frames']} frames in {s['seconds']:.2f} s = {s['fps']:.1f} FPS, "
                     f"first chunk {s['first_chunk_latency_s']:.3f} s, {s['achieved_flops'] / 1e9:.1f} GFLOP/s"
                     + (f" ({100 * s['fraction_of_peak']:.0f}% of peak)" if "fraction_of_peak" in s else ""))
    if "kv_cache" in r:
        kv = r["kv_cache"]
        lines.append(f"kv cache: {kv['cached_s']:.2f} s vs recompute {kv['recompute_s']:.2f} s = {kv['speedup']:.2f}x")
    if "rolling" in r:
        ro = r["rolling"]
        lines.append(f"rolling (W={ro['window_frames']}, {ro['latent_frames']} frames): chunk "
                     f"{ro['chunk_s_at_start'] * 1e3:.1f} ms at start, {ro['chunk_s_after_10_windows'] * 1e3:.1f} ms "
                     f"after 10 windows (x{ro['ratio_end_over_start']:.2f}); "
                     f"{ro['fps_rolling_cache']:.1f} FPS vs {ro['fps_recompute_window']:.1f} FPS recomputing the window")
    return "\n".join(lines)
