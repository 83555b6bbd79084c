"""Inference speed and precision options: dtype, FP8 linear layers, torch.compile (spec §5), and an
emulation of bf16 / fp16 inference in float32 that measures its quality cost.

The published streaming demo offers torch.compile and FP8 linear layers (torchao float8 dynamic activation
+ weight). Here both are applied to a finished `WanDiT` from outside, as torchtitan applies parallelism,
so the model file stays free of them; `SpeedOptions` bundles them for `load_pipeline` and the CLI.

FP8 has two paths, chosen by `apply_fp8`:
- "torchao" (CUDA, torchao installed, a GPU with FP8 tensor cores, compute capability >= 8.9, bfloat16
  model): torchao's `Float8DynamicActivationFloat8WeightConfig` with per-row scales. Weights are stored in
  float8_e4m3fn, activations are quantized on the fly, the matmuls run on FP8 tensor cores: this is the
  path that is *faster*.
- "emulated" (anywhere else, the CPU included): weight-only FP8 emulation. Weights are stored as
  float8_e4m3fn with one float32 scale per output channel and dequantized to the compute dtype in every
  forward. It halves (bf16) or quarters (fp32) the weight memory of the converted layers but is *not*
  faster (each call dequantizes): it measures the quality cost of FP8 weight rounding on the CPU.
  Activations stay in the compute dtype, so its error is a lower bound on the torchao path's.

Only the linear layers inside the transformer blocks are converted (self- and cross-attention q, k, v, o
and the FFN, 10 per block): they hold almost all the FLOPs, while the patch embedding, the text and time
embeddings and the head are small and sensitive, so they keep the model's dtype, as in the usual FP8
recipes.

Low-precision emulation (`emulate_precision`): a bf16 (or fp16) model computes in float32 but rounds like
the real `--dtype` path, so the quality cost of bf16 / fp16 inference can be scored at float32 speed on a CPU
without fast bf16 / fp16 matmuls. What the real path (`model.to(dtype)` + the model's autocast, see
`models/wan.py`) does, and how it is mirrored:
- every floating parameter is cast, so every one is rounded in place (`.to(dtype).float()`), through the
  same traversal as `.to(dtype)`: the norm weights and modulation tables are rounded too, although the
  norms, the modulation and the residual stream then *compute* in float32 in both paths;
- the matmuls (linear, patch-embedding conv3d, attention) run in the low dtype: their float32 inputs and
  their outputs are rounded, the product runs in float32 (= float32 accumulation, as tensor cores do);
- attention rounds q, k, v and its output, and the unnormalised softmax probabilities before the P·V
  product, as flash-attention kernels (CUDA and CPU) do; the row sums and logits stay float32;
- the q / k RMSNorms see a low-precision input and round twice (after normalising, after the weight),
  as they do there.
Activations (GELU, SiLU) are not rounded: the next linear layer rounds its input, which gives the same
values; likewise the KV cache stays float32, and attention rounds what it reads. Linear, conv and the norms
match a real CPU bf16 forward bit for bit; the attention kernel's blockwise softmax does not, and the
difference grows through the layers, so the emulated output is as far from float32 as the real one but not
equal to it.
"""

from __future__ import annotations

import logging
import math
import types
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..models.wan import RMSNorm, WanDiT

__all__ = [
    "Float8WeightLinear",
    "Fp8Conversion",
    "SpeedOptions",
    "apply_fp8",
    "compile_model",
    "emulate_precision",
    "emulated_dtype",
    "fp8_layer_names",
]

log = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448: the largest finite e4m3 value
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DTYPES = ("float32", "bfloat16", "float16")
EMULATED_DTYPES = ("bfloat16", "float16")
ATTENTION_CHUNK = 2**24  # attention scores (float32) held at once by the emulated attention: 64 MiB


