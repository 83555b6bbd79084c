"""The teacher: flow-matching loss, prompt dropout, and the guided multi-step sampler."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from selfforcing.models.codec import WORLD_LATENT_NORM
from selfforcing.algorithms import Batch, SampleRNG, TeacherConfig, TeacherTraining, teacher_loss
from selfforcing.algorithms.teacher import motion_weights, scene_loss, scene_targets, self_condition, tube_mask
from selfforcing.config import get_preset
from selfforcing.diffusion.flow import FlowMatching
from selfforcing.inference.teacher import decode_to_uint8, sample_teacher
from selfforcing.models.codec import SpaceToDepthCodec, to_uint8
from selfforcing.models.wan import WanDiT

B, F, C, H, W, L, D = 3, 2, 48, 4, 4, 5, 8


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class Oracle(torch.nn.Module):
    """Knows x_0, so it returns the true velocity v = ε - x_0 = (x_t - x_0) / σ."""

    def __init__(self, x_0: torch.Tensor):
        super().__init__()
        self.x_0 = x_0
        self.config = SimpleNamespace(in_dim=x_0.shape[2])

    def forward(self, x_t, t, context):
        sigma = (t / 1000).reshape(-1, 1, 1, 1, 1)
        return (x_t - self.x_0) / sigma


class Offset(Oracle):
    """The true velocity plus a fixed error δ."""

    def __init__(self, x_0: torch.Tensor, delta):
        super().__init__(x_0)
        self.delta = delta

    def forward(self, x_t, t, context):
        return super().forward(x_t, t, context) + self.delta


class Recorder(torch.nn.Module):
    """Returns a constant and remembers its inputs."""

    def __init__(self, value: float = 0.0):
        super().__init__()
        self.value, self.calls = value, []

    def forward(self, x_t, t, context):
        self.calls.append((x_t, t, context))
        return torch.full_like(x_t, self.value)


def test_loss_vanishes_for_the_true_velocity():
    x_0 = _randn(B, F, C, H, W)
    ctx, null = _randn(B, L, D, seed=1), torch.zeros(B, L, D)
    for shift in (1.0, 5.0, 8.0):
        loss, logs = teacher_loss(Oracle(x_0), x_0, ctx, null, SampleRNG([1, 2, 3]), FlowMatching(shift=shift))
        assert loss.item() < 1e-8 and logs["loss"] == loss


def test_loss_is_the_velocity_mse():
    """A zero predictor pays E|ε - x_0|², with ε, t drawn from each sample's own stream."""
    x_0 = _randn(B, F, C, H, W)
    flow = FlowMatching(shift=5.0)
    loss, _ = teacher_loss(Recorder(0.0), x_0, torch.zeros(B, L, D), torch.zeros(B, L, D), SampleRNG([7, 8, 9]), flow)
    rng = SampleRNG([7, 8, 9])
    index = rng.randint(1000)
    eps = rng.randn(F, C, H, W)
    assert torch.allclose(loss, (eps - x_0).pow(2).mean())
    # Wan's weighting multiplies each sample's loss by w(t)
    weighted, _ = teacher_loss(Recorder(0.0), x_0, torch.zeros(B, L, D), torch.zeros(B, L, D),
                               SampleRNG([7, 8, 9]), flow, weighting="wan")
    w = flow.training_weight(flow.timesteps[index])
    assert torch.allclose(weighted, ((eps - x_0).pow(2).mean((1, 2, 3, 4)) * w).mean())


def test_timesteps_come_from_the_shifted_grid_and_noise_is_per_sample():
    x_0 = _randn(2, F, C, H, W)
    rec = Recorder()
    teacher_loss(rec, x_0, torch.zeros(2, L, D), torch.zeros(2, L, D), SampleRNG([5, 6]), FlowMatching(shift=5.0))
    x_t, t, _ = rec.calls[0]
    grid = FlowMatching(shift=5.0).timesteps
    assert t.shape == (2,) and all((grid == v).any() for v in t)
    # sample 1's draws do not depend on its neighbour in the batch
    rec2 = Recorder()
    teacher_loss(rec2, x_0[1:], torch.zeros(1, L, D), torch.zeros(1, L, D), SampleRNG([6]), FlowMatching(shift=5.0))
    assert torch.equal(rec2.calls[0][0][0], x_t[1]) and rec2.calls[0][1][0] == t[1]


