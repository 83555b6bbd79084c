"""`selfforcing eval`: score videos with the oracle evaluator.

The main CLI hands its subparsers to `add_parser` and calls `run` with the parsed arguments.

    selfforcing eval --videos DIR [--json]             # NNNNN.mp4 + prompts.jsonl, e.g. from `world render`
    selfforcing eval --checkpoint gen.safetensors --n 16 --frames 21 [--seed 0] [--json]
    selfforcing eval --checkpoint gen.safetensors --frames 240 --window 16    # a long-rollout drift curve
    selfforcing eval --calibrate [--n 32]              # real renders against corrupted copies
    selfforcing eval --denoising model.safetensors [--n 12]   # x0 error per noise level on unseen world clips
    selfforcing eval --tracking model.safetensors [--n 8]     # does its x0 estimate follow a moving object?
    selfforcing eval --checkpoint model.safetensors --stills   # one frame per prompt, scored as a picture
    selfforcing eval --checkpoint teacher.safetensors --sample-shift 3   # a multi-step model, another recipe

With --checkpoint the generator rolls out the first N held-out prompts (short captions, extended by the
world's prompt extender when the checkpoint asks for it) and each video is scored against the prompt it
was given.  --json prints `Report.to_dict()`: num_videos, weights, mean, standard_error, drift,
frechet_distance, reference, videos.

--stills scores one frame per video as a still picture (colour, shape, size, count, palette, sharpness):
the first frame of each video with --videos; with --checkpoint the model samples a single frame per prompt
(a causal generator its first block, of which the first frame is kept). For image-only training runs and
for comparing the first frames of video models.
"""

import argparse
import json
import logging
from pathlib import Path

from selfforcing.cli import add_sampling_flags, sampling_flags
from selfforcing.eval.report import (
    Report, evaluate_folder, evaluate_stills, evaluate_videos, format_stills, format_table, read_video_folder,
    still_scores,
)
from selfforcing.eval.scores import DRIFT_WINDOW

logger = logging.getLogger(__name__)
DEFAULT_PROMPTS = 16              # held-out prompts generated with --checkpoint when --n is not given
DEFAULT_REFERENCE = 64            # real videos in the Fréchet reference set


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `eval` on the main CLI's subparsers; `func` is set to `run`."""
    p = subparsers.add_parser("eval", help="score videos with the oracle evaluator (semantic, quality, temporal)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", metavar="DIR", help="folder of videos with prompts.jsonl")
    source.add_argument("--checkpoint", metavar="PATH", help="generate the held-out set with this generator")
    source.add_argument("--calibrate", action="store_true",
                        help="score real held-out renders and corrupted copies (noise, frozen, shuffled, wrong "
                             "colour, wrong direction, blur, flicker): how far each kind of damage moves the scores")
    source.add_argument("--denoising", metavar="PATH",
                        help="x0 error of this world model per noise level on real clips it never trained on "
                             "(12 by default), next to the error of the noisy input itself")
    source.add_argument("--tracking", metavar="PATH",
                        help="whether this world model's x0 estimate of a frame reads the other frames where a "
                             "moving object is (1) or in place (0), on 8 clips of one object moving straight "
                             "(--n), noised to σ = 0.9")
    p.add_argument("--json", action="store_true", help="print machine-readable scores")
    p.add_argument("--frames", type=int, default=None,
                   help="frames per generated video (--checkpoint; default: the training length)")
    p.add_argument("--n", type=int, default=None,
                   help=f"held-out prompts to generate (--checkpoint, default {DEFAULT_PROMPTS}) "
                        "or videos to score (--videos, default all)")
    p.add_argument("--seed", type=int, default=0, help="generation seed of the first prompt (+1 per prompt)")
    p.add_argument("--window", type=int, default=DRIFT_WINDOW, help="frames per drift-curve window")
    p.add_argument("--reference", type=int, default=DEFAULT_REFERENCE,
                   help="real videos for the Fréchet distance (0: skip it)")
    p.add_argument("--device", default="cpu", help="torch device for generation")
    p.add_argument("--batch-size", type=int, default=8,
                   help="held-out prompts generated together (--checkpoint, default 8): the same videos up to "
                        "rounding, faster")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="generator precision (--checkpoint; default: float32 on the CPU): its quality cost")
    p.add_argument("--emulate-dtype", choices=["bfloat16", "float16"], default=None, metavar="DTYPE",
                   help="rounds like DTYPE (bfloat16 or float16), computes in fp32 (--checkpoint): for measuring "
                        "its quality cost on CPUs without fast low-precision matmuls")
    p.add_argument("--fp8", action="store_true", help="FP8 linear layers in the blocks (--checkpoint): its quality cost")
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks (--checkpoint)")
    add_sampling_flags(p)
    p.add_argument("--stills", action="store_true",
                   help="score one frame per video as a still picture (--videos: the first frame; --checkpoint: "
                        "a single sampled frame): colour, shape, size, count, palette, sharpness")
    p.set_defaults(func=run)
    return p


