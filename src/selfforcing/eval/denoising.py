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

__all__ = ["DEFAULT_CLIPS", "DEFAULT_SIGMAS", "UNSEEN_SEED", "denoising_errors", "format_denoising",
           "tracking_scenes", "motion_tracking", "checkpoint_motion_tracking", "format_tracking"]

DEFAULT_CLIPS = 12
TRACKING_CLIPS = 8
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
    from selfforcing.world import WorldDataConfig, WorldDataset

    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive, got {n} and {batch_size}")
    if any(not 0 < s <= 1 for s in sigmas):
        raise ValueError(f"noise levels must lie in (0, 1], got {list(sigmas)}")
    pipe, spec = _world_pipeline(checkpoint, device, "--denoising")
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


def _world_pipeline(checkpoint: str, device: str, flag: str):
    """The pipeline and spec of a world model checkpoint; anything else is refused, naming `flag`."""
    from selfforcing.inference.loading import FRAME_CODEC_PREFIX, load_pipeline

    pipe, spec = load_pipeline(checkpoint, device=device)
    world_codec = spec.codec.startswith(("space-to-depth-", FRAME_CODEC_PREFIX))  # the pixel or a learned codec
    if pipe.codec is None or pipe.text_encoder is None or not world_codec:
        raise ValueError(f"{checkpoint} is not a world model (its spec names codec {spec.codec!r}); "
                         f"{flag} reads world clips")
    return pipe, spec


def format_denoising(rows: list[dict]) -> str:
    lines = ["    σ     x0 MSE   input MSE", "------  --------  ---------"]
    lines += [f"{r['sigma']:6.3f}  {r['x0_mse']:8.4f}  {r['input_mse']:9.4f}" for r in rows]
    return "\n".join(lines)


TRACKING_MOTIONS = ("right", "left", "down", "up")
_TRACKING_LOOKS = (("square", "red", "black"), ("circle", "green", "grey"), ("square", "yellow", "navy"),
                   ("circle", "blue", "black"))