class Float8WeightLinear(nn.Module):
    """A linear layer with float8_e4m3fn weights and one float32 scale per output channel (emulated FP8).

    W ≈ W_fp8 * scale, scale = max_j |W_ij| / 448, so every row uses the whole e4m3 range. The forward
    dequantizes W to the dtype of the bias (the dtype the layer had) and calls `F.linear`; under the
    model's autocast the matmul runs in the autocast dtype, as for `nn.Linear`.

    State dict: `weight` (out, in) float8_e4m3fn, `weight_scale` (out, 1) float32, `bias`. It round-trips
    into another converted model; `model.to(dtype)` moves but never re-types the FP8 weights or scales.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, device=device, dtype=FP8_DTYPE))
        self.register_buffer("weight_scale", torch.ones(out_features, 1, device=device, dtype=torch.float32))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.compute_dtype = dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Float8WeightLinear":
        w = linear.weight.detach().float()                                  # (out, in)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=w.device, dtype=linear.weight.dtype)
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX  # (out, 1)
        layer.weight.copy_((w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE))
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        """(out, in) in the compute dtype."""
        dtype = self.bias.dtype if self.bias is not None else self.compute_dtype
        return (self.weight.float() * self.weight_scale).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(), self.bias)

    def _apply(self, fn, recurse=True):
        # `model.to(torch.bfloat16)` applies one function to every floating tensor; FP8 storage and float32
        # scales must only follow the device, or the memory saving (and the scales' precision) is lost.
        fp8, scale = self._buffers.pop("weight"), self._buffers.pop("weight_scale")
        super()._apply(fn, recurse)
        device = fn(torch.empty(0, device=fp8.device)).device
        self.register_buffer("weight", fp8.to(device))
        self.register_buffer("weight_scale", scale.to(device))
        if self.bias is not None:
            self.compute_dtype = self.bias.dtype
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight=float8_e4m3fn")


@dataclass(frozen=True)
class Fp8Conversion:
    """What `apply_fp8` did: the path ("torchao" or "emulated") and the converted layers."""

    backend: str
    layers: tuple[str, ...]

    def __str__(self) -> str:
        speed = "fast FP8 matmuls" if self.backend == "torchao" else "weight rounding only, not faster"
        return f"FP8 ({self.backend}, {speed}): {len(self.layers)} linear layers in the transformer blocks"


def fp8_layer_names(model: WanDiT) -> list[str]:
    """The linear layers FP8 converts: every `nn.Linear` inside `model.blocks`."""
    return [f"blocks.{name}" for name, m in model.blocks.named_modules() if isinstance(m, nn.Linear)]


def _torchao_usable(model: WanDiT) -> str | None:
    """None if torchao's FP8 path can run this model, else why not."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return f"the model is on {device.type}, not CUDA"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return "this GPU has no FP8 tensor cores (compute capability < 8.9)"
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "torchao is not installed (pip install torchao)"
    return None


def apply_fp8(model: WanDiT, backend: str = "auto") -> Fp8Conversion:
    """Replace the linear layers of the transformer blocks by FP8 layers, in place.

    Apply it after moving the model to its device and dtype.

    Args:
        model: a WanDiT (causal or not).
        backend: "torchao" (fast FP8 matmuls on CUDA), "emulated" (weight-only FP8 storage, any device),
            or "auto": torchao where it can run, else emulated with a warning on CUDA.
    Returns:
        the path taken and the converted layers' names.
    """
    if backend not in ("auto", "torchao", "emulated"):
        raise ValueError(f"unknown FP8 backend {backend!r}; choose auto, torchao or emulated")
    names = fp8_layer_names(model)
    if any(isinstance(m, Float8WeightLinear) for m in model.modules()):
        raise ValueError("the model is already converted to FP8")
    why_not = _torchao_usable(model) if backend != "emulated" else "emulation was asked for"
    if backend == "torchao" and why_not:
        raise ValueError(f"torchao FP8 cannot run: {why_not}")
    if why_not is None:
        if model.dtype != torch.bfloat16:  # torchao's per-row float8 scaling takes bfloat16 weights only
            raise ValueError(f"FP8 on CUDA (torchao) needs a bfloat16 model, got {model.dtype}: pass --dtype bfloat16")
        return _apply_torchao(model, names)
    if backend == "auto" and next(model.parameters()).device.type == "cuda":
        log.warning("FP8: %s; using weight-only FP8 emulation (saves memory, not faster)", why_not)
    for name in names:
        parent, child = name.rsplit(".", 1)
        module = model.get_submodule(parent)
        setattr(module, child, Float8WeightLinear.from_linear(getattr(module, child)))
    return Fp8Conversion("emulated", tuple(names))


