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
    "count": "_k<group>: number of images with that many labels (authors' by_gt_label_count count)",
    "map_per_sample": "per-sample average precision over all 1000 classes, averaged over images; the paper's and "
    "the authors' 'mAP' (%); with sklearn ties = label_ranking_average_precision_score; _k1/_k2/_k3/_k4plus "
    "(_k3plus): images with that many labels (paper Table 2)",
    "map_macro": "classic macro mAP: per-class AP over images with a label set, averaged over classes with "
    ">= 1 positive (%); _k<group>: on the images with that many labels",
    "subset_accuracy": "the thresholded prediction equals the label set exactly (%)",
    "mean_iou": "|predicted & labels| / |predicted | labels| per image, averaged over images (%)",
    "micro_precision": "precision pooled over all (image, class) pairs of the thresholded predictions (%)",
    "micro_recall": "recall pooled over all (image, class) pairs (%)",
    "micro_f1": "F1 of micro_precision and micro_recall (%)",
    "macro_precision_over_gt_classes": "per-class precision averaged over classes with >= 1 label "
    "(0 if never predicted) (%)",
    "macro_recall_over_gt_classes": "per-class recall averaged over classes with >= 1 label (%)",
    "macro_f1_over_gt_classes": "per-class F1 averaged over classes with >= 1 label (%)",
    "_k<group>": "suffix: on the images with 1, 2, 3, >= 4 labels (k1 k2 k3 k4plus; --bucket-scheme simple: "
    "k1 k2 k3plus)",
    "@thresh@original": "suffix: per-class thresholds predicting each class on as many images as carry it as "
    "original label (authors' thresh@original)",
    "@thresh@val": "suffix: per-class thresholds predicting each class on as many labelled images as the "
    "benchmark labels with it (authors' thresh@val)",
    "@thresh@<t>": "suffix: predict every class scoring >= t (authors' thresh@0.5)",
    "@thresh@tuned": "suffix: per-class thresholds maximising each class's F1 on this benchmark itself "
    "(ours; oracle, optimistic)",
}


def family(key: str) -> str:
    """The metric family of a result key: ``micro_f1@thresh@0.5`` -> ``micro_f1``, ``map_macro_k2`` -> ``map_macro``,
    ``micro_f1_k4plus@thresh@val`` -> ``micro_f1``."""
    key = key.split("@", 1)[0]
    return re.sub(r"_k(\d+|\d+plus)$", "", key)


def _suffixes(key: str) -> set[str]:
    """The definition keys of a result key's bucket and threshold-rule suffixes."""
    base, _, rule = key.partition("@")
    out = {"_k<group>"} if family(base) != base and not base.startswith("variable_topk") else set()
    if rule:
        out.add(f"@{rule}" if rule in ("thresh@original", "thresh@val", "thresh@tuned") else "@thresh@<t>")
    return out


def _settings_line(name: str, settings: dict[str, Any]) -> str:
    scores = "sigmoid applied (the scores are logits)" if settings["threshold_scores"] != "scores" else "as given"
    fallback = "argmax (authors)" if settings["argmax_fallback"] else "none (an image may predict nothing)"
    ties = {"sklearn": "sklearn (classes tied with a label count against it)",
            "authors": "authors (np.argsort order of the thresholded scores)"}[settings["ap_ties"]]  # fmt: skip
    return (
        f"settings on {name}: thresholds {', '.join(settings['threshold_rules'])} on scores {scores}; "
        f"empty prediction: {fallback}; AP ties: {ties}; buckets: {settings['bucket_scheme']}"
    )


def to_json(results: Results) -> str:
    """``{"<benchmark>": {"n_images": int, "<metric>": float, ..., "settings": {...}, "skipped": {...}}, ...}``."""
    return json.dumps(results, indent=2) + "\n"


def write_json(results: Results, path: str | Path) -> None:
    Path(path).write_text(to_json(results), encoding="utf-8")


def format_table(results: Results) -> str:
    """Metrics as rows, benchmarks as columns; then skipped metrics with their reasons and the definitions."""
    names = list(results)
    keys: list[str] = []
    for block in results.values():
        keys += [k for k in block if k not in ("skipped", "settings") and k not in keys]
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
        if "settings" in results[name]:
            lines.append(_settings_line(name, results[name]["settings"]))
        for metric, reason in results[name].get("skipped", {}).items():
            lines.append(f"skipped on {name}: {metric}: {reason}")
    used = {family(k) for k in keys}.union(*(_suffixes(k) for k in keys))
    lines.append("")
    lines += [f"{k}: {text}" for k, text in DEFINITIONS.items() if k in used]
    return "\n".join(lines)
