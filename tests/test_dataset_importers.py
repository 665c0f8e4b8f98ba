"""Importers on small files in the published formats: the authors' TSV and CutLER's COCO JSON, via the CLI."""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from dataclasses import replace

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pycocotools import mask as mask_utils
from test_dataset_support import synthetic_records

from multilabel_imagenet import classes
from multilabel_imagenet.cli import main
from multilabel_imagenet.dataset import card, cutler_convert, cutler_index, importers, schema
from multilabel_imagenet.dataset.writer import file_sha256


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
        ("{w}/{w}_1.JPEG\tfive\t5\t1.0", r":1: gt_index 'five' is not a class index \(digits 0-9\)"),
        ("{w}/{w}_1.JPEG\t5\t5\t1.0\textra", r":1: expected filename, gt_index, idx_list, prob_list; found 5"),
    ],
)
def test_tsv_errors_name_the_line(tmp_path, line, message):
    wnid = classes.wnid_of(5)
    path = tmp_path / "bad.tsv"
    path.write_text(line.format(w=wnid) + "\n")
    with pytest.raises(importers.ImportFormatError, match=message.format(w=wnid)):
        list(importers.read_tsv(path))


def test_tsv_repeated_image_names_its_second_line(tmp_path):
    wnid = classes.wnid_of(5)
    path = tmp_path / "repeat.tsv"
    path.write_text("".join(f"{wnid}/{wnid}_{k}.JPEG\t5\t5\t1.0\n" for k in (1, 2, 3, 2, 1)))
    with pytest.raises(importers.ImportFormatError, match=rf"repeat.tsv:4: image {wnid}_2 appears twice"):
        list(importers.read_tsv(path))


def _two_lines(wnid: str) -> str:
    return f"{wnid}/{wnid}_1.JPEG\t5\t5,391\t0.2654,1.0000\n{wnid}/{wnid}_2.JPEG\t5\t\t\n"