def test_frame_noise_gives_each_frame_its_own_level():
    """frame_noise = 1: every frame of a sample is noised at its own grid level, x_t = (1 - σ_f) x_0 + σ_f ε,
    and the velocity oracle still pays nothing; frame_noise = 0 is the one-level loss, draw for draw."""
    n, frames = 64, 4
    x_0 = _randn(n, frames, 3, 2, 2)
    ctx = null = torch.zeros(n, L, D)
    flow = FlowMatching(shift=5.0)
    rec = Recorder()
    teacher_loss(rec, x_0, ctx, null, SampleRNG(range(n)), flow, frame_noise=1.0)
    x_t, t, _ = rec.calls[0]
    assert t.shape == (n, frames) and bool(torch.isin(t, flow.timesteps).all())
    assert (t.amax(1) > t.amin(1)).float().mean() > 0.9                   # levels differ within a sample
    sigma = (t / 1000)[..., None, None, None]
    eps = (x_t - (1 - sigma) * x_0) / sigma
    rng = SampleRNG(range(n))
    rng.randint(1000)
    assert torch.allclose(eps, rng.randn(frames, 3, 2, 2), atol=1e-5)       # the same ε as without frame noise

    class FrameOracle(Oracle):
        def forward(self, x_t, t, context):
            return (x_t - self.x_0) / (t / 1000)[..., None, None, None]

    loss, _ = teacher_loss(FrameOracle(x_0), x_0, ctx, null, SampleRNG(range(n)), flow, frame_noise=1.0)
    assert loss.item() < 1e-8
    # Wan's weighting weighs each frame by its own level's weight
    weighted, _ = teacher_loss(Recorder(0.0), x_0, ctx, null, SampleRNG(range(n)), flow, frame_noise=1.0,
                               weighting="wan")
    per_frame = (eps - x_0).pow(2).mean(dim=(2, 3, 4))
    assert torch.allclose(weighted, (per_frame * flow.training_weight(t)).mean(), rtol=1e-4)
    half = Recorder()
    teacher_loss(half, x_0, ctx, null, SampleRNG(range(n)), flow, frame_noise=0.5)
    mixed = (half.calls[0][1].amax(1) > half.calls[0][1].amin(1)).float().mean().item()
    assert 0.25 < mixed < 0.75
    plain, off = Recorder(), Recorder()
    base, _ = teacher_loss(plain, x_0, ctx, null, SampleRNG(range(n)), flow)
    zero, _ = teacher_loss(off, x_0, ctx, null, SampleRNG(range(n)), flow, frame_noise=0.0)
    assert torch.equal(base, zero) and torch.equal(plain.calls[0][1], off.calls[0][1])
    with pytest.raises(ValueError, match="frame_noise"):
        TeacherConfig(frame_noise=1.5)


def test_multiscale_loss_weighs_smooth_errors_up():
    """A constant velocity error δ costs δ² at full resolution and k² δ² pooled by k, averaged over the terms;
    the true velocity still costs nothing, and a white-noise error costs about the same at every scale."""
    x_0 = _randn(B, F, C, H, W)
    ctx = null = torch.zeros(B, L, D)
    flow = FlowMatching(shift=5.0)

    exact, _ = teacher_loss(Oracle(x_0), x_0, ctx, null, SampleRNG([1, 2, 3]), flow, multiscale=(2,))
    assert exact.item() < 1e-8
    smooth, _ = teacher_loss(Offset(x_0, 0.5), x_0, ctx, null, SampleRNG([1, 2, 3]), flow, multiscale=(2, 4))
    assert torch.allclose(smooth, torch.tensor((1 + 4 + 16) * 0.25 / 3))
    noise = _randn(B, F, C, 16, 16, seed=3)
    x_big = _randn(B, F, C, 16, 16, seed=4)
    white, _ = teacher_loss(Offset(x_big, noise), x_big, ctx, null, SampleRNG([1, 2, 3]), flow, multiscale=(2, 4))
    assert abs(white.item() - noise.pow(2).mean().item()) < 0.05
    plain, _ = teacher_loss(Offset(x_0, 0.5), x_0, ctx, null, SampleRNG([1, 2, 3]), flow)
    assert torch.allclose(plain, torch.tensor(0.25))
    with pytest.raises(ValueError, match="multiscale"):
        TeacherConfig(multiscale=(1,))


