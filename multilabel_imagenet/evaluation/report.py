"""Evaluation results as JSON and as a readable table with the definition of every metric shown."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

Results = dict[str, dict[str, Any]]

# Definitions by metric family (the key without its @threshold / label-count suffix).
DEFINITIONS: dict[str, str] = {
    "n_images": "images scored by the benchmark's main metric",
    "n_images_original": "images with an original label (denominator of top1/top5)",
    "top1": "top-1 accuracy against the original single label (%)",
    "top5": "top-5 accuracy against the original single label (%)",
    "main_top1": "top-1 accuracy against the annotators' main-object label (%)",
    "multilabel_top1": "ReaL-style top-1: the argmax is in the image's label set, averaged over scored images (%)",
    "multilabel_top5": "ReaL-style top-5: one of the 5 highest-scored classes is in the label set (%)",
    "multilabel_top1_class_avg": "multilabel_top1 computed per original class, then averaged over classes "
    "(Shankar et al. / TFDS official number) (%)",
    "correct": "number of images whose top-1 is in the accepted labels (ImageNet-M official number)",
    "variable_topk": "Anzaku et al. variable top-k: with k = |label set|, the k highest-scored classes are "
    "exactly the label set; averaged over images (%); _k<n>: within images with n labels",
    "asma": "ASMA (our reading of Anzaku et al.): unweighted mean over label-count subgroups (one per n present) "
    "of the subgroup's variable top-k accuracy (%)",
    "r_precision": "R-precision: fraction of the image's k labels among its k highest-scored classes, averaged "
    "over images (partial-credit counterpart of variable_topk) (%)",
    "map_per_sample": "per-sample average precision over all 1000 classes, averaged over images = sklearn "
    "label_ranking_average_precision_score; the paper's 'mAP' (%); _k1/_k2/_k3/_k4plus: images with that "
    "many labels (paper Table 2)",
    "map_macro": "classic macro mAP: per-class AP averaged over classes with >= 1 positive (%); "
    "_k<group>: on the images with that many labels",
    "precision_micro": "micro precision over all (image, class) pairs, thresholded predictions (%)",
    "recall_micro": "micro recall (%)",
    "f1_micro": "micro F1 (%)",
    "precision_macro": "per-class precision averaged over classes with >= 1 positive (0 if nothing predicted) (%)",
    "recall_macro": "per-class recall averaged over classes with >= 1 positive (%)",
    "f1_macro": "per-class F1 averaged over classes with >= 1 positive (%)",
    "subset_accuracy": "the thresholded prediction equals the label set exactly (%)",
    "@<t>": "suffix: predict every class with probability >= t",
    "@tuned": "suffix: per-class thresholds maximising each class's F1 on this benchmark itself (oracle, optimistic)",
}


def family(key: str) -> str:
    """The metric family of a result key: ``f1_micro@0.5`` -> ``f1_micro``, ``map_macro_k2`` -> ``map_macro``."""
    key = key.split("@", 1)[0]
    return re.sub(r"_k(\d+|\d+plus)$", "", key)


def to_json(results: Results) -> str:
    """``{"<benchmark>": {"n_images": int, "<metric>": float, ..., "skipped": {...}}, ...}``."""
    return json.dumps(results, indent=2) + "\n"


def write_json(results: Results, path: str | Path) -> None:
    Path(path).write_text(to_json(results), encoding="utf-8")


def format_table(results: Results) -> str:
    """Metrics as rows, benchmarks as columns; then skipped metrics with their reasons and the definitions."""
    names = list(results)
    keys: list[str] = []
    for block in results.values():
        keys += [k for k in block if k != "skipped" and k not in keys]
    width = max([len(k) for k in keys] + [6])
    columns = [max(len(n), 8) for n in names]
    lines = ["  ".join([" " * width] + [n.rjust(w) for n, w in zip(names, columns, strict=True)])]
    for key in keys:
        cells = []
        for name, w in zip(names, columns, strict=True):
            value = results[name].get(key)
            cells.append(
                ("-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)).rjust(w)
            )
        lines.append("  ".join([key.ljust(width)] + cells))
    for name in names:
        for metric, reason in results[name].get("skipped", {}).items():
            lines.append(f"skipped on {name}: {metric}: {reason}")
    used = {family(k) for k in keys} | {"@tuned" for k in keys if k.endswith("@tuned")}
    used |= {"@<t>" for k in keys if "@" in k and not k.endswith("@tuned")}
    lines.append("")
    lines += [f"{k}: {text}" for k, text in DEFINITIONS.items() if k in used]
    return "\n".join(lines)
