"""Importers on small files in the published formats: the authors' TSV and CutLER's COCO JSON, via the CLI."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools import mask as mask_utils
from test_dataset_support import synthetic_records

from multilabel_imagenet import classes
from multilabel_imagenet.cli import main
from multilabel_imagenet.dataset import card, importers


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini") / "mini"
    labels, proposals = synthetic_records(root, num_train=8, num_val=1)
    return root, labels["train"], proposals["train"]


def _tsv_line(record) -> str:
    idx = ",".join(str(c) for c in record.soft_classes)
    prob = ",".join(f"{s:.4f}" for s in record.soft_scores)
    return f"{record.path}\t{record.label}\t{idx}\t{prob}\n"


@pytest.fixture(scope="module")
def tsv(mini, tmp_path_factory):
    path = tmp_path_factory.mktemp("tsv") / "multilabel_compressed.tsv"
    path.write_text("".join(_tsv_line(r) for r in mini[1]), encoding="utf-8")
    return path


def _cutler_json(proposals, swap=True, extra_image=True) -> dict:
    images, annotations = [], []
    for i, record in enumerate(proposals, start=1):
        wnid = record.image_id.split("_")[0]
        w, h = (record.height, record.width) if swap else (record.width, record.height)
        images.append({"id": i, "file_name": f"{wnid}/{record.image_id}.JPEG", "width": w, "height": h})
        for mask in record.masks:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "iscrowd": 1,
                    "segmentation": {"size": list(mask.size), "counts": mask.counts},
                    "bbox": list(mask.bbox),
                    "area": mask.area,
                }
            )
    if extra_image:
        images.append({"id": 999, "file_name": "n01440764/n01440764_77.JPEG", "width": 300, "height": 200})
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "fg"}]}


def test_tsv_then_cutler_into_one_folder(mini, tsv, tmp_path):
    root, labels, proposals = mini
    out = tmp_path / "multilabel-imagenet"
    runner = CliRunner()
    result = runner.invoke(main, ["import", "tsv", str(tsv), "--output", str(out), "--train-root", str(root / "train")])
    assert result.exit_code == 0, result.output
    assert f"wrote {len(labels)} images" in result.output and "k=1:" in result.output
    cutler = tmp_path / "imagenet_train_fixsize480_tau0.15_N3.json"
    cutler.write_text(json.dumps(_cutler_json(proposals)))
    result = runner.invoke(main, ["import", "cutler", str(cutler), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(proposals)} images had width/height swapped" in result.output
    assert set(card.read_configs(out)) == {"labels", "proposals"}

    ds = datasets.load_dataset(str(out), "labels", split="train", cache_dir=str(tmp_path / "cache"))
    for row, record in zip(ds, labels, strict=True):
        assert (row["image_id"], row["path"], row["label"]) == (record.image_id, record.path, record.label)
        assert (row["width"], row["height"]) == (record.width, record.height)
        assert row["global_classes"] == [] and row["num_proposals"] is None
        scores = dict(zip(record.soft_classes, (round(s, 4) for s in record.soft_scores), strict=True))
        np.testing.assert_allclose(row["soft_scores"], [scores[c] for c in row["soft_classes"]], rtol=1e-6)

    streamed = datasets.load_dataset(str(out), "proposals", split="train", streaming=True)
    rows = {r["image_id"]: r for r in streamed}
    assert rows["n01440764_77"]["masks"] == [] and (rows["n01440764_77"]["width"], rows["n01440764_77"]["height"]) == (
        200,
        300,
    )
    for record in proposals:
        row = rows[record.image_id]
        assert (row["width"], row["height"]) == (record.width, record.height)
        for got, want in zip(row["masks"], record.masks, strict=True):
            decoded = mask_utils.decode({"size": got["size"], "counts": got["counts"].encode()})
            assert decoded.shape == (record.height, record.width) and decoded.sum() == want.area
            assert got["bbox"] == list(want.bbox) and got["source"] == cutler.stem and got["classes"] == []


def test_tsv_without_images_and_empty_lists(tmp_path):
    wnid = classes.wnid_of(5)
    path = tmp_path / "multilabel_compressed.tsv"
    path.write_text(f"{wnid}/{wnid}_1.JPEG\t5\t\t\n{wnid}/{wnid}_2.JPEG\t5\t5,391\t0.5000,0.5001\n")
    records = list(importers.read_tsv(path))
    assert records[0].soft_classes == () and records[0].width is None
    importers.import_tsv(path, tmp_path / "out", "0.1.0")
    ds = datasets.load_dataset(str(tmp_path / "out"), "labels", split="train", cache_dir=str(tmp_path / "c"))
    assert ds[0]["labels"] == [] and ds[1]["labels"] == [391]  # 0.5000 is not > 0.5
    assert ds[1]["soft_classes"] == [391, 5] and ds[0]["width"] is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{w}/{w}_1.JPEG\t6\t6\t1.0000", r":1: .* lies in folder {w} but gt_index 6 is"),
        ("{w}/{w}_1.JPEG\t5\t5,7\t1.0000", r":1: 2 class indices but 1 probabilities"),
        ("{w}/{w}_1.JPEG\t5\t5\t1.2", r":1: probabilities \[1.2\] must lie in \[0, 1\]"),
        ("{w}/{w}_1.JPEG\tfive\t5\t1.0", r":1: gt_index 'five' is not an integer"),
        ("{w}/{w}_1.JPEG\t5\t5\t1.0\textra", r":1: expected filename, gt_index, idx_list, prob_list; found 5"),
    ],
)
def test_tsv_errors_name_the_line(tmp_path, line, message):
    wnid = classes.wnid_of(5)
    path = tmp_path / "bad.tsv"
    path.write_text(line.format(w=wnid) + "\n")
    with pytest.raises(importers.ImportFormatError, match=message.format(w=wnid)):
        list(importers.read_tsv(path))


def test_cutler_size_disagreement_and_polygons(mini, tmp_path):
    data = _cutler_json(mini[2][:2], swap=False, extra_image=False)
    data["annotations"].append(
        {"id": 77, "image_id": 1, "segmentation": [[10, 10, 60, 10, 60, 40, 10, 40]], "bbox": [], "area": 0}
    )
    path = tmp_path / "cutler.json"
    path.write_text(json.dumps(data))
    result = importers.read_cutler(path, "dino_b8")
    assert result.swapped_sizes == 0
    polygon = result.records[0].masks[-1]
    assert polygon.size == (mini[2][0].height, mini[2][0].width) and polygon.bbox == (10.0, 10.0, 50.0, 30.0)
    data["annotations"][0]["segmentation"]["size"] = [7, 9]
    path.write_text(json.dumps(data))
    with pytest.raises(importers.ImportFormatError, match=r"annotations\[0\] \(id 1\): mask size \[h, w\] = \[7, 9\]"):
        importers.read_cutler(path)
    path.write_text('{"images": [')
    with pytest.raises(importers.ImportFormatError, match="cutler.json: not valid JSON"):
        importers.read_cutler(path)
    result = CliRunner().invoke(main, ["import", "cutler", str(path), "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and "not valid JSON" in result.output