def test_motion_weight_moves_the_loss_onto_what_moves():
    """With motion_weight λ an error on a position that changes over the clip costs more than the same error on a
    static one; the weights average 1, so a uniform error costs the plain loss; a static clip or λ = 0 gives
    exactly the plain loss; the true velocity still costs nothing."""
    flow = FlowMatching(shift=5.0)
    ctx = null = torch.zeros(1, L, D)
    x_0 = torch.zeros(1, 4, C, 4, 4)
    x_0[:, :, :, 0, 0] = torch.tensor([0.0, 1.0, 0.0, 1.0])[:, None]      # one position flickers, 15 stay put
    weight = motion_weights(x_0, 3.0)
    assert weight.shape == (1, 1, 1, 4, 4) and torch.allclose(weight.mean(), torch.tensor(1.0))
    assert torch.allclose(weight[0, 0, 0, 0, 0] / weight[0, 0, 0, 1, 1], torch.tensor(1 + 3.0 * 16))

    def loss(delta, strength, x=x_0):
        value, _ = teacher_loss(Offset(x, delta), x, ctx, null, SampleRNG([5]), flow, motion_weight=strength)
        return value.item()

    moving, still = torch.zeros_like(x_0), torch.zeros_like(x_0)
    moving[..., 0, 0], still[..., 1, 1] = 1.0, 1.0
    assert loss(moving, 3.0) > 10 * loss(still, 3.0)
    assert loss(moving, 0.0) == pytest.approx(loss(still, 0.0))
    assert loss(0.5, 3.0) == pytest.approx(0.25, rel=1e-5) and loss(0.0, 3.0) < 1e-8
    static = _randn(1, 1, C, 4, 4).expand(1, 4, C, 4, 4).contiguous()
    assert loss(moving, 3.0, static) == pytest.approx(loss(moving, 0.0, static))
    assert torch.equal(motion_weights(x_0[:, :1], 3.0), torch.ones(1, 1, 1, 4, 4))   # one frame: nothing moves
    # span "frame": one map a frame, marking what changes next to it; a frame whose neighbours agree with it
    # everywhere keeps weight 1
    steps = torch.zeros(1, 4, C, 4, 4)
    steps[:, 2:, :, 0, 0] = 1.0                                             # position (0, 0) changes between 1 and 2
    framewise = motion_weights(steps, 3.0, "frame")
    assert framewise.shape == (1, 4, 1, 4, 4) and torch.allclose(framewise.mean(dim=(3, 4)), torch.ones(1, 4, 1))
    assert framewise[0, 1, 0, 0, 0] > 10 * framewise[0, 1, 0, 1, 1] and framewise[0, 2, 0, 0, 0] > 10
    assert torch.equal(framewise[0, 0], torch.ones(1, 4, 4)) and torch.equal(framewise[0, 3], torch.ones(1, 4, 4))
    framewise_loss, _ = teacher_loss(Offset(steps, moving), steps, ctx, null, SampleRNG([5]), flow,
                                     motion_weight=3.0, motion_span="frame", temporal_weight=1.0)
    assert framewise_loss.item() > loss(moving, 0.0, steps)
    with pytest.raises(ValueError, match="motion_span"):
        TeacherConfig(motion_span="video")
    with pytest.raises(ValueError, match="motion_weight"):
        TeacherConfig(motion_weight=-1.0)


def test_temporal_weight_charges_an_error_that_stays_put_for_the_motion():
    """temporal_weight λ adds λ · ½ ‖e_{f+1} - e_f‖²: an error the same in every frame adds nothing, one that
    alternates between frames costs 2 δ² more per unit λ, white noise about λ times its plain cost; λ = 0 gives
    exactly the plain loss, and the true velocity costs nothing."""
    flow = FlowMatching(shift=5.0)
    ctx = null = torch.zeros(1, L, D)
    x_0 = _randn(1, 4, C, 4, 4)

    def loss(delta, strength, weighting="uniform"):
        value, _ = teacher_loss(Offset(x_0, delta), x_0, ctx, null, SampleRNG([7]), flow,
                                temporal_weight=strength, weighting=weighting)
        return value.item()

    steady = torch.full_like(x_0, 0.5)
    alternating = 0.5 * torch.tensor([1.0, -1.0, 1.0, -1.0]).reshape(1, 4, 1, 1, 1).expand_as(x_0)
    assert loss(steady, 2.0) == pytest.approx(0.25, rel=1e-5)
    assert loss(alternating, 2.0) == pytest.approx(0.25 + 2.0 * 0.5 * 1.0**2, rel=1e-5)
    noise = _randn(1, 4, C, 4, 4, seed=9)
    assert loss(noise, 1.0) == pytest.approx(2 * loss(noise, 0.0), rel=0.1)
    assert loss(0.0, 2.0) < 1e-8 and loss(alternating, 0.0) == pytest.approx(0.25, rel=1e-5)
    assert loss(steady, 2.0, "wan") == pytest.approx(loss(steady, 0.0, "wan"), rel=1e-5)
    with pytest.raises(ValueError, match="temporal_weight"):
        TeacherConfig(temporal_weight=-1.0)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_prompt_dropout_rate(p):
    n = 2000
    x_0 = torch.zeros(n, 1, 1, 1, 1)
    ctx, null = torch.ones(n, 1, 1), torch.zeros(n, 1, 1)
    rec = Recorder()
    _, logs = teacher_loss(rec, x_0, ctx, null, SampleRNG(range(n)), FlowMatching(), prompt_dropout=p)
    dropped = (rec.calls[0][2] == 0).flatten().float()
    assert logs["prompt_dropout"] == dropped.mean()
    assert abs(dropped.mean().item() - p) < 0.03
    if p in (0.0, 1.0):
        assert dropped.mean().item() == p


