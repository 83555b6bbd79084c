"""UMT5 text encoder: both Wan2.1 layouts load the same encoder, which computes Wan's own T5 forward."""

import math

import pytest
import torch

pytest.importorskip("ftfy")
pytest.importorskip("transformers")

from selfforcing.text.umt5 import (  # noqa: E402
    WAN_T5_CHECKPOINT,
    UMT5TextEncoder,
    clean_prompt,
    find_umt5,
    hf_to_wan_t5_key,
    umt5_config_from_wan_state,
    wan_t5_to_hf_key,
)
from wan_fixtures import TEXT_DIM, make_tiny_wan_dir  # noqa: E402

PROMPTS = ["A red cat runs on the beach", "dog", "a small bird flies over the city at night"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    return {layout: make_tiny_wan_dir(root / layout, layout) for layout in ("original", "diffusers")}


@pytest.fixture(scope="module")
def encoders(dirs):
    return {layout: UMT5TextEncoder.from_pretrained(d, dtype=torch.float32) for layout, d in dirs.items()}


def test_layouts_are_detected(dirs):
    assert find_umt5(dirs["original"])[0] == "original"
    assert find_umt5(dirs["diffusers"])[0] == "diffusers"
    with pytest.raises(FileNotFoundError):
        find_umt5(dirs["original"] / "google")


def test_both_layouts_give_identical_embeddings(encoders):
    a, b = (encoders[k].encode(PROMPTS) for k in ("original", "diffusers"))
    assert a.shape == (3, 512, TEXT_DIM) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert encoders["original"].dim == TEXT_DIM
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_original_checkpoint_keeps_its_bf16_dtype(dirs):
    enc = UMT5TextEncoder.from_pretrained(dirs["original"])
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    assert enc.model.shared.weight is enc.model.encoder.embed_tokens.weight   # the tie survives loading


def _wan_t5_reference(state, ids, mask, eps=1e-6, max_dist=128):
    """Wan's `T5Encoder.forward` (wan/modules/t5.py), written out on Wan's own parameter names."""
    state = {k: v.float() for k, v in state.items()}
    num_buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))

    def norm(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def gelu(x):  # tanh approximation
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))

    length = ids.shape[1]
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]   # key - query
    half = num_buckets // 2                                                 # bidirectional buckets
    exact = half // 2
    large = exact + (torch.log(rel.abs().clamp(min=1).float() / exact) / math.log(max_dist / exact)
                     * (half - exact)).long()
    bucket = (rel > 0).long() * half + torch.where(rel.abs() < exact, rel.abs(), large.clamp(max=half - 1))

    x = state["token_embedding.weight"][ids]                                # (B, L, D)
    for i in range(layers):
        p = {k[len(f"blocks.{i}."):]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        h = norm(x, p["norm1.weight"])
        q, k, v = (torch.einsum("bld,ed->ble", h, p[f"attn.{n}.weight"]).unflatten(-1, (heads, -1)) for n in "qkv")
        bias = p["pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]       # (1, n, L, L)
        logits = torch.einsum("binc,bjnc->bnij", q, k) + bias                          # T5: no 1/sqrt(d)
        logits = logits.masked_fill(mask[:, None, None, :] == 0, torch.finfo(logits.dtype).min)
        attn = torch.einsum("bnij,bjnc->binc", logits.softmax(-1), v).flatten(2)
        x = x + attn @ p["attn.o.weight"].T
        h = norm(x, p["norm2.weight"])
        x = x + ((h @ p["ffn.fc1.weight"].T) * gelu(h @ p["ffn.gate.0.weight"].T)) @ p["ffn.fc2.weight"].T
    return norm(x, state["norm.weight"]) * mask[..., None]


def test_matches_wans_own_forward(dirs, encoders):
    """Checks the key mapping's meaning (e.g. gate -> wi_0, fc1 -> wi_1), not only that names line up."""
    enc = encoders["original"]
    state = torch.load(dirs["original"] / WAN_T5_CHECKPOINT, weights_only=True)
    ids, mask = enc.tokenize(PROMPTS)
    expected = _wan_t5_reference(state, ids, mask)
    torch.testing.assert_close(enc.encode(PROMPTS), expected, rtol=1e-4, atol=1e-5)


def test_padding_rows_are_zero_and_prompt_rows_are_not(encoders):
    enc = encoders["original"]
    emb = enc.encode(PROMPTS)
    _, mask = enc.tokenize(PROMPTS)
    lengths = mask.sum(1)
    assert (lengths < 512).all()
    for b, n in enumerate(lengths.tolist()):
        assert emb[b, n:].abs().max() == 0
        assert (emb[b, :n].abs().sum(-1) > 0).all()
    ids, _ = enc.tokenize(["dog"])
    assert ids[0, :3].tolist() == [enc.tokenizer.convert_tokens_to_ids("▁dog"), enc.tokenizer.eos_token_id, 0]


def test_long_prompts_are_truncated_to_512_tokens(encoders):
    enc = encoders["original"]
    long_prompt = " ".join(["a red cat"] * 400)
    ids, mask = enc.tokenize([long_prompt])
    assert ids.shape == (1, 512) and mask.all() and ids[0, -1] == enc.tokenizer.eos_token_id
    assert (enc.encode(long_prompt)[0].abs().sum(-1) > 0).all()


def test_cleaning():
    assert clean_prompt("  a  red\n\tcat \u3000 ") == "a red cat"
    assert clean_prompt("cats &amp;amp; dogs") == "cats & dogs"                 # unescaped twice
    assert clean_prompt("caf\u00c3\u00a9") == "caf\u00e9"                       # ftfy repairs mojibake


def test_cleaning_is_applied_before_tokenizing(encoders):
    enc = encoders["original"]
    messy, clean = "  a red\n cat &amp;amp; a  dog ", "a red cat & a dog"
    assert torch.equal(enc.tokenize([messy])[0], enc.tokenize([clean])[0])
    torch.testing.assert_close(enc.encode(messy), enc.encode(clean), rtol=0, atol=0)


def test_encodings_are_cached_per_prompt(dirs, monkeypatch):
    enc = UMT5TextEncoder.from_pretrained(dirs["diffusers"], dtype=torch.float32)
    calls = []
    original = enc._encode
    monkeypatch.setattr(enc, "_encode", lambda prompts: calls.append(list(prompts)) or original(prompts))
    first = enc.encode(["dog", "a red cat", "dog"])
    second = enc.encode(["a red cat", "dog"])
    assert calls == [["dog", "a red cat"]]                                      # each prompt encoded once
    assert torch.equal(first[1], second[0]) and torch.equal(first[0], first[2])


def test_key_mapping_covers_the_real_umt5_xxl():
    """Every UMT5-XXL encoder parameter maps to a Wan name and back, and the shapes give back its config."""
    from transformers import UMT5Config, UMT5EncoderModel

    xxl = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24,
                     relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in UMT5EncoderModel(xxl).state_dict().items()}
    wan = {hf_to_wan_t5_key(k): s for k, s in shapes.items() if k != "encoder.embed_tokens.weight"}
    assert len(wan) == 2 + 24 * 10                      # embedding, final norm; 10 tensors a block
    assert wan["blocks.23.pos_embedding.embedding.weight"] == (32, 64)
    assert wan["blocks.0.ffn.gate.0.weight"] == (10240, 4096)
    assert all(wan_t5_to_hf_key(hf_to_wan_t5_key(k)) == k for k in shapes if k != "encoder.embed_tokens.weight")
    cfg = umt5_config_from_wan_state(wan)
    assert (cfg.vocab_size, cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_heads, cfg.num_layers) == \
        (256384, 4096, 64, 10240, 64, 24)
    with pytest.raises(KeyError):
        wan_t5_to_hf_key("blocks.0.attn.rel_bias.weight")
