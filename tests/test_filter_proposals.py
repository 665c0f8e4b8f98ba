"""Filtering a CutLER-style COCO JSON with the region labeler (Supp. F.4)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from pycocotools.coco import COCO

from multilabel_imagenet import images
from multilabel_imagenet.builder import backbones, filter_proposals, labeler, synthetic
from multilabel_imagenet.cli import main
from multilabel_imagenet.dataset import importers


@pytest.fixture()
def inputs(tmp_path):
    root = synthetic.write_mini_imagenet(tmp_path / "scenes", num_train=3, num_val=0)
    truth = [json.loads(line) for line in (root / "ground_truth" / "train.jsonl").read_text().splitlines()]
    coco = {"images": [], "annotations": []}
    for k, t in enumerate(truth):
        # CutLER's swap of width and height in the image entries
        coco["images"].append({"id": k, "file_name": t["path"], "width": t["height"], "height": t["width"]})
        for obj in t["objects"]:
            coco["annotations"].append({"id": len(coco["annotations"]), "image_id": k, "segmentation": obj["mask"]})
        h, w = t["height"], t["width"]
        coco["annotations"].append(  # a box-shaped polygon in the background
            {"id": len(coco["annotations"]), "image_id": k, "segmentation": [[0, 0, 40, 0, 40, 30, 0, 30]]}
        )
        assert h > 30 and w > 40
    path = tmp_path / "cutler.json"
    path.write_text(json.dumps(coco))
    torch.manual_seed(0)
    config = labeler.LabelerConfig(backbone="colour-texture", input_size=128, hidden=32)
    in_dim = backbones.load_backbone("colour-texture", "patch")(torch.zeros(1, 3, 128, 128)).shape[-1]
    head = labeler.LabelerHead(in_dim, 32, 1000, 0.0)
    checkpoint = tmp_path / "head.safetensors"
    labeler.save_checkpoint(checkpoint, head, config)
    return root, path, checkpoint, coco


def _top1_scores(root, coco, checkpoint):
    """The labeler's top-1 probability of every annotation, computed here step by step."""
    head, config, _, _ = labeler.load_checkpoint(checkpoint)
    extractor = backbones.load_backbone("colour-texture", "patch")
    scores = {}
    for entry in coco["images"]:
        image = np.asarray(images.decode_image(root / "train" / entry["file_name"]))
        h, w = image.shape[:2]
        anns = [a for a in coco["annotations"] if a["image_id"] == entry["id"]]
        masks = np.stack([importers.decode_mask(a["segmentation"], h, w, "test") for a in anns])
        feats = extractor(backbones.preprocess([image], 128)[0])[0]
        out = labeler.label_image(head, feats, masks, config)
        scores.update({a["id"]: float(s) for a, s in zip(anns, out.mask_scores[:, 0], strict=True)})
    return scores


def test_filter_keeps_exactly_the_confident_masks(inputs, tmp_path):
    root, path, checkpoint, coco = inputs
    scores = _top1_scores(root, coco, checkpoint)
    threshold = float(np.median(list(scores.values())))
    out = tmp_path / "filtered.json"
    stats = filter_proposals.filter_coco(path, root / "train", checkpoint, threshold, out)
    expected = {i for i, s in scores.items() if s >= threshold}
    kept = json.loads(out.read_text())["annotations"]
    assert {a["id"] for a in kept} == expected
    assert stats["masks"] == len(scores) and stats["kept"] == len(expected)
    assert stats["removed"] == len(scores) - len(expected) and 0 < stats["removed"] < len(scores)
    assert all(abs(a["labeler_score"] - scores[a["id"]]) < 1e-5 and 0 <= a["labeler_class"] < 1000 for a in kept)
    assert len(COCO(str(out)).getAnnIds()) == len(expected), "still a COCO file"


def test_cli_reports_and_keeps_undecodable_images(inputs, tmp_path):
    root, path, checkpoint, coco = inputs
    victim = root / "train" / coco["images"][0]["file_name"]
    victim.write_bytes(victim.read_bytes()[:100])
    out = tmp_path / "filtered.json"
    result = CliRunner().invoke(
        main,
        [
            "filter-proposals",
            str(path),
            "--images",
            str(root / "train"),
            "--checkpoint",
            str(checkpoint),
            "--min-score",
            "0.0",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        f"0 of {len(coco['annotations'])} masks removed" in result.output
        and "1 images could not be decoded" in result.output
    )
    with pytest.raises(ValueError, match="min_score"):
        filter_proposals.filter_coco(path, root / "train", checkpoint, 1.5, out)
