"""The comparison's results as a Markdown table and a drift plot: pure functions of the results dict.

The dict is what `ablation.run_ablation` writes to results.json; the functions read only these keys:

    results["methods"][i] = {"method", "variant", "budget", "init_budget", "train": {"status", "wall_s"},
                             "eval": {"train_length": {"frames", "num_videos", "total", "quality", "semantic",
                                                       "temporal", "per_video"?: {"total": [...], ...}},
                                      "speed": {"fps"},
                                      "long": {"frames", "num_videos", "window", "local_attn_size", "sink_size",
                                               "drift": {"stops", "total"} | None, "at": {"5x": ...},
                                               "per_video_at"?: {"5x": [...]}, "skipped": reason | None,
                                               "per_video_drift"?: [[total per window] per video],
                                               "note"?}}}
    results["settings"]["drift_checkpoints"] = [1, 5, 10]   (multiples of the training length; 1: the first window)
    results["teacher"]?: {"eval": {"train_length": {..., "per_video"}}}     (the reference row)
    results["command"], results["machine"], results["quick"]
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from ..eval.report import standard_error

__all__ = ["format_table", "format_budgets", "format_paired", "format_against_teacher", "standard_error",
           "results_markdown", "drift_series", "plot_drift"]

log = logging.getLogger(__name__)

MISSING = "–"
SCORES = ("total", "quality", "semantic", "temporal")


def _score(value) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:.1f}"


def _fps(value) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:.3g}"


def _seconds(value) -> str:
    if value is None:
        return MISSING
    if value >= 60:
        return f"{value / 60:.1f} min"
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def _plus_minus(mean, se, *, signed: bool = False) -> str:
    """`mean ± se` (one decimal; the sign always shown when `signed`), the mean alone without an error."""
    if mean is None or not math.isfinite(mean):
        return MISSING
    return (f"{mean:+.1f}" if signed else f"{mean:.1f}") + (f" ± {se:.1f}" if se is not None else "")


def _with_error(mean, values) -> str:
    return _plus_minus(mean, standard_error(values) if values else None)


def _markdown(header: list[str], rows: list[list[str]], align: str) -> str:
    """A Markdown table; `align` has one letter per column, "l" or "r"."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule] + rows
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def format_table(results: dict) -> str:
    """Rows = method x variant (in run order); columns: the oracle's total / quality / semantic / temporal at the
    training length, the total at the drift checkpoints of the long videos, streaming frames per second."""
    checkpoints = results["settings"]["drift_checkpoints"]
    change = _change_label(checkpoints)
    header = ["Method", "Variant", "Total", "Quality", "Semantic", "Temporal"]
    header += [f"Total @{k}x" for k in checkpoints] + ([change] if change else []) + ["FPS"]
    rows = []
    for m in results["methods"]:
        short, long = m["eval"]["train_length"], m["eval"]["long"]
        at = long.get("at") or {}
        first, last = (at.get(f"{k}x") for k in (checkpoints[0], checkpoints[-1]))
        drop = last - first if first is not None and last is not None else None
        per_video_drop = _change(long.get("per_video_at") or {}, checkpoints)
        rows.append([m["method"], m["variant"], _with_error(short["total"], short.get("per_video", {}).get("total")),
                     *(_score(short[k]) for k in SCORES[1:]),
                     *(_score(at.get(f"{k}x")) for k in checkpoints),
                     *([_plus_minus(drop, standard_error(per_video_drop) if per_video_drop else None, signed=True)]
                       if change else []),
                     _fps(m["eval"]["speed"]["fps"])])
    return _markdown(header, rows, "ll" + "r" * (len(header) - 2))


def _change_label(checkpoints) -> str | None:
    """The drift column: the last checkpoint's total minus the first window's (None without both)."""
    return f"Change {checkpoints[0]}x → {checkpoints[-1]}x" if len(checkpoints) > 1 and checkpoints[0] == 1 else None


def _change(per_video_at: dict, checkpoints) -> list | None:
    """Per long video: the total at the last checkpoint minus the first window's."""
    first, last = (per_video_at.get(f"{k}x") for k in (checkpoints[0], checkpoints[-1]))
    if not first or not last:
        return None
    return [b - a if a is not None and b is not None else None for a, b in zip(first, last)]


def _paired(a: list | None, b: list | None) -> tuple[float | None, float | None, int]:
    """Mean and standard error of a - b over the videos both have (the same prompts and seeds, in order)."""
    if not a or not b:
        return None, None, 0
    diffs = [x - y for x, y in zip(a, b) if x is not None and y is not None]
    if not diffs:
        return None, None, 0
    return sum(diffs) / len(diffs), standard_error(diffs), len(diffs)


