"""Cost of one training iteration: Self-Forcing against teacher-forcing and diffusion-forcing steps.

The paper's claim (Huang et al. 2025, §4): although Self-Forcing rolls the generator out autoregressively
during training, its per-iteration time and memory stay comparable to a parallel teacher-forcing or diffusion-
forcing step, thanks to the KV cache and random gradient truncation (gradient through one denoising step per
chunk). This module measures it at equal batch on random weights:

- tf / df: one causal flow-matching step (forward + backward) on real-shaped clips;
- sf-generator: a Self-Forcing rollout (each exit step in turn, so the mean is the expected cost) + the DMD
  loss (teacher conditional and unconditional + critic forwards) + backward;
- sf-critic: a rollout without gradient + the critic's flow-matching step;
- sf-iteration: the published schedule, a critic update every iteration and a generator update every 5th.

Memory is what autograd keeps for the backward (saved activations, counted once per storage): the part of
the training memory the rollout could blow up. On CUDA the peak allocated memory is reported too.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..algorithms.causal_diffusion import causal_diffusion_loss
from ..algorithms.distribution_matching import critic_loss, dmd_loss
from ..algorithms.rollout import self_forcing_rollout
from ..config import get_preset
from ..diffusion.flow import FlowMatching
from ..models.wan import WanDiT

__all__ = ["StepBenchConfig", "bench_training_steps", "format_step_bench", "measure"]


@dataclass(frozen=True)
class StepBenchConfig:
    preset: str = "world-causal"
    batch_size: int = 4
    frames: int = 21
    height: int = 16
    width: int = 16
    reps: int = 2
    generator_every: int = 5
    device: str = "cpu"


@contextmanager
def _saved_bytes(counter: list[int]):
    """Sum the bytes of distinct storages autograd saves for the backward inside the block."""
    seen: set[int] = set()

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen:
            seen.add(key)
            counter[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def measure(fn, reps: int, device: str) -> dict:
    """fn(i) run reps + 1 times, the first to warm up: median seconds, saved-activation bytes, and on CUDA the
    peak allocated memory."""
    times, saved, peak = [], [], []
    for i in range(reps + 1):                                               # the first run warms up
        counter = [0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with _saved_bytes(counter):
            fn(i)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            peak.append(torch.cuda.max_memory_allocated())
        if i:
            times.append(time.perf_counter() - t0)
            saved.append(counter[0])
    out = {"seconds": statistics.median(times), "saved_activation_bytes": max(saved)}
    if peak:
        out["peak_allocated_bytes"] = max(peak)
    return out


def bench_training_steps(bc: StepBenchConfig) -> dict:
    """Per-step seconds and saved-activation bytes of tf, df, sf-generator, sf-critic and sf-iteration."""
    torch.manual_seed(0)
    causal_cfg = get_preset(bc.preset).replace(causal=True)
    generator = WanDiT(causal_cfg).to(bc.device)
    critic = WanDiT(causal_cfg.replace(causal=False)).to(bc.device)
    real = WanDiT(causal_cfg.replace(causal=False)).to(bc.device).requires_grad_(False)
    flow = FlowMatching(shift=5.0)
    timesteps = flow.warp_timesteps(torch.tensor([1000.0, 750.0, 500.0, 250.0], dtype=torch.float64))
    shape = (bc.batch_size, bc.frames, causal_cfg.in_dim, bc.height, bc.width)
    context = torch.randn(bc.batch_size, causal_cfg.text_len, causal_cfg.text_dim, device=bc.device)
    null = torch.randn(1, causal_cfg.text_len, causal_cfg.text_dim, device=bc.device)
    x_0 = torch.randn(shape, device=bc.device)
    rng = torch.Generator().manual_seed(0)

    def causal_step(teacher_forcing: bool):
        def run(_):
            loss, _ = causal_diffusion_loss(generator, x_0, context, flow=flow, teacher_forcing=teacher_forcing,
                                            rng=rng)
            loss.backward()
            generator.zero_grad(set_to_none=True)
        return run

    def rollout(exit_step: int, grad: bool):
        with torch.set_grad_enabled(grad):
            return self_forcing_rollout(generator, context, torch.randn(shape, device=bc.device), flow=flow,
                                        timesteps=timesteps, exit_step=exit_step, rng=rng).video

    def sf_generator(i):
        video = rollout(i % len(timesteps), grad=True)
        loss, _ = dmd_loss(video, real, critic, flow, context, null, rng=rng)
        loss.backward()
        generator.zero_grad(set_to_none=True)

    def sf_critic(i):
        video = rollout(i % len(timesteps), grad=False)
        loss, _ = critic_loss(video, critic, flow, context, rng=rng)
        loss.backward()
        critic.zero_grad(set_to_none=True)

    reps_sf = max(bc.reps, len(timesteps))                                  # every exit step once
    report = {
        "config": dict(bc.__dict__),
        "params": sum(p.numel() for p in generator.parameters()),
        "tf": measure(causal_step(True), bc.reps, bc.device),
        "df": measure(causal_step(False), bc.reps, bc.device),
        "sf_generator": measure(sf_generator, reps_sf, bc.device),
        "sf_critic": measure(sf_critic, reps_sf, bc.device),
    }
    g, c = report["sf_generator"], report["sf_critic"]
    report["sf_iteration"] = {
        "seconds": c["seconds"] + g["seconds"] / bc.generator_every,
        "saved_activation_bytes": max(c["saved_activation_bytes"], g["saved_activation_bytes"]),
    }
    report["ratios_vs_tf"] = {k: report[k]["seconds"] / report["tf"]["seconds"]
                              for k in ("df", "sf_generator", "sf_critic", "sf_iteration")}
    return report


def format_step_bench(r: dict) -> str:
    lines = [f"training steps ({r['config']['preset']}, {r['params'] / 1e6:.1f} M params, batch "
             f"{r['config']['batch_size']} x {r['config']['frames']} frames):"]
    for key, label in (("tf", "teacher forcing"), ("df", "diffusion forcing"), ("sf_generator", "SF generator update"),
                       ("sf_critic", "SF critic update"), ("sf_iteration", "SF iteration (critic + 1/5 generator)")):
        m = r[key]
        ratio = f" (x{r['ratios_vs_tf'][key]:.2f} of TF)" if key in r["ratios_vs_tf"] else ""
        lines.append(f"  {label}: {m['seconds']:.2f} s{ratio}, activations {m['saved_activation_bytes'] / 2**20:.0f} MiB")
    return "\n".join(lines)
