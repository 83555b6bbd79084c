"""Training algorithms: pure losses over networks and a batch, `(loss, logs)` (no optimizer, I/O or sync).

`base` holds what all of them share (`Batch`, `Update`, per-sample randomness); one file per algorithm.
"""

from .base import Batch, SampleRNG, Update
from .teacher import TeacherConfig, TeacherTraining, teacher_loss

__all__ = [
    "Batch", "SampleRNG", "Update",
    "TeacherConfig", "TeacherTraining", "teacher_loss",
]
