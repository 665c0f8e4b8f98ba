"""Scoring predictions on the multi-label ImageNet benchmarks (ReaL, INv2-ML, IN-Seg, ...).

``evaluate(scores, benchmark)`` is the entry point for training loops; the command line is
``multilabel-imagenet evaluate``. This package never imports ``multilabel_imagenet.builder``.
"""

from multilabel_imagenet.evaluation.benchmarks import (
    REGISTRY,
    Benchmark,
    BenchmarkFileError,
    load_benchmark,
    load_benchmarks,
    prepare_in_seg,
)
from multilabel_imagenet.evaluation.predictions import Predictions, PredictionsError, align, read_predictions
from multilabel_imagenet.evaluation.scoring import evaluate, evaluate_ranked

__all__ = [
    "REGISTRY",
    "Benchmark",
    "BenchmarkFileError",
    "Predictions",
    "PredictionsError",
    "align",
    "evaluate",
    "evaluate_ranked",
    "load_benchmark",
    "load_benchmarks",
    "prepare_in_seg",
    "read_predictions",
]