def format_paired(results: dict, reference: str = "SF+DMD") -> str | None:
    """Each method's scores minus the `reference` method's of the same variant, video by video (every generator
    is scored on the same prompts and seeds, so the difference is far less noisy than the two means), as
    mean ± standard error (n videos): total / quality / semantic / temporal at the training length, the total at
    the drift checkpoints and its change from the first window to the last. None when the results
    hold no per-video scores or no reference."""
    checkpoints = results["settings"]["drift_checkpoints"]
    change = _change_label(checkpoints)
    refs = {m["variant"]: m for m in results["methods"] if m["method"] == reference}
    header = ["Method", "Variant"] + [f"Δ {k}" for k in SCORES] + [f"Δ total @{k}x" for k in checkpoints]
    header += [f"Δ {change[0].lower()}{change[1:]}"] if change else []
    rows = []
    for m in results["methods"]:
        ref = refs.get(m["variant"])
        if ref is None or m is ref or "per_video" not in m["eval"]["train_length"]:
            continue
        cells = [(m["eval"]["train_length"]["per_video"].get(k),
                  ref["eval"]["train_length"].get("per_video", {}).get(k)) for k in SCORES]
        mine, theirs = (x["eval"]["long"].get("per_video_at") or {} for x in (m, ref))
        for k in checkpoints:
            cells.append((mine.get(f"{k}x"), theirs.get(f"{k}x")))
        if change:
            cells.append((_change(mine, checkpoints), _change(theirs, checkpoints)))
        rows.append([m["method"], m["variant"], *(_signed_paired(a, b) for a, b in cells)])
    return _markdown(header, rows, "ll" + "r" * (len(header) - 2)) if rows else None


def _signed_paired(a, b) -> str:
    mean, se, n = _paired(a, b)
    return MISSING if mean is None else f"{_plus_minus(mean, se, signed=True)} ({n})"


def format_against_teacher(results: dict) -> str | None:
    """The teacher's scores at the training length, then every method's minus the teacher's, video by video (the
    same prompts and seeds). None without the teacher's per-video scores."""
    teacher = (results.get("teacher") or {}).get("eval", {}).get("train_length")
    if not teacher or "per_video" not in teacher:
        return None
    header = ["Method", "Variant"] + [f"Δ {k}" for k in SCORES]
    rows = [["Teacher (many steps, guidance)", "bidirectional",
             *(_with_error(teacher[k], teacher["per_video"][k]) for k in SCORES)]]
    for m in results["methods"]:
        mine = m["eval"]["train_length"].get("per_video")
        if mine:
            rows.append([m["method"], m["variant"], *(_signed_paired(mine.get(k), teacher["per_video"][k])
                                                      for k in SCORES)])
    return _markdown(header, rows, "ll" + "r" * len(SCORES))


def format_budgets(results: dict) -> str:
    """What each method trained: trainer steps, generator and critic updates, batch, its init, wall-clock."""
    header = ["Method", "Variant", "Algorithm", "Steps", "Generator updates", "Critic updates", "Batch",
              "Init (steps)", "Train time"]
    rows = []
    for m in results["methods"]:
        b, init = m["budget"], m.get("init_budget")
        start = f"ODE init ({init['steps']})" if init else "teacher"
        status = m["train"].get("status")
        took = _seconds(m["train"].get("wall_s")) + (" (earlier run)" if status == "skipped" else "")
        rows.append([m["method"], m["variant"], b["algorithm"], str(b["steps"]), str(b["generator_updates"]),
                     str(b["critic_updates"]), str(b["batch_size"]), start, took])
    return _markdown(header, rows, "lllrrrrll")


def _notes(results: dict) -> list[str]:
    notes = []
    for m in results["methods"]:
        long = m["eval"]["long"]
        if long.get("skipped"):
            notes.append(f"{m['method']} ({m['variant']}): long videos skipped: {long['skipped']}.")
        elif long.get("note"):
            notes.append(f"{m['method']} ({m['variant']}): long videos on {long['note']}.")
    return notes


