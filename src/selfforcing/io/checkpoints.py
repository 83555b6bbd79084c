"""Load and save the DiT in every layout its weights are published in (spec §2).

`load_transformer(path)` recognises four layouts (`detect_layout`):

| layout            | what `path` is                                                                          |
|-------------------|-----------------------------------------------------------------------------------------|
| `selfforcing`     | our own `.safetensors` file; its metadata holds the resolved `WanConfig` as JSON        |
| `wan`             | Wan2.1's original folder: `config.json` + `diffusion_pytorch_model*.safetensors`        |
| `diffusers`       | a `WanTransformer3DModel` folder, or a diffusers pipeline root with `transformer/`     |
| `self-forcing-pt` | an official Self-Forcing `.pt` (`generator`, `generator_ema`, `critic`) or `ode_init.pt` |

Loading never holds two copies of the weights: the model is built on the `meta` device and takes the
checkpoint's tensors with `load_state_dict(assign=True)`; safetensors are read tensor by tensor (cast as
they are read), `.pt` files are memory-mapped. Names and shapes are checked strictly *before* any tensor is
read, so a wrong checkpoint fails fast with one message listing every mismatch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import WanConfig, get_preset
from ..models.wan import WanDiT
from .layouts import (
    CheckpointError,
    clean_official_key,
    config_from_diffusers,
    config_from_wan,
    config_to_diffusers,
    config_to_wan,
    diffusers_to_wan_key,
    DIFFUSERS_IGNORED_KEYS,
    infer_config_fields,
    wan_to_diffusers_state_dict,
)

__all__ = [
    "CheckpointError",
    "LAYOUTS",
    "detect_layout",
    "describe_checkpoint",
    "load_transformer",
    "save_transformer",
    "cast_checkpoint",
    "atomic_write",
    "save_wan",
    "save_diffusers",
]

log = logging.getLogger(__name__)

LAYOUTS = ("selfforcing", "wan", "diffusers", "self-forcing-pt")

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"   # the file name Wan and diffusers both use
INDEX_NAME = WEIGHTS_NAME + ".index.json"               # {"weight_map": {key: shard file}} when sharded
FORMAT_KEY, CONFIG_KEY = "format", "selfforcing_config"  # our safetensors metadata
OFFICIAL_GENERATORS = ("generator_ema", "generator")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass
class _Source:
    """An opened checkpoint whose tensors have not been read yet. Names are Wan's (= WanDiT's)."""

    layout: str
    root: Path
    files: list[Path]
    config_fields: dict                     # WanConfig fields; num_heads may be None (official .pt)
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    read: Callable[[str, torch.device], torch.Tensor]   # (name, device) -> tensor
    original_names: dict[str, str] = field(default_factory=dict)  # Wan name -> name in the file
    metadata: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Detection


def _file_kind(path: Path) -> str:
    """'safetensors', 'torch' (zip or legacy pickle) or 'unknown', from the first bytes of the file."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path):
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    return "unknown"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a Wan / diffusers folder: the index's shards, or the single file."""
    index = folder / INDEX_NAME
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that do not exist: {', '.join(missing[:3])}")
        return [folder / s for s in shards]
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    return sorted(folder.glob("diffusion_pytorch_model-*-of-*.safetensors"))


def _layout_of_names(names) -> str | None:
    names = set(names)
    if any(".attn1." in n for n in names) or "proj_out.weight" in names:
        return "diffusers"
    if any(".self_attn." in n for n in names) or "head.head.weight" in names:
        return "wan"
    return None


def _config_layout(cfg: dict) -> str | None:
    """'diffusers' for a WanTransformer3DModel config.json, 'wan' for WanModel's (`dim`, `num_heads`, ...)."""
    if cfg.get("_class_name") == "WanTransformer3DModel":
        return "diffusers"
    if cfg.get("_class_name") == "WanModel" or ("dim" in cfg and "num_heads" in cfg):
        return "wan"
    return None


def _safetensors_keys(files: list[Path]) -> list[str]:
    keys = []
    for f in files:
        with safe_open(str(f), "pt") as st:
            keys.extend(st.keys())
    return keys


