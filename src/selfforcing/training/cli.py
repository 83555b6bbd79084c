"""`selfforcing train PRESET_OR_CONFIG_JSON [--set key=value ...] [--out DIR] [--resume]`.

The main CLI calls `add_parser(subparsers)` and, for the `train` command, `run(args)`. The same command runs in
one process or under torchrun:

    selfforcing train teacher-world --set optim.lr=3e-4 schedule.steps=2000 --out runs/t1
    torchrun --nproc_per_node 2 -m selfforcing.training.cli train teacher-world --out runs/t1
    selfforcing train teacher-world --out runs/t1 --resume          # continue from the latest checkpoint

Bad input raises `ValueError` with one line; `main()` (for `python -m`) prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the output folder")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p


def run(args: argparse.Namespace) -> None:
    """Resolve the config and train. Raises ValueError (one line) on bad input."""
    from .config import resolve_config

    config = resolve_config(args.config, args.overrides, args.out)
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