def test_teacher_training_update_runs_backward():
    model = WanDiT(get_preset("world").replace(dim=32, ffn_dim=64, num_heads=2, num_layers=1, freq_dim=32,
                                               text_dim=D, text_len=L))
    algo = TeacherTraining(TeacherConfig(), model)
    (update,) = algo.updates
    batch = Batch(context=_randn(2, L, D), null_context=torch.zeros(2, L, D), seeds=torch.tensor([1, 2]),
                  x_0=_randn(2, F, C, H, W))
    loss, logs = update.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.head.head.weight.grad.abs().sum() > 0


def test_scene_targets_are_each_tokens_class_fractions():
    labels = torch.zeros(1, 2, 2, 4, 4, dtype=torch.uint8)               # (B, F, G, H, W), 2x2 tokens of 2x2
    labels[0, 0, 0, :2, :2] = torch.tensor([[1, 1], [2, 0]])              # token (0, 0) of frame 0
    labels[0, 1, 1] = 3                                                   # frame 1, group 1: all class 3
    shape, colour = scene_targets(labels, (3, 4), (2, 2))                 # (B, F*h*w, K)
    assert shape.shape == (1, 8, 3) and colour.shape == (1, 8, 4)
    torch.testing.assert_close(shape.sum(-1), torch.ones(1, 8))
    torch.testing.assert_close(shape[0, 0], torch.tensor([0.25, 0.5, 0.25]))
    torch.testing.assert_close(shape[0, 1:], torch.tensor([1.0, 0.0, 0.0]).expand(7, 3))
    torch.testing.assert_close(colour[0, 4:], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(4, 4))
    with pytest.raises(ValueError, match="token grid"):
        scene_targets(labels, (3, 4), (3, 3))


def test_scene_loss_vanishes_only_for_the_true_fractions():
    targets = [torch.softmax(_randn(2, 6, 3), -1), torch.tensor([[0.0, 1.0]]).expand(2, 6, 2)]
    exact = torch.cat([targets[0].log(), torch.tensor([-40.0, 40.0]).expand(2, 6, 2)], dim=-1)
    assert scene_loss(exact, targets).item() < 1e-6
    logits = _randn(2, 6, 5, seed=3).requires_grad_()
    loss = scene_loss(logits, targets)
    loss.backward()
    assert loss.item() > 0.1 and logits.grad.abs().sum() > 0


def _probed_model(layers: int = 2) -> WanDiT:
    torch.manual_seed(0)
    return WanDiT(get_preset("world").replace(dim=32, ffn_dim=64, num_heads=2, num_layers=layers, freq_dim=32,
                                              text_dim=D, text_len=L, probe=5, probe_layer=0))


