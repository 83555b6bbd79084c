"""Typed model configuration and the registry of size presets.

`WanConfig` describes one Wan2.1 diffusion transformer. The same weights serve the bidirectional model
(teacher, critic) and the causal generator: `causal` and the attention-layout fields below only change
which attention mask (or KV cache) the forward pass uses, never the parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

__all__ = ["WanConfig", "PREDICTIONS", "PRESETS", "get_preset", "register_preset", "preset_names"]

PREDICTIONS = ("velocity", "x0", "edm")   # what the DiT's head predicts; see WanConfig.prediction


@dataclass(frozen=True)
class WanConfig:
    """Shape and attention layout of a Wan2.1 DiT (spec §1.1, §1.5).

    Attributes:
        dim: model width D.
        ffn_dim: hidden width of the feed-forward network.
        num_heads: attention heads; head_dim = dim / num_heads.
        num_layers: transformer blocks.
        in_dim / out_dim: latent channels C in and out.
        patch_size: (pt, ph, pw) of the Conv3d patch embedding (stride = kernel).
        freq_dim: width of the sinusoidal time embedding.
        text_dim: width of the text encoder's token embeddings.
        text_len: the context is zero-padded to this many tokens (Wan: 512).
        qk_norm / cross_attn_norm / eps: as in Wan2.1.
        causal: block-causal generator (True) or bidirectional teacher / critic (False).
        num_frame_per_block: K, latent frames per chunk (3 chunk-wise, 1 frame-wise).
        independent_first_frame: frame 0 is a block of its own, K-frame blocks start at frame 1.
        local_attn_size: attention window W in latent frames, sink frames included; -1 = global.
        sink_size: S, the first S frames stay visible forever (attention sink).
        prediction: what the head predicts. "velocity" (Wan2.1, the published models): the output is v.
            "x0": the head predicts the clean latents and the forward returns the velocity they imply,
            v = (x_t - x0) / max(σ, min_sigma) with σ = t / 1000, so every caller still sees a velocity model
            (x_t - σ v gives back the x0 prediction exactly). For narrow models with wide patch tokens (the
            world model: 192 numbers per token, 256 wide) predicting the clean signal is far easier than
            carrying the noise through the network (Li & He 2025, "Back to Basics: Let Denoising Generative
            Models Denoise"). It changes no weight: only the meaning of the head's output.
            "edm": the head's output F is preconditioned as in Karras et al. (2022, "Elucidating the Design
            Space of Diffusion-Based Generative Models"), written for the flow x_t = (1 - σ) x0 + σ ε:
            x0 = c_skip x_t + c_out F, with the skip c_skip = s² (1 - σ) / D, D = (1 - σ)² s² + σ² (the best
            linear estimate of x0 from x_t for data of standard deviation s = `skip_scale`), and c_out the
            standard deviation of what is left, so F's target has unit variance at every σ. With s = σ_d this
            is Karras's choice; a small s keeps the head predicting x0 (c_skip ≈ 0) down to σ ≈ s and lets
            the skip take over below: an "x0" head has to rebuild every detail of a nearly clean input
            through the network, while a large skip at mid noise makes the head cancel noise it cannot carry
            (the velocity head's failure). The implied velocity is computed without dividing by σ,
            v = ((σ - s² (1 - σ)) x_t - √(σ² σ_d² + s⁴ (1 - σ)²) F) / D, exact and finite down to σ = 0.
        min_sigma: the floor of σ in the "x0" division (the velocity of nearly clean inputs stays bounded; below
            it a velocity loss trains the x0 head towards a biased target; "edm" needs no floor).
        sigma_data: σ_d of "edm", the standard deviation of the (normalised) clean latents.
        skip_scale: s of "edm"'s skip; None: σ_d.
        refine: hidden channels of the output refiner (0: none, as in Wan2.1). The refiner is a small per-frame
            convolutional network on the latent grid, after the head: it sees the head's output, the noisy input
            x_t and σ, and adds a correction to the head's output (its last convolution starts at zero, so a
            model gains a refiner without changing its function). Transformer tokens are patches: each decides
            its own pixels, so a shape edge inside a token and the seams between tokens have only the head's
            linear map to draw them, and at low noise the head has to rebuild every detail of x_t through
            the network. The refiner's 3x3 convolutions see across token borders and read x_t directly (U-ViT's
            final convolution, Bao et al. 2023, with x_t and σ as extra inputs). Per frame, so causality and
            the KV cache are untouched. Extra weights named `refiner.*`: a model with one is not Wan-layout.
        pos_embed: side of the largest token grid given a learned absolute position (0: none, as in Wan2.1).
            Each patch token gets a row vector and a column vector added after the patch embedding, the same in
            every frame. RoPE tells attention only how far apart two tokens are; where a token sits in its frame
            it has to infer from which offsets it can see, so content tied to the frame (a checkerboard or
            stripes of fixed phase, walls that objects bounce off) is hard to draw. Both tables start at zero,
            so a model gains them without changing its function; per frame, so causality and the KV cache are
            untouched. Extra weights named `pos_embedding.*`: a model with them is not Wan-layout.
        rope_mixed: learned mixed RoPE frequencies instead of Wan's axial ones (`nn/rope.py`): every pair of
            every head rotates by ω_t f + ω_h i + ω_w j with its own learned (ω_t, ω_h, ω_w), so attention can
            follow a line through space-time (a moving object) instead of a fixed spatial offset in every
            frame. They start at the axial frequencies, so a model gains them without changing its function;
            keys are rotated before they are cached, so the KV cache is untouched. Extra weights named
            `blocks.*.self_attn.rope_freqs`: a model with them is not Wan-layout. The angles are computed in
            float64, but the frequencies are rounded with every other weight when a model is cast or exported
            to bf16 / fp16: up to 2^-8 of ω in bf16, an angle error of up to 0.8 rad by frame 200 for ω = 1.
            Keep such a model in float32 for long rollouts.
        probe: outputs of a training-only probe (0: none, as in Wan2.1): a two-layer MLP reading each token's
            state after block `probe_layer` (`WanDiT.forward(..., probe=True)`), for auxiliary losses on the
            network's representation, such as the world teacher's scene loss (`TeacherConfig.scene_weight`).
            It never touches the velocity; weights named `probe.*`, dropped when a run exports its weights.
        probe_layer: the block (0-based) whose output the probe reads.
        self_cond: self-conditioning (Chen et al. 2023, "Analog Bits"): the network also reads an estimate of
            the clean video (`WanDiT.forward(..., x0_cond=...)`), in sampling the one it made at the previous
            step, so each step refines the last one's layout instead of drawing it again from x_t alone. A
            second patch embedding (`self_cond_embedding.*`, no bias, starting at zero) adds it to the tokens;
            no estimate reads as zeros, so a model gains it with its function unchanged and callers that pass
            none (the distillation losses' score evaluations) get the plain denoiser. Bidirectional models
            only; a model with it is not Wan-layout. Trained by the teacher (`TeacherConfig.self_cond_prob`).
        mask_decoder: masked training (MaskDiT, Zheng et al. 2023; MDT, Gao et al. 2023): when a forward is given
            the tokens to keep (`WanDiT.forward(..., keep=...)`), the blocks before the last `mask_decoder` see
            only those, and the last ones every token, a learned `mask_token` standing in for the masked ones,
            whose clean content they must infer from the others. 0: none (as in Wan2.1). A training-only part,
            like the probe: without `keep` the network is the plain one, and exports drop the token.
    """

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    causal: bool = False
    num_frame_per_block: int = 3
    independent_first_frame: bool = False
    local_attn_size: int = -1
    sink_size: int = 0
    prediction: str = "velocity"
    min_sigma: float = 0.05
    sigma_data: float = 1.0
    skip_scale: float | None = None
    refine: int = 0
    pos_embed: int = 0
    rope_mixed: bool = False
    probe: int = 0
    probe_layer: int = 1
    self_cond: bool = False
    mask_decoder: int = 0

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(map(repr, PREDICTIONS))}, "
                             f"got {self.prediction!r}")
        if self.sigma_data <= 0 or (self.skip_scale is not None and self.skip_scale <= 0):
            raise ValueError(f"sigma_data and skip_scale must be positive, got {self.sigma_data} and "
                             f"{self.skip_scale}")
        if self.refine < 0:
            raise ValueError(f"refine must be non-negative (0: no refiner), got {self.refine}")
        if self.pos_embed < 0:
            raise ValueError(f"pos_embed must be non-negative (0: no absolute positions), got {self.pos_embed}")
        if self.probe < 0 or (self.probe and not 0 <= self.probe_layer < self.num_layers):
            raise ValueError(f"probe must be non-negative and probe_layer a block index below num_layers "
                             f"{self.num_layers}, got {self.probe} and {self.probe_layer}")
        if self.self_cond and self.causal:
            raise ValueError("self_cond is for bidirectional models: a causal model (causal=True) cannot have it")
        if not 0 <= self.mask_decoder < self.num_layers or (self.mask_decoder and self.causal):
            raise ValueError(f"mask_decoder must lie in [0, num_layers) = [0, {self.num_layers}) and is for "
                             f"bidirectional models, got {self.mask_decoder} (causal={self.causal})")
        if not 0 < self.min_sigma <= 1:
            raise ValueError(f"min_sigma must lie in (0, 1], got {self.min_sigma}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim {self.head_dim} must be even and at least 6 for the 3-D RoPE")
        if self.patch_size[0] != 1:
            raise ValueError("temporal patch size must be 1: the causal model works frame by frame")
        if self.num_frame_per_block < 1:
            raise ValueError("num_frame_per_block must be at least 1")
        if self.local_attn_size != -1:
            if self.local_attn_size < 1:
                raise ValueError("local_attn_size must be -1 (global) or a positive number of frames")
            if self.sink_size + self.num_frame_per_block > self.local_attn_size:
                raise ValueError(
                    f"local_attn_size {self.local_attn_size} must hold the sink ({self.sink_size}) "
                    f"plus one block ({self.num_frame_per_block} frames)"
                )
        if self.sink_size < 0:
            raise ValueError("sink_size must be non-negative")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rolling(self) -> bool:
        """True when the KV cache is a rolling window (local attention)."""
        return self.local_attn_size > 0

    def tokens_per_frame(self, height: int, width: int) -> int:
        """Tokens of one latent frame of size (height, width)."""
        _, ph, pw = self.patch_size
        if height % ph or width % pw:
            raise ValueError(f"latent size {height}x{width} is not divisible by the patch {ph}x{pw}")
        return (height // ph) * (width // pw)

    def replace(self, **changes) -> "WanConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WanConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown WanConfig fields: {sorted(unknown)}")
        d = dict(d)
        if "patch_size" in d:
            d["patch_size"] = tuple(d["patch_size"])
        return cls(**d)


PRESETS: dict[str, Callable[[], WanConfig]] = {}


def register_preset(name: str):
    def wrap(fn: Callable[[], WanConfig]):
        PRESETS[name] = fn
        return fn

    return wrap


def get_preset(name: str) -> WanConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(preset_names())}")
    return PRESETS[name]()


def preset_names() -> list[str]:
    return sorted(PRESETS)


@register_preset("wan2.1-t2v-1.3b")
def wan21_t2v_1_3b() -> WanConfig:
    """Wan2.1-T2V-1.3B: the Self-Forcing generator and the DMD fake score (spec §1.1)."""
    return WanConfig()


@register_preset("wan2.1-t2v-14b")
def wan21_t2v_14b() -> WanConfig:
    """Wan2.1-T2V-14B: the real score of the released DMD config (spec §1.1)."""
    return WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)


@register_preset("self-forcing-1.3b")
def self_forcing_1_3b() -> WanConfig:
    """The released chunk-wise causal generator: Wan2.1-1.3B weights, 3-frame blocks."""
    return dataclasses.replace(wan21_t2v_1_3b(), causal=True, num_frame_per_block=3)


@register_preset("tiny")
def tiny() -> WanConfig:
    """A few-thousand-parameter model in the real layout, for unit tests."""
    return WanConfig(
        dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=4, out_dim=4,
        freq_dim=32, text_dim=24, text_len=8,
    )


@register_preset("tiny-causal")
def tiny_causal() -> WanConfig:
    return dataclasses.replace(tiny(), causal=True, num_frame_per_block=2)


@register_preset("world")
def world() -> WanConfig:
    """The synthetic world's bidirectional model (teacher, critic): 64x64 RGB video through the lossless
    space-to-depth-4 codec (48 channels at 16x16, 64 tokens a frame), MiniLM text (384 wide, 64 tokens: detailed
    captions run to ~70). Its head predicts the clean video (`prediction="x0"`): with 192 numbers per token
    and 256 channels, a velocity head learns far more slowly and leaves per-token noise in the samples. The x0
    head is worse than the noisy input itself below σ ≈ 0.09; the preconditioned "edm" head fixes that (x0
    error at σ = 0.1 of 0.010 against 0.018), but a teacher trained with it (skip scale 0.2, 3000 steps)
    sampled worse (evaluator total 20.6 against 34.3 for the x0 head at 4000 steps: docs/world-teacher.md,
    "Heads, depth, positions and token size"), so the x0 head stays."""
    return WanConfig(
        dim=256, ffn_dim=1024, num_heads=4, num_layers=4, in_dim=48, out_dim=48,
        freq_dim=256, text_dim=384, text_len=64, prediction="x0",
    )


@register_preset("world-causal")
def world_causal() -> WanConfig:
    """The synthetic world's chunk-wise causal generator (3 frames a block)."""
    return dataclasses.replace(world(), causal=True, num_frame_per_block=3)


@register_preset("world-causal-framewise")
def world_causal_framewise() -> WanConfig:
    return dataclasses.replace(world(), causal=True, num_frame_per_block=1)
