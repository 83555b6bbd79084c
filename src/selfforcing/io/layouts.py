"""How each checkpoint layout names the DiT's weights and describes its shape (spec §1.2, §2).

Three outside layouts hold the same Wan2.1 transformer:
- **wan**: Wan2.1's original code (`WanModel`). Parameter names are exactly ours; the shape lives in a
  `config.json` with keys `dim, ffn_dim, num_heads, in_dim, ...`.
- **diffusers**: `WanTransformer3DModel`. Every tensor keeps its shape but many names change
  (`self_attn.q` -> `attn1.to_q`, `modulation` -> `scale_shift_table`, ...), and the block's two
  LayerNorms swap names: Wan's affine cross-attention norm `norm3` is diffusers' `norm2`.
- **self-forcing-pt**: the official Self-Forcing training checkpoints, `torch.save`d dicts whose keys carry
  wrapper prefixes (`model.`, `_fsdp_wrapped_module.`, ...) around Wan names, and no config at all, so the
  shape is read off the tensors.

This module is pure bookkeeping: names and config dicts in, names and config dicts out. Reading and writing
files lives in `checkpoints.py`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

from ..config import WanConfig

__all__ = [
    "CheckpointError",
    "wan_to_diffusers_key",
    "diffusers_to_wan_key",
    "wan_to_diffusers_state_dict",
    "diffusers_to_wan_state_dict",
    "DIFFUSERS_IGNORED_KEYS",
    "config_to_diffusers",
    "config_from_diffusers",
    "config_to_wan",
    "config_from_wan",
    "clean_official_key",
    "infer_config_fields",
    "SELFFORCING_CONFIG_KEY",
]


class CheckpointError(ValueError):
    """A checkpoint cannot be found, recognised, or does not fit the model it should build."""


# ---------------------------------------------------------------------------------------------------------
# Parameter names: Wan <-> diffusers.
# A table entry ending in "." renames a module prefix; one without renames a single parameter.
_TOP_LEVEL = [
    ("patch_embedding.", "patch_embedding."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.head.", "proj_out."),
    ("head.modulation", "scale_shift_table"),        # (1, 2, D) in both layouts
]
_PER_BLOCK = [
    *[
        (f"{wan_attn}.{wan}.", f"{hf_attn}.{hf}.")
        for wan_attn, hf_attn in (("self_attn", "attn1"), ("cross_attn", "attn2"))
        for wan, hf in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"),
                        ("norm_q", "norm_q"), ("norm_k", "norm_k"))
    ],
    ("norm3.", "norm2."),                            # the affine LayerNorm before cross-attention
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
    ("modulation", "scale_shift_table"),             # (1, 6, D) in both layouts
]
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")

# Keys that diffusers itself drops when loading a WanTransformer3DModel (`_keys_to_ignore_on_load_unexpected`).
DIFFUSERS_IGNORED_KEYS = ("norm_added_q",)


def _rename(name: str, table: Iterable[tuple[str, str]]) -> str | None:
    for src, dst in table:
        if src.endswith(".") and name.startswith(src):
            return dst + name[len(src):]
        if name == src:
            return dst
    return None


def _convert_key(key: str, top: list[tuple[str, str]], block: list[tuple[str, str]]) -> str:
    """Rename one key; a key that no rule knows comes back unchanged (and is then reported as unexpected)."""
    m = _BLOCK.match(key)
    if m:
        rest = _rename(m.group(2), block)
        return key if rest is None else f"blocks.{m.group(1)}.{rest}"
    renamed = _rename(key, top)
    return key if renamed is None else renamed


def _swap(table: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(b, a) for a, b in table]


def wan_to_diffusers_key(key: str) -> str:
    """`blocks.3.self_attn.q.weight` -> `blocks.3.attn1.to_q.weight`."""
    return _convert_key(key, _TOP_LEVEL, _PER_BLOCK)


def diffusers_to_wan_key(key: str) -> str:
    """`blocks.3.attn1.to_q.weight` -> `blocks.3.self_attn.q.weight`."""
    return _convert_key(key, _swap(_TOP_LEVEL), _swap(_PER_BLOCK))


def wan_to_diffusers_state_dict(state: Mapping) -> dict:
    """Rename a Wan / `WanDiT` state dict for `WanTransformer3DModel`; tensors are shared, not copied."""
    return {wan_to_diffusers_key(k): v for k, v in state.items()}


def diffusers_to_wan_state_dict(state: Mapping) -> dict:
    """Rename a `WanTransformer3DModel` state dict for `WanDiT`; tensors are shared, not copied."""
    return {
        diffusers_to_wan_key(k): v
        for k, v in state.items()
        if not any(part in DIFFUSERS_IGNORED_KEYS for part in k.split("."))
    }


# ---------------------------------------------------------------------------------------------------------
# Configs. Each outside format stores the shape of the network; the fields it has no name for (the causal
# attention layout, and text_len for diffusers) are kept under one private key that Wan's and diffusers'
# own loaders ignore (ConfigMixin drops every key starting with "_"), so our round trips lose nothing.
SELFFORCING_CONFIG_KEY = "_selfforcing_config"

_WAN_NATIVE = (
    "dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "patch_size",
    "freq_dim", "text_dim", "text_len", "qk_norm", "cross_attn_norm", "eps",
)
# WanModel.__init__ defaults, which apply to keys its config.json leaves out (Wan2.1-T2V-1.3B omits several).
_WAN_DEFAULTS = dict(
    model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=2048, ffn_dim=8192, freq_dim=256,
    text_dim=4096, out_dim=16, num_heads=16, num_layers=32, window_size=(-1, -1), qk_norm=True,
    cross_attn_norm=True, eps=1e-6,
)
# WanTransformer3DModel.__init__ defaults.
_DIFFUSERS_DEFAULTS = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
)


def _extra_fields(cfg: WanConfig, native: Iterable[str]) -> dict:
    native = set(native)
    return {k: v for k, v in cfg.to_dict().items() if k not in native}


def _restore_extra(fields: dict, d: Mapping, native: Iterable[str]) -> dict:
    """Add the non-native WanConfig fields we stored under SELFFORCING_CONFIG_KEY (if any)."""
    native = set(native)
    names = {f.name for f in dataclasses.fields(WanConfig)}
    for k, v in dict(d.get(SELFFORCING_CONFIG_KEY) or {}).items():
        if k in names and k not in native:
            fields[k] = v
    return fields


def config_to_wan(cfg: WanConfig) -> dict:
    """WanConfig -> the `config.json` of Wan2.1's original `WanModel`."""
    d = {"_class_name": "WanModel", "model_type": "t2v"}
    d.update({k: getattr(cfg, k) for k in _WAN_NATIVE})
    d["patch_size"] = list(cfg.patch_size)
    d["window_size"] = [-1, -1]
    d[SELFFORCING_CONFIG_KEY] = _extra_fields(cfg, _WAN_NATIVE)
    return d


