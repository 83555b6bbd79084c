"""Wan2.1's text encoder: the encoder half of UMT5-XXL (spec §2), through `transformers.UMT5EncoderModel`.

Wan encodes a prompt as follows: clean the text (ftfy, HTML-unescape twice, collapse whitespace), tokenize
with the umt5-xxl sentencepiece tokenizer, append `</s>`, pad or truncate to 512 tokens, run the 24-layer
encoder with the padding masked out, and zero every row past the prompt's real length. The result,
`(B, 512, 4096)`, is what the DiT's `text_embedding` projects.

Two on-disk layouts hold the same weights:

| layout      | weights                                              | tokenizer         |
|-------------|------------------------------------------------------|-------------------|
| `original`  | `models_t5_umt5-xxl-enc-bf16.pth` (Wan's own names)  | `google/umt5-xxl/`|
| `diffusers` | `text_encoder/` (a `UMT5EncoderModel` folder)        | `tokenizer/`      |

Wan's names (`wan/modules/t5.py` in Wan-Video/Wan2.1: `T5Encoder` with `shared_pos=False`, so each block
owns its relative position bias, exactly like UMT5) map one to one onto Hugging Face's; see `WAN_T5_BLOCK_KEYS`.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .encoders import TextEncoder

__all__ = [
    "UMT5TextEncoder",
    "clean_prompt",
    "find_umt5",
    "wan_t5_to_hf_key",
    "hf_to_wan_t5_key",
    "wan_t5_to_hf_state_dict",
    "hf_to_wan_t5_state_dict",
    "umt5_config_from_wan_state",
    "WAN_T5_CHECKPOINT",
    "WAN_T5_TOKENIZER",
]

log = logging.getLogger(__name__)

WAN_T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"   # original layout: the encoder's state dict
WAN_T5_TOKENIZER = "google/umt5-xxl"                     # original layout: tokenizer folder, relative to the root
TEXT_LEN = 512                                           # Wan's text_len: prompts are padded / cut to it

# Wan `T5Encoder` names -> HF `UMT5EncoderModel` names. Wan's feed-forward is `fc2(fc1(x) * gelu(gate(x)))`;
# HF's gated-GELU is `wo(gelu(wi_0(x)) * wi_1(x))`, so gate -> wi_0 and fc1 -> wi_1.
WAN_T5_TOP_KEYS = {
    "token_embedding.weight": "shared.weight",
    "norm.weight": "encoder.final_layer_norm.weight",
}
WAN_T5_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_WAN_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")
_HF_TIED = "encoder.embed_tokens.weight"   # the same tensor as shared.weight


# ---------------------------------------------------------------------------------------------------------
# Text cleaning (Wan's `HuggingfaceTokenizer(clean="whitespace")`)


def clean_prompt(text: str) -> str:
    """ftfy-fix, HTML-unescape twice, strip, and collapse runs of whitespace to one space."""
    try:
        import ftfy
    except ImportError as err:
        raise RuntimeError("the UMT5 text encoder needs ftfy (pip install 'selfforcing[wan]')") from err
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------------------------------------
# Key mapping


def wan_t5_to_hf_key(key: str) -> str:
    """A Wan `T5Encoder` parameter name -> its `UMT5EncoderModel` name; raises KeyError if unknown."""
    if key in WAN_T5_TOP_KEYS:
        return WAN_T5_TOP_KEYS[key]
    m = _WAN_BLOCK.match(key)
    if m and m.group(2) in WAN_T5_BLOCK_KEYS:
        return f"encoder.block.{m.group(1)}.{WAN_T5_BLOCK_KEYS[m.group(2)]}"
    raise KeyError(f"not a Wan UMT5 encoder parameter: {key!r}")


def hf_to_wan_t5_key(key: str) -> str:
    """The inverse of `wan_t5_to_hf_key` (`encoder.embed_tokens.weight` is tied to `shared.weight`)."""
    top = {v: k for k, v in WAN_T5_TOP_KEYS.items()} | {_HF_TIED: "token_embedding.weight"}
    if key in top:
        return top[key]
    block = {v: k for k, v in WAN_T5_BLOCK_KEYS.items()}
    m = _HF_BLOCK.match(key)
    if m and m.group(2) in block:
        return f"blocks.{m.group(1)}.{block[m.group(2)]}"
    raise KeyError(f"not a UMT5 encoder parameter: {key!r}")


def wan_t5_to_hf_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {wan_t5_to_hf_key(k): v for k, v in state.items()}
    if "shared.weight" in out:
        out[_HF_TIED] = out["shared.weight"]
    return out


def hf_to_wan_t5_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {hf_to_wan_t5_key(k): v for k, v in state.items() if k != _HF_TIED}


def umt5_config_from_wan_state(shapes: Mapping[str, tuple[int, ...]]):
    """The `UMT5Config` of a Wan T5 encoder state dict, read off the tensor shapes.

    Wan's checkpoint carries no config; XXL gives vocab 256384, d_model 4096, 64 heads of 64, d_ff 10240,
    24 layers, 32 buckets. The bucket distance (128) and eps (1e-6) are Wan's fixed values.
    """
    from transformers import UMT5Config

    try:
        vocab, d_model = shapes["token_embedding.weight"]
        num_buckets, num_heads = shapes["blocks.0.pos_embedding.embedding.weight"]
        d_ff = shapes["blocks.0.ffn.fc1.weight"][0]
        d_attn = shapes["blocks.0.attn.q.weight"][0]
    except KeyError as err:
        raise ValueError(f"not a Wan UMT5 encoder state dict: it has no {err.args[0]}") from err
    num_layers = 1 + max(int(m.group(1)) for k in shapes if (m := _WAN_BLOCK.match(k)))
    return UMT5Config(
        vocab_size=vocab, d_model=d_model, d_kv=d_attn // num_heads, d_ff=d_ff, num_heads=num_heads,
        num_layers=num_layers, num_decoder_layers=num_layers, relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
        dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
    )


# ---------------------------------------------------------------------------------------------------------
# Locating and loading


def find_umt5(path: str | Path) -> tuple[str, Path, Path]:
    """(layout, weights, tokenizer folder) of the UMT5 encoder under a Wan2.1 root folder.

    `path` is a Wan2.1 root in the original layout (`models_t5_umt5-xxl-enc-bf16.pth` + `google/umt5-xxl/`)
    or the diffusers layout (`text_encoder/` + `tokenizer/`).
    """
    root = Path(path)
    if (root / WAN_T5_CHECKPOINT).is_file():
        tokenizer = root / WAN_T5_TOKENIZER
        if not tokenizer.is_dir():
            raise FileNotFoundError(f"{root} has {WAN_T5_CHECKPOINT} but no tokenizer folder {WAN_T5_TOKENIZER}/")
        return "original", root / WAN_T5_CHECKPOINT, tokenizer
    if (root / "text_encoder" / "config.json").is_file():
        if not (root / "tokenizer").is_dir():
            raise FileNotFoundError(f"{root} has text_encoder/ but no tokenizer/")
        return "diffusers", root / "text_encoder", root / "tokenizer"
    raise FileNotFoundError(
        f"no UMT5 text encoder under {root}: expected {WAN_T5_CHECKPOINT} + {WAN_T5_TOKENIZER}/ (Wan2.1) "
        f"or text_encoder/ + tokenizer/ (diffusers)"
    )


def _load_original(path: Path, device: torch.device, dtype: torch.dtype | None):
    from transformers import UMT5EncoderModel

    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    state = torch.load(path, map_location="cpu", mmap=is_zip, weights_only=True)  # 11 GB for XXL: memory-mapped
    state = {k.removeprefix("module."): v for k, v in state.items()}
    config = umt5_config_from_wan_state({k: tuple(v.shape) for k, v in state.items()})
    try:
        hf_state = wan_t5_to_hf_state_dict(state)
    except KeyError as err:
        raise ValueError(f"{path}: {err.args[0]}") from err
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(hf_state))
    wrong = sorted(k for k in set(expected) & set(hf_state) if tuple(hf_state[k].shape) != expected[k])
    if missing or wrong:
        raise ValueError(f"{path} does not fit UMT5EncoderModel: missing {missing[:5]}, mis-shaped {wrong[:5]}")
    dtype = dtype or state["token_embedding.weight"].dtype
    cast = {k: v.to(device=device, dtype=dtype) for k, v in hf_state.items()}
    cast[_HF_TIED] = cast["shared.weight"]                  # keep the tie: one tensor, not two copies
    model.load_state_dict(cast, strict=True, assign=True)
    model.tie_weights()                                     # assign=True left two Parameters on one tensor
    return model


class UMT5TextEncoder(TextEncoder):
    """UMT5 encoder token embeddings as Wan2.1 computes them (spec §2): `(B, 512, 4096)`, padding rows zero.

    Args:
        model: a `transformers.UMT5EncoderModel`.
        tokenizer: its tokenizer (umt5-xxl's sentencepiece vocabulary for the real model).
        max_length: tokens per prompt, `</s>` included (Wan: 512).
        cache_size: prompts whose embeddings are kept.
    The encoder runs wherever `model` lives, independent of the generator: keep it on the CPU to spare
    GPU memory, `encode` always returns CPU float32.
    """

    def __init__(self, model, tokenizer, *, max_length: int = TEXT_LEN, cache_size: int = 4096):
        super().__init__(cache_size)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = model.config.d_model

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        max_length: int = TEXT_LEN,
        cache_size: int = 4096,
    ) -> "UMT5TextEncoder":
        """Load from a Wan2.1 root folder in either layout (see `find_umt5`).

        Args:
            device: where the encoder runs (may differ from the generator's device).
            dtype: weights' dtype; None keeps the checkpoint's (bf16 for Wan's original file).
        """
        from transformers import AutoTokenizer, UMT5EncoderModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        layout, weights, tokenizer_dir = find_umt5(path)
        device = torch.device(device)
        if layout == "original":
            model = _load_original(weights, device, dtype)
        else:
            model = UMT5EncoderModel.from_pretrained(weights, dtype=dtype, local_files_only=True)
            model = model.to(device=device, dtype=dtype)   # `dtype=` is only read by transformers >= 4.56
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        log.info("loaded UMT5 encoder (%s layout, d_model %d) from %s onto %s as %s",
                 layout, model.config.d_model, path, device, next(model.parameters()).dtype)
        return cls(model, tokenizer, max_length=max_length, cache_size=cache_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cleaned, `</s>`-terminated, padded / truncated ids and mask, both (B, max_length)."""
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
            max_length=self.max_length, add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        ids, mask = self.tokenize(prompts)                                  # (B, L), (B, L)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        return hidden.float() * mask[..., None]                            # Wan keeps u[:len], pads with 0