def results_markdown(results: dict, plot_link: str | None = None) -> str:
    """The whole Markdown page: how the numbers were made, the results table, the budgets, notes, the plot."""
    methods = results["methods"]
    if not methods:
        return "# Self-Forcing's comparison in the world\n\nNo method has been evaluated yet.\n"
    first = methods[0]["eval"]
    short, long = first["train_length"], first["long"]
    checkpoints = results["settings"]["drift_checkpoints"]
    mach = results["machine"]
    at = " / ".join(f"{k}x" for k in checkpoints)
    took = ""
    if results.get("complete") and results.get("wall_s") is not None:
        took = f" in {_seconds(results['wall_s'])} of wall-clock"
        if any(m["train"].get("status") == "skipped" or m["eval"].get("reused") for m in methods):
            took += " (what an earlier run had trained or scored was reused)"
    lines = [
        "# Self-Forcing's comparison in the world", "",
        f"Produced by `{results['command']}` on {mach['platform']} ({mach['cpu_count']} CPUs, "
        f"{mach['torch_threads']} torch threads{', ' + mach['cuda'] if mach.get('cuda') else ''}, "
        f"torch {mach.get('torch', MISSING)}){took}.", "",
    ]
    if results.get("quick"):
        lines += ["**Quick mode**: tiny untrained models on 16x16 clips, a smoke test of the pipeline; the scores "
                  "mean nothing (real 16x16 renders score about 65, not 100).", ""]
    lines += [
        f"Scores are the world's oracle (0-100, total = 0.4 semantic + 0.3 quality + 0.3 temporal), the mean "
        f"{'(total: ± its standard error over the videos) ' if 'per_video' in short else ''}over "
        f"{short['num_videos']} held-out prompts at the training length ({short['frames']} frames). "
        f"Total @{at}: the mean total over the {long['window']}-frame window ending at {at} the training length, "
        f"on {long['frames']}-frame videos of the first {long.get('requested', long['num_videos'])} held-out "
        f"prompts (fewer where noted), rolled out with a rolling KV cache ({long['local_attn_size']} latent frames, "
        "of which one block of sink frames)"
        + (f"; @1x is their first window, where the cache has not rolled yet, and {_change_label(checkpoints)} the "
           "last window's total minus the first one's per video (± its standard error): the drift, "
           "whatever level the video starts at" if _change_label(checkpoints) else "")
        + ". FPS: frames per second of streaming one training-length video (text encoding and decoding "
        "included).", "",
    ]
    if results.get("checkpoints"):
        lines += [f"Checkpoints: every row's generator is the fp16 file `{results['checkpoints']}/<variant>/<method>"
                  ".safetensors` that was scored (the ODE inits beside them as `ode-init.safetensors`).", ""]
    lines += [format_table(results), ""]
    paired = format_paired(results)
    if paired:
        lines += [
            "## Against SF+DMD, video by video", "",
            "Every generator is scored on the same prompts with the same seeds, so differences pair up: each "
            "method's score minus SF+DMD's of the same variant, mean ± standard error over the (n) videos both "
            "scored. A difference within about two standard errors of zero is not one these videos can tell.", "",
            paired, "",
        ]
    teacher = format_against_teacher(results)
    if teacher:
        lines += [
            "## Against the teacher, video by video", "",
            "The teacher every method distils or starts from, sampled as it was trained to be (many steps with "
            "guidance), on the same prompts and seeds at the training length: its scores (mean ± standard error; "
            "the first row), then each method's minus the teacher's, mean ± standard error (n videos).", "",
            teacher, "",
        ]
    lines += [
        "## Budgets", "",
        "Steps are optimizer steps of the trainer; a distillation step updates the critic, every "
        "`distill.generator_every`-th step also the generator.", "",
        format_budgets(results), "",
    ]
    notes = _notes(results)
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if plot_link:
        lines += ["## Drift", "", f"![Total score per window over the long videos]({plot_link})", ""]
    return "\n".join(lines)


def drift_series(results: dict) -> dict[str, list[tuple[str, list[int], list[float]]]]:
    """{variant: [(method, window end frames, total per window)]} of the long videos that were scored."""
    out: dict[str, list] = {}
    for m in results["methods"]:
        drift = m["eval"]["long"].get("drift")
        out.setdefault(m["variant"], [])
        if drift:
            out[m["variant"]].append((m["method"], list(drift["stops"]), list(drift["total"])))
    return out


def plot_drift(results: dict, path: str | Path) -> Path | None:
    """Total score against frame index, one line per method, one panel per variant, as a PNG. Needs matplotlib
    (the `experiment` extra); without it, or with no long video scored, warns and returns None."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log.warning("matplotlib is not installed (pip install -e '.[experiment]'): no drift plot")
        return None
    series = drift_series(results)
    if not any(series.values()):
        log.warning("no long video was scored: no drift plot")
        return None
    train_frames = results["methods"][0]["eval"]["train_length"]["frames"]
    fig = Figure(figsize=(5.5 * len(series), 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(series), sharey=True, squeeze=False)[0]
    names = list(dict.fromkeys(m["method"] for m in results["methods"]))    # one colour per method, both panels
    handles = {}
    for ax, (variant, lines) in zip(axes, series.items()):
        for method, stops, totals in lines:
            (handles[method],) = ax.plot(stops, totals, marker="o", markersize=3, color=f"C{names.index(method) % 10}")
        ax.axvline(train_frames, color="grey", linestyle=":", linewidth=1)
        ax.set_title(variant)
        ax.set_xlabel("frame (end of the scored window)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("oracle total score")
    axes[0].set_ylim(0, 100)
    shown = [n for n in names if n in handles]
    fig.legend([handles[n] for n in shown], shown, loc="outside right upper", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
