"""The training-step benchmark: runs on a tiny model and shows random gradient truncation at work."""

import json

from selfforcing.cli import main
from selfforcing.training.step_bench import StepBenchConfig, bench_training_steps, format_step_bench


def test_self_forcing_keeps_about_one_forward_of_activations():
    r = bench_training_steps(StepBenchConfig(preset="tiny-causal", batch_size=1, frames=6, height=4, width=4, reps=1))
    for key in ("tf", "df", "sf_generator", "sf_critic", "sf_iteration"):
        assert r[key]["seconds"] > 0 and r[key]["saved_activation_bytes"] > 0, key
    # gradient flows through one denoising step per chunk: a rollout of 4 steps + refills keeps about what one
    # parallel diffusion-forcing forward keeps, far from the (4 + 1) forwards it runs
    assert r["sf_generator"]["saved_activation_bytes"] < 2 * r["df"]["saved_activation_bytes"]
    # teacher forcing runs the clean context and the noisy clip together: twice the tokens
    assert r["tf"]["saved_activation_bytes"] > r["df"]["saved_activation_bytes"]
    assert "SF iteration" in format_step_bench(r)


def test_cli_training_bench_prints_json(capsys):
    assert main(["bench", "--training", "--preset", "tiny-causal", "--frames", "6", "--height", "4", "--width", "4",
                 "--batch-size", "1", "--quick", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["ratios_vs_tf"]) == {"df", "sf_generator", "sf_critic", "sf_iteration"}
