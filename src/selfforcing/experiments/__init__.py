"""Experiments that train and evaluate several stages end to end: the paper's comparison (`ablation`)."""

from .ablation import METHODS, VARIANTS, AblationConfig, Method, Variant, quick_config, run_ablation
from .evaluation import EvalSettings, evaluate_generator
from .results import format_table, plot_drift, results_markdown

__all__ = ["METHODS", "VARIANTS", "AblationConfig", "Method", "Variant", "quick_config", "run_ablation",
           "EvalSettings", "evaluate_generator", "format_table", "plot_drift", "results_markdown"]
