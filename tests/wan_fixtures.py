"""Tiny random Wan2.1 folders in the real on-disk layouts, for tests that cannot download the real weights.

`make_tiny_wan_dir(path, layout)` writes, for layout "original" (as Wan-AI/Wan2.1-T2V-1.3B is published):

    config.json + diffusion_pytorch_model.safetensors   the DiT (Wan names)
    models_t5_umt5-xxl-enc-bf16.pth                     UMT5 encoder state dict, Wan names, bfloat16
    google/umt5-xxl/                                    tokenizer
    Wan2.1_VAE.pth                                      VAE state dict, Wan names

and for layout "diffusers" (as Wan-AI/Wan2.1-T2V-1.3B-Diffusers): model_index.json, transformer/, text_encoder/,
tokenizer/, vae/. For one seed both layouts hold the same weights (the UMT5 weights are rounded to bfloat16
first, so the bf16 original file and the float32 diffusers folder agree exactly).

`make_self_forcing_pt(path)` writes an official-style `self_forcing_dmd.pt`: `generator`, `generator_ema` and
`critic` state dicts whose keys carry the wrapper prefix `model.`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from selfforcing.config import WanConfig
from selfforcing.io.checkpoints import save_diffusers, save_wan
from selfforcing.models.wan import WanDiT
from selfforcing.models.wan_vae import WAN_VAE_CHECKPOINT, diffusers_to_wan_vae_state_dict
from selfforcing.text.umt5 import WAN_T5_CHECKPOINT, WAN_T5_TOKENIZER, hf_to_wan_t5_state_dict

TEXT_DIM = 32        # d_model of the tiny UMT5 = text_dim of the tiny DiT
LATENT_CHANNELS = 16  # z_dim of the tiny VAE = in_dim of the tiny DiT (Wan's value, so the real constants apply)
VAE_RES_BLOCKS = 2    # Wan's value, so diffusers' own converter (hard-coded for it) can cross-check the names

_WORDS = ("a red blue green cat dog bird runs flies jumps on in over the beach city forest sky sun night "
          "under small big slow fast wave car street rain snow").split()
_CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'&;-")


def tiny_dit_config(**changes) -> WanConfig:
    """A tiny Wan DiT that fits the tiny UMT5 and VAE; text_len stays Wan's 512."""
    return WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=LATENT_CHANNELS,
                     out_dim=LATENT_CHANNELS, freq_dim=32, text_dim=TEXT_DIM, text_len=512).replace(**changes)


def _randomize(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)   # Wan's init zeroes the head: hide nothing
    return module


def tiny_dit(seed: int = 0, **changes) -> WanDiT:
    return _randomize(WanDiT(tiny_dit_config(**changes)), seed).eval()


def tiny_tokenizer():
    """A small Unigram (sentencepiece-style) T5 tokenizer: pad 0, </s> 1, <unk> 2, like umt5-xxl's."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + w, -2.0) for w in _WORDS] + [(c, -5.0) for c in _CHARS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_umt5(vocab_size: int, seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=48, num_heads=4, num_layers=2,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
    )
    model = UMT5EncoderModel(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if "shared" in name or "layer_norm" in name or "relative" in name else p.shape[-1] ** -0.5
            init = 1.0 + 0.1 * torch.randn(p.shape, generator=g) if "layer_norm" in name else \
                torch.randn(p.shape, generator=g) * scale
            p.copy_(init.bfloat16().float())    # bf16-exact, as Wan's file is bf16
    return model


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=8, z_dim=LATENT_CHANNELS, num_res_blocks=VAE_RES_BLOCKS).eval()


def make_tiny_wan_dir(path: str | Path, layout: str = "original", seed: int = 0) -> Path:
    """Write a tiny random Wan2.1-T2V folder in `layout` ("original" or "diffusers"); returns the root."""
    if layout not in ("original", "diffusers"):
        raise ValueError(f"layout must be 'original' or 'diffusers', got {layout!r}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    dit = tiny_dit(seed)
    tokenizer = tiny_tokenizer()
    umt5 = tiny_umt5(len(tokenizer), seed + 1)
    vae = tiny_vae(seed + 2)
    if layout == "original":
        save_wan(dit, root)
        t5_state = {k: v.to(torch.bfloat16) for k, v in hf_to_wan_t5_state_dict(umt5.state_dict()).items()}
        torch.save(t5_state, root / WAN_T5_CHECKPOINT)
        tokenizer.save_pretrained(root / WAN_T5_TOKENIZER)
        torch.save(diffusers_to_wan_vae_state_dict(vae.state_dict(), VAE_RES_BLOCKS), root / WAN_VAE_CHECKPOINT)
    else:
        save_diffusers(dit, root / "transformer")
        umt5.save_pretrained(root / "text_encoder")
        tokenizer.save_pretrained(root / "tokenizer")
        vae.save_pretrained(root / "vae")
        index = {"_class_name": "WanPipeline", "text_encoder": ["transformers", "UMT5EncoderModel"],
                 "tokenizer": ["transformers", "T5TokenizerFast"],
                 "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"]}
        (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root


def make_self_forcing_pt(path: str | Path, seed: int = 10) -> Path:
    """An official-style Self-Forcing checkpoint of the tiny DiT: generator, generator_ema (other weights), critic."""
    def wrapped(model: WanDiT) -> dict:
        return {f"model.{k}": v.clone() for k, v in model.state_dict().items()}

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": wrapped(tiny_dit(seed)), "generator_ema": wrapped(tiny_dit(seed + 1)),
                "critic": wrapped(tiny_dit(seed + 2))}, path)
    return path