def generate_heldout(checkpoint: str, n: int, frames: int | None, seed: int, device: str = "cpu", *,
                     overrides: dict | None = None, text_encoder=None, dtype=None, fp8: bool = False,
                     compile: bool = False, emulate_dtype: str | None = None,
                     stills: bool = False, batch_size: int = 1, sampling: dict | None = None) -> tuple[list, int]:
    """Roll the generator out on the first `n` held-out prompts.

    Prompt i is sampled with seed `seed + i` whatever the batch size: batches of `batch_size` prompts give the same
    videos up to rounding, and on a CPU they generate faster than one at a time (2-core CPU, 8 prompts: 1.4x for a
    4-step chunk-wise generator, 1.9x frame-wise; 4 prompts of a TF baseline, 20 guided steps a block: 1.25x / 1.7x).

    Args:
        stills: sample a single frame per prompt (a causal generator: its first block) instead of `frames`,
            for `evaluate_stills`, which scores the first frame.
        dtype, fp8, compile, emulate_dtype: the speed and precision options of `load_pipeline` (to measure
            their quality cost).
        overrides: WanConfig fields for `load_pipeline`, e.g. a rolling cache for videos past the training length.
        batch_size: prompts generated together.
        sampling: a multi-step model's sampling changes (`load_pipeline(sampling=...)`: shift, steps, guidance).
        text_encoder: an already built text encoder to reuse (None: the one the checkpoint's spec names).
    Returns:
        [(name, uint8 video (F, H, W, 3), prompt given to the generator)], and the frame rate.
    """
    import torch

    from selfforcing.inference.loading import load_pipeline
    from selfforcing.world import extend_prompt, heldout_prompts, to_uint8

    pipe, spec = load_pipeline(checkpoint, device=device, overrides=overrides, text_encoder=text_encoder, dtype=dtype,
                               fp8=fp8, compile=compile, emulate_dtype=emulate_dtype, sampling=sampling)
    factor = pipe.codec.temporal_factor
    frames = frames if frames is not None else pipe.codec.num_pixel_frames(spec.train_frames)
    if stills:                                           # its first block; `evaluate_stills` keeps its first frame
        config = getattr(pipe, "config", None)
        first_block = 1 if config is None or not config.causal or config.independent_first_frame \
            else config.num_frame_per_block
        frames = pipe.codec.num_pixel_frames(first_block)
    if frames % factor:
        raise ValueError(f"--frames must be a multiple of {factor} for this codec, got {frames}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    prompts = [extend_prompt(short) if spec.prompt_extender == "world" else short for short, _ in heldout_prompts(n)]
    items = []
    for first in range(0, n, batch_size):
        batch = prompts[first:first + batch_size]
        chunks = [c.frames for c in pipe.stream(batch, num_frames=frames // factor,
                                                seeds=[seed + first + b for b in range(len(batch))])]
        videos = torch.cat(chunks, dim=1).float()                                      # (B, T, 3, H, W)
        for b, prompt in enumerate(batch):
            items.append((f"heldout-{first + b:03d}", to_uint8(videos[b]), prompt))     # -> uint8 (T, H, W, 3)
        logger.info("generated %d / %d", len(items), n)
    return items, spec.fps


def run(args: argparse.Namespace) -> Report:
    """Score what `args` asks for, print the table (or JSON) and return the report.

    Raises:
        ValueError: bad options, a missing folder or prompts.jsonl, an unreadable video, a missing checkpoint.
    """
    if args.n is not None and args.n <= 0:
        raise ValueError(f"--n must be positive, got {args.n}")
    if args.frames is not None and args.frames <= 1:
        raise ValueError(f"--frames must be at least 2, got {args.frames}")
    if args.window < 2:
        raise ValueError(f"--window must be at least 2, got {args.window}")
    if args.reference < 0 or args.reference == 1:
        raise ValueError(f"--reference must be 0 or at least 2, got {args.reference}")
    if args.seed < 0:
        raise ValueError(f"--seed must be non-negative, got {args.seed}")
    if getattr(args, "batch_size", 1) < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    sampling = sampling_flags(args)
    if sampling and not args.checkpoint:
        raise ValueError("--sample-steps, --sample-shift and --guidance change how --checkpoint samples: "
                         "use them with it")
    if args.calibrate:
        from selfforcing.eval.calibration import calibration_table, format_calibration

        frames = args.frames or 21
        table = calibration_table(args.n or 32, frames=frames, seed=args.seed)
        print(json.dumps(table, indent=2) if args.json else format_calibration(table))
        return table
    probe = next((flag for flag in ("denoising", "tracking") if getattr(args, flag, None)), None)
    if probe:                                            # a world model's denoiser, probed on real world clips
        from selfforcing.eval.denoising import (DEFAULT_CLIPS, TRACKING_CLIPS, checkpoint_motion_tracking,
                                                denoising_errors, format_denoising, format_tracking)

        path = getattr(args, probe)
        if not Path(path).exists():
            raise ValueError(f"checkpoint {path!r} does not exist")
        measure, fmt, n = {"denoising": (denoising_errors, format_denoising, DEFAULT_CLIPS),
                           "tracking": (checkpoint_motion_tracking, format_tracking, TRACKING_CLIPS)}[probe]
        result = measure(path, n=args.n or n, device=getattr(args, "device", "cpu"))
        print(json.dumps(result, indent=2) if args.json else fmt(result))
        return result
    stills = getattr(args, "stills", False)
    if args.videos is not None:
        if stills:
            report = evaluate_stills(read_video_folder(args.videos, args.n))
        else:
            report = evaluate_folder(args.videos, limit=args.n, window=args.window, reference=args.reference)
    else:
        if not Path(args.checkpoint).exists():
            raise ValueError(f"checkpoint {args.checkpoint!r} does not exist")
        import torch

        dtype = getattr(torch, args.dtype) if getattr(args, "dtype", None) else None
        items, fps = generate_heldout(args.checkpoint, args.n or DEFAULT_PROMPTS, args.frames, args.seed,
                                      getattr(args, "device", "cpu"), dtype=dtype, fp8=getattr(args, "fp8", False),
                                      compile=getattr(args, "compile", False),
                                      emulate_dtype=getattr(args, "emulate_dtype", None), stills=stills,
                                      batch_size=getattr(args, "batch_size", 1),
                                      sampling=sampling)
        report = evaluate_stills(items, fps=fps) if stills else \
            evaluate_videos(items, fps=fps, window=args.window, reference=args.reference)
    if stills:
        print(json.dumps(still_scores(report), indent=2) if args.json else format_stills(report))
    else:
        print(json.dumps(report.to_dict(), indent=2) if args.json else format_table(report))
    return report
