"""Filtering MaskCut proposals with the region labeler (paper Supp. F.4).

CutLER-style pseudo-labels are a COCO JSON of masks. The labeler scores every mask (masked mean of the frozen
backbone's patch tokens, then the head's softmax); masks whose top-1 probability is below ``min_score`` (the
paper uses 0.3 and 0.5) are dropped. The output is the same COCO file with the kept annotations, each given
``labeler_class`` and ``labeler_score``; image entries are unchanged. Polygons are rasterised at the decoded
image's real size, so CutLER's swapped width/height in its image entries does not matter; an RLE must match it.
Annotations of an image that cannot be decoded are kept unjudged and counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from multilabel_imagenet import images
from multilabel_imagenet.builder import backbones, labeler
from multilabel_imagenet.dataset import importers

MIN_SCORES = (0.3, 0.5)
"""The thresholds of the paper's Supp. F.4."""


def filter_coco(
    coco_path: str | Path,
    images_root: str | Path,
    checkpoint: str | Path,
    min_score: float,
    output: str | Path,
    device: str | torch.device = "cpu",
    progress: Callable[[int], object] = lambda n: None,
) -> dict[str, float]:
    """Keep the annotations of ``coco_path`` whose labeler top-1 probability is >= ``min_score``; write them to
    ``output``; return counts (masks, kept, removed, removed fraction, images that could not be decoded)."""
    if not 0.0 <= min_score <= 1.0:
        raise ValueError(f"min_score must be in [0, 1], got {min_score}")
    coco_path = Path(coco_path)
    data = json.loads(coco_path.read_text(encoding="utf-8"))
    head, config, _, _ = labeler.load_checkpoint(checkpoint)
    head.to(device)
    extractor = backbones.load_backbone(config.backbone, "patch", device=device)
    by_image: dict = {}
    for ann in data.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    kept, undecodable = [], 0
    for entry in data["images"]:
        anns = by_image.get(entry["id"], [])
        progress(1)
        if not anns:
            continue
        try:
            image = np.asarray(images.decode_image(Path(images_root) / entry["file_name"]))
        except images.ImageDecodeError:
            undecodable += 1
            kept += anns  # not judged: kept as they were, and counted
            continue
        h, w = image.shape[:2]
        masks = np.stack(
            [importers.decode_mask(a["segmentation"], h, w, f"{coco_path}: annotation {a.get('id')}") for a in anns]
        )
        features = backbones.patch_tokens(extractor, [image], config.input_size, device)[0]
        result = labeler.label_image(head, features, masks, config)
        for ann, cls, score in zip(anns, result.mask_classes[:, 0], result.mask_scores[:, 0], strict=True):
            if score >= min_score:
                kept.append(ann | {"labeler_class": int(cls), "labeler_score": round(float(score), 6)})
    total = sum(len(a) for a in by_image.values())
    Path(output).write_text(json.dumps(data | {"annotations": kept}), encoding="utf-8")
    removed = total - len(kept)
    return {
        "masks": total,
        "kept": len(kept),
        "removed": removed,
        "removed_fraction": removed / total if total else 0.0,
        "images_not_decoded": undecodable,
    }
