"""Scoring a trained model on the multi-label benchmarks at the end of a run (``train --eval NAME``).

Benchmarks and their images are found before training starts (:func:`prepare_benchmarks`), so a missing label
file or image folder fails in the first second, not after the last epoch. :func:`evaluate_model` runs the model
once over every distinct image the benchmarks need, with sigmoid outputs (a BCE-trained model's per-class
probabilities) and timm's eval transform at the training resolution, and scores each benchmark with
:func:`multilabel_imagenet.evaluation.evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from multilabel_imagenet.evaluation import Benchmark, evaluate, inference, load_benchmarks

EVAL_CROP_PCT = 0.875
"""Resize to img_size / 0.875, centre crop img_size: the standard ResNet evaluation (256 -> 224)."""


def prepare_benchmarks(
    names: Sequence[str], label_files: Mapping[str, str | Path], images: Mapping[str, str | Path] | str | Path
) -> dict[str, tuple[Benchmark, list[Path]]]:
    """Each benchmark of ``names`` (label files as ``evaluate --labels`` takes them) with the files of its images,
    found by name under ``images`` (one folder for all, or a folder per benchmark name)."""
    benches = load_benchmarks(names, label_files)
    out = {}
    for name, bench in benches.items():
        folder = images.get(name) if isinstance(images, Mapping) else images
        if folder is None:
            raise inference.ModelError(f"no image folder given for benchmark {name!r} (--eval-images {name}=DIR)")
        out[name] = (bench, inference.find_images(bench, folder))
    return out


def eval_transform(model: nn.Module, img_size: int, crop_pct: float = EVAL_CROP_PCT) -> Callable:
    """timm's eval transform for ``model`` at ``img_size`` with ``crop_pct`` (the model's interpolation)."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(
        **resolve_data_config({"input_size": (3, img_size, img_size), "crop_pct": crop_pct}, model=model)
    )


def evaluate_model(
    model: nn.Module,
    benchmarks: Mapping[str, tuple[Benchmark, Sequence[Path]]],
    *,
    img_size: int,
    crop_pct: float = EVAL_CROP_PCT,
    batch_size: int = 256,
    num_workers: int = 4,
    device: str | None = None,
    progress: Callable[[int], object] | None = None,
) -> dict[str, dict]:
    """``{benchmark name: evaluate(...) result}`` of ``model``'s sigmoid scores; each image is run once however many
    benchmarks hold it."""
    unique: dict[Path, int] = {}
    for _, paths in benchmarks.values():
        for path in paths:
            unique.setdefault(Path(path), len(unique))
    if not unique:
        return {}
    was_training = model.training
    model.eval()
    try:
        scores = inference.predict(
            model,
            list(unique),
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            progress=progress,
            activation="sigmoid",
            transform=eval_transform(model, img_size, crop_pct),
        )
    finally:
        model.train(was_training)
    results = {}
    for name, (bench, paths) in benchmarks.items():
        rows = np.array([unique[Path(p)] for p in paths], dtype=np.int64)
        results[name] = evaluate(scores[rows], bench)
    return results
