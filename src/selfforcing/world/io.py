"""Write rendered clips to disk as near-lossless mp4 files plus a prompts.jsonl, and read them back.

Layout of a clip directory:

    00000.mp4, 00001.mp4, ...   H.264, yuv444p, CRF 0 (lossless in YUV; RGB round trip within ~1 level)
    prompts.jsonl               one JSON object per clip, in order:
                                {"file", "short", "detailed", "scene", "start_frame", "num_frames", "fps"}

Every file is written to a temporary name in the same directory and renamed into place, so a reader never
sees a half-written clip; prompts.jsonl is renamed last, so its presence means the directory is complete.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from selfforcing.world import vocab
from selfforcing.world.captions import detailed_caption, short_caption
from selfforcing.world.renderer import render
from selfforcing.world.scene import Scene

PROMPTS_FILE = "prompts.jsonl"
# libx264 at CRF 0 ("quality=10" in imageio) with full-resolution chroma: small coloured objects keep their
# colour, which 4:2:0 subsampling would smear over 2x2 blocks.
_FFMPEG_WRITE = {"format": "FFMPEG", "codec": "libx264", "quality": 10, "pixelformat": "yuv444p",
                 "macro_block_size": 1, "output_params": ["-preset", "veryfast"]}


@dataclass(frozen=True)
class Clip:
    """One clip read back from disk: video uint8 (F, H, W, 3) (None when not loaded) and its prompts."""

    path: Path
    short: str
    detailed: str
    scene: Scene
    video: np.ndarray | None = None


def ensure_writable(out_dir: str | os.PathLike) -> Path:
    """Create `out_dir` if needed and check a file can be written there; raise ValueError if not."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to output directory {str(out)!r}: {e.strerror or e}") from e
    return out


def write_video(video: np.ndarray, path: str | os.PathLike, fps: int = vocab.FPS) -> None:
    """Write uint8 (F, H, W, 3) frames to an mp4 file, atomically."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")     # keeps the .mp4 suffix ffmpeg looks at
    try:
        with imageio.get_writer(tmp, fps=fps, **_FFMPEG_WRITE) as writer:
            for frame in video:                                   # (H, W, 3)
                writer.append_data(frame)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read an mp4 file to uint8 (F, H, W, 3)."""
    with imageio.get_reader(Path(path), format="FFMPEG") as reader:
        return np.stack([np.asarray(frame) for frame in reader])


def write_clips(scenes: list[Scene], out_dir: str | os.PathLike, fps: int = vocab.FPS, *,
                num_frames: int = vocab.CLIP_FRAMES, size: int = vocab.FRAME_SIZE, start_frame: int = 0,
                shorts: list[str] | None = None) -> list[Path]:
    """Render each scene and write it as `NNNNN.mp4`, plus `prompts.jsonl` describing all of them.

    Args:
        scenes: what to render, in file order.
        out_dir: created if missing.
        fps: frame rate of the files and of the rendering (speeds are per second).
        num_frames, size, start_frame: passed to `render`.
        shorts: short prompts to store instead of `short_caption(scene)` (e.g. the user's own prompts).
    Returns:
        the paths of the written videos.
    Raises:
        ValueError: no scenes, mismatched `shorts`, or an unwritable directory.
    """
    if not scenes:
        raise ValueError("write_clips needs at least one scene")
    if shorts is not None and len(shorts) != len(scenes):
        raise ValueError(f"got {len(shorts)} short prompts for {len(scenes)} scenes")
    out = ensure_writable(out_dir)
    paths, records = [], []
    for i, scene in enumerate(scenes):
        path = out / f"{i:05d}.mp4"
        write_video(render(scene, start_frame, num_frames, size=size, fps=fps), path, fps)
        paths.append(path)
        records.append({"file": path.name, "short": short_caption(scene) if shorts is None else shorts[i],
                        "detailed": detailed_caption(scene), "scene": scene.to_dict(),
                        "start_frame": start_frame, "num_frames": num_frames, "fps": fps})
    tmp = out / f".tmp-{os.getpid()}-{PROMPTS_FILE}"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, out / PROMPTS_FILE)
    return paths


def read_clips(clip_dir: str | os.PathLike, *, load_videos: bool = True) -> list[Clip]:
    """Read a directory written by `write_clips`.

    Args:
        clip_dir: the directory holding prompts.jsonl and the videos.
        load_videos: decode the mp4 files (False: only prompts and scenes, `video` is None).
    Raises:
        ValueError: if the directory has no prompts.jsonl.
    """
    root = Path(clip_dir)
    prompts = root / PROMPTS_FILE
    if not prompts.is_file():
        raise ValueError(f"no {PROMPTS_FILE} in {str(root)!r}; was it written by write_clips?")
    clips = []
    for line in prompts.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        path = root / r["file"]
        clips.append(Clip(path=path, short=r["short"], detailed=r["detailed"], scene=Scene.from_dict(r["scene"]),
                          video=read_video(path) if load_videos else None))
    return clips
