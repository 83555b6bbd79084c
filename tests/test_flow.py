"""Flow-matching schedule and samplers: conventions, round trips and analytic integration tests (spec §3, §5)."""

from __future__ import annotations

import pytest
import torch

from selfforcing.diffusion import (
    FlowMatching,
    cfg,
    euler_step,
    sample_dpmpp_2m,
    sample_euler,
    sample_few_step,
    shift_sigma,
)

B, F, C, H, W = 2, 3, 4, 5, 6


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------------------------------------ the grid
def test_shift_sigma_fixes_endpoints_and_is_monotonic():
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    for shift in (1.0, 3.0, 5.0, 8.0):
        sigma = shift_sigma(s, shift)
        assert sigma[0] == 0 and sigma[-1] == 1
        assert torch.all(sigma[1:] > sigma[:-1])
    assert torch.equal(shift_sigma(s, 1.0), s)
    assert shift_sigma(0.25, 5.0) == pytest.approx(0.625)


def test_training_grid_starts_at_1000_and_descends():
    flow = FlowMatching()
    sigmas, timesteps = flow.sigmas, flow.timesteps
    assert sigmas.shape == timesteps.shape == (1000,)
    assert sigmas.dtype == torch.float32
    assert timesteps[0] == 1000 and sigmas[0] == 1
    assert torch.all(timesteps[1:] < timesteps[:-1])
    assert sigmas[-1].item() == pytest.approx(5 * 1e-3 / (1 + 4 * 1e-3))  # σ(s = 1/1000) at shift 5
    assert torch.allclose(timesteps, 1000 * sigmas)


def test_warp_timesteps_matches_published_list():
    flow = FlowMatching(shift=5.0)
    warped = flow.warp_timesteps([1000, 750, 500, 250])
    assert warped.tolist() == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)
    assert flow.warp_timesteps(torch.tensor([0])).tolist() == [0.0]
    with pytest.raises(ValueError):
        flow.warp_timesteps([1001])
    with pytest.raises(ValueError):
        flow.warp_timesteps([999.5])


def test_sampling_sigmas_run_from_one_to_zero():
    sigmas = FlowMatching().sampling_sigmas(7)
    assert sigmas.shape == (8,)
    assert sigmas[0] == 1 and sigmas[-1] == 0
    assert torch.all(sigmas[1:] < sigmas[:-1])


# ---------------------------------------------------------------------------------------------- t -> sigma
def test_sigma_of_default_is_exact_and_t0_is_clean():
    flow = FlowMatching()
    t = torch.tensor([0.0, 20.0, 500.0, 937.5, 1000.0])
    assert torch.equal(flow.sigma_of(t), t / 1000)
    assert flow.sigma_of(0).item() == 0.0
    assert flow.sigma_of(torch.tensor(250)).dtype == torch.float32  # integer timesteps are fine
    assert torch.allclose(flow.sigma_of(flow.timesteps), flow.sigmas, rtol=1e-6, atol=0)


def test_snap_to_grid_reproduces_the_published_t0_quirk():
    flow = FlowMatching(snap_to_grid=True)
    sigma0 = flow.sigma_of(torch.tensor([0.0]))
    assert sigma0.item() == pytest.approx(0.00498, abs=1e-5)  # "clean" t = 0 still carries noise
    assert sigma0.item() == flow.sigmas[-1].item()
    assert torch.equal(flow.sigma_of(flow.timesteps), flow.sigmas)  # on-grid t map to their own entry
    assert flow.sigma_of(torch.tensor(1000.0)).item() == 1.0


