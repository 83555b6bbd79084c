"""Training infrastructure shared by every stage: typed configs and presets, the trainer and its algorithm
table, checkpoints, EMA, data order, and data parallelism applied from outside.

    from selfforcing.training import train, train_preset
    train(train_preset("teacher-world").replace(out_dir="runs/t1"))
"""

from .config import TrainConfig, load_config, resolve_config, train_preset, train_preset_names
from .overrides import apply_overrides
from .trainer import ALGORITHMS, AlgorithmEntry, Trainer, train

__all__ = [
    "TrainConfig", "train_preset", "train_preset_names", "load_config", "resolve_config", "apply_overrides",
    "ALGORITHMS", "AlgorithmEntry", "Trainer", "train",
]
