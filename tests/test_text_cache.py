"""The per-prompt encoding cache of every text encoder: bounded, least recently used out, never losing a prompt
of the batch being encoded."""

import torch

from selfforcing.text.encoders import TextEncoder


class CountingEncoder(TextEncoder):
    dim, max_length = 2, 1

    def __init__(self, cache_size: int):
        super().__init__(cache_size)
        self.calls: list[str] = []

    def _encode(self, prompts):
        self.calls += prompts
        return torch.tensor([[[float(len(p)), float(sum(map(ord, p)))]] for p in prompts])


def test_a_full_cache_keeps_the_batch_it_encodes():
    enc = CountingEncoder(cache_size=2)
    enc.encode(["a", "bb"])
    out = enc.encode(["a", "ccc", "dddd"])              # "a" is a hit; two misses overflow the cache
    assert out[:, 0, 0].tolist() == [1.0, 3.0, 4.0]
    assert len(enc._cache) == 2


def test_hits_are_recent_and_repeats_are_encoded_once():
    enc = CountingEncoder(cache_size=2)
    enc.encode(["a", "bb"])
    enc.encode(["a"])                                   # touch "a": "bb" is now the oldest
    enc.encode(["ccc", "ccc"])
    assert set(enc._cache) == {"a", "ccc"} and enc.calls == ["a", "bb", "ccc"]