def _published_add_noise(x_0, eps, t, shift):
    """The published scheduler's add_noise on (N, C, H, W) samples with per-sample t (N,), for parity."""
    s = torch.linspace(1, 0, 1001)[:-1]
    sigmas = shift * s / (1 + (shift - 1) * s)
    timesteps = sigmas * 1000
    index = torch.argmin((timesteps.unsqueeze(0) - t.unsqueeze(1)).abs(), dim=1)
    sigma = sigmas[index].reshape(-1, 1, 1, 1)
    return ((1 - sigma) * x_0 + sigma * eps).type_as(eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_snap_to_grid_add_noise_is_bit_identical_to_published(dtype):
    flow = FlowMatching(shift=5.0, snap_to_grid=True)
    x_0, eps = _randn(B, F, C, H, W, seed=1, dtype=dtype), _randn(B, F, C, H, W, seed=2, dtype=dtype)
    t = torch.tensor([[0.0, 625.0, 937.5], [20.0, 333.3, 979.9]])  # (B, F), on and off the grid
    ours = flow.add_noise(x_0, eps, t)
    ref = _published_add_noise(x_0.flatten(0, 1), eps.flatten(0, 1), t.flatten(), 5.0).unflatten(0, (B, F))
    assert ours.dtype == dtype
    assert torch.equal(ours, ref)


# ------------------------------------------------------------------------------------------- conversions
@pytest.mark.parametrize("snap", [False, True])
@pytest.mark.parametrize("t_shape", [(), (B,), (B, F)])
def test_add_noise_and_conversions_round_trip(snap, t_shape):
    flow = FlowMatching(snap_to_grid=snap)
    x_0, eps = _randn(B, F, C, H, W, seed=1), _randn(B, F, C, H, W, seed=2)
    t = 10 + 980 * torch.rand(t_shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_t = flow.add_noise(x_0, eps, t)
    v = flow.target_velocity(x_0, eps)
    assert torch.allclose(flow.x0_from_velocity(x_t, v, t), x_0, atol=1e-6)  # float32 σ when snapping
    x0_hat = flow.x0_from_velocity(x_t, v + 0.1, t)  # an imperfect prediction must also round-trip
    assert torch.allclose(flow.velocity_from_x0(x_t, x0_hat, t), v + 0.1, atol=1e-9)


def test_add_noise_uses_each_frames_own_sigma():
    flow = FlowMatching()
    x_0, eps = _randn(B, F, C, H, W, seed=1), _randn(B, F, C, H, W, seed=2)
    t = torch.tensor([[0.0, 500.0, 1000.0], [250.0, 750.0, 125.0]], dtype=torch.float64)  # (B, F)
    x_t = flow.add_noise(x_0, eps, t)
    for b in range(B):
        for f in range(F):
            sigma = t[b, f].item() / 1000
            assert torch.allclose(x_t[b, f], (1 - sigma) * x_0[b, f] + sigma * eps[b, f])
    assert torch.equal(x_t[0, 0], x_0[0, 0])  # t = 0 is clean
    assert torch.equal(x_t[0, 2], eps[0, 2])  # t = 1000 is pure noise
    per_sample = flow.add_noise(x_0, eps, t[:, 1])  # (B,) broadcasts over frames
    assert torch.allclose(per_sample[1], 0.25 * x_0[1] + 0.75 * eps[1])


# ----------------------------------------------------------------------------------------------- training
def test_training_weight_sums_to_1000_and_peaks_mid_trajectory():
    flow = FlowMatching()
    weights = flow.training_weights
    assert weights.sum().item() == pytest.approx(1000.0, rel=1e-5)
    assert weights.min().item() == 0.0
    assert abs(flow.timesteps[weights.argmax()].item() - 500) < 1.0
    t = torch.tensor([[500.0, 999.0], [1000.0, 0.0]])
    assert flow.training_weight(t).shape == (2, 2)
    assert flow.training_weight(t)[0, 0] > flow.training_weight(t)[0, 1]
    assert torch.equal(flow.training_weight(flow.timesteps), weights)


def test_dmd_timesteps_are_shifted_clamped_and_reproducible():
    flow = FlowMatching(shift=5.0)
    t = flow.sample_dmd_timesteps((4096,), torch.Generator().manual_seed(0))
    assert t.min() >= 20 and t.max() <= 980
    assert t.median() > 700  # shift 5 pushes the median of U[0, 1000) to 1000·σ(0.5) ≈ 833
    assert (t == 980).any()
    again = flow.sample_dmd_timesteps((4096,), torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def test_sample_timesteps_draw_from_the_grid():
    flow = FlowMatching()
    t = flow.sample_timesteps((B, 7), torch.Generator().manual_seed(0))
    assert t.shape == (B, 7)
    assert torch.isin(t, flow.timesteps).all()
    assert torch.equal(t, flow.sample_timesteps((B, 7), torch.Generator().manual_seed(0)))


# ----------------------------------------------------------------------------------------------- samplers
def test_cfg_and_euler_step():
    cond, uncond = torch.tensor([3.0]), torch.tensor([1.0])
    assert cfg(cond, uncond, 1.0) == cond and cfg(cond, uncond, 0.0) == uncond
    assert cfg(cond, uncond, 6.0).item() == 13.0
    assert euler_step(torch.tensor([1.0]), torch.tensor([2.0]), 1.0, 0.75).item() == 0.5


@pytest.mark.parametrize("sampler", [sample_euler, sample_dpmpp_2m])
@pytest.mark.parametrize("num_steps", [1, 2, 7, 50])
@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_straight_line_flow_is_integrated_exactly(sampler, num_steps, shift):
    """Between a fixed x_0 and ε the velocity is constant, so any step count must land on x_0."""
    x_0, eps = _randn(B, F, C, H, W, seed=1), _randn(B, F, C, H, W, seed=2)
    calls = []

    def denoise(x_t, sigma):
        calls.append(float(sigma))
        return eps - x_0

    sigmas = FlowMatching(shift=shift).sampling_sigmas(num_steps)
    out = sampler(denoise, eps.clone(), sigmas)
    assert torch.allclose(out, x_0, atol=1e-12)
    assert calls == sigmas[:-1].tolist()


def _gaussian_velocity(mu, s):
    """Exact velocity E[ε - x_0 | x_t] for data x_0 ~ N(mu, s²), elementwise (x_t = α x_0 + σ ε, α = 1 - σ)."""

    def denoise(x_t, sigma):
        sigma = float(sigma)
        alpha = 1 - sigma
        var = alpha**2 * s**2 + sigma**2  # Var[x_t]
        return (sigma - alpha * s**2) / var * (x_t - alpha * mu) - mu

    return denoise


@pytest.mark.parametrize("mu,s", [(2.0, 0.5), (1.0, 2.0)])
def test_samplers_converge_on_gaussian_data(mu, s):
    """The exact flow maps noise z to mu + s·z; Euler converges at first order, DPM-Solver++(2M) faster."""
    denoise, z = _gaussian_velocity(mu, s), _randn(B, F, C, H, W, seed=4)
    target = mu + s * z
    scale = s * z.abs().max().item()  # errors are linear in z

    def error(sampler, num_steps, shift):
        sigmas = FlowMatching(shift=shift).sampling_sigmas(num_steps)
        return (sampler(denoise, z.clone(), sigmas) - target).abs().max().item()

    for shift in (1.0, 5.0):
        assert error(sample_euler, 320, shift) < 0.03 * scale
        assert error(sample_dpmpp_2m, 320, shift) < 0.003 * scale
        assert error(sample_dpmpp_2m, 40, shift) < error(sample_euler, 160, shift)  # 4x fewer steps, better
    euler_ratio = error(sample_euler, 160, 1.0) / error(sample_euler, 320, 1.0)
    dpm_ratio = error(sample_dpmpp_2m, 160, 1.0) / error(sample_dpmpp_2m, 320, 1.0)
    assert 1.8 < euler_ratio < 2.2  # first order
    assert dpm_ratio > 3.0  # (close to) second order


def test_sampler_callback_sees_every_step():
    seen = []
    sigmas = FlowMatching().sampling_sigmas(4)
    x_0 = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    callback = lambda i, x, x0_pred: seen.append(i)  # noqa: E731
    sample_dpmpp_2m(lambda x_t, sigma: x_t - x_0, torch.zeros_like(x_0), sigmas, callback=callback)
    assert seen == [0, 1, 2, 3]


# ----------------------------------------------------------------------------------------- few-step (DMD)
def _few_step(flow, denoise_x0, seed):
    noise = _randn(B, F, C, H, W, seed=9, dtype=torch.float32)
    timesteps = flow.warp_timesteps([1000, 750, 500, 250])
    return sample_few_step(denoise_x0, noise, timesteps, flow, torch.Generator().manual_seed(seed))


def test_few_step_sampler_is_deterministic_for_a_fixed_generator():
    flow = FlowMatching()
    denoise_x0 = lambda x_t, t: 0.5 * x_t + torch.tanh(x_t) * (t / 1000)  # noqa: E731 - any fixed network
    a, b, c = _few_step(flow, denoise_x0, 0), _few_step(flow, denoise_x0, 0), _few_step(flow, denoise_x0, 1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_few_step_sampler_renoises_the_prediction_at_the_next_timestep():
    flow = FlowMatching()
    x_0 = torch.full((B, F, C, H, W), 0.5)
    seen = []

    def oracle(x_t, t):
        seen.append((x_t, t.item()))
        return x_0

    out = _few_step(flow, oracle, 0)
    assert torch.equal(out, x_0)
    assert [t for _, t in seen] == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)
    for x_t, t in seen[1:]:  # x_t = (1 - σ) x_0 + σ ε with fresh ε
        sigma = t / 1000
        eps = (x_t - (1 - sigma) * x_0) / sigma
        assert abs(eps.mean().item()) < 0.3 and 0.7 < eps.std().item() < 1.3
    assert not torch.allclose(seen[1][0], seen[2][0])