def config_from_wan(d: Mapping) -> dict:
    """Wan's `config.json` -> WanConfig fields (a dict; causal defaults to False)."""
    d = {**_WAN_DEFAULTS, **d}
    if d["model_type"] != "t2v":
        raise CheckpointError(f"Wan model_type {d['model_type']!r} is not supported; only 't2v' is")
    if tuple(d["window_size"]) != (-1, -1):
        raise CheckpointError(f"Wan window_size {d['window_size']} is not supported; only global (-1, -1)")
    fields = {k: d[k] for k in _WAN_NATIVE}
    fields["patch_size"] = tuple(fields["patch_size"])
    return _restore_extra(fields, d, _WAN_NATIVE)


_DIFFUSERS_NATIVE = (
    "dim", "num_heads", "in_dim", "out_dim", "patch_size", "freq_dim", "text_dim", "ffn_dim", "num_layers",
    "qk_norm", "cross_attn_norm", "eps",
)


def config_to_diffusers(cfg: WanConfig, diffusers_version: str = "0.33.1") -> dict:
    """WanConfig -> the `config.json` of diffusers' `WanTransformer3DModel`."""
    if not cfg.qk_norm:
        # diffusers' WanAttention builds and applies norm_q / norm_k whatever its `qk_norm` says
        raise CheckpointError("diffusers' WanTransformer3DModel always applies q/k RMSNorm; qk_norm=False "
                              "cannot be written in the diffusers layout")
    return {
        "_class_name": "WanTransformer3DModel",
        "_diffusers_version": diffusers_version,
        "patch_size": list(cfg.patch_size),
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_dim,
        "out_channels": cfg.out_dim,
        "text_dim": cfg.text_dim,
        "freq_dim": cfg.freq_dim,
        "ffn_dim": cfg.ffn_dim,
        "num_layers": cfg.num_layers,
        "cross_attn_norm": cfg.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads",
        "eps": cfg.eps,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
        SELFFORCING_CONFIG_KEY: _extra_fields(cfg, _DIFFUSERS_NATIVE),
    }


