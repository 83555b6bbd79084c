"""Run by tests/test_distributed_wan.py under torchrun: train each config in turn in one process group, then
write this rank's full weights of every trained network and the last logged values.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py OUT A.json B.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from selfforcing.training import parallel
from selfforcing.training.config import load_config
from selfforcing.training.trainer import Trainer


def main(out: str, configs: list[str]) -> None:
    ctx = None
    for path in configs:
        config = load_config(path)
        trainer = Trainer(config, ctx=ctx)
        ctx = trainer.ctx
        result = trainer.fit()
        weights = {f"{name}.{k}": parallel.full_tensor(v.detach()).cpu()       # a collective under FSDP
                   for name in trainer.entry.trained for k, v in trainer.networks[name].state_dict().items()}
        torch.save(weights, Path(out) / f"{config.name}.rank{ctx.rank}.pt")
        (Path(out) / f"{config.name}.rank{ctx.rank}.json").write_text(json.dumps(result))
    parallel.shutdown(ctx)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