def _apply_torchao(model: WanDiT, names: list[str]) -> Fp8Conversion:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    # FP8 matmul kernels need both dimensions to be multiples of 16; Wan's (1536, 8960) all are.
    chosen = {n for n in names if all(s % 16 == 0 for s in model.get_submodule(n).weight.shape)}
    skipped = sorted(set(names) - chosen)
    if skipped:
        log.warning("FP8: %d layers keep %s (sizes not multiples of 16): %s", len(skipped), model.dtype, skipped)
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
              filter_fn=lambda module, fqn: fqn in chosen)
    return Fp8Conversion("torchao", tuple(n for n in names if n in chosen))


def _round(x, dtype: torch.dtype):
    """A float32 tensor rounded to `dtype` and back; anything else unchanged."""
    return x.to(dtype).float() if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else x


def _attention_rounding_p(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, *,
                          dtype: torch.dtype, **other) -> torch.Tensor:
    """`F.scaled_dot_product_attention` as a flash kernel runs it in `dtype`, computed in float32.

    q: (B, h, N_q, d), k, v: (B, h, N_k, d), already rounded. The logits and the softmax row sums stay
    float32; the unnormalised probabilities exp(s - max) are rounded before the P·V product. Processed in
    query chunks so the scores never exceed `ATTENTION_CHUNK` values. Options WanDiT never passes (dropout,
    is_causal, GQA) fall back to the kernel on rounded inputs.
    """
    if dropout_p or is_causal or other:
        return F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale=scale, **other)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    n_q, n_k = q.shape[-2], k.shape[-2]
    rows = max(1, ATTENTION_CHUNK // (math.prod(q.shape[:-2]) * n_k))
    out = []
    for i in range(0, n_q, rows):
        s = q[..., i : i + rows, :] @ k.transpose(-2, -1) * scale           # (B, h, n, N_k)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.shape[-2] == 1 else attn_mask[..., i : i + rows, :]
            s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
        p = (s - s.amax(-1, keepdim=True)).exp()                             # (B, h, n, N_k)
        out.append((_round(p, dtype) @ v) / p.sum(-1, keepdim=True))         # (B, h, n, d)
    return torch.cat(out, dim=-2)                                            # (B, h, N_q, d)


class _LowPrecisionMatmuls(TorchFunctionMode):
    """While active, the matmul ops round their float32 inputs and outputs to `dtype` (computing in float32).

    The ops are those of torch's autocast lists that WanDiT calls: linear, the patch embedding's conv3d and
    scaled-dot-product attention. Everything else runs untouched, in float32.
    """

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in (F.linear, F.conv3d, F.scaled_dot_product_attention):
            return func(*args, **kwargs)
        args = [_round(a, self.dtype) for a in args]
        kwargs = {key: _round(a, self.dtype) for key, a in kwargs.items()}
        if func is F.scaled_dot_product_attention:
            func = partial(_attention_rounding_p, dtype=self.dtype)
        return _round(func(*args, **kwargs), self.dtype)


def emulated_dtype(model: WanDiT) -> torch.dtype | None:
    """The dtype `emulate_precision` made the model round like, or None."""
    return getattr(model.forward, "emulated_dtype", None)


def emulate_precision(model: WanDiT, dtype: str | torch.dtype) -> None:
    """Make a float32 WanDiT round like a bfloat16 / float16 one while computing in float32, in place.

    See the module docstring for what is rounded. Apply it where the real path casts: before `apply_fp8`
    (whose layers then dequantize their weights to `dtype`, as in a real bf16 model) and `compile_model`.

    Args:
        model: a float32 WanDiT (causal or not).
        dtype: the precision to emulate, "bfloat16" or "float16" (or the torch dtype).
    """
    name = str(dtype).removeprefix("torch.")
    if name not in EMULATED_DTYPES:
        raise ValueError(f"cannot emulate {name}; choose from {', '.join(EMULATED_DTYPES)}")
    if emulated_dtype(model) is not None:
        raise ValueError(f"the model already emulates {emulated_dtype(model)}")
    if model.dtype != torch.float32:
        raise ValueError(f"emulating {name} computes in float32: the model must be float32, it is {model.dtype}")
    dtype = getattr(torch, name)
    # `_apply` is the traversal `.to(dtype)` uses, so exactly the tensors a real cast casts get rounded (an
    # FP8 layer's storage and scales excepted, as there)
    model._apply(lambda t: t.to(dtype).to(t.dtype) if t.is_floating_point() else t)
    for norm in model.modules():
        if isinstance(norm, RMSNorm):  # the q / k norms: fed a real low-precision tensor, as after a bf16 linear
            norm.register_forward_pre_hook(lambda module, args: (args[0].to(dtype), *args[1:]))
            norm.register_forward_hook(lambda module, args, out: _round(out, dtype))

    def forward(self, *args, **kwargs):
        with _LowPrecisionMatmuls(dtype):
            return type(self).forward(self, *args, **kwargs)

    forward.emulated_dtype = dtype
    # bound on the instance (as in `compile_model`): other models stay untouched, a deepcopy rebinds
    model.forward = types.MethodType(forward, model)


def compile_model(model: WanDiT, mode: str = "default", *, dynamic: bool | None = None,
                  backend: str = "inductor") -> int:
    """torch.compile every transformer block in place (regional compilation); returns how many.

    All blocks run the same code, so what is compiled for the first block is reused by the others: compile
    time is about one block's, not the whole model's. The cache reads and writes (`cached_kv`, `text_kv`)
    are left eager: they index the cache with the block's layer number and with positions that change every
    chunk, which torch.compile would otherwise guard on and recompile for, block after block. The rest of
    the model (embeddings, RoPE, masks, the head) stays eager too. The visible context grows chunk by
    chunk: `dynamic=None` lets torch mark the sizes that change dynamic at the first recompile,
    `dynamic=True` does it from the start. Parameter names are unchanged (no `_orig_mod.` prefix).

    Args:
        model: a WanDiT; compile after `apply_fp8`, so the compiled code contains the FP8 layers.
        mode: a torch.compile mode; the published demo uses "max-autotune-no-cudagraphs" on a GPU. The
            CUDA-graph modes ("reduce-overhead", "max-autotune") are accepted but untested with the KV cache,
            whose buffers are rewritten in place.
        dynamic: see above.
        backend: the torch.compile backend: "inductor", or "eager" / "aot_eager" to check tracing quickly.
    Returns:
        the number of compiled blocks (0 if torch.compile is unavailable here).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose from {', '.join(COMPILE_MODES)}")
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        log.warning("torch.compile is not supported on this Python / platform: running eagerly")
        return 0
    for block in model.blocks:
        # bound on the instance, so other models stay untouched and a deepcopy rebinds to the copy
        for module, name in ((block.self_attn, "cached_kv"), (block.cross_attn, "text_kv")):
            setattr(module, name, types.MethodType(torch.compiler.disable(getattr(type(module), name)), module))
        block.compile(mode=mode, dynamic=dynamic, backend=backend)
    return len(model.blocks)


@dataclass(frozen=True)
class SpeedOptions:
    """How the generator runs at inference.

    Attributes:
        dtype: "float32", "bfloat16", "float16", or None to keep the stored precision.
        compile: torch.compile the transformer blocks (`compile_model`).
        fp8: FP8 linear layers in the blocks (`apply_fp8`): fast on CUDA with torchao, emulated elsewhere.
        compile_mode: the torch.compile mode.
        emulate_dtype: "bfloat16" or "float16": round like that precision while computing in float32
            (`emulate_precision`), to measure its quality cost where its matmuls are slow; needs a float32 model.
    """

    dtype: str | None = None
    compile: bool = False
    fp8: bool = False
    compile_mode: str = "default"
    emulate_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if self.emulate_dtype is not None and self.emulate_dtype not in EMULATED_DTYPES:
            raise ValueError(f"cannot emulate {self.emulate_dtype!r}; choose from {', '.join(EMULATED_DTYPES)}")
        if self.emulate_dtype is not None and self.dtype not in (None, "float32"):
            raise ValueError(f"emulating {self.emulate_dtype} computes in float32, not {self.dtype}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {self.compile_mode!r}; choose from {', '.join(COMPILE_MODES)}")

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return getattr(torch, self.dtype) if self.dtype else None

    def apply(self, model: WanDiT) -> WanDiT:
        """Cast, emulate a precision, convert to FP8, then compile (compiling last so it sees the FP8
        layers); in place."""
        if self.dtype is not None:
            model.to(dtype=self.torch_dtype)
        if self.emulate_dtype is not None:
            emulate_precision(model, self.emulate_dtype)
            log.info("%s emulation: weights rounded, matmuls from rounded inputs in float32, outputs rounded",
                     self.emulate_dtype)
        if self.fp8:
            log.info("%s", apply_fp8(model))
        if self.compile:
            log.info("torch.compile: %d transformer blocks (%s mode), compiled on first use",
                     compile_model(model, self.compile_mode), self.compile_mode)
        return model
