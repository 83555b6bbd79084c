"""ODE pairs on disk: teacher trajectories stored in shards that stream from disk.

A folder holds `shard_NNNNN.safetensors` files, each with
- `states`: (N, S + 1, F, C, H, W) float16, the kept trajectory states then the clean end point,
- `timesteps`: (S + 1,) float32,
- `context_index`: (N,) int64, the row of the prompt in `prompts.jsonl`,
and a `prompts.jsonl` with one prompt per line. `ODEPairDataset` reads one sample at a time through
`safe_open` slices, so the whole set never has to fit in memory. Shards are written atomically.

A set sampled by several processes is a folder of such folders, `part-RRR-of-WWW/` (one per process);
`ODEPairDataset` reads the shards at the top level and then every part, in name order, as one set.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .checkpoints import atomic_write

__all__ = ["ODEPairWriter", "ODEPairDataset"]


class ODEPairWriter:
    """Append trajectories; every `shard_size` samples a shard is written."""

    def __init__(self, root: str | Path, shard_size: int = 64):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self._states: list[torch.Tensor] = []
        self._prompt_rows: list[int] = []
        self._timesteps: torch.Tensor | None = None
        self._prompts: list[str] = []
        self._num_shards = len(list(self.root.glob("shard_*.safetensors")))
        prompts_file = self.root / "prompts.jsonl"
        if prompts_file.exists():
            self._prompts = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines()]

    @property
    def num_written(self) -> int:
        """Trajectories already in shards on disk (buffered ones excluded)."""
        return len(self._prompts) - len(self._states)

    def add(self, states: torch.Tensor, timesteps: torch.Tensor, prompts: list[str]) -> None:
        """states: (B, S + 1, F, C, H, W); prompts: B strings."""
        if self._timesteps is None:
            self._timesteps = timesteps.float().cpu()
        elif not torch.equal(self._timesteps, timesteps.float().cpu()):
            raise ValueError("all trajectories of one set must keep the same timesteps")
        for sample, prompt in zip(states.half().cpu(), prompts):
            self._prompt_rows.append(len(self._prompts))
            self._prompts.append(prompt)
            self._states.append(sample)
        while len(self._states) >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        tensors = {
            "states": torch.stack(self._states[:n]).contiguous(),
            "timesteps": self._timesteps,
            "context_index": torch.tensor(self._prompt_rows[:n]),
        }
        atomic_write(self.root / f"shard_{self._num_shards:05d}.safetensors", lambda tmp: save_file(tensors, tmp))
        self._num_shards += 1
        del self._states[:n], self._prompt_rows[:n]
        self._write_prompts()

    def _write_prompts(self) -> None:
        text = "".join(json.dumps({"prompt": p}) + "\n" for p in self._prompts)
        atomic_write(self.root / "prompts.jsonl", lambda tmp: Path(tmp).write_text(text))

    def close(self) -> None:
        if self._states:
            self._flush(len(self._states))

    def __enter__(self) -> "ODEPairWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ODEPairDataset(torch.utils.data.Dataset):
    """Map-style dataset of (states float32 (S+1, F, C, H, W), timesteps (S+1,), prompt).

    Args:
        root: a set written by one `ODEPairWriter`, or a folder of such sets in `part-*` sub-folders.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        folders = [self.root] + sorted(p for p in self.root.glob("part-*") if p.is_dir())
        self.shards: list[Path] = []
        self._shard_prompts: list[list[str]] = []        # the prompts.jsonl of each shard's folder
        self.index: list[tuple[int, int]] = []
        for folder in folders:
            shards = sorted(folder.glob("shard_*.safetensors"))
            if not shards:
                continue
            prompts = [json.loads(line)["prompt"] for line in (folder / "prompts.jsonl").read_text().splitlines()]
            for path in shards:
                with safe_open(str(path), framework="pt") as f:
                    shape = f.get_slice("states").get_shape()
                    timesteps = f.get_tensor("timesteps")
                if not self.shards:
                    self.timesteps = timesteps
                    self.shape = tuple(shape[1:])                 # (S + 1, F, C, H, W) of one sample
                elif tuple(shape[1:]) != self.shape or not torch.equal(timesteps, self.timesteps):
                    raise ValueError(f"{path} does not match {self.shards[0]}: one set keeps one shape and one "
                                     "list of timesteps")
                self.index.extend((len(self.shards), i) for i in range(shape[0]))
                self.shards.append(path)
                self._shard_prompts.append(prompts)
        if not self.shards:
            raise ValueError(f"no ODE pairs (shard_*.safetensors) in {str(self.root)!r}")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        shard, row = self.index[i]
        with safe_open(str(self.shards[shard]), framework="pt") as f:
            states = f.get_slice("states")[row : row + 1][0].float()
            prompt = self._shard_prompts[shard][int(f.get_slice("context_index")[row : row + 1][0])]
        return states, self.timesteps, prompt
