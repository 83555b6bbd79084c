"""How well a world model denoises real clips, noise level by noise level.

Sampling quality is decided step by step by the model's clean-video estimate x̂0 at each noise level, so
its error on real clips, per σ, shows where a model falls short: at high noise (where the layout of the
objects is decided) or at low noise (where the detail is). Clips come from a stream of training-split scenes
no preset draws (world seed 12345; the presets train on seed 0), with their detailed captions; each clip is
noised once per σ with a fixed draw, x_t = (1 - σ) x0 + σ ε, and x̂0 = x_t - σ v. The error of the noisy
input itself is reported alongside: a model is only useful at a noise level where it beats it.

    selfforcing eval --denoising runs/teacher-world/model_ema.safetensors [--n 12] [--json]
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_CLIPS", "DEFAULT_SIGMAS", "UNSEEN_SEED", "denoising_errors", "format_denoising"]

DEFAULT_CLIPS = 12
DEFAULT_SIGMAS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.3, 0.5, 0.8, 0.9, 0.95, 0.975)
UNSEEN_SEED = 12345


@torch.no_grad()
def denoising_errors(checkpoint: str, *, n: int = DEFAULT_CLIPS, sigmas=DEFAULT_SIGMAS,
                     seed: int = UNSEEN_SEED, batch_size: int = 4, device: str = "cpu") -> list[dict]:
    """x0 mean squared error (in the model's normalised latent space) per noise level.

    Args:
        checkpoint: a world model (teacher or generator) written by the trainer (its spec names the codec
            and text encoder).
        n: clips, of the model's training length.
        sigmas: noise levels in (0, 1].
        seed: the world stream the clips come from; the noise is drawn from `seed` too.
    Returns:
        [{"sigma", "x0_mse", "input_mse"}] in the order of `sigmas`.
    """
    from selfforcing.diffusion.flow import FlowMatching
    from selfforcing.inference.loading import load_pipeline
    from selfforcing.world import WorldDataConfig, WorldDataset

    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive, got {n} and {batch_size}")
    if any(not 0 < s <= 1 for s in sigmas):
        raise ValueError(f"noise levels must lie in (0, 1], got {list(sigmas)}")
    pipe, spec = load_pipeline(checkpoint, device=device)
    if pipe.codec is None or pipe.text_encoder is None or spec.codec != "space-to-depth-4":
        raise ValueError(f"{checkpoint} is not a world model (its spec names codec {spec.codec!r}); "
                         "--denoising reads world clips")
    model = pipe.generator
    frames = pipe.codec.num_pixel_frames(spec.train_frames)
    world = WorldDataset(WorldDataConfig(length=n, seed=seed, num_frames=frames, size=spec.height,
                                         max_start_frame=32))
    items = [world[i] for i in range(n)]
    x0 = pipe.codec.encode(torch.stack([it[0] for it in items]).to(device)).float()   # (n, F, C, H, W)
    context = pipe.text_encoder.encode([it[2] for it in items]).to(device)           # detailed captions
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    flow = FlowMatching()                                                           # σ = t / 1000 exactly
    rows = []
    for sigma in sigmas:
        t = flow.timestep_of(torch.tensor(float(sigma)))
        x_t = flow.add_noise(x0, eps, t)
        err = 0.0
        for b in range(0, n, batch_size):
            x, c = x_t[b:b + batch_size], context[b:b + batch_size]
            t_frames = t.expand(x.shape[:2]).to(device)                                # (b, F) per frame
            x0_hat = flow.x0_from_velocity(x, model(x, t_frames, c).float(), t_frames)
            err += float((x0_hat - x0[b:b + batch_size]).pow(2).sum())
        rows.append({"sigma": float(sigma), "x0_mse": err / x0.numel(),
                     "input_mse": float((x_t - x0).pow(2).mean())})
    return rows


def format_denoising(rows: list[dict]) -> str:
    lines = ["    σ     x0 MSE   input MSE", "------  --------  ---------"]
    lines += [f"{r['sigma']:6.3f}  {r['x0_mse']:8.4f}  {r['input_mse']:9.4f}" for r in rows]
    return "\n".join(lines)
