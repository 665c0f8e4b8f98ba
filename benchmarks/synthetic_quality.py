"""Quality of the whole build on the synthetic scenes (issue: labels recover the ground truth).

Builds the synthetic demo (or reuses ``--root`` if built), then scores the validation split's labels, which
the labeler never trained on, against the scenes' ground-truth label sets: micro F1 and the recall of
secondary (non-primary) objects, for the dataset's ``labels`` column (Local-Hard at tau = 0.5) and for every
aggregation scheme of Sec. 5.2 thresholded at 0.5. Also proposal recall (ground-truth objects matched by a
proposal at IoU >= 0.5). Writes ``benchmarks/synthetic_quality.json``.

    python benchmarks/synthetic_quality.py [--root DIR] [--train 64] [--val 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from datasets import load_dataset
from pycocotools import mask as mask_utils

from multilabel_imagenet import targets
from multilabel_imagenet.builder import demo, synthetic


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
    args = parser.parse_args()
    start = time.perf_counter()
    folder = demo.build_synthetic_demo(args.root, args.train, args.val)
    seconds = time.perf_counter() - start
    result = {
        "machine": platform.processor() or platform.machine(),
        "build_seconds": round(seconds, 1),
        "train_scenes": args.train,
        "validation_scenes": args.val,
        "splits": {},
    }
    for split, gt_name in (("train", "train"), ("validation", "validation")):
        ground_truth = args.root / "scenes" / "ground_truth" / f"{gt_name}.jsonl"
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
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    val = result["splits"]["validation"]["labels_column"]
    print(
        f"validation: micro F1 {val['micro_f1']:.3f}, secondary recall {val['secondary_recall']:.3f} "
        f"({val['secondary_objects']} objects); written to {args.output}"
    )


if __name__ == "__main__":
    main()
