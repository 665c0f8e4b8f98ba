import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from multilabel_imagenet import classes, images
from multilabel_imagenet.builder import synthetic
from multilabel_imagenet.builder.synthetic import Scene, SceneObject


def test_scenes_are_deterministic():
    a, b = synthetic.make_scene(3, seed=1), synthetic.make_scene(3, seed=1)
    assert a.image_id == b.image_id and np.array_equal(a.image, b.image)
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.objects, b.objects, strict=True))
    assert not np.array_equal(synthetic.make_scene(3, seed=2).image[:50], a.image[:50])
    assert synthetic.make_scene(3, seed=1, split="validation").image_id == "ILSVRC2012_val_00000004"
    with pytest.raises(ValueError, match="split"):
        synthetic.make_scene(0, split="test")


def test_scene_ground_truth_is_consistent():
    counts = Counter()
    for i in range(60):
        scene = synthetic.make_scene(i)
        counts[len(scene.objects)] += 1
        masks = np.stack([o.mask for o in scene.objects])
        assert masks.shape[1:] == scene.image.shape[:2] and scene.image.dtype == np.uint8
        assert masks.sum(0).max() == 1, "visible masks are disjoint"
        assert all(o.area > 0.01 * scene.width * scene.height for o in scene.objects)
        assert scene.label == max(scene.objects, key=lambda o: o.area).class_index
        assert scene.image_id == f"{classes.wnid_of(scene.label)}_{i}"
        assert scene.label_set == sorted({o.class_index for o in scene.objects})
        assert set(scene.label_set) <= {c.index for c in synthetic.CLASSES}
    assert set(counts) == {1, 2, 3, 4}
    assert counts[1] < 45, "a good share of scenes hold several objects"


def test_objects_look_like_their_class():
    palette = {c.index: np.array(c.colour, float) for c in synthetic.CLASSES if c.texture in ("flat", "shaded")}
    checked = 0
    for i in range(30):
        scene = synthetic.make_scene(i)
        for obj in scene.objects:
            if obj.class_index in palette:
                inside = scene.image[obj.mask].astype(float).mean(0)
                assert np.abs(inside - palette[obj.class_index]).max() < 60
                checked += 1
        background = scene.image[~np.any([o.mask for o in scene.objects], axis=0)].astype(float)
        saturation = (background.max(1) - background.min(1)).mean()
        assert saturation < 60, "the clutter is low-saturation, unlike the objects"
    assert checked > 10


def test_relabel_map_format_and_orientation():
    # The single label (class 949) fills the bottom-left; an off-centre object of class 340 sits in the top-right
    # corner: image rows 0..49 of 150 -> map rows 0-4, columns 200..299 of 300 -> map columns 10-14.
    big, small = np.zeros((150, 300), bool), np.zeros((150, 300), bool)
    big[60:, :180] = True
    small[:50, 200:] = True
    scene = Scene("x", np.zeros((150, 300, 3), np.uint8), [SceneObject(949, big), SceneObject(340, small)])
    label_map = synthetic.relabel_map(scene, noise=0.0)
    assert label_map.shape == (2, 5, 15, 15) and label_map.dtype == np.float32
    logits, indices = label_map
    assert np.all(np.diff(logits, axis=0) <= 0), "top-5 sorted by logit"
    assert np.all(indices == np.round(indices)) and indices.min() >= 0 and indices.max() < 1000
    top1 = indices[0].astype(int)
    assert np.all(top1[:5, 10:] == 340) and logits[0, :5, 10:].min() > 13
    assert np.all(top1[6:, :12] == 949) and logits[0, 6:, :9].min() > 13
    assert np.all(top1[:5, :10] == 949) and logits[0, :5, :10].max() < 3, "elsewhere only the weak image-wide logit"
    assert not np.isin(340, indices[:, 5:, :9]), "the small object leaves no trace far from it"


def test_relabel_map_noise_is_controllable():
    scene = synthetic.make_scene(5)
    clean = synthetic.relabel_map(scene, noise=0.0)
    assert np.array_equal(clean, synthetic.relabel_map(scene, noise=0.0))
    noisy = synthetic.relabel_map(scene, noise=3.0)
    assert not np.array_equal(clean[1], noisy[1]), "strong noise reorders the top-5"
    assert np.array_equal(noisy, synthetic.relabel_map(scene, noise=3.0)), "noise is seeded"


def test_write_mini_imagenet_is_an_imagenet_folder(tmp_path):
    root = synthetic.write_mini_imagenet(tmp_path / "mini", num_train=6, num_val=3, seed=0)
    train = images.open_source(root / "train")
    val = images.open_source(root / "val", labels=root / "val_labels.txt")
    truth = {
        split: [json.loads(line) for line in (root / "ground_truth" / f"{split}.jsonl").read_text().splitlines()]
        for split in ("train", "validation")
    }
    assert [r.image_id for r in train] == sorted(t["image_id"] for t in truth["train"])
    assert [r.label for r in val] == [t["label"] for t in truth["validation"]]
    by_id = {t["image_id"]: t for t in truth["train"]}
    for record in train:
        t = by_id[record.image_id]
        assert record.path == t["path"] and record.label == t["label"]
        scene = synthetic.make_scene(int(record.image_id.rsplit("_", 1)[1]))
        decoded = np.asarray(images.decode_image(record.full_path))
        assert decoded.shape == (t["height"], t["width"], 3)
        assert np.abs(decoded.astype(int) - scene.image.astype(int)).mean() < 8, "JPEG of the same scene"
        for obj, stored in zip(scene.objects, t["objects"], strict=True):
            assert np.array_equal(mask_utils.decode(stored["mask"]).astype(bool), obj.mask)
            assert stored["bbox"] == list(obj.bbox) and stored["class_index"] == obj.class_index
        wnid = classes.wnid_of(t["label"])
        label_map = torch.load(root / "relabel_maps" / wnid / f"{record.image_id}.pt", weights_only=True)
        assert label_map.shape == (2, 5, 15, 15) and label_map.dtype == torch.float32
    meta = json.loads((root / "classes.json").read_text())
    assert [c["wnid"] for c in meta["classes"]] == [c.wnid for c in synthetic.CLASSES]
    again = synthetic.write_mini_imagenet(tmp_path / "again", num_train=6, num_val=3, seed=0)
    first = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert first == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in first:
        if rel.suffix != ".pt":  # torch.save embeds a per-file record name; the tensors themselves must match
            assert (root / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert Image.open(root / "train" / train[0].path).format == "JPEG"
