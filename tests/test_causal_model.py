"""Invariants of the causal DiT: cached chunk-by-chunk inference equals the parallel block-causal forward,
the rolling cache equals the windowed mask, and the future never changes the past."""

import pytest
import torch

from selfforcing.models.kv_cache import CrossAttnCache, KVCache
from selfforcing.nn.attention import attention
from selfforcing.nn.masks import (BlockSparseMask, block_causal_frame_mask, block_spans, expand_to_tokens,
                                  frame_blocks, teacher_forcing_frame_mask)

H, W = 4, 6  # latent frame: 2 x 3 tokens with the (1, 2, 2) patch


def inputs(cfg, batch=2, frames=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, cfg.in_dim, H, W, generator=g)
    t = torch.rand(batch, frames, generator=g) * 1000
    ctx = torch.randn(batch, 5, cfg.text_dim, generator=g)
    return x, t, ctx


def cached_forward(model, x, t, ctx, sizes, rerun=True):
    cfg = model.config
    cache = KVCache.empty(cfg, x.shape[0], cfg.tokens_per_frame(H, W), x.shape[1])
    cross = CrossAttnCache.empty(cfg.num_layers)
    outs, start = [], 0
    for k in sizes:
        sl = slice(start, start + k)
        if rerun:  # a denoising step with other inputs, then the real one: the re-run overwrites its slots
            model(torch.randn_like(x[:, sl]), t[:, sl], ctx, kv_cache=cache, cross_cache=cross, start_frame=start)
        outs.append(model(x[:, sl], t[:, sl], ctx, kv_cache=cache, cross_cache=cross, start_frame=start))
        start += k
    return torch.cat(outs, 1), cache


@pytest.mark.parametrize(
    "overrides, frames",
    [
        (dict(num_frame_per_block=3), 12),                                 # chunk-wise
        (dict(num_frame_per_block=1), 7),                                  # frame-wise
        (dict(num_frame_per_block=3, independent_first_frame=True), 10),
        (dict(num_frame_per_block=3, refine=8), 9),                        # with the per-frame refiner
        (dict(num_frame_per_block=3, pos_embed=8), 9),                     # with absolute grid positions
        (dict(num_frame_per_block=3, rope_mixed=True), 9),                 # mixed RoPE (random frequencies)
        (dict(num_frame_per_block=2, rope_mixed=True, local_attn_size=4, sink_size=2), 16),   # ... rolling
    ],
)
def test_cache_equals_parallel_block_causal(make_model, overrides, frames):
    model = make_model(**overrides)
    cfg = model.config
    x, t, ctx = inputs(cfg, frames=frames)
    blocks = frame_blocks(frames, cfg.num_frame_per_block, cfg.independent_first_frame)
    sizes = torch.bincount(blocks).tolist()
    with torch.no_grad():
        parallel = model(x, t, ctx)
        cached, _ = cached_forward(model, x, t, ctx, sizes)
    assert (parallel - cached).abs().max() <= 1e-4


