"""The 3-D RoPE: mixed frequencies started at the axial ones are the axial RoPE, attention logits depend only on
relative positions, and only mixed frequencies couple time with space."""

import torch

from selfforcing.nn.rope import apply_rope, axial_frequencies, mixed_rope_angles, rope_angles, rope_positions

D, HEADS = 32, 3


def _logits(cos, sin, q, k):
    """q of token 0 against the keys of every token: (N, heads)."""
    n = cos.shape[0]
    qr = apply_rope(q.expand(1, n, HEADS, D), cos, sin)[0, 0]            # (heads, d), token 0's rotation
    kr = apply_rope(k.expand(1, n, HEADS, D), cos, sin)[0]               # (N, heads, d)
    return (kr * qr).sum(-1)


def test_axial_frequencies_reproduce_the_axial_rope_exactly():
    frames = torch.arange(5, 9)
    cos, sin = rope_angles(D, frames, 3, 4)
    freqs = axial_frequencies(D)[None].expand(HEADS, -1, -1)
    mcos, msin = mixed_rope_angles(rope_positions(frames, 3, 4), freqs)
    for h in range(HEADS):
        assert torch.equal(mcos[:, h], cos) and torch.equal(msin[:, h], sin)


def test_mixed_rope_logits_depend_only_on_relative_positions():
    g = torch.Generator().manual_seed(0)
    freqs = torch.randn(HEADS, D // 2, 3, generator=g)
    q, k = torch.randn(1, 1, HEADS, D, generator=g), torch.randn(1, 1, HEADS, D, generator=g)
    near = _logits(*mixed_rope_angles(rope_positions(torch.arange(0, 4), 3, 3), freqs), q, k)
    far = _logits(*mixed_rope_angles(rope_positions(torch.arange(500, 504), 3, 3), freqs), q, k)
    assert torch.allclose(near, far, atol=1e-4)       # the same grid 500 frames later: a rolling cache's case
    assert (near[1:] - near[:1]).abs().max() > 1e-2   # and the logits do depend on the offset


def test_only_mixed_frequencies_couple_time_with_space():
    """Axial RoPE's logit is f(Δframe) + g(Δrow, Δcolumn): moving a key one frame on changes it by the same
    amount at every spatial offset, so no head can follow a moving object. A pair rotating by ω (Δcolumn - v
    Δframe) keeps the logit of a key one frame and v columns on (the object moved) equal to that of the key at
    the same place."""
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, HEADS, D, generator=g), torch.randn(1, 1, HEADS, D, generator=g)
    grid = rope_positions(torch.arange(2), 1, 4)                          # token (f, 0, j) is f * 4 + j
    axial = _logits(*rope_angles(D, torch.arange(2), 1, 4), q, k)
    assert torch.allclose(axial[4 + 2] - axial[2], axial[4 + 0] - axial[0], atol=1e-5)
    v = 2
    freqs = torch.zeros(HEADS, D // 2, 3)
    freqs[..., 2] = torch.linspace(0.3, 1.0, D // 2)
    freqs[..., 0] = -v * freqs[..., 2]                                    # ω_t = -v ω_w: lines Δj = v Δf
    mixed = _logits(*mixed_rope_angles(grid, freqs), q, k)
    assert torch.allclose(mixed[4 + v], mixed[0], atol=1e-5)              # one frame on, v columns on: as here
    assert (mixed[4 + 2] - mixed[2] - (mixed[4 + 0] - mixed[0])).abs().max() > 1e-2
