"""The writer's folder loads with the real `datasets` (every config and split, streaming, by name from the parent)."""

from __future__ import annotations

import json
from dataclasses import replace

import datasets
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils
from test_dataset_support import BUILD, synthetic_records

from multilabel_imagenet import atomic
from multilabel_imagenet.builder import aggregate
from multilabel_imagenet.dataset import card, schema, writer


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return synthetic_records(tmp_path_factory.mktemp("mini") / "mini")


@pytest.fixture(scope="module")
def folder(records, tmp_path_factory):
    labels, proposals = records
    root = tmp_path_factory.mktemp("release") / "multilabel-imagenet"
    return writer.write_dataset(root, BUILD, labels=labels, proposals=proposals)


def _load(path, config=None, split=None, tmp=None, **kwargs):
    return datasets.load_dataset(str(path), config, split=split, cache_dir=str(tmp / "cache"), **kwargs)


def test_layout(folder):
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "data/labels/train-00000-of-00001.parquet",
        "data/labels/validation-00000-of-00001.parquet",
        "data/proposals/train-00000-of-00001.parquet",
        "data/proposals/validation-00000-of-00001.parquet",
        "loading_script/multilabel_imagenet.py",
        "metadata/build.json",
        "metadata/label_counts.png",
    ]


@pytest.mark.parametrize("split", schema.SPLITS)
def test_labels_round_trip(folder, records, split, tmp_path):
    ds = _load(folder, "labels", split, tmp_path)
    assert ds.features == schema.features("labels")
    assert ds.features["label"].names[134] == "crane (n02012849)"
    expected = records[0][split]
    assert ds["image_id"] == [r.image_id for r in expected]
    for row, record in zip(ds, expected, strict=True):
        assert row["label"] == record.label
        assert (row["width"], row["height"], row["num_proposals"]) == (
            record.width,
            record.height,
            record.num_proposals,
        )
        soft = dict(zip(record.soft_classes, record.soft_scores, strict=True))
        assert set(row["soft_classes"]) == set(soft)
        assert row["soft_scores"] == sorted(row["soft_scores"], reverse=True)
        np.testing.assert_allclose(row["soft_scores"], [soft[c] for c in row["soft_classes"]], rtol=1e-6)
        assert row["labels"] == aggregate.hard_labels(record.soft_classes, record.soft_scores, 0.5)
        assert row["global_classes"] == [record.label]


@pytest.mark.parametrize("split", schema.SPLITS)
def test_proposals_round_trip_and_masks_decode(folder, records, split, tmp_path):
    ds = _load(folder, "proposals", split, tmp_path)
    assert ds.features == schema.features("proposals")
    for row, record in zip(ds, records[1][split], strict=True):
        assert len(row["masks"]) == len(record.masks) > 0
        for got, want in zip(row["masks"], record.masks, strict=True):
            decoded = mask_utils.decode({"size": got["size"], "counts": got["counts"].encode("ascii")})
            assert decoded.shape == (row["height"], row["width"])
            assert int(decoded.sum()) == got["area"] == want.area
            assert got["source"] == want.source and got["classes"] == list(want.classes)
            np.testing.assert_allclose(got["scores"], want.scores, atol=1e-3)  # float16 storage


