"""The `selfforcing` command line: generate, info, bench, world.

Bad input gets one line on stderr and exit status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("selfforcing")


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit status 2."""


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt, streaming chunk by chunk")
    p.add_argument("prompt", help="text prompt (short prompts are extended into detailed captions)")
    p.add_argument("-o", "--output", default="out.mp4", help="output video file (default: out.mp4)")
    p.add_argument("--frames", type=int, default=None, help="number of video frames (default: the training length)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--checkpoint", default=None, help="generator checkpoint (default: the packaged model)")
    p.add_argument("--model-dir", default=None,
                   help="a Wan2.1 folder (original or diffusers layout): UMT5 text encoder, Wan VAE and base weights; "
                        "with --checkpoint, e.g. the official self_forcing_dmd.pt")
    p.add_argument("--height", type=int, default=480, help="pixel height with --model-dir (default: 480)")
    p.add_argument("--width", type=int, default=832, help="pixel width with --model-dir (default: 832)")
    p.add_argument("--low-memory", action="store_true", help="keep the text encoder on the CPU (with --model-dir)")
    p.add_argument("--taehv", default=None, metavar="PATH",
                   help="decode with the tiny TAEHV decoder (taew2_1.pth) instead of the Wan VAE: faster, slightly "
                        "less faithful (with --model-dir)")
    p.add_argument("--no-extend", action="store_true", help="use the prompt as given, without the prompt extender")
    p.add_argument("--local-attn-size", type=int, default=None,
                   help="rolling-cache window in latent frames (default past the training length: the training "
                        "window, with one block of sink frames)")
    p.add_argument("--sink-size", type=int, default=None, help="sink frames kept by the rolling cache")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="generator precision (default: as stored)")
    _add_speed_flags(p)
    add_sampling_flags(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def add_sampling_flags(p) -> None:
    """--sample-steps, --sample-shift, --guidance, --sampler: a multi-step model's sampling recipe (default: as
    stored)."""
    from .diffusion.samplers import MULTISTEP_SAMPLERS

    p.add_argument("--sample-steps", type=int, default=None, metavar="N",
                   help="sampling steps of a multi-step model: a teacher, the TF / DF baselines (default: as stored)")
    p.add_argument("--sample-shift", type=float, default=None, metavar="S",
                   help="shift of a multi-step model's sampling grid (default: as stored)")
    p.add_argument("--guidance", type=float, default=None, metavar="G",
                   help="classifier-free guidance scale of a multi-step model (default: as stored)")
    p.add_argument("--sampler", choices=sorted(MULTISTEP_SAMPLERS), default=None,
                   help="solver of a multi-step model (default: as stored)")


def sampling_flags(args) -> dict:
    """The `load_pipeline(sampling=...)` changes that `add_sampling_flags`' options ask for ({} when `args` has
    none of them)."""
    given = (("shift", "sample_shift"), ("steps", "sample_steps"), ("guidance", "guidance"), ("sampler", "sampler"))
    return {key: getattr(args, name) for key, name in given if getattr(args, name, None) is not None}


def _add_speed_flags(p) -> None:
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer blocks (the first chunks are slow while they compile)")
    p.add_argument("--fp8", action="store_true",
                   help="FP8 linear layers in the transformer blocks: fast with torchao on a CUDA GPU and "
                        "--dtype bfloat16; elsewhere FP8 weights are emulated (saves memory, not faster)")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="describe a checkpoint: layout, config, parameter count")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure streaming speed, KV-cache speed-up, rolling-cache cost and FLOP/s")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--preset", default="world-causal", help="model preset (default: world-causal, random weights)")
    p.add_argument("--height", type=int, default=16, help="latent height (default: 16)")
    p.add_argument("--width", type=int, default=16, help="latent width (default: 16)")
    p.add_argument("--frames", type=int, default=21, help="latent frames of the streamed video (default: 21)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: the dtype with the fastest measured matmul on this machine")
    p.add_argument("--window", type=int, default=9, help="rolling window W in latent frames (default: 9)")
    _add_speed_flags(p)
    p.add_argument("--quick", action="store_true", help="fewer repetitions, for a smoke test")
    p.add_argument("--skip", nargs="*", default=[], choices=["stream", "kv", "rolling", "peak"],
                   help="sections to skip")
    p.add_argument("--training", action="store_true",
                   help="instead: time one Self-Forcing training iteration against teacher / diffusion forcing "
                        "steps at equal batch, with the activation memory each keeps for the backward")
    p.add_argument("--batch-size", type=int, default=4, help="batch of the --training steps (default: 4)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfforcing",
        description="Self-Forcing autoregressive video diffusion: generate, inspect, benchmark, train.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(sub)
    _add_info(sub)
    _add_bench(sub)
    from .eval import cli as eval_cli
    from .experiments import cli as experiment_cli
    from .training import cli as train_cli
    from .world import cli as world_cli

    eval_cli.add_parser(sub)
    experiment_cli.add_parser(sub)
    train_cli.add_parser(sub)
    _add_ode_pairs(sub)
    _add_encode_videos(sub)
    _add_export(sub)
    w = sub.add_parser("world", help="the synthetic world: render videos with their prompts")
    world_cli.add_parser(w.add_subparsers(dest="world_command", required=True, metavar="WORLD_COMMAND"))
    return parser


# --------------------------------------------------------------------------- commands
def cmd_generate(args) -> None:
    import torch
    from tqdm import tqdm

    from .inference.loading import load_pipeline
    from .inference.pipeline import chunk_sizes
    from .io.video import VideoWriter, check_writable

    if not args.prompt.strip():
        raise UsageError("the prompt is empty")
    if args.seed < 0:
        raise UsageError(f"--seed must be non-negative, got {args.seed}")
    if args.frames is not None and args.frames <= 0:
        raise UsageError(f"--frames must be positive, got {args.frames}")
    if args.checkpoint is not None and not Path(args.checkpoint).exists():
        raise UsageError(f"checkpoint {args.checkpoint!r} does not exist")
    if args.model_dir is not None and not Path(args.model_dir).is_dir():
        raise UsageError(f"model directory {args.model_dir!r} does not exist")
    if args.taehv is not None and args.model_dir is None:
        raise UsageError("--taehv decodes Wan latents: use it with --model-dir")
    if args.taehv is not None and not Path(args.taehv).exists():
        raise UsageError(f"TAEHV weights {args.taehv!r} do not exist")
    sampling = sampling_flags(args)
    if args.model_dir is not None and sampling:
        raise UsageError("--sample-steps, --sample-shift and --guidance apply to this project's checkpoints, "
                         "not to --model-dir")
    check_writable(args.output)
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = {k: v for k, v in (("local_attn_size", args.local_attn_size), ("sink_size", args.sink_size)) if v is not None}
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.model_dir is not None:
        from .inference.wan import load_wan_pipeline

        pipe, spec = load_wan_pipeline(
            args.model_dir, args.checkpoint, device=args.device, dtype=dtype, overrides=overrides or None,
            text_device="cpu" if args.low_memory else None, height=args.height, width=args.width,
            compile=args.compile, fp8=args.fp8, taehv=args.taehv,
        )
    else:
        pipe, spec = load_pipeline(args.checkpoint, device=args.device, dtype=dtype, overrides=overrides or None,
                                   compile=args.compile, fp8=args.fp8, sampling=sampling)
    cfg = pipe.config
    num_pixel = args.frames if args.frames is not None else pipe.codec.num_pixel_frames(spec.train_frames)
    try:
        num_latent = pipe.codec.num_latent_frames(num_pixel)
    except ValueError as err:
        raise UsageError(f"--frames {num_pixel}: {err}") from None
    try:
        sizes = chunk_sizes(num_latent, cfg.num_frame_per_block, cfg.independent_first_frame) if cfg.causal else [1]
    except ValueError as err:
        raise UsageError(f"--frames {num_pixel}: {err}") from None
    if cfg.causal and not cfg.rolling and num_latent > spec.train_frames:
        if args.model_dir is None and args.local_attn_size is None:
            # past the training length: a rolling cache over the training window, its first block as the sink
            k = cfg.num_frame_per_block
            window = max(spec.train_frames - spec.train_frames % k, 2 * k)
            overrides = {"local_attn_size": window, "sink_size": k if args.sink_size is None else args.sink_size}
            log.info("%d latent frames is past the training length %d: rolling cache of %d frames (%d sink)",
                     num_latent, spec.train_frames, window, overrides["sink_size"])
            pipe, spec = load_pipeline(args.checkpoint, device=args.device, dtype=dtype, overrides=overrides,
                                       compile=args.compile, fp8=args.fp8, sampling=sampling)
            cfg = pipe.config
        else:
            log.warning("%d frames is past the training length %d with a global cache; "
                        "pass --local-attn-size for a rolling cache", num_latent, spec.train_frames)

    prompt = args.prompt
    if spec.prompt_extender == "world" and not args.no_extend:
        from .world import extend_prompt

        prompt = extend_prompt(prompt)
        if prompt != args.prompt:
            log.info("extended prompt: %s", prompt)

    t0 = time.perf_counter()
    first = None
    with VideoWriter(args.output, fps=spec.fps) as writer, tqdm(
        total=num_pixel, unit="frame", desc="generating", disable=None
    ) as bar:
        for chunk in pipe.stream(prompt, num_frames=num_latent, seeds=[args.seed]):
            first = first or time.perf_counter() - t0
            writer.write(chunk.frames[0])
            bar.update(chunk.frames.shape[1])
    elapsed = time.perf_counter() - t0
    print(
        f"wrote {args.output}: {num_pixel} frames in {len(sizes)} chunks, {elapsed:.2f} s "
        f"({num_pixel / elapsed:.1f} frames/s, first chunk after {first:.2f} s)"
    )


def cmd_info(args) -> None:
    from .io.checkpoints import describe_checkpoint

    if not Path(args.checkpoint).exists():
        raise UsageError(f"checkpoint {args.checkpoint!r} does not exist")
    info = describe_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")


def cmd_bench(args) -> None:
    from .bench import BenchConfig, format_report, run_bench

    if args.training:
        from .training.step_bench import StepBenchConfig, bench_training_steps, format_step_bench

        if args.batch_size < 1 or args.frames < 1:
            raise ValueError("--batch-size and --frames must be positive")
        report = bench_training_steps(StepBenchConfig(
            preset=args.preset, batch_size=args.batch_size, frames=args.frames, height=args.height, width=args.width,
            reps=1 if args.quick else 2, device=args.device,
        ))
        print(json.dumps(report, indent=2) if args.json else format_step_bench(report))
        return
    report = run_bench(BenchConfig(
        preset=args.preset, height=args.height, width=args.width, frames=args.frames, device=args.device,
        dtype=args.dtype, window=args.window, quick=args.quick, skip=tuple(args.skip),
        compile=args.compile, fp8=args.fp8,
    ))
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def _add_ode_pairs(sub) -> None:
    p = sub.add_parser("ode-pairs", help="sample teacher ODE trajectories for the ODE-regression init (no videos)",
                       description="Sample teacher ODE trajectories. Under torchrun each process samples its share "
                                   "into OUT/part-RRR-of-WWW (one set for training).")
    p.add_argument("teacher", help="the bidirectional teacher: a `selfforcing train` checkpoint (e.g. "
                                   "runs/teacher-world/model_ema.safetensors) or any layout, e.g. a Wan2.1 folder")
    p.add_argument("-o", "--out", required=True, help="output folder (resumable: reruns add what is missing)")
    p.add_argument("--n", type=int, default=256, help="trajectories (default: 256)")
    p.add_argument("--steps", type=int, default=16, help="Euler steps per trajectory, a multiple of 4 (default: 16)")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance scale (default: the teacher's recorded one, else 6 as published)")
    p.add_argument("--shift", type=float, default=5.0, help="sampling shift: the generator's (default: 5)")
    p.add_argument("--frames", type=int, default=21, help="latent frames per trajectory (default: 21)")
    p.add_argument("--batch-size", type=int, default=8, help="trajectories sampled together (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="captions, one per line (default: the world's training captions)")
    p.add_argument("--text-encoder-path", default=None, metavar="DIR",
                   help="a Wan2.1 folder whose UMT5 encodes the prompts (for a teacher without a recorded spec)")
    p.add_argument("--latent-shape", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                   help="latent frame shape with --text-encoder-path, e.g. 16 60 104 for 480x832")
    p.add_argument("--negative-prompt", default="", help="the prompt guidance pushes away from (default: empty)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="teacher precision (default auto: bfloat16 where the device multiplies it natively, "
                        "GPUs and CPUs with AVX-512 BF16 or AMX; float32 elsewhere)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: cuda:LOCAL_RANK)")


def cmd_ode_pairs(args) -> None:
    from .training.ode_pairs import ODEPairsConfig, generate_ode_pairs

    if args.seed < 0:
        raise ValueError(f"--seed must be non-negative, got {args.seed}")
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device
    if device == "cuda":                                     # torchrun: one GPU per process
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    out = generate_ode_pairs(ODEPairsConfig(
        teacher=args.teacher, out=args.out, n=args.n, num_steps=args.steps, guidance=args.guidance,
        shift=args.shift, num_frames=args.frames, batch_size=args.batch_size, seed=args.seed,
        prompts_file=args.prompts, text_encoder_path=args.text_encoder_path,
        latent_shape=tuple(args.latent_shape) if args.latent_shape else None, negative_prompt=args.negative_prompt,
        dtype=args.dtype, rank=rank, world_size=world_size,
    ), device=device, progress=rank == 0)
    share = len(range(rank, args.n, world_size))
    print(f"wrote {share} of {args.n} trajectories to {out}" if world_size > 1 else
          f"wrote {args.n} trajectories to {out}")


def _add_encode_videos(sub) -> None:
    p = sub.add_parser("encode-videos", help="encode captioned videos to Wan VAE latents (real clips for the GAN)",
                       description="Encode a folder of mp4 files with captions (prompts.jsonl with file + prompt, "
                                   "or NAME.txt next to each NAME.mp4) into Wan VAE latents, for training with "
                                   "data.source=latents data.latents=OUT.")
    p.add_argument("videos", help="the folder of captioned mp4 files")
    p.add_argument("-o", "--out", required=True, help="output folder (new)")
    p.add_argument("--model-dir", required=True, help="a Wan2.1 folder holding the VAE (either layout)")
    p.add_argument("--frames", type=int, default=81, help="pixel frames per clip, 4k + 1 (default: 81)")
    p.add_argument("--height", type=int, default=480, help="pixel height (default: 480)")
    p.add_argument("--width", type=int, default=832, help="pixel width (default: 832)")
    p.add_argument("--batch-size", type=int, default=1, help="clips encoded together (default: 1)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def cmd_encode_videos(args) -> None:
    from .training.encode_videos import EncodeVideosConfig, encode_videos

    if not Path(args.model_dir).exists():
        raise ValueError(f"model directory {args.model_dir!r} does not exist")
    out, n = encode_videos(EncodeVideosConfig(
        videos=args.videos, out=args.out, model_dir=args.model_dir, frames=args.frames, height=args.height,
        width=args.width, batch_size=args.batch_size,
    ), device=args.device)
    print(f"wrote {n} clips to {out}")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="copy a selfforcing checkpoint with its weights cast (e.g. fp16 to ship)")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by selfforcing")
    p.add_argument("-o", "--output", required=True, help="the file to write")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")


def cmd_export(args) -> None:
    import torch

    from .io.checkpoints import cast_checkpoint

    if not Path(args.checkpoint).exists():
        raise ValueError(f"checkpoint {args.checkpoint!r} does not exist")
    if Path(args.output).resolve() == Path(args.checkpoint).resolve():
        raise ValueError("--output must differ from the checkpoint")
    out = cast_checkpoint(args.checkpoint, args.output, getattr(torch, args.dtype))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.dtype})")


COMMANDS = {"generate": cmd_generate, "info": cmd_info, "bench": cmd_bench, "ode-pairs": cmd_ode_pairs,
            "encode-videos": cmd_encode_videos, "export": cmd_export}


def check_device(name: str, flag: str = "--device") -> None:
    """Raise a one-line ValueError for a device this machine cannot run on (before any work starts);
    `flag` names the option in the message: "--device" (a command-line flag) or "device" (a config field)."""
    import torch

    what = f"{flag} {name}" if flag.startswith("-") else f"{flag}={name}"

    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"{what}: not a torch device ({err})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what}: no CUDA device is available here (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{what}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type not in ("cpu", "meta") and not getattr(getattr(torch, device.type, None), "is_available",
                                                            lambda: False)():
        raise ValueError(f"{what}: no {device.type} device is available here")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_rank = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 reports progress
    level = logging.DEBUG if args.verbose else logging.WARNING if quiet_rank else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    for noisy in ("transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if getattr(args, "device", None):
            check_device(args.device)
        if args.command == "world":
            from .world import cli as world_cli

            world_cli.run(args)
        elif args.command == "train":
            from .training import cli as train_cli

            train_cli.run(args)
        elif args.command == "eval":
            from .eval import cli as eval_cli

            eval_cli.run(args)
        elif args.command == "experiment":
            from .experiments import cli as experiment_cli

            experiment_cli.run(args)
        else:
            COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                                   # output piped into a reader that quit (| head)
        sys.stderr.close()
        return 0
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, RuntimeError) as err:
        if args.verbose:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"selfforcing: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