def _detect(path: Path) -> tuple[str, Path, list[Path], dict | None]:
    """(layout, root folder or file, weight files, config.json or None)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint path does not exist: {path}")
    if path.is_file():
        kind = _file_kind(path)
        if kind == "torch":
            return "self-forcing-pt", path, [path], None
        if kind == "safetensors":
            try:
                with safe_open(str(path), "pt") as st:
                    meta, keys = st.metadata() or {}, list(st.keys())
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e
            if CONFIG_KEY in meta:
                return "selfforcing", path, [path], None
            layout = _layout_of_names(keys)
            if layout is not None:  # a bare Wan / diffusers weight file; use the config beside it if it fits
                cfg_file = path.parent / "config.json"
                cfg = _read_json(cfg_file) if cfg_file.is_file() else None
                return layout, path, [path], cfg if cfg is not None and _config_layout(cfg) == layout else None
            raise CheckpointError(f"{path} is a safetensors file but holds no Wan DiT weights")
        raise CheckpointError(f"{path} is neither a safetensors file nor a torch checkpoint")

    for folder in (path, path / "transformer"):
        cfg_file = folder / "config.json"
        cfg = _read_json(cfg_file) if cfg_file.is_file() else None
        files = _weight_files(folder) if folder.is_dir() else []
        layout = _config_layout(cfg) if cfg is not None else None
        if layout == "diffusers" or (layout == "wan" and folder == path):
            if not files:
                raise CheckpointError(f"{folder} has a {layout} config.json but no {WEIGHTS_NAME}")
            return layout, folder, files, cfg
        if folder == path and cfg is None and files:
            layout = _layout_of_names(_safetensors_keys(files))
            if layout is not None:
                return layout, folder, files, None
    raise CheckpointError(
        f"no checkpoint layout matches {path}: expected our .safetensors file, a Wan folder (config.json + "
        f"{WEIGHTS_NAME}), a diffusers WanTransformer3DModel folder or pipeline root, or a Self-Forcing .pt"
    )


def detect_layout(path: str | os.PathLike) -> str:
    """Which of `LAYOUTS` the checkpoint at `path` is; reads only headers and config files."""
    return _detect(Path(path))[0]


# ---------------------------------------------------------------------------------------------------------
# Opening (names, shapes and config; no tensor data yet)


def _open_safetensors(layout, root, files, cfg_json) -> _Source:
    handles = {}
    shapes, dtypes, original, where = {}, {}, {}, {}
    metadata = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            if layout == "selfforcing":
                metadata = dict(st.metadata() or {})
            for key in st.keys():
                if layout == "diffusers" and any(p in DIFFUSERS_IGNORED_KEYS for p in key.split(".")):
                    continue
                name = diffusers_to_wan_key(key) if layout == "diffusers" else key
                if name in shapes:
                    raise CheckpointError(f"{root}: two tensors map to {name!r}")
                sl = st.get_slice(key)
                shapes[name] = tuple(sl.get_shape())
                dtypes[name] = _SAFETENSORS_DTYPES.get(sl.get_dtype(), torch.float32)
                original[name], where[name] = key, f

    if layout == "selfforcing":
        try:
            fields = json.loads(metadata.pop(CONFIG_KEY))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{root}: the stored config is not valid JSON: {e}") from e
        metadata.pop(FORMAT_KEY, None)
    elif cfg_json is not None and layout == "wan":
        fields = config_from_wan(cfg_json)
    elif cfg_json is not None and layout == "diffusers":
        fields = config_from_diffusers(cfg_json)
    else:
        fields = infer_config_fields(shapes)

    def read(name: str, device: torch.device) -> torch.Tensor:
        f = where[name]
        if f not in handles:
            handles.clear()  # keep one file open at a time; shards are read in order
            handles[f] = safe_open(str(f), "pt", device=str(device))
        return handles[f].get_tensor(original[name])

    return _Source(layout, root, files, fields, shapes, dtypes, read,
                   {k: v for k, v in original.items() if k != v}, metadata)


def _torch_load(path: Path):
    """Memory-mapped, weights-only `torch.load`, falling back to a full unpickle for older pickles."""
    kwargs = dict(map_location="cpu", mmap=_is_zip(path))  # only the zip format can be memory-mapped
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure of the safe loader
        log.warning("weights-only torch.load of %s failed (%s); unpickling it fully, trust this file", path, e)
        try:
            return torch.load(path, weights_only=False, **kwargs)
        except Exception as e2:
            raise CheckpointError(f"cannot load {path} with torch.load: {e2}") from e2


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _open_official(path: Path, use_ema: bool) -> _Source:
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    order = OFFICIAL_GENERATORS if use_ema else OFFICIAL_GENERATORS[::-1]
    entry = next((k for k in order if isinstance(obj.get(k), Mapping)), None)
    if entry is not None:
        if use_ema != (entry == "generator_ema"):
            log.info("%s has no %s; loading %s", path, order[0], entry)
        state = obj[entry]
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj  # a bare state dict
    else:
        raise CheckpointError(f"{path} has no 'generator' or 'generator_ema' state dict; "
                              f"top-level keys: {sorted(map(str, obj))[:8]}")
    tensors, original = {}, {}
    for key, value in state.items():
        name = clean_official_key(key)
        if name in tensors:
            raise CheckpointError(f"{path}: {key!r} and {original[name]!r} both map to {name!r}")
        tensors[name], original[name] = value, key
    return _Source(
        "self-forcing-pt", path, [path],
        {**infer_config_fields({k: tuple(v.shape) for k, v in tensors.items()}),
         "causal": True, "num_frame_per_block": 3},   # the released generators are chunk-wise causal
        {k: tuple(v.shape) for k, v in tensors.items()},
        {k: v.dtype for k, v in tensors.items()},
        lambda name, device: tensors[name].to(device),
        {k: v for k, v in original.items() if k != v},
        {"entry": entry, "entries": sorted(str(k) for k in obj if isinstance(obj[k], Mapping))},
    )


def _open(path: str | os.PathLike, use_ema: bool) -> _Source:
    layout, root, files, cfg_json = _detect(Path(path))
    if layout == "self-forcing-pt":
        return _open_official(root, use_ema)
    return _open_safetensors(layout, root, files, cfg_json)


# ---------------------------------------------------------------------------------------------------------
# Config resolution and strict key checking


def _resolve_config(src: _Source, config, causal, overrides) -> WanConfig:
    if isinstance(config, str):
        config = get_preset(config)
    fields = config.to_dict() if config is not None else dict(src.config_fields)
    if config is not None:
        _check_same_head(src, fields)
    if causal is not None:
        fields["causal"] = causal
    if overrides:
        unknown = set(overrides) - set(WanConfig.__dataclass_fields__)
        if unknown:
            raise CheckpointError(f"unknown WanConfig fields in overrides: {sorted(unknown)}")
        fields.update(overrides)
    if fields.get("num_heads") is None:
        raise CheckpointError(
            f"cannot infer num_heads of {src.root}: dim {fields.get('dim')} is not a multiple of Wan's head "
            f"size 128; pass config=... or overrides={{'num_heads': ...}}"
        )
    try:
        return WanConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"invalid config for {src.root}: {e}") from e


def _check_same_head(src: _Source, fields: Mapping) -> None:
    """A config that replaces the stored one must read the head's output as it was trained: the same
    `prediction` (and, for "edm", the same `sigma_data` and `skip_scale`), or every output would silently mean
    something else."""
    stored = src.config_fields
    if "prediction" not in stored:         # inferred from shapes alone (an official .pt): nothing to compare
        return

    def head(f: Mapping) -> str:
        kind = f.get("prediction", "velocity")
        if kind != "edm":
            return f"prediction={kind}"
        return f"prediction=edm sigma_data={float(f.get('sigma_data', 1.0))} skip_scale={f.get('skip_scale')}"

    if head(fields) != head(stored):
        raise CheckpointError(f"{src.root} was trained with {head(stored)} but the config asks for "
                              f"{head(fields)}: set model.{head(stored).replace(' ', ' model.')} to load it")


def _listing(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _check_names_and_shapes(src: _Source, expected: Mapping[str, tuple[int, ...]], cfg: WanConfig) -> None:
    def named(n: str) -> str:
        return f"{n} (as {src.original_names[n]})" if n in src.original_names else n

    missing = sorted(set(expected) - set(src.shapes))
    unexpected = sorted(set(src.shapes) - set(expected))
    misshaped = sorted(n for n in set(expected) & set(src.shapes) if tuple(expected[n]) != src.shapes[n])
    if not (missing or unexpected or misshaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_listing([named(n) for n in unexpected])}")
    if misshaped:
        parts.append(f"{len(misshaped)} mis-shaped: " + _listing(
            [f"{named(n)} checkpoint {list(src.shapes[n])} vs model {list(expected[n])}" for n in misshaped]))
    shape = f"dim={cfg.dim}, ffn_dim={cfg.ffn_dim}, num_layers={cfg.num_layers}, heads={cfg.num_heads}"
    raise CheckpointError(f"checkpoint {src.root} ({src.layout}) does not fit WanDiT({shape}): " + "; ".join(parts))


# ---------------------------------------------------------------------------------------------------------
# Public loading API


def load_transformer(
    path: str | os.PathLike,
    *,
    config: WanConfig | str | None = None,
    causal: bool | None = None,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    overrides: Mapping | None = None,
) -> WanDiT:
    """Build a `WanDiT` from a checkpoint in any of `LAYOUTS`.

    Args:
        path: our `.safetensors` file, a Wan or diffusers folder (or pipeline root), or a Self-Forcing `.pt`.
        config: a WanConfig or preset name that fully replaces the stored (or, for a `.pt`, inferred) config.
        causal: set `config.causal`, e.g. to load base Wan weights as the causal generator.
        use_ema: from an official `.pt`, take `generator_ema` when present, else `generator`.
        device: where the weights go; safetensors are read straight onto it.
        dtype: cast every tensor to it while reading. None keeps the checkpoint's dtype, or, if the file
            mixes dtypes (diffusers keeps some modules in float32), the dtype of the patch embedding.
        overrides: WanConfig fields applied last, e.g. {"num_frame_per_block": 1, "local_attn_size": 12,
            "sink_size": 3}; only attention-layout fields leave the weights untouched.
    Raises:
        CheckpointError: the path matches no layout, or the weights do not fit the config (one message
            listing missing, unexpected and mis-shaped keys).
    """
    src = _open(path, use_ema)
    cfg = _resolve_config(src, config, causal, overrides)
    with torch.device("meta"):
        model = WanDiT(cfg)
    _check_names_and_shapes(src, {k: tuple(v.shape) for k, v in model.state_dict().items()}, cfg)

    device = torch.device(device)
    target = dtype or src.dtypes["patch_embedding.weight"]
    if dtype is None and len(set(src.dtypes.values())) > 1:
        log.info("%s mixes dtypes %s; loading all as %s", path, sorted(map(str, set(src.dtypes.values()))), target)
    state = {}
    for name in src.shapes:
        t = src.read(name, device)
        state[name] = t.to(device=device, dtype=target) if t.is_floating_point() else t.to(device)
    model.load_state_dict(state, strict=True, assign=True)
    log.info("loaded %s (%s, %s) onto %s as %s", path, src.layout,
             src.metadata.get("entry") or "weights", device, target)
    return model


def describe_checkpoint(path: str | os.PathLike) -> dict:
    """Layout, config, parameter count and dtypes of a checkpoint, without building the model.

    Returns:
        dict with `layout`, `path`, `files`, `config` (WanConfig fields; `num_heads` is None when it cannot
        be inferred), `num_params` (of the transformer that would load; for a `.pt`, of `generator_ema`),
        `dtypes` (sorted names), `num_tensors`, and `metadata` (our extra metadata, or the `.pt`'s entries).
    """
    src = _open(path, use_ema=True)
    try:
        config = _resolve_config(src, None, None, None).to_dict()
    except CheckpointError:
        config = dict(src.config_fields)
    return {
        "layout": src.layout,
        "path": str(src.root),
        "files": [str(f) for f in src.files],
        "config": config,
        "num_params": sum(math.prod(s) for s in src.shapes.values()),
        "num_tensors": len(src.shapes),
        "dtypes": sorted({str(d).removeprefix("torch.") for d in src.dtypes.values()}),
        "metadata": src.metadata,
    }


# ---------------------------------------------------------------------------------------------------------
# Saving


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with wrapper prefixes removed, each tensor owning its memory."""
    state = {}
    for key, t in model.state_dict().items():
        t = t.detach()
        if t.device.type == "meta":
            raise CheckpointError(f"cannot save {key}: it is on the meta device")
        t = t.contiguous()
        if t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # safetensors refuses views into shared storage
        state[clean_official_key(key)] = t
    return state


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path` (atomic on POSIX): readers
    never see half a file, and on any failure the temporary file is removed and `path` keeps its content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())                    # mkstemp creates 0600; use the usual mode
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _atomic_write_json(obj: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


def save_transformer(model: WanDiT, path: str | os.PathLike, extra_metadata: Mapping | None = None) -> Path:
    """Save the model as our own single `.safetensors` file, its resolved config in the metadata.

    Args:
        model: the WanDiT (or a wrapper whose state-dict keys carry `_orig_mod.`-style prefixes).
        path: the file to write, atomically.
        extra_metadata: more string metadata (non-strings are stored as JSON), e.g. the training step.
    """
    path = Path(path)
    metadata = {FORMAT_KEY: "selfforcing", CONFIG_KEY: json.dumps(model.config.to_dict())}
    for k, v in (extra_metadata or {}).items():
        if k in metadata:
            raise ValueError(f"extra_metadata may not set the reserved key {k!r}")
        metadata[str(k)] = v if isinstance(v, str) else json.dumps(v)
    _atomic_save(_model_state(model), path, metadata)
    return path


def cast_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype) -> Path:
    """Copy one of our own `.safetensors` checkpoints with its floating-point weights cast to `dtype`, keeping
    every metadata entry (config, pipeline spec, training config): e.g. fp16 copies of trained models to ship.
    A learned codec named by the spec is named again relative to the copy's folder."""
    src, dst = Path(src), Path(dst)
    if detect_layout(src) != "selfforcing":
        raise CheckpointError(f"{src} is not a selfforcing .safetensors checkpoint")
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    _atomic_save(tensors, dst, _reanchor_codec(metadata, src, dst))
    return dst


def _reanchor_codec(metadata: dict, src: Path, dst: Path) -> dict:
    """`metadata` with the spec's learned codec path, found from `src`, made relative to `dst`'s folder (left as
    it is when it names no learned codec, or one that cannot be found)."""
    from ..inference.loading import (FRAME_CODEC_PREFIX, PIPELINE_METADATA_KEY, PipelineSpec, anchor_codec,
                                     resolve_codec_file)

    if PIPELINE_METADATA_KEY not in metadata:
        return metadata
    spec = PipelineSpec.from_dict(json.loads(metadata[PIPELINE_METADATA_KEY]))
    if not spec.codec.startswith(FRAME_CODEC_PREFIX):
        return metadata
    try:
        codec_file = resolve_codec_file(spec.codec[len(FRAME_CODEC_PREFIX):], src)
    except FileNotFoundError:
        return metadata
    spec = anchor_codec(replace(spec, codec=FRAME_CODEC_PREFIX + str(codec_file)), dst)
    return {**metadata, PIPELINE_METADATA_KEY: json.dumps(spec.to_dict())}


def _save_folder(state: dict, config_json: dict, folder: Path, max_shard_size: int | None) -> Path:
    """Write `config.json` + `diffusion_pytorch_model.safetensors`, sharded with an index past max_shard_size bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = [{}]
    size = 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if max_shard_size is not None and shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    if len(shards) == 1:
        _atomic_save(shards[0], folder / WEIGHTS_NAME)
        (folder / INDEX_NAME).unlink(missing_ok=True)  # a stale index would shadow the new file
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors"
            _atomic_save(shard, folder / name)
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _atomic_write_json(index, folder / INDEX_NAME)
        (folder / WEIGHTS_NAME).unlink(missing_ok=True)
    _atomic_write_json(config_json, folder / "config.json")
    return folder


def save_wan(model: WanDiT, folder: str | os.PathLike, *, max_shard_size: int | None = None) -> Path:
    """Save in Wan2.1's original layout (`config.json` + `diffusion_pytorch_model.safetensors`).

    max_shard_size: bytes per shard; when exceeded, shards `diffusion_pytorch_model-0000i-of-0000n.safetensors`
    and an index are written, as Wan2.1-T2V-14B is published.
    """
    return _save_folder(_model_state(model), config_to_wan(model.config), Path(folder), max_shard_size)


def save_diffusers(model: WanDiT, folder: str | os.PathLike, *, max_shard_size: int | None = None) -> Path:
    """Save as a diffusers `WanTransformer3DModel` folder (loadable with `WanTransformer3DModel.from_pretrained`)."""
    try:
        version = importlib_metadata.version("diffusers")
    except importlib_metadata.PackageNotFoundError:
        version = "0.33.1"
    state = wan_to_diffusers_state_dict(_model_state(model))
    return _save_folder(state, config_to_diffusers(model.config, version), Path(folder), max_shard_size)
