"""Two CPU processes (torchrun, gloo) reproduce the single-process run with the same global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfforcing.training import checkpoint as ckpt
from selfforcing.training.config import resolve_config
from selfforcing.training.trainer import Trainer

STEPS = 3
COMMON = [f"schedule.steps={STEPS}", "schedule.batch_size=4", "checkpoint.every=2", "checkpoint.keep=5"]


def torchrun(out: Path, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "selfforcing.training.cli", "train", "teacher-tiny", "--out", str(out),
           "--set", *COMMON, "threads=1", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    Trainer(resolve_config("teacher-tiny", COMMON, str(out))).fit()
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "model_ema.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-5, msg=lambda m: f"{name} {k}: {m}")


@pytest.mark.parametrize("overrides", [
    ("parallel.strategy=ddp",),
    ("parallel.strategy=ddp", "schedule.grad_accum=2"),
])
def test_ddp_matches_single_process(tmp_path, single, overrides):
    torchrun(tmp_path, *overrides)
    assert_same_weights(single, tmp_path)
    assert ckpt.load_state(ckpt.latest_checkpoint(tmp_path / "checkpoints"))["world_size"] == 2


def test_fsdp_matches_single_process_and_resumes_anywhere(tmp_path, single):
    torchrun(tmp_path / "fsdp", "parallel.strategy=fsdp")
    assert_same_weights(single, tmp_path / "fsdp")
    # the step-2 checkpoint written by two sharded processes resumes in one process
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt.checkpoint_path(tmp_path / "fsdp" / "checkpoints", 2), resumed_dir / "checkpoints")
    trainer = Trainer(resolve_config("teacher-tiny", COMMON, str(resumed_dir)), resume=True)
    assert trainer.step == 2
    trainer.fit()
    assert_same_weights(single, resumed_dir)


def test_fsdp_mixed_precision_computes_in_bf16_and_keeps_fp32_shards(tmp_path, single):
    torchrun(tmp_path, "parallel.strategy=fsdp", "parallel.fsdp_param_dtype=bfloat16")
    wa, wb = load_file(single / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in wb.values())
    diffs = [(wb[k] - wa[k]).abs().max().item() for k in wa]
    assert 0 < max(diffs) < 2e-2                                   # bf16 compute: close to, not equal to, fp32


def test_mixed_precision_needs_fsdp():
    with pytest.raises(ValueError, match="strategy=fsdp"):
        resolve_config("teacher-tiny", ["parallel.fsdp_param_dtype=bfloat16"], None)