def test_default_config_streaming_and_name_from_parent(folder, monkeypatch, tmp_path):
    monkeypatch.chdir(folder.parent)
    by_name = datasets.load_dataset("multilabel-imagenet", cache_dir=str(tmp_path / "cache"))
    assert set(by_name) == {"train", "validation"}
    assert by_name["train"].column_names == list(schema.features("labels"))
    streamed = datasets.load_dataset("multilabel-imagenet", "proposals", split="train", streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert [r["image_id"] for r in streamed] == by_name["train"]["image_id"]


def test_same_records_same_bytes(records, folder, tmp_path):
    again = writer.write_dataset(tmp_path / "again", BUILD, labels=records[0], proposals=records[1])
    for path in folder.rglob("*"):
        if path.is_file():
            assert (again / path.relative_to(folder)).read_bytes() == path.read_bytes(), path


def test_build_json_records_version_fingerprints_and_statistics(folder, records):
    manifest = json.loads((folder / "metadata/build.json").read_text())
    assert manifest["version"] == "1.0.0"
    assert manifest["fingerprint"] == writer.fingerprint(manifest["configs"])
    build = manifest["configs"]["labels"]["build"]
    assert build["inputs"] == dict(BUILD.inputs) and build["parameters"] == dict(BUILD.parameters)
    assert build["models"] == {"backbone": "vit_large_patch16_dinov3.lvd1689m"}
    assert build["code_version"].startswith("multilabel-imagenet ")
    assert build["fingerprint"] == replace(BUILD).to_dict()["fingerprint"]
    assert build["fingerprint"] != replace(BUILD, parameters={"tau_sel": 0.8, "topk": 2}).to_dict()["fingerprint"]
    train = manifest["configs"]["labels"]["splits"]["train"]
    for f in train["files"]:
        assert writer.file_sha256(folder / f["path"]) == f["sha256"]
    counts = [len(schema.labels_row(r)["labels"]) for r in records[0]["train"]]
    dist = train["statistics"]["label_count_distribution"]
    assert dist["1"] == pytest.approx(counts.count(1) / len(counts))
    assert dist["mean"] == pytest.approx(np.mean(counts))
    masks = sum(len(r.masks) for r in records[1]["train"])
    assert manifest["configs"]["proposals"]["splits"]["train"]["statistics"]["num_masks"] == masks


def test_shard_counts_divide_common_gpu_counts():
    policy = writer.ShardPolicy()
    assert writer.shard_count(10, 10_000) == 1
    assert writer.shard_count(50_000, 5 * 2**20) == 16  # ImageNet val labels: 50k rows
    train = writer.shard_count(1_281_167, 3 * 2**30)  # ImageNet train proposals, ~3 GiB in memory
    assert train % 96 == 0 and 3 * 2**30 / train <= policy.target_shard_bytes
    assert all(writer.shard_count(1_281_167, 80 * 2**20) % g == 0 for g in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48))


def test_proposals_are_cut_by_size_into_hub_sized_files():
    proposals = writer.DEFAULT_POLICIES["proposals"]
    assert writer.shard_count(1_281_167, 7 * 2**30, proposals) == 16  # ImageNet train masks: ~7 GiB in memory
    assert writer.shard_count(50_000, 2**28, proposals) == 1
    assert writer.shard_count(1_281_167, 200 * 2**20) == 96  # labels: the streaming rule, whatever the size


def test_multiple_shards_load_in_order(records, tmp_path):
    policy = writer.ShardPolicy(min_rows_per_shard=3, row_group_bytes=2048)
    folder = writer.write_dataset(tmp_path / "sharded", BUILD, labels=records[0], policy=policy)
    names = sorted(p.name for p in (folder / "data/labels").iterdir())
    assert names == [f"train-{i:05d}-of-00004.parquet" for i in range(4)] + ["validation-00000-of-00001.parquet"]
    ds = _load(folder, "labels", "train", tmp_path)
    assert ds["image_id"] == [r.image_id for r in records[0]["train"]]


def test_second_config_keeps_the_first(records, tmp_path):
    folder = writer.write_dataset(tmp_path / "two", BUILD, labels=records[0])
    assert set(card.read_configs(folder)) == {"labels"}
    writer.write_dataset(folder, replace(BUILD, source="second"), proposals={"train": records[1]["train"]})
    configs = card.read_configs(folder)
    assert set(configs) == {"labels", "proposals"} and configs["labels"]["default"] is True
    manifest = writer.read_build_json(folder)
    assert manifest["configs"]["labels"]["build"]["source"] == "synthetic test build"
    assert list(manifest["configs"]["proposals"]["splits"]) == ["train"]
    assert len(_load(folder, "proposals", "train", tmp_path)) == len(records[1]["train"])


def test_bad_records_are_named(records, tmp_path):
    image = records[1]["train"][3]
    bad_mask = replace(image.masks[0], size=(image.width, image.height))
    bad = replace(image, masks=(bad_mask,))
    with pytest.raises(
        writer.DatasetWriteError, match=rf"proposals/train row 0 \('{image.image_id}'\): mask 0 has RLE"
    ):
        writer.write_config(tmp_path, "proposals", {"train": [bad]}, BUILD)
    first = records[0]["train"][0]
    with pytest.raises(writer.DatasetWriteError, match="row 1 .* appears twice"):
        writer.write_config(tmp_path, "labels", {"train": [first, first]}, BUILD)
    with pytest.raises(writer.DatasetWriteError, match="not a probability"):
        writer.write_config(tmp_path, "labels", {"train": [replace(first, soft_scores=(1.5, 0.1))]}, BUILD)
    with pytest.raises(writer.DatasetWriteError, match="1000 is outside"):
        writer.write_config(tmp_path, "labels", {"train": [replace(first, soft_classes=(1000, 1))]}, BUILD)
    with pytest.raises(ValueError, match="not a semantic version"):
        writer.write_config(tmp_path, "labels", {"train": [first]}, replace(BUILD, version="v1"))
    with pytest.raises(ValueError, match="unknown split 'val'"):
        writer.write_config(tmp_path, "labels", {"val": [first]}, BUILD)
    assert not (tmp_path / "data").exists()