@pytest.mark.parametrize(
    "prefix",
    [
        b"\xef\xbb\xbf",  # UTF-8 byte-order mark (Excel, PowerShell)
        b"filename\tgt_index\tidx_list\tprob_list\n",
        b"\xef\xbb\xbfpath\tlabel\tclasses\tprobs\r\n",  # both, any column names, CRLF
        b"\n\nImage\tLabel\n",  # blank lines, then a header of two names
    ],
)
def test_tsv_byte_order_mark_and_header_line_are_skipped(tmp_path, prefix):
    wnid = classes.wnid_of(5)
    plain = tmp_path / "plain.tsv"
    plain.write_text(_two_lines(wnid), encoding="utf-8")
    path = tmp_path / "exported.tsv"
    path.write_bytes(prefix + _two_lines(wnid).encode())
    assert list(importers.read_tsv(path)) == list(importers.read_tsv(plain))
    assert [r.image_id for r in importers.read_tsv(path)] == [f"{wnid}_1", f"{wnid}_2"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"empty.tsv: the file is empty; expected one line per image"),
        (b"\n  \n\t\n\r\n", r"empty.tsv: the file holds only blank lines \(4\)"),
        (
            b"\xef\xbb\xbffilename\tgt_index\tidx_list\tprob_list\n\n",
            r"empty.tsv: the file holds only a header line \(line 1\)",
        ),
    ],
)
def test_tsv_without_image_lines_is_an_error_not_an_empty_dataset(tmp_path, content, message):
    path = tmp_path / "empty.tsv"
    path.write_bytes(content)
    with pytest.raises(importers.ImportFormatError, match=message):
        list(importers.read_tsv(path))
    result = CliRunner().invoke(main, ["import", "tsv", str(path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.search(message, result.output) and not (tmp_path / "out").exists(), result.output


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            b"{w}/{w}_1.JPEG\t5\t5\t1.0\n{w}/{w}_\xff.JPEG\t5\t\t\n",
            r"bad.tsv:2: not UTF-8 text \(byte 0xff at column 21\)",
        ),
        ("{w}/{w}_\u00e9.JPEG\t5\t\t\n".encode("latin-1"), r"bad.tsv:1: not UTF-8 text \(byte 0xe9 at column 21\)"),
        (b"{w}\\{w}_1.JPEG\t5\t5\t1.0\n", r"bad.tsv:1: filename '{w}\\\\{w}_1.JPEG' holds a backslash"),
        (b"/{w}/{w}_1.JPEG\t5\t5\t1.0\n", r"bad.tsv:1: filename '/{w}/{w}_1.JPEG' must be a path relative"),
        (b"../{w}/{w}_1.JPEG\t5\t5\t1.0\n", r":1: filename '\.\./{w}/{w}_1.JPEG' must be a path relative"),
        (b"{w}//{w}_1.JPEG\t5\t5\t1.0\n", r":1: filename '{w}//{w}_1.JPEG' must be a path relative"),
        (b"{w}/{w}_1.JPEG\x00\t5\t5\t1.0\n", r":1: filename '{w}/{w}_1.JPEG\\x00' holds a control character"),
        (b"\t5\t5\t1.0\n", r":1: filename '' is empty"),
        (b"{w}/{w}_1.JPEG\t0_5\t5\t1.0\n", r":1: gt_index '0_5' is not a class index \(digits 0-9\)"),
        (b"{w}/{w}_1.JPEG\t+5\t5\t1.0\n", r":1: gt_index '\+5' is not a class index"),
        ("{w}/{w}_1.JPEG\t\u0665\t5\t1.0\n".encode(), r":1: gt_index '\u0665' is not a class index"),
        (b"{w}/{w}_1.JPEG\t5\t5,3_91\t0.5,0.5\n", r":1: idx_list '5,3_91' is not a comma-separated list of class"),
        (b"{w}/{w}_1.JPEG\t5\t5,\t0.5\n", r":1: idx_list '5,' is not a comma-separated list"),
        (b"{w}/{w}_1.JPEG\t5\t5\t0.2_5\n", r":1: prob_list '0.2_5' is not a comma-separated list of decimal numbers"),
        (b"{w}/{w}_1.JPEG\t5\t5\tnan\n", r":1: prob_list 'nan' is not"),
        (b"{w}/{w}_1.JPEG\t5\t5\tinf\n", r":1: prob_list 'inf' is not"),
        (b"{w}/{w}_1.JPEG\t5\t5\t-0.5\n", r":1: probabilities \[-0.5\] must lie in \[0, 1\]"),
    ],
)
def test_tsv_malformed_lines_name_the_file_and_line(tmp_path, line, message):
    wnid = classes.wnid_of(5)
    path = tmp_path / "bad.tsv"
    path.write_bytes(line.replace(b"{w}", wnid.encode()))
    message = message.replace("{w}", wnid)
    with pytest.raises(importers.ImportFormatError, match=message):
        list(importers.read_tsv(path))
    result = CliRunner().invoke(main, ["import", "tsv", str(path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.search(message, result.output), result.output


@pytest.fixture
def small_blocks(monkeypatch):
    """Partitions of 2 images, batches of 3 and spills of 4 masks, row groups of 1 image: every path is taken."""
    for name, value in [
        ("_PART_IMAGES", 2),
        ("_ANN_BATCH", 3),
        ("_SPILL_MASKS", 4),
        ("_ROW_GROUP", 1),
        ("_LOOKUP_GROUP", 2),
        ("_RUN_GROUP", 1),
    ]:
        monkeypatch.setattr(cutler_convert, name, value)


def _shuffled(data: dict, ids=None, seed: int = 0) -> dict:
    """``data`` with its annotations interleaved at random across images (each image's own order kept) and, with
    ``ids``, its image ids replaced."""
    rng = random.Random(seed)
    by_image: dict = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    slots = [key for key, anns in by_image.items() for _ in anns]
    rng.shuffle(slots)
    annotations = [by_image[key].pop(0) for key in slots]
    new_id = dict(zip([image["id"] for image in data["images"]], ids, strict=True)) if ids else {}
    images = [image | {"id": new_id.get(image["id"], image["id"])} for image in data["images"]]
    annotations = [ann | {"image_id": new_id.get(ann["image_id"], ann["image_id"])} for ann in annotations]
    return data | {"images": images, "annotations": annotations}


def _expected(proposals, source: str) -> list:
    """What the old in-memory reader gave for ``_cutler_json(proposals)``: the records, masks of ``source``."""
    records = [
        replace(r, masks=tuple(replace(m, classes=(), scores=(), source=source) for m in r.masks)) for r in proposals
    ]
    return [*records, schema.ImageProposals("n01440764_77", 200, 300, ())]


@pytest.mark.parametrize("ids", [None, [90, 7, 55, 3, 1000, 12, 8, 41, 999]], ids=["counting", "scattered"])
def test_cutler_index_of_shuffled_annotations(mini, tmp_path, small_blocks, ids):
    proposals = mini[2]
    path = tmp_path / "cutler.json"
    path.write_text(json.dumps(_shuffled(_cutler_json(proposals), ids)))
    index = cutler_index.index_cutler(path, tmp_path / "index.parquet", "dino_b8")
    records = list(index.records())
    for got, want in zip(records, _expected(proposals, "dino_b8"), strict=True):
        assert (got.image_id, got.width, got.height) == (want.image_id, want.width, want.height)
        assert [(m.size, m.counts, m.area, m.source) for m in got.masks] == [
            (m.size, m.counts, m.area, m.source) for m in want.masks
        ]
        np.testing.assert_allclose([m.bbox for m in got.masks], [m.bbox for m in want.masks], atol=1e-6)
    assert index.num_images == len(records) == len(proposals) + 1
    assert index.num_masks == sum(len(r.masks) for r in proposals)
    assert index.masks_per_image == Counter(len(r.masks) for r in records)
    assert index.swapped_sizes == len(proposals) and index.json_sha256 == file_sha256(path)
    unshuffled = tmp_path / "plain.json"
    unshuffled.write_text(json.dumps(_cutler_json(proposals)))
    assert list(cutler_index.index_cutler(unshuffled, source="dino_b8").records()) == records
    assert cutler_index.default_index_path(unshuffled).is_file()


def test_rows_for_reads_only_the_row_groups_it_needs(mini, tmp_path, small_blocks, monkeypatch):
    path = tmp_path / "cutler.json"
    path.write_text(json.dumps(_shuffled(_cutler_json(mini[2]))))
    index = cutler_index.index_cutler(path, tmp_path / "index.parquet")
    by_id = {r.image_id: r for r in index.records()}
    read = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile, "read_row_group", lambda self, i, **kw: read.append(i) or original(self, i, **kw)
    )
    wanted = [mini[2][5].image_id, mini[2][1].image_id, "n01440764_77"]
    found = index.rows_for([*wanted, "n99999999_1", wanted[0]])
    assert found == {image_id: by_id[image_id] for image_id in wanted}
    image_groups = [g for g in read if g < index.image_row_groups]
    assert sorted(image_groups) == [1, 5, 8]  # one image a row group here
    assert len(read) - len(image_groups) <= 3  # lookup row groups of 2 ids: at most one each
    assert index.rows_for([]) == {} == index.rows_for(["n99999999_1"])


def test_cutler_swap_repair(mini, tmp_path):
    proposals = mini[2][:3]
    data = _cutler_json(proposals)
    square = {"id": 50, "file_name": "n01440764/n01440764_50.JPEG", "width": 40, "height": 40}
    square_mask = mask_utils.encode(np.asfortranarray(np.ones((40, 40), np.uint8)))
    data["images"].append(square)
    data["annotations"].append(
        {"id": 500, "image_id": 50, "segmentation": {"size": [40, 40], "counts": square_mask["counts"].decode()}}
    )
    path = tmp_path / "cutler.json"
    path.write_text(json.dumps(data))
    records = {r.image_id: r for r in cutler_index.index_cutler(path).records()}
    # every oblong image with masks is swapped; a square one says nothing: the image without masks is swapped too
    assert (records["n01440764_77"].width, records["n01440764_77"].height) == (200, 300)
    assert all((records[r.image_id].width, records[r.image_id].height) == (r.width, r.height) for r in proposals)
    assert (records["n01440764_50"].width, records["n01440764_50"].height) == (40, 40)

    mixed = _cutler_json(proposals)
    first = mixed["images"][0]
    first["width"], first["height"] = first["height"], first["width"]  # written the right way round
    path.write_text(json.dumps(mixed))
    index = cutler_index.index_cutler(path)
    records = {r.image_id: r for r in index.records()}
    assert index.swapped_sizes == len(proposals) - 1
    assert all((records[r.image_id].width, records[r.image_id].height) == (r.width, r.height) for r in proposals)
    assert (records["n01440764_77"].width, records["n01440764_77"].height) == (300, 200)  # left as written


def test_cutler_index_is_reused_while_the_json_is_unchanged(mini, tmp_path, monkeypatch):
    path = tmp_path / "cutler.json"
    path.write_text(json.dumps(_cutler_json(mini[2][:2])))
    cutler_index.index_cutler(path)
    built = []
    real_build = cutler_convert.build
    monkeypatch.setattr(cutler_convert, "build", lambda *a: built.append(a) or real_build(*a))
    assert cutler_index.index_cutler(path, source="other").source == "other" and not built
    os.utime(path, ns=(1, 1))  # same bytes, other mtime: the sha256 decides
    cutler_index.index_cutler(path)
    assert not built
    path.write_text(json.dumps(_cutler_json(mini[2][:3])))
    assert cutler_index.index_cutler(path).num_images == 4 and len(built) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no spool left behind


def test_import_cutler_keeps_its_index_only_with_index(mini, tmp_path):
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    path = inputs / "cutler.json"
    path.write_text(json.dumps(_cutler_json(mini[2][:3])))
    out = outputs / "multilabel-imagenet"
    result = CliRunner().invoke(main, ["import", "cutler", str(path), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert list(inputs.iterdir()) == [path]  # nothing beside the JSON, whose folder may be read-only
    assert list(outputs.iterdir()) == [out]  # the temporary index is gone
    assert set(card.read_configs(out)) == {"proposals"}
    kept = tmp_path / "kept" / "cutler.index.parquet"
    result = CliRunner().invoke(main, ["import", "cutler", str(path), "--output", str(out), "--index", str(kept)])
    assert result.exit_code == 0, result.output
    assert cutler_index.CutlerIndex.open(kept, "cutler").num_images == 4
    assert list(inputs.iterdir()) == [path] and list(outputs.iterdir()) == [out]


def test_cutler_size_disagreement_and_polygons(mini, tmp_path):
    data = _cutler_json(mini[2][:2], swap=False, extra_image=False)
    data["annotations"].append(
        {"id": 77, "image_id": 1, "segmentation": [[10, 10, 60, 10, 60, 40, 10, 40]], "bbox": [], "area": 0}
    )
    path = tmp_path / "cutler.json"
    path.write_text(json.dumps(data))
    index = cutler_index.index_cutler(path, source="dino_b8")
    assert index.swapped_sizes == 0
    polygon = next(index.records()).masks[-1]
    assert polygon.size == (mini[2][0].height, mini[2][0].width) and polygon.bbox == (10.0, 10.0, 50.0, 30.0)
    data["annotations"][0]["segmentation"]["size"] = [7, 9]
    path.write_text(json.dumps(data))
    with pytest.raises(importers.ImportFormatError, match=r"annotations\[0\] \(id 1\): mask size \[h, w\] = \[7, 9\]"):
        cutler_index.index_cutler(path)
    path.write_text('{"images": [')
    with pytest.raises(importers.ImportFormatError, match="cutler.json: not valid JSON"):
        cutler_index.index_cutler(path)
    result = CliRunner().invoke(main, ["import", "cutler", str(path), "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and "not valid JSON" in result.output


def _edit(data: dict, change) -> dict:
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["annotations"][3].update(image_id=12345), r"annotations\[3\] \(id 4\): image_id 12345 is not in"),
        (lambda d: d["images"].append(dict(d["images"][2], id=77)), r": image (n\d+_\d+) appears twice in `images`"),
        (lambda d: d["images"].append(dict(d["images"][2])), r"images\[4\]: id 3 appears twice"),
        (lambda d: d["images"][1].pop("width"), r"images\[1\] lacks an id, file_name, width or height"),
        (lambda d: d["images"][1].update(id="a"), r"images\[1\]: id 'a' is not an integer"),
        (lambda d: d.pop("images"), r"not a COCO file \(no `images` list\)"),
        (
            lambda d: d["annotations"][0]["segmentation"].update(counts=None),
            r"annotations\[0\] \(id 1\): segmentation is neither",
        ),
    ],
)
def test_cutler_errors_name_the_entry(mini, tmp_path, small_blocks, change, message):
    path = tmp_path / "cutler.json"
    path.write_text(json.dumps(_edit(_cutler_json(mini[2][:4], extra_image=False), change)))
    with pytest.raises(importers.ImportFormatError, match=message):
        cutler_index.index_cutler(path)
    assert not cutler_index.default_index_path(path).exists()


def test_cutler_mask_of_the_other_orientation_names_the_image(mini, tmp_path, small_blocks):
    record = next(r for r in mini[2] if r.masks and r.width != r.height)
    data = _cutler_json([record], swap=False, extra_image=False)
    empty = mask_utils.encode(np.asfortranarray(np.zeros((record.width, record.height), np.uint8)))
    turned = {"size": [record.width, record.height], "counts": empty["counts"].decode()}
    data["annotations"].append({"id": 99, "image_id": 1, "segmentation": turned})
    path = tmp_path / "cutler.json"
    path.write_text(json.dumps(data))
    size = rf"\[h, w\] = \[{record.width}, {record.height}\] but the image is {record.height}x{record.width}"
    with pytest.raises(
        importers.ImportFormatError, match=rf"image {record.image_id}: mask {len(record.masks)} has size {size}"
    ):
        cutler_index.index_cutler(path)