def tracking_scenes(n: int, motions=TRACKING_MOTIONS):
    """n scenes of one large object moving fast in a straight line, starting a quarter of the frame from the edge
    it leaves, so 21 frames stay in view (the motions in turn, then the next look)."""
    from selfforcing.world.scene import Scene, WorldObject

    scenes = []
    for i in range(n):
        motion = motions[i % len(motions)]
        shape, colour, background = _TRACKING_LOOKS[(i // len(motions)) % len(_TRACKING_LOOKS)]
        start = {"right": (0.25, 0.5), "left": (0.75, 0.5), "down": (0.5, 0.25), "up": (0.5, 0.75)}[motion]
        scenes.append(Scene(objects=(WorldObject(shape=shape, colour=colour, size="large", motion=motion,
                                                 speed="fast", x=start[0], y=start[1]),), background=background))
    return scenes


def motion_tracking(model, codec, encode, scenes, *, frames: int, sigma: float = 0.9, min_distance: int = 3,
                    seed: int = UNSEEN_SEED, device: str = "cpu") -> dict:
    """Does a world model's x0 estimate of a frame read the other frames where the object is, or in place?

    Each clip shows one object moving in a straight line. The clip is noised at σ, and the squared x0 estimate
    over the 4x4 latent cells around the object in the middle frame c is differentiated with respect to the
    noisy input. In every other frame f the sensitivity's centre (a soft argmax over the latent grid, above its
    median) has moved by D_f from its centre in frame c, where the object itself moved by T_f. The tracking
    ratio Σ D_f · T_f / Σ |T_f|² over frames at least `min_distance` from c is 1 for a model that reads each
    frame where the object is and 0 for one that reads every frame at frame c's place. Frames the estimate does
    not read at all are left out: for a causal generator the ratio is over earlier frames.

    Args:
        model: a bidirectional world model (x, t, context) -> velocity.
        codec: the world's latent codec (`encode`), pixel or learned, one latent cell per `codec.spatial_factor`
            pixels.
        encode: captions -> text context.
        scenes: from `tracking_scenes`; their objects move in straight lines (no wrap within the clip).
        frames: clip length in frames.
    Returns:
        {"sigma", "tracking", "per_clip": [{"motion", "tracking"}]}; tracking is None where the estimate reads
        no frame at least `min_distance` from the middle one (a model that ignores its context).
    """
    from selfforcing.diffusion.flow import FlowMatching
    from selfforcing.world.captions import detailed_caption
    from selfforcing.world.motion import object_state
    from selfforcing.world.renderer import render_tensor

    videos = torch.stack([render_tensor(s, 0, frames) for s in scenes])                 # (n, F, 3, H, W)
    x0 = codec.encode(videos.to(device)).float()                                        # (n, F, C, h, w)
    n, _, _, h, w = x0.shape
    context = encode([detailed_caption(s) for s in scenes])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    flow = FlowMatching()
    t = flow.timestep_of(torch.tensor(float(sigma))).to(device)
    x_t = flow.add_noise(x0, eps, t).requires_grad_(True)
    t_frames = t.expand(x0.shape[:2])
    x0_hat = flow.x0_from_velocity(x_t, model(x_t, t_frames, context).float(), t_frames)
    c = frames // 2
    states = [object_state(s.objects[0], 0, frames) for s in scenes]
    # object centres in latent cells, (n, F, 2) as (row, column); pixel k's centre is at (k + 0.5) / size
    centre = torch.tensor([[[st.y[f] * h - 0.5, st.x[f] * w - 0.5] for f in range(frames)] for st in states])
    loss = 0.0
    for i in range(n):
        r, q = (int(round(float(v))) for v in centre[i, c])
        loss = loss + x0_hat[i, c, :, max(r - 2, 0):r + 2, max(q - 2, 0):q + 2].pow(2).sum()
    (grad,) = torch.autograd.grad(loss, x_t)
    sens = grad.abs().sum(2).cpu()                                                      # (n, F, h, w)
    sens = (sens - sens.flatten(2).median(-1).values[..., None, None]).clamp(min=0) ** 2
    rows, cols = torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32)
    mass = sens.sum((2, 3))                                                             # (n, F)
    found = torch.stack([(sens.sum(3) * rows).sum(2), (sens.sum(2) * cols).sum(2)], -1)  # (n, F, 2)
    found = found / mass.clamp(min=1e-30)[..., None]
    # frames the estimate reads at all (a causal generator reads no later frame), at least min_distance away
    used = (mass > 0) & ((torch.arange(frames) - c).abs() >= min_distance)               # (n, F)
    moved = (centre - centre[:, c:c + 1]) * used[..., None]                             # T_f, (n, F, 2)
    read = (found - found[:, c:c + 1]) * used[..., None]                                # D_f

    def ratio(d, m):                    # None where the estimate reads no frame far enough from the middle one
        return float((d * m).sum() / (m ** 2).sum()) if (m ** 2).sum() > 0 else None

    per_clip = [{"motion": s.objects[0].motion, "tracking": ratio(read[i], moved[i])} for i, s in enumerate(scenes)]
    total = ratio(read, moved)
    return {"sigma": float(sigma), "tracking": total, "per_clip": per_clip}


def checkpoint_motion_tracking(checkpoint: str, *, n: int = TRACKING_CLIPS, sigma: float = 0.9,
                               device: str = "cpu") -> dict:
    """`motion_tracking` of a world model checkpoint on `tracking_scenes(n)` at its training length."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    pipe, spec = _world_pipeline(checkpoint, device, "--tracking")
    frames = pipe.codec.num_pixel_frames(spec.train_frames)
    with torch.enable_grad():
        return motion_tracking(pipe.generator, pipe.codec, lambda caps: pipe.text_encoder.encode(caps).to(device),
                               tracking_scenes(n), frames=frames, sigma=sigma, device=device)


def format_tracking(result: dict) -> str:
    def show(value):
        return "  n/a" if value is None else f"{value:5.2f}"

    lines = [f"σ = {result['sigma']}: tracking {show(result['tracking']).strip()} "
             "(1: reads every frame where the object is, 0: at the middle frame's place, n/a: reads no other frame)"]
    lines += [f"  {r['motion']:>5}  {show(r['tracking'])}" for r in result["per_clip"]]
    return "\n".join(lines)
