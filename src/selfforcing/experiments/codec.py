"""Pixel space or a learned latent space for the world model: what each costs and what each loses.

The world model works on `SpaceToDepthCodec(4)` latents (lossless, 48 channels at 16x16 per 64x64 frame). The
alternative, as Wan does with its VAE, is a learned autoencoder to fewer channels at the same token grid. This
experiment trains such an autoencoder (per frame, stride 4, `channels` latent channels, so the DiT keeps its 2x2
patches and 64 tokens per frame) on world frames and measures:

- quality: PSNR of held-out clips through the round trip, and the evaluator's scores and Fréchet distance of the
  round-tripped clips next to those of the same clips untouched (the ceiling a model in that space could reach);
- cost: encode and decode time per frame, and the time of one teacher training step (forward and backward,
  batch 4 of 21 frames) with the learned codec's input width against the pixel codec's.

The autoencoder and its latents' per-channel statistics are written to OUT/codec.safetensors, which a world run
trains on with `--set data.codec_file=OUT/codec.safetensors model.in_dim=C model.out_dim=C`.

    selfforcing experiment codec -o runs/codec [--steps 600] [--channels 16] [--width 64] [--bf16]
    selfforcing experiment codec -o runs/codec-score --score checkpoints/world/codec.safetensors [--n 48]

The second form trains nothing: it scores a codec file (round trip, Fréchet distance, encode and decode time)
and writes OUT/score.json.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..models.codec import FrameAutoencoder, LatentNorm, LearnedFrameCodec

__all__ = ["CodecExperimentConfig", "FrameAutoencoder", "run_codec_experiment", "format_codec_results",
           "format_codec_scores", "latent_statistics", "score_codec"]


@dataclass(frozen=True)
class CodecExperimentConfig:
    """Attributes:
    out: output folder (results.json, results.md, the autoencoder's weights).
    channels: latent channels of the learned codec (Wan's VAE has 16).
    width: the autoencoder's base width.
    steps, batch_clips, frames_per_clip, lr: autoencoder training (frames drawn from training clips).
    autocast: "bf16" trains the autoencoder under bf16 autocast (about twice as fast on CPUs with AVX-512 BF16 /
        AMX; the loss and the optimiser stay fp32), "none" in fp32. Scoring is always fp32.
    n: held-out clips scored through the round trip.
    reference: real training clips the Fréchet distances are measured against (0: none).
    dit_batch, dit_frames: the teacher step timed for the cost comparison (clips x frames).
    seed: weights and data order.
    """

    out: str = "runs/codec"
    channels: int = 16
    width: int = 64
    steps: int = 600
    batch_clips: int = 4
    frames_per_clip: int = 8
    lr: float = 1e-3
    autocast: str = "none"
    n: int = 16
    reference: int = 64
    dit_batch: int = 4
    dit_frames: int = 21
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.channels, self.width, self.steps, self.batch_clips, self.frames_per_clip, self.n,
               self.dit_batch, self.dit_frames) < 1:
            raise ValueError("channels, width, steps, batch sizes, n and the timed step's shape must be positive")
        if self.reference < 0 or self.reference == 1:
            raise ValueError(f"reference is 0 or at least 2 clips, got {self.reference}")
        if self.frames_per_clip > 21:
            raise ValueError("frames_per_clip is at most 21 (the clip length)")
        if self.width % 16:
            raise ValueError(f"width must be a multiple of 16, got {self.width}")
        if self.autocast not in ("none", "bf16"):
            raise ValueError(f"autocast is 'none' or 'bf16', not {self.autocast!r}")


def _training_frames(data, config: CodecExperimentConfig, step: int) -> torch.Tensor:
    rng = np.random.default_rng([config.seed, step])
    frames = []
    for index in rng.integers(0, len(data), config.batch_clips):
        video = data[int(index)][0]                                   # (F, 3, H, W) in [-1, 1]
        frames.append(video[rng.choice(video.shape[0], config.frames_per_clip, replace=False)])
    return torch.cat(frames)


@torch.no_grad()
def latent_statistics(ae: FrameAutoencoder, data, config: CodecExperimentConfig, batches: int = 16) -> LatentNorm:
    """Per-channel mean and standard deviation of the encoder's latents over `batches` batches of training
    frames (drawn after the training steps), so that the diffusion model sees roughly unit-scale latents."""
    z = torch.cat([ae.encoder(_training_frames(data, config, config.steps + i)) for i in range(batches)])
    mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3)).clamp_min(1e-4)
    return LatentNorm(tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std))


def _heldout(n: int, frames: int = 21) -> list[tuple[str, np.ndarray, str]]:
    from ..world import detailed_caption, heldout_scenes, render

    return [(f"{i:05d}", render(scene, 0, frames), detailed_caption(scene)) for i, scene in enumerate(heldout_scenes(n))]


def _to_float(video: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(video).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _median_time(fn, repeats: int = 3) -> float:
    """Median seconds of fn() over `repeats` runs after one warm-up (the training benchmark's timer)."""
    from ..training.step_bench import measure

    return measure(lambda _: fn(), repeats, "cpu")["seconds"]


def _dit_step_seconds(in_dim: int, batch: int = 4, frames: int = 21) -> float:
    """One teacher training step (forward + backward) of the `world` model reading `in_dim`-channel latents."""
    from ..config import get_preset
    from ..models.wan import WanDiT

    cfg = get_preset("world").replace(in_dim=in_dim, out_dim=in_dim)
    torch.manual_seed(0)
    model = WanDiT(cfg)
    x = torch.randn(batch, frames, in_dim, 16, 16)
    t = torch.rand(batch, frames) * 1000
    ctx = torch.randn(batch, cfg.text_len, cfg.text_dim)

    def step():
        model.zero_grad(set_to_none=True)
        model(x, t, ctx).square().mean().backward()

    return _median_time(step)


def score_codec(codec: LearnedFrameCodec, n: int = 16, reference: int = 64) -> dict:
    """What the codec loses on `n` held-out clips, and what it costs (fp32, one frame at a time).

    Returns:
        {"psnr_db": of the round trip, "scores": {"real": ..., "round_trip": ...} (the evaluator's mean scores,
        with "frechet": the Fréchet distance of each set to `reference` real training clips, None when 0 or
        under 2 clips), "encode_ms_per_frame", "decode_ms_per_frame", "latent_mean" and "latent_std" (of the
        encoder's output before the codec's normalisation)}.
    """
    from ..eval import evaluate_videos

    items = _heldout(n)
    round_trip, mse, latents = [], [], []
    for name, video, prompt in items:
        z = codec.encode(_to_float(video)[None])                             # (1, T, C, h, w), normalised
        latents.append(codec.norm.denormalize(z))
        back = _to_uint8(codec.decode(z)[0])
        mse.append(float(np.mean((back.astype(np.float64) - video.astype(np.float64)) ** 2)))
        round_trip.append((name, back, prompt))
    raw = torch.cat(latents)
    frame = _to_float(items[0][1])[None, :1]                                 # (1, 1, 3, H, W)
    encode_ms = 1000 * _median_time(lambda: codec.encode(frame))
    z1 = codec.encode(frame)
    decode_ms = 1000 * _median_time(lambda: codec.decode(z1))
    scores = {}
    for key, clips in (("real", items), ("round_trip", round_trip)):
        report = evaluate_videos(clips, reference=reference)
        scores[key] = {**report.mean(), "frechet": report.frechet}
    return {
        "psnr_db": float(10 * math.log10(255.0**2 / max(np.mean(mse), 1e-12))),
        "scores": scores,
        "encode_ms_per_frame": encode_ms,
        "decode_ms_per_frame": decode_ms,
        "latent_mean": float(raw.mean()),
        "latent_std": float(raw.std()),
    }


def run_codec_experiment(config: CodecExperimentConfig, progress: bool = True) -> dict:
    from ..world import WorldDataConfig, WorldDataset

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    ae = FrameAutoencoder(config.channels, config.width)
    opt = torch.optim.AdamW(ae.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps, eta_min=config.lr * 0.1)
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="autoencoder", disable=not progress)
    data = WorldDataset(WorldDataConfig(length=100_000, seed=config.seed, num_frames=21))
    for step in bar:
        x = _training_frames(data, config, step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.autocast == "bf16"):
            recon, z = ae(x)
        recon, z = recon.float(), z.float()
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-4 * z.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    train_seconds = time.perf_counter() - start
    ae.eval()
    codec = LearnedFrameCodec(ae, latent_statistics(ae, data, config))
    codec.save(out / "codec.safetensors")

    scored = score_codec(codec, config.n, reference=config.reference)
    shape = (config.dit_batch, config.dit_frames)
    pixel_step, learned_step = _dit_step_seconds(48, *shape), _dit_step_seconds(config.channels, *shape)
    results = {
        "config": asdict(config),
        "autoencoder": {"parameters": sum(p.numel() for p in ae.parameters()), "train_seconds": train_seconds,
                        "latent_std": scored.pop("latent_std"), "latent_mean": scored.pop("latent_mean")},
        **scored,
        "dit_step_seconds": {"pixel_48ch": pixel_step, f"learned_{config.channels}ch": learned_step},
        "threads": torch.get_num_threads(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(format_codec_results(results) + "\n")
    return results


def format_codec_scores(r: dict, n: int) -> str:
    """`score_codec`'s results as a Markdown table (headline scores and Fréchet distance) and two lines."""
    keys = ("total", "semantic", "quality", "temporal")

    def row(label: str, scores: dict) -> str:
        fd = "n/a" if scores.get("frechet") is None else f"{scores['frechet']:.0f}"
        return f"| {label} | " + " | ".join(f"{scores[k]:.1f}" for k in keys) + f" | {fd} |"

    return "\n".join([
        "| | " + " | ".join(keys) + " | FD |",
        "|---|" + "---|" * (len(keys) + 1),
        row(f"{n} held-out clips as rendered", r["scores"]["real"]),
        row("the same through the learned codec", r["scores"]["round_trip"]),
        "",
        f"- round-trip PSNR {r['psnr_db']:.1f} dB (the pixel codec is lossless)",
        f"- encode {r['encode_ms_per_frame']:.2f} ms, decode {r['decode_ms_per_frame']:.2f} ms per 64x64 frame "
        "(the pixel codec: a reshape)",
    ])


def format_codec_results(r: dict) -> str:
    c = r["config"]
    lines = [
        f"Learned codec: {c['channels']} channels at 1/4 resolution ({r['autoencoder']['parameters']:,} parameters, "
        f"{c['steps']} steps of {c['batch_clips'] * c['frames_per_clip']} frames in "
        f"{r['autoencoder']['train_seconds'] / 60:.1f} min, {r['threads']} threads"
        + (", bf16 autocast)" if c.get("autocast", "none") == "bf16" else ")"),
        "",
        format_codec_scores(r, c["n"]),
    ]
    steps = r["dit_step_seconds"]
    (pk, pv), (lk, lv) = list(steps.items())
    lines.append(f"- teacher training step ({c['dit_batch']} clips x {c['dit_frames']} frames, forward + backward): "
                 f"{pv:.2f} s reading {pk} "
                 f"latents, {lv:.2f} s reading {lk} (x{lv / pv:.2f})")
    return "\n".join(lines)