def test_card_metadata_and_missing_configs(folder, tmp_path):
    text = (folder / "README.md").read_text()
    loaded = card.DatasetCard.load(folder / "README.md").data.to_dict()
    assert loaded["license"] == "other" and loaded["task_categories"] == ["image-classification"]
    assert loaded["source_datasets"] == ["extended|imagenet-1k"] and loaded["size_categories"] == ["n<1K"]
    infos = {i["config_name"]: i for i in loaded["dataset_info"]}
    assert datasets.Features._from_yaml_list(infos["proposals"]["features"]) == schema.features("proposals")
    assert {s["name"]: s["num_examples"] for s in infos["labels"]["splits"]} == {"train": 12, "validation": 4}
    assert "| paper, Table 5 (train) | 0.59% | 78.90% | 17.80% | 2.50% | 0.28% | 1.23 |" in text
    assert "![Label-count distribution](metadata/label_counts.png)" in text
    assert "tau_sel" in text and "vit_large_patch16_dinov3.lvd1689m" in text and "@article{chen2026" in text
    from PIL import Image

    assert Image.open(folder / "metadata/label_counts.png").size == (720, 400)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "README.md").write_text("---\nlicense: other\n---\n# no configs\n")
    with pytest.raises(card.CardError, match=r"bare/README.md: the YAML header has no `configs`"):
        card.read_configs(bare)
    with pytest.raises(card.CardError, match="missing"):
        card.read_configs(tmp_path)


@pytest.mark.slow
def test_rle_text_over_2_gib_writes_and_loads(tmp_path):
    """A proposals split whose RLE text exceeds 2 GiB (int32 string offsets) writes, streams and loads back."""
    rows, counts_bytes = 2200, 2**20

    def counts(i: int) -> str:
        return f"{i:08d}" * (counts_bytes // 8)

    def records():
        for i in range(rows):
            mask = schema.Proposal(
                (600, 800), counts(i), (0.0, 0.0, 10.0, 10.0), 100, "dinov3_b16", (i % 1000,), (0.5,)
            )
            yield schema.ImageProposals(f"img{i:05d}", 800, 600, (mask,))

    folder = writer.write_dataset(tmp_path / "big", BUILD, proposals={"train": records()})
    entry = writer.read_build_json(folder)["configs"]["proposals"]["splits"]["train"]
    assert entry["num_rows"] == rows and entry["num_bytes"] > 2**31
    assert entry["statistics"]["num_masks"] == rows
    for f in entry["files"]:  # row groups stay small however large the split
        meta = pq.ParquetFile(folder / f["path"]).metadata
        assert max(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)) < 64 * 2**20
    ds = _load(folder, "proposals", "train", tmp_path).with_format("arrow")
    assert len(ds) == rows
    total, checked = 0, 0
    for start in range(0, rows, 100):
        batch = ds[start : start + 100]
        text = pc.list_flatten(batch.column("masks").combine_chunks()).field("counts")
        total += pc.sum(pc.binary_length(text)).as_py()
        first = text[0].as_py()
        assert first == counts(start)
        checked += 1
    assert total == rows * counts_bytes > 2**31 and checked == rows // 100


def test_an_interrupted_write_leaves_the_previous_files_whole(records, tmp_path, monkeypatch):
    """A kill mid-write (here: an interrupt as build.json or a shard is renamed) never leaves a torn file."""
    folder = writer.write_dataset(tmp_path / "f", BUILD, labels=records[0])
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    replace_file = atomic.replace

    def interrupted(tmp, path):
        if path.name == "build.json":
            raise KeyboardInterrupt
        replace_file(tmp, path)

    monkeypatch.setattr(atomic, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.write_config(folder, "proposals", records[1], BUILD)
    assert writer.read_build_json(folder) == json.loads(before[folder / writer.BUILD_JSON])
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]

    def torn_shard(tmp, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "replace", torn_shard)
    with pytest.raises(KeyboardInterrupt):
        writer.write_config(folder, "proposals", records[1], BUILD)
    assert not (folder / "data/proposals").exists() or not list((folder / "data/proposals").iterdir())
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.undo()
    writer.check_folder(folder, "labels")


def test_two_writers_of_different_configs_both_land_in_build_json(records, tmp_path):
    import threading

    folder = tmp_path / "both"
    errors = []

    def write(config, recs):
        try:
            writer.write_config(folder, config, recs, BUILD)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [
        threading.Thread(target=write, args=args) for args in (("labels", records[0]), ("proposals", records[1]))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(writer.read_build_json(folder)["configs"]) == {"labels", "proposals"}
