"""Data parallelism applied to a model from outside (torchtitan-style): one code path for 1 or N processes.

`init_parallel` reads the `torchrun` environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts the process group
(gloo on CPU, nccl on CUDA); without it everything runs in one process and every helper here is a no-op.
`parallelize` wraps a network for training: DDP (replicated weights, gradients all-reduced and averaged) or
FSDP2 (`fully_shard` on every transformer block, then on the root: parameters, gradients and optimizer state
sharded across ranks). The network itself never knows.

State dicts go through `torch.distributed.checkpoint.state_dict`, which gathers full (unsharded) tensors on the
CPU for FSDP and is the identity for plain and DDP models, so the checkpoint format does not depend on the
strategy or the number of processes.
"""

from __future__ import annotations

import datetime
import logging
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

__all__ = [
    "ParallelContext", "init_parallel", "shutdown", "parallelize", "apply_ddp", "apply_fsdp", "grad_sync",
    "all_reduce_mean", "barrier", "full_tensor", "model_state", "load_model_state", "optimizer_state",
    "load_optimizer_state", "native_bf16",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParallelContext:
    """Where this process sits: rank, world size, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` multiplies bf16 natively: a CUDA GPU with bf16 support, or a CPU with AVX-512 BF16 or AMX
    tiles (there bf16 matmuls run several times faster than fp32; without them, ~100x slower)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_parallel(device: str = "cpu", backend: str = "auto") -> ParallelContext:
    """Start the process group if launched by torchrun (WORLD_SIZE > 1); return this process's context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        log.info("rank %d/%d started (%s on %s)", rank, world_size, backend, dev)
    return ParallelContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown(ctx: ParallelContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def apply_ddp(model: nn.Module, ctx: ParallelContext) -> nn.Module:
    """DistributedDataParallel: rank 0's weights are broadcast, gradients are averaged in backward."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def apply_fsdp(model: nn.Module, ctx: ParallelContext, param_dtype: str = "float32",
               reduce_dtype: str = "float32") -> nn.Module:
    """FSDP2: shard every transformer block (also those of a GAN discriminator's backbone), then the rest
    (embeddings, head, discriminator head) at the root; in place.

    Several forwards before one backward (the Self-Forcing rollout calls the generator once per chunk and
    denoising step) are fine: each call gathers the blocks it runs, and in the backward each gradient-carrying
    call's part is reduce-scattered as it completes and summed into the sharded gradient (tested against DDP).
    Every call is a collective, so all ranks must make the same calls.

    param_dtype / reduce_dtype: FSDP2's `MixedPrecisionPolicy`: gathered parameters are cast to param_dtype
    for the forward and backward, gradients reduce-scattered in reduce_dtype; the shards stay fp32.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from ..models.wan import WanBlock

    # No input casting: FSDP would rebuild dataclass arguments (the rollout's KV caches) as copies, and the
    # network casts its own inputs to its compute dtype.
    policy = MixedPrecisionPolicy(param_dtype=None if param_dtype == "float32" else getattr(torch, param_dtype),
                                  reduce_dtype=getattr(torch, reduce_dtype), cast_forward_inputs=False)
    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    for block in [m for m in model.modules() if isinstance(m, WanBlock)]:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def parallelize(model: nn.Module, ctx: ParallelContext, strategy: str, param_dtype: str = "float32",
                reduce_dtype: str = "float32") -> nn.Module:
    """The module to call in training: `model` itself in one process, else wrapped / sharded per `strategy`
    (param_dtype / reduce_dtype: FSDP's mixed precision)."""
    if not ctx.distributed:
        return model
    if strategy == "ddp":
        return apply_ddp(model, ctx)
    if strategy == "fsdp":
        return apply_fsdp(model, ctx, param_dtype, reduce_dtype)
    raise ValueError(f"unknown parallel strategy {strategy!r} (ddp or fsdp)")


def grad_sync(wrapped: nn.Module, enabled: bool):
    """Context in which backward does (enabled) or does not (accumulation micro-steps) reduce gradients."""
    if enabled:
        return nullcontext()
    if hasattr(wrapped, "no_sync"):                           # DDP
        return wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):        # FSDP2

        @contextmanager
        def unsynced():
            wrapped.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                wrapped.set_requires_gradient_sync(True)

        return unsynced()
    return nullcontext()


def all_reduce_mean(values: dict[str, torch.Tensor], ctx: ParallelContext) -> dict[str, torch.Tensor]:
    """Average 0-dim tensors over ranks (one collective); every rank must call it with the same keys."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().to(ctx.device) for k in keys])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked /= ctx.world_size
    return dict(zip(keys, stacked.unbind()))


def barrier(ctx: ParallelContext) -> None:
    if ctx.distributed:
        dist.barrier()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP-sharded) DTensor; a collective for DTensors."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full state dict on the CPU (on rank 0; other ranks of an FSDP model get an empty dict). Collective."""
    return get_model_state_dict(model, options=_FULL)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (every rank passes it) into a plain, DDP-wrapped or FSDP-sharded model."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Full optimizer state keyed by parameter names (rank 0 for FSDP). Collective."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=True))
