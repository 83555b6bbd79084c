"""Writing videos: mp4 through imageio-ffmpeg, written to a temporary file and renamed into place,
so a failed or interrupted write never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

__all__ = ["VideoWriter", "write_video", "check_writable"]


def check_writable(path: str | Path) -> Path:
    """Raise ValueError with one clear line if `path` cannot be written as a video file."""
    path = Path(path)
    if path.suffix.lower() not in {".mp4", ".mov", ".mkv", ".gif"}:
        raise ValueError(f"output must be a video file (.mp4, .mov, .mkv or .gif), got {str(path)!r}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"output directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"output directory {str(parent)!r} is not writable")
    if path.is_dir():
        raise ValueError(f"output path {str(path)!r} is a directory")
    return path


def _as_uint8(frames) -> np.ndarray:
    """(T, H, W, 3) uint8, or (T, 3, H, W) float in [-1, 1] -> (T, H, W, 3) uint8."""
    if isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            frames = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1)
        frames = frames.cpu().numpy()
    return np.ascontiguousarray(frames)


class VideoWriter:
    """Append frames as they stream in; `close()` publishes the file atomically, `abort()` discards it.

    Use as a context manager: an exception inside the block aborts the write.
    """

    def __init__(self, path: str | Path, fps: int = 16, quality: int = 9):
        import imageio.v2 as imageio

        self.path = check_writable(path)
        fd, tmp = tempfile.mkstemp(suffix=self.path.suffix, prefix=".partial-", dir=self.path.parent or ".")
        os.close(fd)
        self._tmp = Path(tmp)
        kwargs = {"fps": fps}
        if self.path.suffix.lower() != ".gif":
            kwargs.update(quality=quality, macro_block_size=1, ffmpeg_log_level="error")
        self._writer = imageio.get_writer(self._tmp, **kwargs)
        self.num_frames = 0

    def write(self, frames) -> None:
        """frames: (T, H, W, 3) uint8 or (T, 3, H, W) float in [-1, 1]."""
        for frame in _as_uint8(frames):
            self._writer.append_data(frame)
            self.num_frames += 1

    def close(self) -> Path:
        self._writer.close()
        if self.num_frames == 0:
            self._tmp.unlink(missing_ok=True)
            raise ValueError("no frames were written")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | Path, frames: Iterable, fps: int = 16) -> Path:
    """Write a whole video: (T, H, W, 3) uint8 or (T, 3, H, W) float in [-1, 1]."""
    with VideoWriter(path, fps=fps) as writer:
        writer.write(frames)
    return writer.path
