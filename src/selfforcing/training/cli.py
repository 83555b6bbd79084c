"""`selfforcing train PRESET_OR_CONFIG_JSON [--set key=value ...] [--out DIR] [--resume]`.

The main CLI calls `add_parser(subparsers)` and, for the `train` command, `run(args)`. The same command runs in
one process or under torchrun:

    selfforcing train teacher-world --set optim.lr=3e-4 schedule.steps=2000 --out runs/t1
    torchrun --nproc_per_node 2 -m selfforcing.training.cli train teacher-world --out runs/t1
    selfforcing train teacher-world --out runs/t1 --resume          # continue from the latest checkpoint
    selfforcing train teacher-world --out runs/t1 --resume --set schedule.steps=6000   # ... and train longer

`--resume` continues the run stored in the output folder: its config is the one in the latest checkpoint, with
only the `--set` overrides of this command applied on top (an override given when the run started is kept).

Bad input raises `ValueError` with one line; `main()` (for `python -m`) prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

__all__ = ["add_parser", "run", "main"]

log = logging.getLogger("selfforcing")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `train` command on an argparse subparsers object."""
    from .config import train_preset_names

    p = subparsers.add_parser(
        "train", help="train a model (teacher, ...) from a preset or a JSON config",
        description="Train from a preset or a JSON config with dotted overrides; runs under torchrun as is.",
    )
    p.add_argument("config", metavar="PRESET_OR_CONFIG_JSON",
                   help=f"a preset ({', '.join(train_preset_names())}) or a JSON file (optionally naming a "
                        f"base \"preset\" and overriding its fields)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="dotted overrides, type-checked, e.g. --set optim.lr=3e-4 schedule.steps=2000")
    p.add_argument("--out", default=None, help="output folder (checkpoints, exported weights, TensorBoard)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the output folder, with its stored config "
                        "(--set overrides apply on top of it)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p


def stored_config(config, overrides: list[str]):
    """The config a resumed run continues with: the one its latest checkpoint stores (in `config.out_dir`),
    with `overrides` applied on top. Raises ValueError when the folder holds no checkpoint."""
    from pathlib import Path

    from . import checkpoint as ckpt
    from .config import TrainConfig
    from .overrides import apply_overrides

    path = ckpt.latest_checkpoint(Path(config.out_dir) / config.checkpoint.dir)
    if path is None:
        raise ValueError(f"--resume: no checkpoint in {Path(config.out_dir) / config.checkpoint.dir}")
    stored = TrainConfig.from_dict(ckpt.load_state(path, mmap=True)["config"])   # the trainer reads the rest
    if stored.name != config.name:
        raise ValueError(f"--resume: {config.out_dir} holds a {stored.name!r} run, not {config.name!r}")
    log.info("resuming the %s run stored in %s", stored.name, path)
    return apply_overrides(dataclasses.replace(stored, out_dir=config.out_dir), overrides)


def run(args: argparse.Namespace) -> None:
    """Resolve the config and train. Raises ValueError (one line) on bad input."""
    from .config import resolve_config

    config = resolve_config(args.config, args.overrides, args.out)
    if args.resume:
        config = stored_config(config, args.overrides)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return
    from .trainer import train

    if config.device != "auto":
        from ..cli import check_device

        check_device(config.device, flag="device")
    train(config, resume=args.resume)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m selfforcing.training.cli train ...`, e.g. under torchrun): the main
    command line, so errors and logging behave the same."""
    from ..cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
