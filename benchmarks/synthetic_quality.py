"""Quality of the whole build on the synthetic scenes (issue: labels recover the ground truth).

Builds the synthetic demo (or reuses ``--root`` if built), then scores the validation split's labels, which
the labeler never trained on, against the scenes' ground-truth label sets: micro F1 and the recall of
secondary (non-primary) objects, for the dataset's ``labels`` column (Local-Hard at tau = 0.5) and for every
aggregation scheme of Sec. 5.2 thresholded at 0.5. Also proposal recall (ground-truth objects matched by a
proposal at IoU >= 0.5). Each labeler training of ``--training`` gets its own build (same scenes and proposals):
``cached`` (the synthetic preset's: pooled features of unaugmented images, computed once) and ``online`` (the
paper's, Supp. B.1: every epoch on freshly augmented image-mask pairs). Writes ``benchmarks/synthetic_quality.json``.

    python benchmarks/synthetic_quality.py [--root DIR] [--train 64] [--val 32] [--training cached,online]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from datasets import load_dataset
from pycocotools import mask as mask_utils

from multilabel_imagenet import targets
from multilabel_imagenet.builder import demo, synthetic
from multilabel_imagenet.builder.settings import BuildConfig


def proposal_recall(folder: Path, ground_truth: Path, split: str) -> float:
    rows = {r["image_id"]: r for r in load_dataset(str(folder), "proposals", split=split)}
    found = total = 0
    for line in ground_truth.read_text().splitlines():
        t = json.loads(line)
        masks = [
            mask_utils.decode({"size": m["size"], "counts": m["counts"].encode()}) for m in rows[t["image_id"]]["masks"]
        ]
        for obj in t["objects"]:
            gt = mask_utils.decode({"size": obj["mask"]["size"], "counts": obj["mask"]["counts"].encode()})
            ious = [np.logical_and(gt, m).sum() / np.logical_or(gt, m).sum() for m in masks]
            found += bool(ious) and max(ious) >= 0.5
            total += 1
    return found / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("synthetic-quality"))
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("synthetic_quality.json"))
    parser.add_argument("--training", default="cached,online", help="Labeler trainings to build, comma-separated.")
    args = parser.parse_args()
    result = {
        "machine": platform.processor() or platform.machine(),
        "train_scenes": args.train,
        "validation_scenes": args.val,
        "trainings": {},
    }
    for training in args.training.split(","):
        base = BuildConfig.preset("synthetic")
        config = replace(base, labeler=base.labeler | {"training": training})
        result["trainings"][training] = quality(args.root, training, config, args.train, args.val)
        val = result["trainings"][training]["splits"]["validation"]["labels_column"]
        print(
            f"{training}: validation micro F1 {val['micro_f1']:.3f}, secondary recall {val['secondary_recall']:.3f} "
            f"({val['secondary_objects']} objects)"
        )
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {args.output}")


def quality(root: Path, training: str, config: BuildConfig, num_train: int, num_val: int) -> dict:
    """Build the demo with ``config`` in ``root/training`` (the same seeded scenes each time); score both splits."""
    start = time.perf_counter()
    folder = demo.build_synthetic_demo(root / training, num_train, num_val, config=config)
    result = {"build_seconds": round(time.perf_counter() - start, 1), "splits": {}}
    for split in ("train", "validation"):
        ground_truth = root / training / "scenes" / "ground_truth" / f"{split}.jsonl"
        rows = load_dataset(str(folder), "labels", split=split)
        per = {
            "labels_column": synthetic.label_quality(
                dict(zip(rows["image_id"], rows["labels"], strict=True)), ground_truth
            )
        }
        for scheme in targets.SCHEMES:
            predicted = {}
            for r in rows:
                target = targets.dense_target(
                    scheme, r["soft_classes"], r["soft_scores"], r["label"], r["global_classes"], r["global_scores"]
                )
                predicted[r["image_id"]] = np.flatnonzero(target > 0.5).tolist()
            per[scheme] = synthetic.label_quality(predicted, ground_truth)
        per["proposal_recall_iou50"] = proposal_recall(folder, ground_truth, split)
        result["splits"][split] = per
    return result


if __name__ == "__main__":
    main()
