"""RegionLabeler (Supp. F.5): a box or mask is pooled and ranked exactly as the build labels a proposal."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from browse_support import tiny_labeler
from pycocotools import mask as mask_utils

from multilabel_imagenet import classes, images
from multilabel_imagenet.builder import backbones, configs, labeler, regions, synthetic


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = synthetic.write_mini_imagenet(tmp_path_factory.mktemp("scenes"), num_train=0, num_val=1)
    truth = json.loads((root / "ground_truth" / "validation.jsonl").read_text().splitlines()[0])
    masks = np.stack(
        [mask_utils.decode({**o["mask"], "counts": o["mask"]["counts"].encode()}) for o in truth["objects"]]
    )
    checkpoint = tiny_labeler(tmp_path_factory.mktemp("labeler") / "head.safetensors")
    return root / "val" / truth["path"], masks.astype(bool), truth, checkpoint


def test_masks_are_ranked_as_label_image_ranks_proposals(scene):
    path, masks, _, checkpoint = scene
    region = regions.RegionLabeler(checkpoint)
    head, config, _, _ = labeler.load_checkpoint(checkpoint)
    image = np.asarray(images.decode_image(path))
    features = backbones.patch_tokens(backbones.load_backbone(config.backbone, "patch"), [image], config.input_size)[0]
    expected = labeler.label_image(head, features, masks, config)
    for mask, top, scores in zip(masks, expected.mask_classes, expected.mask_scores, strict=True):
        ranked = region.classify(path, mask=mask, k=config.top_k)
        assert [r.index for r in ranked] == top.tolist()
        np.testing.assert_allclose([r.probability for r in ranked], scores, rtol=1e-5)
        assert all(r.wnid == classes.wnid_of(r.index) and r.name == classes.name_of(r.index) for r in ranked)
    every = region.classify(image, mask=masks[0], k=1000)
    assert np.isclose(sum(r.probability for r in every), 1.0, atol=1e-4)
    assert [r.probability for r in every] == sorted((r.probability for r in every), reverse=True)


def test_a_box_is_the_mask_of_the_pixels_inside_it(scene):
    path, _, truth, checkpoint = scene
    region = regions.RegionLabeler(checkpoint)
    x, y, w, h = truth["objects"][0]["bbox"]
    box = (x + w, y + h, x, y)  # corners in any order
    inside = regions.box_mask(box, truth["height"], truth["width"])
    assert inside.sum() == w * h and inside[y, x] and inside[y + h - 1, x + w - 1] and not inside[y + h, x]
    tokens = region.tokens(path)
    assert region.classify(path, box=box, tokens=tokens) == region.classify(path, mask=inside)
    assert region.rank(tokens, inside[None], 5)[0] == region.classify(path, box=box)
    with pytest.raises(ValueError, match="exactly one of box= and mask="):
        region.classify(path)
    with pytest.raises(ValueError, match="covers no pixel"):
        region.classify(path, box=(-50, -50, -10, -10))
    with pytest.raises(ValueError, match=r"mask is 3 x 3, the image"):
        region.classify(path, mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match=r"region masks \[0\] are empty"):
        region.rank(tokens, np.zeros((1, 4, 4), bool))


def test_maskcut_proposer_finds_the_scene_objects(scene):
    path, masks, truth, _ = scene
    # the synthetic preset, smaller and without its CRF step (slow on CPU; test_crf.py tests the CRF)
    quick = [replace(c, crf=False, input_size=256) for c in configs.preset("synthetic")]
    found = regions.MaskCutProposer(quick)(path)
    assert found and {p.source for p in found} == {"colour_texture"}
    assert all(p.size == (truth["height"], truth["width"]) for p in found)
    rles = [p.rle() for p in found]
    truth_rles = [o["mask"] | {"counts": o["mask"]["counts"].encode()} for o in truth["objects"]]
    best = mask_utils.iou(truth_rles, rles, [0] * len(rles)).max(1)
    assert (best >= 0.5).all(), best
    with pytest.raises(ValueError, match="unknown MaskCut preset"):
        regions.MaskCutProposer("nope")