@pytest.mark.parametrize("k, window, sink", [(1, 4, 1), (2, 6, 2), (3, 9, 3), (3, 7, 0), (1, 3, 0)])
def test_rolling_cache_equals_windowed_mask(make_model, k, window, sink):
    frames = 8 * window // k * k  # several evictions
    model = make_model(num_frame_per_block=k, local_attn_size=window, sink_size=sink)
    x, t, ctx = inputs(model.config, batch=1, frames=frames)
    with torch.no_grad():
        parallel = model(x, t, ctx)
        cached, cache = cached_forward(model, x, t, ctx, [k] * (frames // k))
    assert cache.capacity == window * model.config.tokens_per_frame(H, W)
    assert cache.global_end > 3 * cache.capacity
    assert (parallel - cached).abs().max() <= 1e-4


def test_windowed_mask_differs_from_global(make_model):
    """The window really removes context: otherwise the test above would prove nothing."""
    x, t, ctx = inputs(make_model().config, batch=1, frames=12)
    with torch.no_grad():
        windowed = make_model(num_frame_per_block=1, local_attn_size=3)(x, t, ctx)
        full = make_model(num_frame_per_block=1)(x, t, ctx)
    assert torch.allclose(windowed[:, :3], full[:, :3], atol=1e-5)
    assert (windowed[:, 3:] - full[:, 3:]).abs().max() > 1e-3


@pytest.mark.parametrize("overrides", [dict(num_frame_per_block=3), dict(num_frame_per_block=1),
                                       dict(num_frame_per_block=2, local_attn_size=4, sink_size=1),
                                       dict(num_frame_per_block=1, refine=8),
                                       dict(num_frame_per_block=1, pos_embed=8),
                                       dict(num_frame_per_block=1, rope_mixed=True)])
def test_future_never_changes_past(make_model, overrides):
    model = make_model(**overrides)
    cfg = model.config
    x, t, ctx = inputs(cfg, frames=9)
    blocks = frame_blocks(9, cfg.num_frame_per_block)
    with torch.no_grad():
        ref = model(x, t, ctx)
        for k in range(9):
            x2, t2 = x.clone(), t.clone()
            x2[:, k] += 1.0
            t2[:, k] = 1000 - t2[:, k]
            out = model(x2, t2, ctx)
            before = blocks < blocks[k]
            assert torch.equal(out[:, before], ref[:, before]), k
            assert (out[:, k] - ref[:, k]).abs().max() > 1e-4  # and the frame itself does change


def test_bidirectional_sees_the_future(make_model):
    model = make_model("tiny")
    x, t, ctx = inputs(model.config, frames=4)
    with torch.no_grad():
        ref = model(x, t, ctx)
        x[:, 3] += 1
        assert (model(x, t, ctx)[:, 0] - ref[:, 0]).abs().max() > 1e-4


def test_teacher_forcing_matches_cached_clean_context(make_model):
    """Noisy block i under teacher forcing sees exactly the clean context blocks < i, as in inference."""
    model = make_model(num_frame_per_block=2)
    x, t, ctx = inputs(model.config, frames=6)
    clean = torch.randn_like(x)
    t_clean = torch.zeros(2, 6)
    with torch.no_grad():
        tf = model(x, t, ctx, clean_x=clean, clean_t=t_clean)
        cfg = model.config
        cache = KVCache.empty(cfg, 2, cfg.tokens_per_frame(H, W), 6)
        outs = []
        for s in range(0, 6, 2):
            sl = slice(s, s + 2)
            outs.append(model(x[:, sl], t[:, sl], ctx, kv_cache=cache, start_frame=s))
            model(clean[:, sl], t_clean[:, sl], ctx, kv_cache=cache, start_frame=s)  # refill with clean frames
    assert (tf - torch.cat(outs, 1)).abs().max() <= 1e-4


def test_masks():
    m = block_causal_frame_mask(6, 2)
    assert m[0, 1] and not m[1, 2] and m[5, 0]
    w = block_causal_frame_mask(8, 2, local_attn_size=4, sink_size=1)
    # block of frames 6,7 ends at 8: sees sink frame 0 and frames 5..7
    assert w[6].tolist() == [True, False, False, False, False, True, True, True]
    iff = frame_blocks(7, 3, independent_first_frame=True)
    assert iff.tolist() == [0, 1, 1, 1, 2, 2, 2]
    tf = teacher_forcing_frame_mask(4, 2)
    assert tf.shape == (8, 8)
    assert not tf[:4, 4:].any()                      # clean never sees noisy
    assert tf[6, 0] and tf[6, 1] and not tf[6, 2]    # noisy block 1 sees clean block 0 only
    assert tf[6, 7] and not tf[6, 5]                 # and its own noisy block


FRAME_MASKS = [
    block_causal_frame_mask(7, 3),
    block_causal_frame_mask(6, 1),
    block_causal_frame_mask(7, 3, independent_first_frame=True),
    block_causal_frame_mask(12, 3, local_attn_size=6, sink_size=3),          # sink + window: two key ranges
    teacher_forcing_frame_mask(6, 2),                                        # noisy blocks: two key ranges
    teacher_forcing_frame_mask(9, 3, local_attn_size=6, sink_size=3),
]


@pytest.mark.parametrize("frame_mask", FRAME_MASKS)
def test_block_spans_cover_exactly_the_mask(frame_mask):
    dense = expand_to_tokens(frame_mask, 3)
    rebuilt = torch.zeros_like(dense)
    spans = block_spans(frame_mask, 3)
    for q0, q1, keys in spans:
        for k0, k1 in keys:
            rebuilt[q0:q1, k0:k1] = True
    assert torch.equal(rebuilt, dense)
    assert [q0 for q0, _, _ in spans] == [0, *[q1 for _, q1, _ in spans[:-1]]] and spans[-1][1] == dense.shape[0]


@pytest.mark.parametrize("frame_mask", FRAME_MASKS)
def test_span_attention_equals_the_masked_attention(frame_mask):
    """Attention computed span by span is the masked attention, forward and backward."""
    g = torch.Generator().manual_seed(0)
    n = frame_mask.shape[0] * 3
    q, k, v = (torch.randn(2, n, 2, 8, generator=g, requires_grad=True) for _ in range(3))
    dense = expand_to_tokens(frame_mask, 3)
    out = {}
    for name, mask in (("dense", dense), ("spans", BlockSparseMask(dense, block_spans(frame_mask, 3)))):
        y = attention(q, k, v, mask)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        out[name] = [y.detach(), *(t.grad.clone() for t in (q, k, v))]
        for t in (q, k, v):
            t.grad = None
    for a, b in zip(out["dense"], out["spans"]):
        assert torch.allclose(a, b, atol=1e-5)


def test_cache_errors(make_model):
    model = make_model(num_frame_per_block=2)
    cfg = model.config
    x, t, ctx = inputs(cfg, frames=4)
    cache = KVCache.empty(cfg, 2, cfg.tokens_per_frame(H, W), 2)
    with torch.no_grad():
        model(x[:, :2], t[:, :2], ctx, kv_cache=cache, start_frame=0)
        with pytest.raises(ValueError, match="full"):
            model(x[:, 2:], t[:, 2:], ctx, kv_cache=cache, start_frame=2)
        with pytest.raises(ValueError, match="in order"):
            model(x[:, 2:], t[:, 2:], ctx, kv_cache=KVCache.empty(cfg, 2, 6, 4), start_frame=2)


def test_gradient_step_with_cache(make_model):
    """A step with gradient attends to the cached context as constants and leaves the buffer untouched;
    its output equals the no-grad step, and a later refill + backward still works."""
    model = make_model(num_frame_per_block=2)
    cfg = model.config
    x, t, ctx = inputs(cfg, frames=4)
    cache = KVCache.empty(cfg, 2, cfg.tokens_per_frame(H, W), 4)
    cross = CrossAttnCache.empty(cfg.num_layers)
    with torch.no_grad():
        model(x[:, :2], t[:, :2], ctx, kv_cache=cache, cross_cache=cross, start_frame=0)
        ref = model(x[:, 2:], t[:, 2:], ctx, kv_cache=cache, cross_cache=cross, start_frame=2)
    before = cache.k.clone()
    x_chunk = x[:, 2:].clone().requires_grad_(True)
    out = model(x_chunk, t[:, 2:], ctx, kv_cache=cache, cross_cache=cross, start_frame=2)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.equal(cache.k, before)
    with torch.no_grad():  # the refill pass overwrites the chunk's slots in place
        model(x[:, 2:], torch.zeros(2, 2), ctx, kv_cache=cache, cross_cache=cross, start_frame=2)
    out.square().mean().backward()
    assert x_chunk.grad.abs().sum() > 0
    assert model.blocks[0].cross_attn.k.weight.grad.abs().sum() > 0  # text keys are not frozen by the cache


def _raw_head_and_velocity(t, causal, **head_fields):
    """A tiny model with a velocity head and the same weights read as another head (`head_fields`): returns
    that model, the inputs x and ctx, the raw head output F and the other model's velocity at timesteps t."""
    from selfforcing.config import get_preset
    from selfforcing.models.wan import WanDiT

    cfg = get_preset("tiny").replace(causal=causal, num_frame_per_block=2)
    torch.manual_seed(0)
    raw_model = WanDiT(cfg)
    model = WanDiT(cfg.replace(**head_fields))
    model.load_state_dict(raw_model.state_dict())
    x = torch.randn(2, 4, cfg.in_dim, 4, 4)
    ctx = torch.randn(2, 5, cfg.text_dim)
    with torch.no_grad():
        return model, x, ctx, raw_model(x, t, ctx), model(x, t, ctx)


@pytest.mark.parametrize("causal", [False, True])
def test_x0_prediction_returns_the_velocity_of_the_heads_clean_estimate(causal):
    """Same weights: the x0 head's velocity is (x_t - head) / σ, so x_t - σ v gives the head's output back."""
    t = torch.tensor([[900.0, 500.0, 20.0, 0.0], [300.0, 300.0, 300.0, 300.0]])
    x0_model, x, ctx, head, v = _raw_head_and_velocity(t, causal, prediction="x0")
    cfg = x0_model.config
    sigma = (t / 1000).clamp(min=cfg.min_sigma)[:, :, None, None, None]
    torch.testing.assert_close(x - sigma * v, head, atol=1e-5, rtol=1e-5)
    if causal:                                   # the cache still equals the parallel forward
        kv = KVCache.empty(x0_model.config, 2, x0_model.config.tokens_per_frame(4, 4), 4)
        cross = CrossAttnCache.empty(cfg.num_layers)
        k = cfg.num_frame_per_block
        with torch.no_grad():
            chunks = [x0_model(x[:, s:s + k], t[:, s:s + k], ctx, kv_cache=kv, cross_cache=cross, start_frame=s)
                      for s in range(0, 4, k)]
        torch.testing.assert_close(torch.cat(chunks, 1), v, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sigma_data, skip_scale", [(1.0, None), (0.5, None), (1.0, 0.2)])
def test_edm_prediction_is_the_preconditioned_clean_estimate_and_stays_finite_at_zero_noise(sigma_data, skip_scale):
    """Same weights: x_t - σ v of the "edm" head is c_skip x_t + c_out F (F: the raw head), c_skip the best linear
    estimate for data of std s and c_out the std of the rest; at σ = 0 the clean input comes back exactly, at
    σ = 1 the estimate is σ_d F alone."""
    t = torch.tensor([[1000.0, 500.0, 20.0, 0.0], [300.0, 300.0, 300.0, 300.0]])
    _, x, _, head, v = _raw_head_and_velocity(t, True, prediction="edm", sigma_data=sigma_data, skip_scale=skip_scale)
    assert torch.isfinite(v).all()
    sigma = (t / 1000)[:, :, None, None, None]
    s = sigma_data if skip_scale is None else skip_scale
    c_skip = s**2 * (1 - sigma) / ((1 - sigma) ** 2 * s**2 + sigma**2)
    c_out = ((1 - c_skip * (1 - sigma)) ** 2 * sigma_data**2 + c_skip**2 * sigma**2).sqrt()   # std of the rest
    torch.testing.assert_close(x - sigma * v, c_skip * x + c_out * head, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((x - sigma * v)[0, 3], x[0, 3])                       # σ = 0: the input
    torch.testing.assert_close((x - sigma * v)[0, 0], sigma_data * head[0, 0], atol=1e-5, rtol=1e-5)
