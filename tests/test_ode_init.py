"""ODE-regression init: stored states sit on the generator's few-step timesteps, the trajectory is the
teacher's Euler solution, and the regression picks one state per block."""

import torch

from selfforcing.algorithms.ode_init import keep_indices, ode_regression_loss, sample_ode_trajectory
from selfforcing.diffusion.flow import FlowMatching
from selfforcing.diffusion.samplers import sample_euler

LATENT = (4, 6)


def test_kept_states_sit_on_the_warped_list():
    flow = FlowMatching(shift=5.0)
    sigmas = flow.sampling_sigmas(48)
    kept = torch.tensor([1000 * float(sigmas[i]) for i in keep_indices(48)])
    assert torch.allclose(kept, flow.warp_timesteps([1000, 750, 500, 250]).to(kept.dtype), atol=1e-3)


def test_trajectory_is_the_teachers_euler_solution(make_model):
    teacher = make_model("tiny")
    flow = FlowMatching(shift=5.0)
    ctx = torch.randn(2, 5, teacher.config.text_dim)
    noise = torch.randn(2, 4, teacher.config.in_dim, *LATENT)
    states, timesteps = sample_ode_trajectory(teacher, ctx, torch.zeros(1, 5, 24), noise, flow=flow,
                                              num_steps=8, guidance=1.0)
    assert states.shape == (2, 5, 4, teacher.config.in_dim, *LATENT)
    assert torch.equal(states[:, 0], noise) and timesteps[0] == 1000 and timesteps[-1] == 0
    with torch.no_grad():
        ref = sample_euler(lambda x, s: teacher(x, torch.full((2,), 1000 * float(s)), ctx), noise,
                           flow.sampling_sigmas(8))
    assert torch.allclose(states[:, -1], ref, atol=1e-5)


def test_regression_draws_one_state_per_block(make_model):
    gen = make_model(num_frame_per_block=2)
    flow = FlowMatching(shift=5.0)
    states = torch.randn(3, 5, 6, gen.config.in_dim, *LATENT)
    timesteps = torch.tensor([1000.0, 937.5, 833.3, 625.0, 0.0])
    seen = []
    gen.register_forward_hook(lambda m, args, out: seen.append(args[1].clone()))
    loss, logs = ode_regression_loss(gen, states, timesteps, torch.randn(3, 5, 24), flow=flow,
                                     rng=torch.Generator().manual_seed(0))
    t = seen[0]                                                            # (B, F)
    assert t.shape == (3, 6) and torch.equal(t[:, 0::2], t[:, 1::2])       # constant within each block
    assert set(t.unique().tolist()) <= set(timesteps[:-1].tolist())
    loss.backward()
    assert torch.isfinite(loss) and gen.head.head.weight.grad.abs().sum() > 0


def test_pairs_stream_from_disk(tmp_path):
    from selfforcing.io.ode_pairs import ODEPairDataset, ODEPairWriter

    states = torch.randn(5, 3, 2, 4, *LATENT)
    timesteps = torch.tensor([1000.0, 500.0, 0.0])
    with ODEPairWriter(tmp_path, shard_size=2) as writer:
        writer.add(states[:3], timesteps, ["a", "b", "c"])
        writer.add(states[3:], timesteps, ["d", "e"])
    data = ODEPairDataset(tmp_path)
    assert len(data) == 5 and len(data.shards) == 3
    s, t, p = data[3]
    assert p == "d" and torch.equal(t, timesteps) and torch.allclose(s, states[3].half().float())
    assert not list(tmp_path.glob("*.tmp"))
