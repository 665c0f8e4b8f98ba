"""Dense ReLabel-style label maps from our labeler, for training with crop-level soft labels (paper Supp. F.3).

For every image of a source, the labeler's backbone gives patch tokens, :func:`labeler.label_map` pools them to a
15 x 15 grid and applies the head; the map is saved as ``<output>/<image path with .pt>`` (for the train layout:
``<wnid>/<image_id>.pt``, as ReLabel ships them), a float32 [2, 5, 15, 15] tensor that
:func:`relabel_maps.read_map` and ReLabel-based training code read. Images that cannot be decoded are listed in
``<output>/errors.jsonl`` and skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from multilabel_imagenet import atomic, images
from multilabel_imagenet.builder import backbones, labeler, relabel_maps


def write_label_maps(
    records: Sequence[images.ImageRecord],
    checkpoint: str | Path,
    output: str | Path,
    size: int = relabel_maps.GRID,
    device: str | torch.device = "cpu",
    progress: Callable[[int], object] = lambda n: None,
) -> dict[str, int]:
    """Write one map per record (existing maps are kept, so a rerun resumes); return counts."""
    output = Path(output)
    head, config, _, _ = labeler.load_checkpoint(checkpoint)
    head.to(device)
    extractor = backbones.load_backbone(config.backbone, "patch", device=device)
    written = skipped = 0
    errors = []
    for record, image, failure in images.iter_decoded(records):
        progress(1)
        target = relabel_maps.map_path(output, record.path)
        if target.is_file():
            skipped += 1
            continue
        if failure is not None:
            errors.append(failure.to_dict())
            continue
        features = backbones.patch_tokens(extractor, [np.asarray(image)], config.input_size, device)[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic.temporary(target)
        torch.save(torch.from_numpy(labeler.label_map(head, features, size)), tmp)
        tmp.replace(target)
        written += 1
    output.mkdir(parents=True, exist_ok=True)
    (output / "errors.jsonl").write_text("".join(json.dumps(e) + "\n" for e in errors), encoding="utf-8")
    return {"images": len(records), "written": written, "already_there": skipped, "failed": len(errors)}
