"""The oracle evaluator: scores videos of the synthetic world from their pixels, against their prompts.

Because the world is known, every score is a measurement rather than a learned judge: objects are segmented
by their palette colour, tracked frame by frame, their shape recognised by redrawing it, their motion checked
against the one the prompt names.  Nothing is read from scene metadata, so generated videos (which have
none) and rendered ones are scored alike; real renders score about 100.

Files, one concept each: `segment` (palette segmentation), `shapes` (shape recognition by templates),
`tracks` (per-frame measurements of a video), `motion` (motion checks and speeds), `scores` (the dimensions,
groups, total and drift curve), `frechet` (oracle features and the Fréchet distance to real videos),
`report` (sets of videos, folders, the table), `cli` (`selfforcing eval`).

    from selfforcing.eval import evaluate_video
    scores = evaluate_video(video_uint8, "a red circle moves right")   # (F, H, W, 3)
    scores.total, scores.semantic, scores.dimensions, scores.drift.total
"""

from selfforcing.eval.frechet import FEATURE_NAMES, frechet_distance, reference_features, video_features
from selfforcing.eval.report import (
    FRAME_DIMENSIONS, Report, evaluate_folder, evaluate_stills, evaluate_videos, format_stills, format_table,
    read_video_folder, still_scores,
)
from selfforcing.eval.scores import (
    DRIFT_WINDOW, GROUPS, TOTAL_WEIGHTS, DriftCurve, VideoScores, drift_curve, evaluate_video, score_measurements,
)
from selfforcing.eval.tracks import Measurements, Track, measure

__all__ = [
    "DRIFT_WINDOW", "FEATURE_NAMES", "FRAME_DIMENSIONS", "GROUPS", "TOTAL_WEIGHTS",
    "DriftCurve", "Measurements", "Report", "Track", "VideoScores",
    "drift_curve", "evaluate_folder", "evaluate_stills", "evaluate_video", "evaluate_videos", "format_stills",
    "format_table", "frechet_distance", "measure", "read_video_folder", "reference_features", "score_measurements",
    "still_scores", "video_features",
]