def test_the_probe_reads_a_block_and_never_touches_the_velocity():
    model = _probed_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))                            # a fresh Wan predicts zero velocity
    x, t, ctx = _randn(2, F, C, H, W), torch.tensor([300.0, 800.0]), _randn(2, L, D, seed=1)
    v_pred, logits = model(x, t, ctx, probe=True)                         # (B, F, C, H, W), (B, N, 5)
    torch.testing.assert_close(v_pred, model(x, t, ctx))
    assert logits.shape == (2, F * (H // 2) * (W // 2), 5)
    (hidden,) = model(x, t, ctx, hidden_layers=(0,))[1]
    torch.testing.assert_close(logits, model.probe(hidden).float())
    with pytest.raises(ValueError, match="probe"):
        WanDiT(get_preset("world").replace(dim=32, ffn_dim=64, num_heads=2, num_layers=1, freq_dim=32,
                                           text_dim=D, text_len=L))(x, t, ctx, probe=True)
    with pytest.raises(ValueError, match="probe_layer"):
        get_preset("world").replace(probe=5, probe_layer=4)


def test_scene_weight_adds_the_probes_loss_to_the_denoising_loss():
    model = _probed_model()
    labels = torch.randint(0, 3, (2, F, 2, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels[:, :, 1] %= 2                                                  # group 1 has two classes
    batch = Batch(context=_randn(2, L, D), null_context=torch.zeros(2, L, D), seeds=torch.tensor([1, 2]),
                  x_0=_randn(2, F, C, H, W), labels=labels)
    plain, plain_logs = TeacherTraining(TeacherConfig(), model).loss(batch)
    algo = TeacherTraining(TeacherConfig(scene_weight=0.5, scene_layer=0), model, scene_classes=(3, 2))
    loss, logs = algo.loss(batch)
    assert logs["loss"] == plain_logs["loss"] == plain
    torch.testing.assert_close(loss, plain + 0.5 * logs["scene_loss"])
    loss.backward()
    assert model.probe[0].weight.grad.abs().sum() > 0 and model.blocks[0].ffn[0].weight.grad.abs().sum() > 0
    assert model.blocks[1].ffn[0].weight.grad is not None
    with pytest.raises(ValueError, match="scene labels"):
        algo.loss(Batch(context=batch.context, null_context=batch.null_context, seeds=batch.seeds, x_0=batch.x_0))
    with pytest.raises(ValueError, match="scene_weight"):
        TeacherConfig(scene_weight=-1.0)


# -------------------------------------------------------------------------------------- self-conditioning
def _self_cond_model(silent: bool = True) -> WanDiT:
    """A small self-conditioned world model, perturbed from Wan's init (which predicts zero velocity); with
    `silent` its self-conditioning embedding keeps its zero start."""
    torch.manual_seed(0)
    model = WanDiT(get_preset("world").replace(dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=32,
                                               text_dim=D, text_len=L, self_cond=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not (silent and name.startswith("self_cond_embedding")):
                p.add_(0.05 * torch.randn_like(p))
    return model


class Spy(torch.nn.Module):
    """Records every call's input, timestep, self-conditioning input and output."""

    def __init__(self, model: WanDiT):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, []

    def forward(self, x, t, context, x0_cond=None):
        v = self.model(x, t, context, x0_cond=x0_cond)
        self.calls.append((x, t, x0_cond, v))
        return v


def test_self_conditioning_starts_silent_and_then_reads_the_estimate():
    model = _self_cond_model()
    plain = WanDiT(model.config.replace(self_cond=False))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("self_cond_embedding")})
    x, t, ctx = _randn(2, F, C, H, W), torch.tensor([300.0, 800.0]), _randn(2, L, D, seed=1)
    estimate = _randn(2, F, C, H, W, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, ctx), plain(x, t, ctx))
        torch.testing.assert_close(model(x, t, ctx, x0_cond=estimate), plain(x, t, ctx))
        model.self_cond_embedding.weight.normal_(std=0.05)
        assert torch.equal(model(x, t, ctx), model(x, t, ctx, x0_cond=torch.zeros_like(estimate)))
        assert not torch.allclose(model(x, t, ctx, x0_cond=estimate), model(x, t, ctx), atol=1e-3)
        with pytest.raises(ValueError, match="self-conditioned model"):
            plain(x, t, ctx, x0_cond=estimate)
        with pytest.raises(ValueError, match="x0_cond must be"):
            model(x, t, ctx, x0_cond=estimate[:, :1])
    with pytest.raises(ValueError, match="bidirectional"):
        model.config.replace(causal=True)


def test_self_condition_gives_the_chosen_samples_the_models_own_estimate():
    model, flow = _self_cond_model(silent=False), FlowMatching(shift=5.0)
    x_t, t, ctx = _randn(3, F, C, H, W), torch.tensor([200.0, 600.0, 950.0]), _randn(3, L, D, seed=1)
    with torch.no_grad():
        expected = flow.x0_from_velocity(x_t, model(x_t, t, ctx), t)     # from x_t alone
    cond = self_condition(model, x_t, t, ctx, torch.tensor([True, False, True]), flow)
    torch.testing.assert_close(cond[[0, 2]], expected[[0, 2]], rtol=1e-4, atol=1e-4)
    assert torch.equal(cond[1], torch.zeros_like(cond[1])) and not cond.requires_grad
    spy = Spy(model)
    assert torch.equal(self_condition(spy, x_t, t, ctx, torch.zeros(3, dtype=torch.bool), flow),
                       torch.zeros_like(x_t)) and not spy.calls


def test_the_teacher_trains_the_self_conditioning_on_its_own_estimates():
    model = _self_cond_model()
    batch = Batch(context=_randn(2, L, D), null_context=torch.zeros(2, L, D), seeds=torch.tensor([1, 2]),
                  x_0=_randn(2, F, C, H, W))
    off, _ = TeacherTraining(TeacherConfig(self_cond_prob=0.0), model).loss(batch)
    on, _ = TeacherTraining(TeacherConfig(self_cond_prob=1.0), model).loss(batch)
    torch.testing.assert_close(on, off)          # the same draws; the silent embedding changes nothing yet ...
    on.backward()
    assert model.self_cond_embedding.weight.grad.abs().sum() > 0         # ... but it learns to read the estimate
    with torch.no_grad():
        model.self_cond_embedding.weight.normal_(std=0.05)
    changed, _ = TeacherTraining(TeacherConfig(self_cond_prob=1.0), model).loss(batch)
    again, _ = TeacherTraining(TeacherConfig(self_cond_prob=0.0), model).loss(batch)
    assert torch.equal(again, off) and not torch.allclose(changed, off)
    with pytest.raises(ValueError, match="self_cond_prob"):
        TeacherConfig(self_cond_prob=1.5)


# ------------------------------------------------------------------------------------------ masked training
def _masked_model(layers: int = 3, decoder: int = 1, **extra) -> WanDiT:
    """A small world model with masked training's mask token, perturbed from Wan's init."""
    torch.manual_seed(0)
    model = WanDiT(get_preset("world").replace(dim=32, ffn_dim=64, num_heads=2, num_layers=layers, freq_dim=32,
                                               text_dim=D, text_len=L, mask_decoder=decoder, **extra))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_masked_tokens_inputs_never_reach_the_prediction_and_without_keep_the_network_is_plain():
    model = _masked_model()
    x, t, ctx = _randn(2, F, C, 8, 8), torch.tensor([300.0, 800.0]), _randn(2, L, D, seed=1)   # 4x4 tokens a frame
    keep = torch.tensor([[0, 2, 5, 7, 8, 13], [1, 3, 4, 10, 11, 15]])[:, None].expand(2, F, 6)
    with torch.no_grad():
        v = model(x, t, ctx, keep=keep)
        hidden = torch.ones(2, 16, dtype=torch.bool).scatter(1, keep[:, 0], False).view(2, 1, 1, 4, 4)
        hidden = hidden.repeat_interleave(2, -2).repeat_interleave(2, -1)        # (2, 1, 1, 8, 8) pixels
        changed = torch.where(hidden, x + 3 * _randn(*x.shape, seed=5), x)
        flow = FlowMatching()                                           # the world's head predicts x0
        torch.testing.assert_close(flow.x0_from_velocity(changed, model(changed, t, ctx, keep=keep), t),
                                   flow.x0_from_velocity(x, v, t), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(model(x + 0.5 * (~hidden), t, ctx, keep=keep), v, atol=1e-3)
        plain = WanDiT(model.config.replace(mask_decoder=0))
        plain.load_state_dict({k: w for k, w in model.state_dict().items() if k != "mask_token"})
        torch.testing.assert_close(model(x, t, ctx), plain(x, t, ctx))
        assert not torch.allclose(model(x, t, ctx), v, atol=1e-3)
        for bad in (keep[:, :, :0], keep[:1], torch.arange(16).expand(2, F, 16)):
            with pytest.raises(ValueError, match="keep must be"):
                model(x, t, ctx, keep=bad)
        with pytest.raises(ValueError, match="mask_decoder"):
            plain(x, t, ctx, keep=keep)
    with pytest.raises(ValueError, match="mask_decoder"):
        model.config.replace(mask_decoder=3)


@pytest.mark.parametrize("rope_mixed", [False, True])
def test_the_first_blocks_see_the_kept_tokens_at_their_own_positions(rope_mixed):
    """Keeping half of the tokens, the right-hand columns in one sample and the top rows in the other, equals
    running the first blocks on that half of each clip alone: each sample's kept tokens at their own positions."""
    model = _masked_model(layers=3, decoder=1, rope_mixed=rope_mixed)   # mixed: per-head frequencies, perturbed
    x, t, ctx = _randn(2, F, C, 8, 8), torch.tensor([300.0, 800.0]), _randn(2, L, D, seed=1)
    halves = [(slice(None), slice(4, 8)), (slice(0, 4), slice(None))]  # pixels; 2x2-pixel tokens, 4x4 a frame
    keep = torch.tensor([[r * 4 + c for r in range(4) for c in (2, 3)],
                         [r * 4 + c for r in (0, 1) for c in range(4)]])[:, None].expand(2, F, 8)
    states = []
    hook = model.blocks[1].register_forward_hook(lambda module, args, out: states.append(out))
    with torch.no_grad():
        model(x, t, ctx, keep=keep)
        for b, (rows, cols) in enumerate(halves):
            model(x[b : b + 1, :, :, rows, cols], t[b : b + 1], ctx[b : b + 1])
    hook.remove()
    masked, alone = states[0], torch.cat(states[1:])
    torch.testing.assert_close(masked, alone, rtol=1e-4, atol=1e-4)


def test_tube_masks_hide_the_same_positions_in_every_frame():
    keep = tube_mask(SampleRNG([1, 2, 3]), 0.5, 4, (4, 4))
    assert keep.shape == (3, 4, 8) and keep.dtype == torch.int64
    assert torch.equal(keep, keep[:, :1].expand_as(keep)) and torch.equal(keep, keep.sort(dim=-1).values)
    assert all(len(set(k.tolist())) == 8 for k in keep[:, 0]) and not torch.equal(keep[0], keep[1])
    assert torch.equal(keep, tube_mask(SampleRNG([1, 2, 3]), 0.5, 4, (4, 4)))
    assert tube_mask(SampleRNG([1]), 0.01, 1, (4, 4)).shape[-1] == 15
    assert tube_mask(SampleRNG([1]), 0.99, 1, (4, 4)).shape[-1] == 1


@pytest.mark.parametrize("mask_weight", [0.0, 1.0, 2.5])
def test_masked_loss_is_the_visible_velocity_error_plus_the_hidden_x0_error(mask_weight):
    model, flow = _masked_model(), FlowMatching(shift=5.0)
    x_0, ctx, null = _randn(2, F, C, 8, 8), _randn(2, L, D, seed=1), torch.zeros(2, L, D)
    loss, _ = teacher_loss(model, x_0, ctx, null, SampleRNG([4, 5]), flow, prompt_dropout=0.5, mask_ratio=0.5,
                           mask_weight=mask_weight)
    rng = SampleRNG([4, 5])                                               # the same draws, in the same order
    t = flow.timesteps[rng.randint(flow.num_train_timesteps)]
    eps = rng.randn(F, C, 8, 8)
    ctx = torch.where((rng.rand() < 0.5)[:, None, None], null, ctx)
    keep = tube_mask(rng, 0.5, F, (4, 4))
    x_t = flow.add_noise(x_0, eps, t)
    v_pred = model(x_t, t, ctx, keep=keep)
    x0_pred = flow.x0_from_velocity(x_t, v_pred, t)
    total = torch.zeros(())
    for b in range(2):
        for k in range(16):
            r, c = divmod(k, 4)
            cell = (b, slice(None), slice(None), slice(2 * r, 2 * r + 2), slice(2 * c, 2 * c + 2))
            if k in keep[b, 0].tolist():
                total = total + (v_pred[cell] - (eps - x_0)[cell]).pow(2).sum()
            else:
                total = total + mask_weight * (x0_pred[cell] - x_0[cell]).pow(2).sum()
    torch.testing.assert_close(loss, total / x_0.numel(), rtol=1e-4, atol=1e-5)
    loss.backward()
    assert model.mask_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mask_ratio"):
        TeacherConfig(mask_ratio=1.0)
    with pytest.raises(ValueError, match="cannot be combined"):
        TeacherConfig(mask_ratio=0.5, scene_weight=0.5)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_the_sampler_feeds_each_step_the_last_steps_estimate(guidance):
    spy = Spy(_self_cond_model(silent=False)).eval()
    _sample(spy, steps=4, guidance=guidance, negative_context=_randn(1, L, D, seed=9))
    assert len(spy.calls) == 4 and spy.calls[0][2] is None
    for (x, t, _, v), (_, _, x0_cond, _) in zip(spy.calls, spy.calls[1:]):
        torch.testing.assert_close(x0_cond, x - (t / 1000).view(-1, 1, 1, 1, 1) * v)


def test_an_ode_trajectory_feeds_each_branch_its_own_estimate():
    from selfforcing.algorithms.ode_init import sample_ode_trajectory

    spy = Spy(_self_cond_model(silent=False)).eval()
    with torch.no_grad():
        sample_ode_trajectory(spy, _randn(2, L, D, seed=1), _randn(1, L, D, seed=9), _randn(2, F, C, H, W),
                              flow=FlowMatching(shift=5.0), num_steps=4, guidance=3.0)
    assert len(spy.calls) == 8 and spy.calls[0][2] is None and spy.calls[1][2] is None
    for (x, t, _, v), (_, _, x0_cond, _) in zip(spy.calls, spy.calls[2:]):   # cond after cond, uncond after uncond
        torch.testing.assert_close(x0_cond, x - (t / 1000).view(-1, 1, 1, 1, 1) * v)


# ------------------------------------------------------------------------------------------------ sampler
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = WanDiT(get_preset("world").replace(dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=32,
                                           text_dim=D, text_len=L)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a fresh Wan predicts zero velocity
    return m


def _sample(model, **kw):
    args = dict(num_frames=F, latent_size=(H, W), steps=4, guidance=1.0, seed=0)
    args.update(kw)
    ctx = args.pop("context", _randn(2, L, D, seed=1))
    return sample_teacher(model, ctx, args.pop("negative_context", None), **args)


def test_sampler_is_deterministic_and_per_sample(model):
    a, b = _sample(model, seed=3), _sample(model, seed=3)
    assert torch.equal(a, b) and a.shape == (2, F, C, H, W)
    assert not torch.equal(a, _sample(model, seed=4))
    ctx = _randn(2, L, D, seed=1)
    alone = _sample(model, context=ctx[1:], seed=[4])          # sample 1 of seed 3 uses seed 4
    torch.testing.assert_close(alone[0], a[1], rtol=1e-5, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(_sample(model, generator=g), _sample(model, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(_sample(model, sampler="dpmpp-2m"), _sample(model, sampler="dpmpp-2m"))


def test_guidance_one_equals_the_unguided_sampler(model):
    neg = _randn(1, L, D, seed=9)
    unguided = _sample(model)
    assert torch.equal(_sample(model, guidance=1.0, negative_context=neg), unguided)
    # the batched guided path with an uninformative negative prompt (= the prompt) gives the same result
    ctx = _randn(2, L, D, seed=1)
    same = _sample(model, context=ctx, guidance=4.0, negative_context=ctx)
    torch.testing.assert_close(same, unguided, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_sample(model, guidance=4.0, negative_context=neg), unguided, atol=1e-3)
    with pytest.raises(ValueError, match="negative_context"):
        _sample(model, guidance=3.0)


def test_guidance_is_linear_in_velocity_space():
    class Linear(torch.nn.Module):
        config = SimpleNamespace(in_dim=C)

        def forward(self, x_t, t, context):
            return torch.zeros_like(x_t) + context.mean((1, 2)).reshape(-1, 1, 1, 1, 1)

    ctx, neg = torch.full((1, L, D), 2.0), torch.full((1, L, D), 0.5)
    # constant velocity v = u + g (c - u) integrated from σ = 1 to 0: x_0 = noise - v
    out = sample_teacher(Linear(), ctx, neg, num_frames=1, latent_size=(H, W), steps=3, guidance=3.0, seed=0)
    unguided = sample_teacher(Linear(), ctx, None, num_frames=1, latent_size=(H, W), steps=3, guidance=1.0, seed=0)
    v_guided, v_cond = 0.5 + 3.0 * (2.0 - 0.5), 2.0
    torch.testing.assert_close(unguided - out, torch.full_like(out, v_guided - v_cond))


def test_euler_integrates_the_exact_field_to_its_target():
    """For v(x, σ) = (x - a) / σ (all mass at a) Euler lands exactly on a, whatever the steps or shift."""
    a = _randn(1, F, C, H, W, seed=5)
    for steps, shift in ((3, 8.0), (10, 1.0)):
        out = sample_teacher(Oracle(a), torch.zeros(1, L, D), num_frames=F, latent_size=(H, W), steps=steps,
                             guidance=1.0, shift=shift, seed=0)
        torch.testing.assert_close(out, a, rtol=1e-5, atol=1e-5)


def test_decode_to_uint8_inverts_the_normalised_codec():
    from selfforcing.world import WorldDataConfig, WorldDataset

    video = WorldDataset(WorldDataConfig(length=2, num_frames=3, size=16))[0][0][None]   # (1, 3, 3, 16, 16)
    z = WORLD_LATENT_NORM.normalize(SpaceToDepthCodec(4).encode(video))
    frames = decode_to_uint8(z)
    assert frames.shape == (1, 3, 16, 16, 3) and frames.dtype == torch.uint8
    assert (frames.int() - to_uint8(video).int()).abs().max() <= 1