def config_from_diffusers(d: Mapping, *, text_len: int | None = None) -> dict:
    """diffusers' `WanTransformer3DModel` config -> WanConfig fields (a dict; causal defaults to False).

    diffusers has no `text_len` (it attends to whatever context it is given); Wan's 512 applies unless
    `text_len` is passed or our own saved config carries it.
    """
    d = {**_DIFFUSERS_DEFAULTS, **d}
    if d.get("image_dim") is not None or d.get("added_kv_proj_dim") is not None:
        raise CheckpointError("image-conditioned WanTransformer3DModel (image_dim / added_kv_proj_dim set) "
                              "is not supported; only text-to-video")
    if d["qk_norm"] not in ("rms_norm_across_heads", None):
        raise CheckpointError(f"diffusers qk_norm {d['qk_norm']!r} is not supported")
    fields = dict(
        dim=d["num_attention_heads"] * d["attention_head_dim"],
        num_heads=d["num_attention_heads"],
        in_dim=d["in_channels"],
        out_dim=d["out_channels"] or d["in_channels"],
        patch_size=tuple(d["patch_size"]),
        freq_dim=d["freq_dim"],
        text_dim=d["text_dim"],
        ffn_dim=d["ffn_dim"],
        num_layers=d["num_layers"],
        qk_norm=True,                     # always applied by diffusers, see config_to_diffusers
        cross_attn_norm=bool(d["cross_attn_norm"]),
        eps=d["eps"],
    )
    fields = _restore_extra(fields, d, _DIFFUSERS_NATIVE)
    if text_len is not None:
        fields["text_len"] = text_len
    return fields


# ---------------------------------------------------------------------------------------------------------
# Official Self-Forcing checkpoints: wrapper prefixes and a config read off the tensors.
# The DiT sits at `.model` of a wrapper; FSDP, activation checkpointing, torch.compile and DDP insert
# their own module names. None of these is the name of a WanDiT submodule, so they are dropped anywhere.
_WRAPPER_PARTS = frozenset({"model", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod", "module"})

WAN_HEAD_DIM = 128  # every released Wan2.1 model uses heads of 128 (spec §1.1)


def clean_official_key(key: str) -> str:
    """`model._fsdp_wrapped_module.blocks.0._checkpoint_wrapped_module.ffn.0.weight` -> `blocks.0.ffn.0.weight`."""
    return ".".join(p for p in key.split(".") if p not in _WRAPPER_PARTS)


def infer_config_fields(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """Shape fields of a WanConfig read off a Wan-named state dict's shapes.

    `num_heads` cannot be seen in any shape: it is `dim // 128` (Wan's head size) when that divides, else None
    (the caller must then be told it through `config` or `overrides`). `eps` and `text_len` take Wan's values.
    """
    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise CheckpointError(f"cannot infer the model shape: the checkpoint has no {name!r}")
        return tuple(shapes[name])

    dim, in_dim, *patch = shape("patch_embedding.weight")       # (D, C_in, pt, ph, pw)
    patch_size = tuple(patch)
    layers = {int(m.group(1)) for k in shapes if (m := _BLOCK.match(k))}
    num_layers = max(layers) + 1 if layers else 0
    out_features = shape("head.head.weight")[0]                 # C_out * pt * ph * pw
    patch_volume = patch_size[0] * patch_size[1] * patch_size[2]
    return dict(
        dim=dim,
        ffn_dim=shape("blocks.0.ffn.0.weight")[0] if num_layers else 4 * dim,
        num_heads=dim // WAN_HEAD_DIM if dim % WAN_HEAD_DIM == 0 else None,
        num_layers=num_layers,
        in_dim=in_dim,
        out_dim=out_features // patch_volume,
        patch_size=patch_size,
        freq_dim=shape("time_embedding.0.weight")[1],
        text_dim=shape("text_embedding.0.weight")[1],
        text_len=512,
        qk_norm="blocks.0.self_attn.norm_q.weight" in shapes,
        cross_attn_norm="blocks.0.norm3.weight" in shapes,
        eps=1e-6,
    )
