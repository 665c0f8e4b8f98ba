"""load(): local/Hub resolution, folder checks, ImageNet join, scheme targets, crop-aware targets, collate."""

from __future__ import annotations

import shutil
from dataclasses import replace

import datasets
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from test_dataset_support import BUILD, synthetic_records
from torch.utils.data import DataLoader

from multilabel_imagenet import targets
from multilabel_imagenet.builder import aggregate
from multilabel_imagenet.dataset import crops, loading, schema, training, writer


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini") / "mini"
    labels, proposals = synthetic_records(root, num_train=8, num_val=3)
    folder = writer.write_dataset(root.parent / "multilabel-imagenet", BUILD, labels=labels, proposals=proposals)
    return root, folder, labels, proposals


@pytest.fixture(scope="module")
def train(mini, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return (
        loading.load(mini[1], "labels", "train", imagenet_root=mini[0], cache_dir=cache),
        loading.load(mini[1], "proposals", "train", cache_dir=cache),
    )


def test_resolve_local_and_hub(mini):
    assert loading.resolve(mini[1]) == loading.Source(str(mini[1].resolve()), None, True)
    assert loading.resolve("org/multilabel-imagenet", "v1.0.0") == loading.Source(
        "org/multilabel-imagenet", "v1.0.0", False
    )
    with pytest.raises(ValueError, match="pass revision="):
        loading.resolve("org/multilabel-imagenet")
    with pytest.raises(ValueError, match="neither an existing dataset folder nor a Hub repo id"):
        loading.resolve("./no/such/folder")
    with pytest.raises(ValueError, match="has no revisions"):
        loading.resolve(mini[1], "v1.0.0")


def test_load_with_images(train, mini):
    labels, _ = train
    assert isinstance(labels.features["image"], datasets.Image)
    row = labels[0]
    assert row["image"].size == (row["width"], row["height"])
    assert row["image_id"] == mini[2]["train"][0].image_id


def test_load_streaming_validation(mini, tmp_path):
    ds = loading.load(mini[1], "labels", "validation", imagenet_root=mini[0], streaming=True)
    rows = list(ds)
    assert [r["image_id"] for r in rows] == [r.image_id for r in mini[2]["validation"]]
    assert rows[0]["image"].size == (rows[0]["width"], rows[0]["height"])


def test_damaged_folders_are_named(mini, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(mini[1], folder)
    shard = folder / "data/proposals/train-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(writer.DatasetFolderError, match=r"train-00000-of-00001.parquet: \d+ bytes but .* records"):
        loading.load(folder, "proposals", "train", cache_dir=tmp_path / "c")
    manifest = writer.read_build_json(folder)
    manifest["configs"]["proposals"]["splits"]["train"]["files"][0]["num_bytes"] = shard.stat().st_size
    (folder / writer.BUILD_JSON).write_text(__import__("json").dumps(manifest))
    with pytest.raises(writer.DatasetFolderError, match="train-00000-of-00001.parquet: not a complete Parquet file"):
        loading.load(folder, "proposals", "train", cache_dir=tmp_path / "c")
    (folder / "README.md").write_text("---\nlicense: other\n---\n")
    with pytest.raises(writer.DatasetFolderError, match="README.md: the YAML header has no `configs`"):
        loading.load(folder, "labels", "train", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="unknown config 'masks'"):
        loading.load(mini[1], "masks")


@pytest.mark.parametrize("scheme", [*targets.SCHEMES, "local_hard@0.8+pred"])
def test_scheme_targets_match_dense_target(train, scheme):
    labels, _ = train
    data = training.TrainingDataset(labels, scheme)
    rows = labels.remove_columns("image")
    for i in range(len(data)):
        item, row = data[i], rows[i]
        expected = targets.dense_target(
            scheme, row["soft_classes"], row["soft_scores"], row["label"], row["global_classes"], row["global_scores"]
        )
        assert item["target"].dtype == torch.float32 and item["target"].shape == (1000,)
        np.testing.assert_array_equal(item["target"].numpy(), expected)
        assert item["label"] == row["label"] and item["image"].size == (row["width"], row["height"])
    if scheme.endswith("+original"):
        assert all(data[i]["target"][rows[i]["label"]] == 1.0 for i in range(len(data)))


@pytest.mark.parametrize("scheme", ["local_hard@0.5+original+pred", "local_soft+pred", "one_hot"])
def test_authors_profile_targets(train, scheme):
    labels, _ = train
    data = training.TrainingDataset(labels, scheme, profile="authors")
    assert data.scheme.profile == "authors"
    rows = labels.remove_columns("image")
    parsed = targets.parse_scheme(scheme, "authors")
    for i in range(len(data)):
        row = rows[i]
        expected = targets.dense_target(
            parsed, row["soft_classes"], row["soft_scores"], row["label"], row["global_classes"], row["global_scores"]
        )
        np.testing.assert_array_equal(data[i]["target"].numpy(), expected)


def test_pred_without_whole_image_predictions_is_refused(mini, tmp_path):
    records = {s: [replace(r, global_classes=(), global_scores=()) for r in rows] for s, rows in mini[2].items()}
    folder = writer.write_dataset(tmp_path / "imported", BUILD, labels=records)
    labels = loading.load(folder, "labels", "train", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"needs the labeler's whole-image prediction, but 8 of 8 images"):
        training.TrainingDataset(labels, "local_soft+pred")
    assert training.TrainingDataset(labels, "local_soft+original")[0]["target"].shape == (1000,)


def test_unknown_scheme_is_named(train):
    with pytest.raises(ValueError, match="unknown scheme 'soft_local'"):
        training.TrainingDataset(train[0], "soft_local")


def test_dataloader_batches_keep_dtypes(train):
    import torchvision.transforms.v2 as T

    transform = T.Compose([T.ToImage(), T.ToDtype(torch.float16, scale=True)])
    data = training.TrainingDataset(
        train[0],
        "local_soft+original",
        transform,
        proposals=train[1],
        crop=crops.RandomResizedCropWithBox(64),
        target_dtype=torch.float16,
        columns=("soft_classes", "soft_scores", "width"),
    )
    batch = next(iter(DataLoader(data, batch_size=4, collate_fn=training.collate)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float16
    assert batch["target"].shape == (4, 1000) and batch["target"].dtype == torch.float16
    assert batch["label"].dtype == torch.int64 and len(batch["image_id"]) == 4
    assert batch["box"].shape == (4, 4)
    assert batch["soft_classes"].dtype == torch.int16 and batch["soft_scores"].dtype == torch.float32
    assert batch["soft_classes"].shape[0] == 4 and batch["width"].dtype == torch.int64
    with pytest.raises(ValueError, match=r"columns \['masks'\] are not in the split"):
        training.TrainingDataset(train[0], columns=("masks",))


def test_collate_pads_and_keeps_float16():
    batch = training.collate(
        [
            {"scores": np.array([0.5, 0.25], dtype=np.float16), "classes": np.array([3, 7], dtype=np.int16), "k": 1},
            {"scores": np.array([0.75], dtype=np.float16), "classes": np.array([9], dtype=np.int16), "k": 2},
        ]
    )
    assert batch["scores"].dtype == torch.float16 and batch["classes"].dtype == torch.int16
    assert batch["scores"].tolist() == [[0.5, 0.25], [0.75, 0.0]]
    assert batch["classes"].tolist() == [[3, 7], [9, -1]]
    assert batch["k"].tolist() == [1, 2]


def test_crop_fractions_equal_pixel_counts(mini):
    rng = np.random.default_rng(0)
    for record in mini[3]["train"]:
        masks = [schema.proposals_row(record)["masks"][j] for j in range(len(record.masks))]
        for _ in range(5):
            w, h = int(rng.integers(1, record.width)), int(rng.integers(1, record.height))
            x, y = int(rng.integers(0, record.width - w + 1)), int(rng.integers(0, record.height - h + 1))
            got = crops.crop_fractions(masks, (x, y, w, h))
            for m, f in zip(masks, got, strict=True):
                pixels = mask_utils.decode({"size": m["size"], "counts": m["counts"].encode()})
                assert f == pytest.approx(pixels[y : y + h, x : x + w].sum() / pixels.sum(), abs=1e-6)


class _FixedBox(crops.RandomResizedCropWithBox):
    def __init__(self, box):
        super().__init__(32)
        self.box = box

    def sample_box(self, width, height):
        return self.box


def test_crop_aware_target(train, mini):
    labels, proposals = train
    record = next(r for r in mini[3]["train"] if len(r.masks) >= 2)
    index = labels["image_id"].index(record.image_id)
    whole = training.TrainingDataset(
        labels, "local_soft", proposals=proposals, crop=_FixedBox((0, 0, record.width, record.height))
    )
    plain = training.TrainingDataset(labels, "local_soft")
    # A crop holding the whole image gives the stored Local-Soft target (scores stored in float16 per mask).
    np.testing.assert_allclose(whole[index]["target"].numpy(), plain[index]["target"].numpy(), atol=1e-3)
    mask = record.masks[0]
    x, y, w, h = (int(v) for v in mask.bbox)
    left = training.TrainingDataset(labels, "local_soft", proposals=proposals, crop=_FixedBox((x, y, w // 2, h)))
    target = left[index]["target"].numpy()
    pixels = mask_utils.decode({"size": list(mask.size), "counts": mask.counts.encode()})
    fractions = [
        mask_utils.decode({"size": list(m.size), "counts": m.counts.encode()})[y : y + h, x : x + w // 2].sum() / m.area
        for m in record.masks
    ]
    assert fractions[0] == pytest.approx(pixels[y : y + h, x : x + w // 2].sum() / mask.area)
    expected = np.zeros(1000, dtype=np.float32)
    for m, f in zip(record.masks, fractions, strict=True):
        for c, s in zip(m.classes, m.scores, strict=True):
            expected[c] = max(expected[c], f * np.float16(s))
    np.testing.assert_allclose(target, expected, rtol=1e-5, atol=1e-6)
    assert 0 < target[mask.classes[0]] < mask.scores[0]


def test_mask_size_disagreeing_with_image(train, mini):
    labels, _ = train
    record = mini[3]["train"][0]
    bad = replace(record, masks=(replace(record.masks[0], size=(record.width, record.height)),))
    broken = datasets.Dataset.from_list([schema.proposals_row(bad)], features=schema.features("proposals"))
    data = training.TrainingDataset(labels, "local_soft", proposals=broken, crop=_FixedBox((0, 0, 8, 8)))
    with pytest.raises(training.MaskSizeError, match=rf"image '{record.image_id}': mask 0 .* has RLE size"):
        data[labels["image_id"].index(record.image_id)]


def test_random_resized_crop_box_stays_inside():
    crop = crops.RandomResizedCropWithBox(48, scale=(0.2, 1.0))
    torch.manual_seed(0)
    from PIL import Image

    image = Image.new("RGB", (120, 80))
    for _ in range(50):
        out, (x, y, w, h) = crop(image)
        assert out.size == (48, 48)
        assert x >= 0 and y >= 0 and x + w <= 120 and y + h <= 80 and w * h >= 0.2 * 120 * 80 - 200


def test_random_resized_crop_boxes_follow_torchvisions_rule():
    from torchvision.transforms import RandomResizedCrop

    crop = crops.RandomResizedCropWithBox(224)
    torch.manual_seed(0)
    ours = np.array([crop.sample_box(500, 375) for _ in range(4000)], dtype=np.float64)
    image = torch.zeros(3, 375, 500)
    drawn = [RandomResizedCrop.get_params(image, crop.scale, crop.ratio) for _ in range(4000)]
    theirs = np.array([(j, i, w, h) for i, j, h, w in drawn], dtype=np.float64)
    for name, a, b in [
        ("x", ours[:, 0], theirs[:, 0]),
        ("area", ours[:, 2] * ours[:, 3], theirs[:, 2] * theirs[:, 3]),
        ("aspect", np.log(ours[:, 2] / ours[:, 3]), np.log(theirs[:, 2] / theirs[:, 3])),
    ]:
        standard_error = np.sqrt((a.var() + b.var()) / len(a))
        assert abs(a.mean() - b.mean()) < 4 * standard_error, name
    for width, height in [(1000, 10), (10, 1000)]:  # no try fits: the central crop at the nearest allowed ratio
        i, j, h, w = RandomResizedCrop.get_params(torch.zeros(3, height, width), crop.scale, crop.ratio)
        assert crop.sample_box(width, height) == (j, i, w, h)


def test_box_counts_are_the_rle_frpyobjects_gives():
    rng = np.random.default_rng(3)
    for height, width in [(375, 500), (500, 333), (1, 1), (2, 3), (3, 1), (1, 5), (2448, 3264)]:
        boxes = [(0, 0, width, height), (width - 1, height - 1, 1, 1), (0, 0, 1, 1), (0, height - 1, width, 1)]
        boxes += [(width - 1, 0, 1, height), (0, 0, width, 1)]
        for _ in range(100):
            w, h = int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))
            boxes.append((int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h))
        for box in boxes:
            expected = mask_utils.frPyObjects(np.array([box], dtype=np.float64), height, width)[0]["counts"]
            assert crops.box_counts(box, height, width) == expected, (box, height, width)


def test_streaming_training_dataset_matches_map_style(mini, train, tmp_path):
    # Two shards so that two DataLoader workers each read one.
    policy = writer.ShardPolicy(min_rows_per_shard=4)
    folder = writer.write_dataset(tmp_path / "sharded", BUILD, labels={"train": mini[2]["train"]}, policy=policy)
    streamed = loading.load(folder, "labels", "train", imagenet_root=mini[0], streaming=True)
    data = training.StreamingTrainingDataset(streamed, "local_hard@0.5+pred", columns=("soft_scores",))
    loader = DataLoader(data, batch_size=3, num_workers=2, collate_fn=training.collate)
    got, count = {}, 0
    for batch in loader:
        assert batch["soft_scores"].dtype == torch.float32
        got.update(zip(batch["image_id"], batch["target"], strict=True))
        count += len(batch["image_id"])
    expected = training.TrainingDataset(train[0], "local_hard@0.5+pred")
    assert count == len(got) == len(expected)  # each worker read its own shard, none twice
    for i in range(len(expected)):
        item = expected[i]
        assert torch.equal(got[item["image_id"]], item["target"])


def _coco_fractions(masks, box):
    """The pycocotools reference: each straddling mask's RLE intersected with the box's RLE."""
    out = np.zeros(len(masks), dtype=np.float32)
    for i, m in enumerate(masks):
        height, width = m["size"]
        crop = mask_utils.frPyObjects(np.array([box], dtype=np.float64), height, width)[0]
        rle = {"size": [height, width], "counts": m["counts"].encode("ascii")}
        out[i] = float(mask_utils.area(mask_utils.merge([rle, crop], intersect=True))) / float(m["area"])
    return out


def _blob_masks(rng, count, height=375, width=500):
    """ImageNet-size masks: unions of ellipses with holes, as COCO RLE with labeler top-3 (float16 scores)."""
    yy, xx = np.mgrid[0:height, 0:width]
    masks = []
    for _ in range(count):
        pixels = np.zeros((height, width), bool)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx, ry, rx = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, 200), rng.uniform(5, 250)
            pixels |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        pixels &= ~((((yy - rng.uniform(0, height)) / 12) ** 2 + ((xx - rng.uniform(0, width)) / 9) ** 2) <= 1)
        pixels[int(rng.integers(height)), int(rng.integers(width))] = True
        rle = mask_utils.encode(np.asfortranarray(pixels.astype(np.uint8)))
        scores = rng.uniform(0, 1, 3).astype(np.float16)
        masks.append(
            {
                "size": [height, width],
                "counts": rle["counts"].decode(),
                "bbox": mask_utils.toBbox(rle).tolist(),
                "area": int(mask_utils.area(rle)),
                "source": "dinov3_b16",
                "classes": rng.choice(1000, 3, replace=False).tolist(),
                "scores": [float(v) for v in scores],
            }
        )
    return masks


def _random_box(rng, width=500, height=375):
    w, h = int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))
    return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h


def test_crop_fractions_of_image_size_masks_equal_pixel_counts():
    rng = np.random.default_rng(1)
    masks = _blob_masks(rng, 40)
    pixels = np.stack([mask_utils.decode({"size": m["size"], "counts": m["counts"].encode()}) for m in masks])
    area = np.array([m["area"] for m in masks])
    for _ in range(100):
        x, y, w, h = box = _random_box(rng)
        expected = (pixels[:, y : y + h, x : x + w].sum(axis=(1, 2)) / area).astype(np.float32)
        np.testing.assert_array_equal(crops.crop_fractions(masks, box), expected)


def _reference_soft(masks, fractions):
    best = {}
    for m, f in zip(masks, fractions, strict=True):
        if f > 0:
            for c, s in zip(m["classes"], m["scores"], strict=True):
                best[c] = max(best.get(c, 0.0), float(f) * float(np.float16(s)))
    order = sorted(best, key=lambda c: (-best[c], c))
    return np.array(order, dtype=np.int16), np.array([best[c] for c in order], dtype=np.float32)


@pytest.mark.parametrize("joined", ["same rows", "shuffled", "streamed"])
def test_crop_aware_targets_equal_the_pycocotools_reference(joined, tmp_path):
    rng = np.random.default_rng(2)
    ids = [f"n01440764_{i}" for i in range(30)]
    masks = {i: _blob_masks(rng, int(rng.integers(1, 5))) for i in ids}
    proposals = datasets.Dataset.from_list(
        [{"image_id": i, "width": 500, "height": 375, "masks": masks[i]} for i in ids],
        features=schema.features("proposals"),
    )
    records = [schema.ImageLabels(i, f"n01440764/{i}.JPEG", 0, 500, 375, (1, 2), (0.9, 0.2), (3,), (0.7,)) for i in ids]
    labels = datasets.Dataset.from_list([schema.labels_row(r) for r in records], features=schema.features("labels"))
    if joined != "same rows":
        labels = labels.shuffle(seed=0).flatten_indices().select(range(20, 0, -1))
    pairs = aggregate.table8_pairs()
    amb = targets.Ambiguity(pairs, [0.5] * len(pairs), [0.1] * len(pairs), [0.1] * len(pairs))
    boxes = [_random_box(rng) for _ in labels]
    for scheme in ("local_soft+original", "local_hard@0.3+pairs+pred"):
        options = dict(proposals=proposals, ambiguity=amb, columns=("soft_scores",))
        if joined == "streamed":
            labels.to_parquet(tmp_path / "labels.parquet")
            streamed = datasets.load_dataset("parquet", data_files=str(tmp_path / "labels.parquet"), streaming=True)
            crop = _Boxes(dict(zip(labels["image_id"], boxes, strict=True)))
            items = list(training.StreamingTrainingDataset(streamed["train"], scheme, crop=crop, **options))
        else:
            crop = _Boxes(dict(zip(labels["image_id"], boxes, strict=True)))
            data = training.TrainingDataset(labels, scheme, crop=crop, **options)
            items = [data[i] for i in range(len(data))]
        assert [item["image_id"] for item in items] == labels["image_id"]
        for item, box in zip(items, boxes, strict=True):
            image_masks = masks[item["image_id"]]
            soft = _reference_soft(image_masks, _coco_fractions(image_masks, box))
            expected = targets.dense_target(scheme, *soft, 0, [3], [0.7], amb)
            np.testing.assert_array_equal(item["target"].numpy(), expected)
            assert item["box"].tolist() == list(box) and item["soft_scores"].tolist() == pytest.approx([0.9, 0.2])
        if scheme.startswith("local_soft"):
            assert sum(bool(((item["target"] > 0) & (item["target"] < 0.5)).any()) for item in items) > 5


class _Boxes(crops.RandomResizedCropWithBox):
    """Hands out given boxes in the order the items are built (image ids are not known to a crop)."""

    def __init__(self, boxes):
        super().__init__(32)
        self.queue = list(boxes.values())

    def sample_box(self, width, height):
        return self.queue.pop(0)
