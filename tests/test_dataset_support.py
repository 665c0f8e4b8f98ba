"""Helpers shared by the dataset tests (no tests here): records made from the synthetic mini-ImageNet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from multilabel_imagenet.builder import synthetic
from multilabel_imagenet.dataset import schema
from multilabel_imagenet.dataset.writer import BuildInfo

SOURCES = ("dinov3_b16", "dino_b8")
BUILD = BuildInfo(
    version="1.0.0",
    source="synthetic test build",
    inputs={"images": "sha256:" + "0" * 64},
    parameters={"tau_sel": 0.75, "topk": 2},
    models={"backbone": "vit_large_patch16_dinov3.lvd1689m"},
)


def synthetic_records(root: Path, num_train: int = 12, num_val: int = 4, seed: int = 0):
    """Write a mini-ImageNet under ``root`` and return (labels, proposals) records by split.

    Every ground-truth object becomes a proposal whose labeler top-2 is its class (score 0.55..0.95) and a
    neighbouring class (score 0.05..0.3); the soft labels are the per-class maximum over masks."""
    synthetic.write_mini_imagenet(root, num_train, num_val, seed)
    rng = np.random.default_rng(seed)
    labels, proposals = {}, {}
    for split in schema.SPLITS:
        labels[split], proposals[split] = [], []
        for line in (root / "ground_truth" / f"{split}.jsonl").read_text().splitlines():
            gt = json.loads(line)
            masks = []
            for j, obj in enumerate(gt["objects"]):
                top = round(float(rng.uniform(0.55, 0.95)), 3)
                other = round(float(rng.uniform(0.05, 0.3)), 3)
                masks.append(
                    schema.Proposal(
                        size=tuple(obj["mask"]["size"]),
                        counts=obj["mask"]["counts"],
                        bbox=tuple(float(v) for v in obj["bbox"]),
                        area=obj["area"],
                        source=SOURCES[j % 2],
                        classes=(obj["class_index"], (obj["class_index"] + 1) % 1000),
                        scores=(top, other),
                    )
                )
            soft: dict[int, float] = {}
            for m in masks:
                for c, s in zip(m.classes, m.scores, strict=True):
                    soft[c] = max(soft.get(c, 0.0), s)
            labels[split].append(
                schema.ImageLabels(
                    image_id=gt["image_id"],
                    path=gt["path"],
                    label=gt["label"],
                    width=gt["width"],
                    height=gt["height"],
                    soft_classes=tuple(soft),
                    soft_scores=tuple(soft.values()),
                    global_classes=(gt["label"],),
                    global_scores=(0.9,),
                    num_proposals=len(masks),
                )
            )
            proposals[split].append(
                schema.ImageProposals(
                    image_id=gt["image_id"], width=gt["width"], height=gt["height"], masks=tuple(masks)
                )
            )
    return labels, proposals
