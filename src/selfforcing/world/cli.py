"""`selfforcing world render`: write synthetic clips and their prompts to a directory.

The main CLI owns the `world` command and hands its subparsers to `add_parser`; this module only adds
`render` and the function that runs it.

    selfforcing world render --n 100 -o clips/ --frames 33 --seed 0 --size 64
    selfforcing world render --split heldout -o eval/              # the fixed held-out evaluation set
    selfforcing world render --prompts prompts.txt -o clips/       # one short prompt per line
"""

import argparse
import logging
from pathlib import Path

import numpy as np

from selfforcing.world import vocab
from selfforcing.world.io import write_clips
from selfforcing.world.prompts import scene_from_prompt
from selfforcing.world.scene import Scene
from selfforcing.world.splits import HELDOUT_SIZE, heldout_scenes, train_scenes

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `render` on the `world` command's subparsers; `func` is set to `run`."""
    p = subparsers.add_parser("render", help="render synthetic-world clips and prompts.jsonl to a directory",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=None,
                   help="number of clips (default: one per prompt with --prompts, all 64 with --split heldout)")
    p.add_argument("-o", "--out", required=True, help="output directory (created if missing)")
    p.add_argument("--frames", type=int, default=vocab.CLIP_FRAMES, help="frames per clip")
    p.add_argument("--seed", type=int, default=0, help="scene stream (train) or placement (prompts) seed")
    p.add_argument("--size", type=int, default=vocab.FRAME_SIZE, help="height = width in pixels")
    p.add_argument("--fps", type=int, default=vocab.FPS, help="frames per second")
    p.add_argument("--split", choices=("train", "heldout"), default="train", help="which scenes to sample")
    p.add_argument("--prompts", default=None,
                   help="text file, one short prompt per line: render the scenes they describe")
    p.set_defaults(func=run)
    return p


def read_prompt_file(path: str | Path) -> list[str]:
    """Non-blank lines of a prompt file, `#` lines skipped; ValueError if unreadable or empty."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read prompt file {str(path)!r}: {e.strerror or e}") from e
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {str(path)!r} has no prompts")
    return prompts


def scenes_for(args: argparse.Namespace) -> tuple[list[Scene], list[str] | None]:
    """The scenes `run` renders and, with --prompts, the prompts to store as their short captions."""
    if args.n is not None and args.n <= 0:
        raise ValueError(f"--n must be positive, got {args.n}")
    if args.prompts is not None:
        prompts = read_prompt_file(args.prompts)
        n = len(prompts) if args.n is None else args.n
        chosen = [prompts[i % len(prompts)] for i in range(n)]       # --n larger than the file cycles it
        rng = np.random.default_rng(args.seed)
        scenes = []
        for line_no, text in enumerate(chosen, start=1):
            try:
                scenes.append(scene_from_prompt(text, rng))
            except ValueError as e:
                raise ValueError(f"prompt {line_no} of {args.prompts!r}: {e}") from e
        return scenes, chosen
    if args.split == "heldout":
        return list(heldout_scenes(HELDOUT_SIZE if args.n is None else args.n)), None
    if args.n is None:
        raise ValueError("give --n (number of clips) or --prompts FILE")
    return train_scenes(args.n, args.seed), None


def run(args: argparse.Namespace) -> list[Path]:
    """Render the clips `args` asks for; returns the written video paths.  Raises ValueError on bad input."""
    if args.frames <= 0:
        raise ValueError(f"--frames must be positive, got {args.frames}")
    if args.size < 8:
        raise ValueError(f"--size must be at least 8, got {args.size}")
    scenes, shorts = scenes_for(args)
    paths = write_clips(scenes, args.out, fps=args.fps, num_frames=args.frames, size=args.size, shorts=shorts)
    logger.info("wrote %d clips and prompts.jsonl to %s", len(paths), args.out)
    return paths
