"""A map-style torch dataset of rendered training clips, deterministic from (seed, index).

Clips are rendered on the fly (about 10 ms per 33-frame 64x64 clip), so the dataset is as long as asked and
needs no disk.  Item i is always the same clip: its scene is `train_scene(seed, i)` (never a held-out one)
and the start frame and caption phrasing are drawn from a generator seeded by (seed, i, 1).
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from selfforcing.world import vocab
from selfforcing.world.captions import detailed_caption, short_caption
from selfforcing.world.renderer import render_labels, render_tensor
from selfforcing.world.scene import Scene
from selfforcing.world.splits import train_scene


# What each pixel of a clip shows, attribute by attribute (`WorldDataset.labels`): class 0 is the background,
# class i + 1 the i-th word of the vocabulary.
LABEL_GROUPS: dict[str, tuple[str, ...]] = {
    "shape": vocab.SHAPES, "colour": vocab.COLOURS, "size": vocab.SIZES, "motion": vocab.MOTIONS,
}


def label_maps(scene: Scene, start_frame: int, num_frames: int, *, size: int = vocab.FRAME_SIZE,
               fps: int = vocab.FPS) -> torch.Tensor:
    """Per-pixel attribute classes of a clip: uint8 (F, G, H, W), one map for each of the G `LABEL_GROUPS`
    (0 where the background shows, i + 1 where an object whose attribute is the group's i-th word does)."""
    objects = render_labels(scene, start_frame, num_frames, size=size, fps=fps).astype(np.int64)  # (F, H, W)
    table = np.zeros((len(LABEL_GROUPS), len(scene.objects) + 1), dtype=np.uint8)          # (G, objects + 1)
    for k, obj in enumerate(scene.objects):
        for g, (attribute, words) in enumerate(LABEL_GROUPS.items()):
            table[g, k + 1] = words.index(getattr(obj, attribute)) + 1
    return torch.from_numpy(np.ascontiguousarray(table[:, objects].transpose(1, 0, 2, 3)))  # (F, G, H, W)


@dataclass(frozen=True)
class WorldDataConfig:
    """What the training clips look like.

    Attributes:
        length: number of items.
        seed: selects the stream of scenes; different seeds give different (still never held-out) scenes.
        num_frames: F, frames per clip.
        size: H = W in pixels.
        fps: frames per second.
        max_objects: at most this many objects per scene.
        max_start_frame: clips start at a uniform frame in [0, max_start_frame], so a model also sees
            objects mid-way through their motion (0: every clip starts at frame 0).
        vary_captions: draw a caption phrasing per item instead of each scene's default phrasing.
    """

    length: int = 10_000
    seed: int = 0
    num_frames: int = vocab.CLIP_FRAMES
    size: int = vocab.FRAME_SIZE
    fps: int = vocab.FPS
    max_objects: int = vocab.MAX_OBJECTS
    max_start_frame: int = 0
    vary_captions: bool = True


class WorldDataset(Dataset):
    """Items are (video, short caption, detailed caption, scene), video float32 (F, 3, H, W) in [-1, 1].

    Use `collate_world` as the DataLoader's `collate_fn` (scenes are dataclasses, which torch cannot stack).
    """

    def __init__(self, config: WorldDataConfig = WorldDataConfig()):
        if config.length <= 0 or config.num_frames <= 0 or config.max_start_frame < 0:
            raise ValueError(f"need length > 0, num_frames > 0 and max_start_frame >= 0, got {config}")
        self.config = config

    def __len__(self) -> int:
        return self.config.length

    def scene(self, index: int) -> Scene:
        """The scene of item `index` (cheap: nothing is rendered)."""
        return train_scene(self.config.seed, index, self.config.max_objects)

    def _draws(self, index: int) -> tuple[int, int | None]:
        """(start frame, caption variant) of item `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of length {len(self)}")
        c = self.config
        rng = np.random.default_rng([c.seed, index, 1])
        start = int(rng.integers(c.max_start_frame + 1))
        return start, int(rng.integers(2**62)) if c.vary_captions else None

    def captions(self, index: int) -> tuple[str, str]:
        """(short, detailed) captions of item `index`, the same as `self[index]`'s, without rendering."""
        scene, (_, variant) = self.scene(index), self._draws(index)
        return short_caption(scene, variant), detailed_caption(scene, variant)

    def labels(self, index: int) -> torch.Tensor:
        """`label_maps` of item `index`'s clip: uint8 (F, G, H, W), aligned with `self[index]`'s video."""
        c = self.config
        start, _ = self._draws(index)
        return label_maps(self.scene(index), start, c.num_frames, size=c.size, fps=c.fps)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str, Scene]:
        c = self.config
        start, variant = self._draws(index)
        scene = self.scene(index)
        video = render_tensor(scene, start, c.num_frames, size=c.size, fps=c.fps)   # (F, 3, H, W)
        return video, short_caption(scene, variant), detailed_caption(scene, variant), scene


def collate_world(batch: list[tuple[torch.Tensor, str, str, Scene]]
                  ) -> tuple[torch.Tensor, list[str], list[str], list[Scene]]:
    """Stack videos to (B, F, 3, H, W); keep captions and scenes as lists."""
    videos, shorts, detailed, scenes = zip(*batch)
    return torch.stack(videos), list(shorts), list(detailed), list(scenes)
