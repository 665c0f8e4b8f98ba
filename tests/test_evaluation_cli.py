"""The `evaluate` and `benchmarks` commands end to end, on label files written in the published layouts."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from multilabel_imagenet import classes
from multilabel_imagenet.cli import main
from multilabel_imagenet.evaluation import load_benchmark
from multilabel_imagenet.evaluation.benchmarks import val_name


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def val_labels(tmp_path):
    """Original labels of the 50,000 val images in the TFDS layout (one wnid per line)."""
    labels = np.random.default_rng(0).integers(0, 1000, size=50_000)
    path = tmp_path / "imagenet2012_validation_labels.txt"
    path.write_text("".join(classes.wnid_of(int(c)) + "\n" for c in labels))
    return path, labels


def _mask_png(path, ids: list[int], shape=(12, 16)):
    """An ImageNet-S mask: class id = R + 256 * G, one horizontal band per id."""
    mask = np.zeros((*shape, 3), dtype=np.uint8)
    for band, class_id in enumerate(ids):
        mask[band * 2 : band * 2 + 2, :, 0] = class_id % 256
        mask[band * 2 : band * 2 + 2, :, 1] = class_id // 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def test_prepare_in_seg_from_masks_then_evaluate(tmp_path, val_labels):
    masks = tmp_path / "ImageNetS919" / "validation-segmentation"
    # ImageNet-S ids: 1 -> IN-1k 0 (tench); 919 -> 999 (toilet tissue); 783 -> 836 ('sunglass', into which
    # 'sunglasses' 837 was merged); 1000 = ignore; 0 = background.
    _mask_png(masks / "n01440764" / "ILSVRC2012_val_00000007.png", [0, 1, 1000])
    _mask_png(masks / "n04355933" / "ILSVRC2012_val_00000100.png", [783, 919, 0])
    _mask_png(masks / "n04355933" / "ILSVRC2012_val_00000002.png", [0, 1000])  # nothing but background: excluded
    out = tmp_path / "in_seg.json"
    result = run("benchmarks", "prepare", "in-seg", "--masks", tmp_path / "ImageNetS919", "--output", out)
    assert result.exit_code == 0, result.output
    assert "3 images" in result.output
    bench = load_benchmark("in-seg", out)
    assert bench.image_ids == (val_name(1), val_name(6), val_name(99))
    assert [np.flatnonzero(t).tolist() for t in bench.targets] == [[], [0], [836, 999]]

    scores = np.zeros((3, 1000), dtype=np.float32)
    scores[1, 0] = 0.9  # right
    scores[2, 837] = 0.9  # 'sunglasses': merged away, so not in the label set
    scores[2, 999] = 0.5
    np.save(tmp_path / "p.npy", scores)
    report = tmp_path / "report.json"
    path, labels = val_labels
    result = run(
        "evaluate", tmp_path / "p.npy", "-b", "in-seg", "--labels", f"in-seg={out}",
        "--labels", f"imagenet-val={path}", "-o", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = json.loads(report.read_text())["in-seg"]
    assert got["n_images"] == 2 and got["n_images_original"] == 3
    assert got["multilabel_top1"] == 50.0
    assert got["multilabel_top5"] == 100.0
    # image 100: labels {836, 999}; ranks 999 -> 2nd (precision 1/2), 836 -> tied with 997 zeros (2/1000)
    assert got["map_per_sample"] == pytest.approx(100 * (1.0 + (0.5 + 2 / 1000) / 2) / 2)
    assert got["top1"] == pytest.approx(100 * np.mean(np.argmax(scores, axis=1) == labels[[1, 6, 99]]))
    assert "map_per_sample" in result.output and "ASMA (our reading" in result.output


def test_bad_mask_names_the_file(tmp_path):
    _mask_png(tmp_path / "m" / "x" / "ILSVRC2012_val_00000001.png", [920])
    result = CliRunner().invoke(main, ["benchmarks", "prepare", "in-seg", "--masks", str(tmp_path / "m"),
                                       "--output", str(tmp_path / "o.json")])  # fmt: skip
    assert result.exit_code != 0
    assert "ILSVRC2012_val_00000001.png" in result.output and "outside ImageNet-S 919" in result.output


def _shankar_json(tmp_path):
    """human_accuracy_v3.0.0.json layout: initial_annots (wnid lists), problematic_images, imagenet_m."""
    w = classes.wnid_of
    annots = {
        val_name(0): {"correct": [w(1)], "wrong": [w(2)]},
        val_name(1): {"correct": [w(1)], "unclear": [w(3)]},
        val_name(2): {"correct": [w(5)]},  # problematic: skipped
        val_name(3): {"correct": [w(7), w(8)]},
        val_name(4): {"wrong": [w(9)]},  # no accepted label: always wrong
        "n01440764_10026.JPEG": {"correct": [w(0)]},  # a train image: ignored as in TFDS
    }
    data = {"initial_annots": annots, "problematic_images": {val_name(2): "drawing"}, "imagenet_m": [val_name(3)]}
    path = tmp_path / "human_accuracy_v3.0.0.json"
    path.write_text(json.dumps(data))
    return path


def test_imagenet_multilabel_is_per_class_averaged_and_imagenet_m_counts(tmp_path):
    labels = np.zeros(50_000, dtype=np.int64)
    labels[[0, 1, 2, 3, 4]] = [1, 1, 5, 7, 7]  # original classes: two images of 1, two (scored) of 7
    val = tmp_path / "val.json"
    val.write_text(json.dumps(labels.tolist()))
    shankar = _shankar_json(tmp_path)
    scores = np.zeros((5, 1000), dtype=np.float32)
    scores[[0, 1, 2, 3, 4], [2, 3, 5, 8, 7]] = 1.0  # wrong, unclear(ok), problematic, correct, wrong
    np.save(tmp_path / "p.npy", scores)
    report = tmp_path / "r.json"
    result = run(
        "evaluate", tmp_path / "p.npy", "-b", "imagenet-multilabel", "--labels", f"imagenet-multilabel={shankar}",
        "--labels", f"imagenet-val={val}", "-o", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = json.loads(report.read_text())["imagenet-multilabel"]
    assert got["n_images"] == 4
    # TFDS recipe: class 1 -> 1/2 (image 0 wrong, image 1 unclear counts), class 7 -> 1/2; mean 50%
    assert got["multilabel_top1_class_avg"] == 50.0
    assert got["multilabel_top1"] == 50.0

    np.save(tmp_path / "m.npy", scores[[3]])
    result = run("evaluate", tmp_path / "m.npy", "-b", "imagenet-m", "--labels", shankar, "-o", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["imagenet-m"]["correct"] == 1

    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "p.npy"), "-b", "imagenet-multilabel",
                                       "--labels", str(shankar)])  # fmt: skip
    assert result.exit_code != 0 and "needs the original val labels" in result.output
    assert run("benchmarks", "images", "imagenet-multilabel", "--labels", shankar).output.splitlines() == [
        val_name(i) for i in range(5)
    ]


def test_benchmarks_list_and_images(tmp_path):
    result = run("benchmarks", "list")
    assert result.exit_code == 0
    for name in ("imagenet-val", "real", "inv2", "inv2-ml", "in-seg", "imagenet-multilabel", "imagenet-m", "madry"):
        assert f"{name}: " in result.output
    assert "Apache-2.0" in result.output
    result = run("benchmarks", "images", "real")
    lines = result.output.splitlines()
    assert len(lines) == 50_000 and lines[0] == "ILSVRC2012_val_00000001.JPEG" and lines[-1] == val_name(49_999)
    refined = tmp_path / "refined.json"
    refined.write_text(json.dumps({"bb.jpeg": ["1"], "aa.jpeg": []}))
    assert run("benchmarks", "images", "inv2-ml", "--labels", refined).output == "aa.jpeg\nbb.jpeg\n"


def test_evaluate_errors_are_clear(tmp_path):
    refined = tmp_path / "refined.json"
    refined.write_text(json.dumps({"bb.jpeg": ["1"], "aa.jpeg": ["2"]}))
    np.save(tmp_path / "p.npy", np.zeros((3, 1000), dtype=np.float32))
    cases = [
        (["-b", "inv2-ml", "--labels", str(refined)], "3 rows, but benchmark 'inv2-ml' has 2 images"),
        (["-b", "coco"], "unknown benchmark 'coco'"),
        (["-b", "inv2-ml"], "needs its label file"),
        (["-b", "real", "-b", "inv2-ml", "--labels", str(refined)], "with several benchmarks write NAME=FILE"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "p.npy"), *args])
        assert result.exit_code != 0 and message in result.output, result.output


def test_evaluate_runs_a_local_timm_model_over_an_image_folder(tmp_path):
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=1000).eval()
    save_for_hf(model, tmp_path / "model", safe_serialization=True)
    rng = np.random.default_rng(0)
    names = [f"{i:040x}.jpeg" for i in range(5)]
    for i, name in enumerate(names):  # ImageNetV2 release layout: <class_idx>/<sha1>.jpeg
        folder = tmp_path / "v2" / str(i * 7)
        folder.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, size=(40 + i, 50, 3), dtype=np.uint8)).save(folder / name, "JPEG")
    refined = tmp_path / "refined.json"
    refined.write_text(json.dumps({n: [str(i)] for i, n in enumerate(names)}))
    report, saved = tmp_path / "r.json", tmp_path / "scores.npy"
    result = run(
        "evaluate", "--model", tmp_path / "model", "--images", tmp_path / "v2", "-b", "inv2-ml",
        "--labels", refined, "--workers", 0, "--batch-size", 2, "--save-scores", saved, "-o", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # independent reference: the same weights, timm's eval transform, one image at a time
    transform = create_transform(**resolve_data_config({}, model=model))
    with torch.inference_mode():
        expected = np.concatenate(
            [
                model(transform(Image.open(tmp_path / "v2" / str(i * 7) / n).convert("RGB"))[None]).softmax(1).numpy()
                for i, n in enumerate(sorted(names))
            ]
        )
    np.testing.assert_allclose(np.load(saved), expected, atol=1e-5)
    got = json.loads(report.read_text())["inv2-ml"]
    assert got["n_images"] == 5
    assert got["multilabel_top1"] == pytest.approx(100 * np.mean(expected.argmax(1) == np.arange(5)))

    # the same weights as a local checkpoint for timm:NAME (no download: the file overrides the Hub weights)
    result = run(
        "evaluate", "--model", "timm:resnet10t", "--checkpoint", tmp_path / "model" / "model.safetensors",
        "--images", tmp_path / "v2", "-b", "inv2-ml", "--labels", refined, "--workers", 0, "--save-scores", saved,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(saved), expected, atol=1e-5)
    result = run(
        "evaluate", "--model", tmp_path / "model", "--images", tmp_path / "v2", "-b", "inv2-ml", "--labels", refined,
        "--workers", 0, "--activation", "sigmoid", "--save-scores", saved,
    )  # fmt: skip
    assert result.exit_code == 0, result.output  # a BCE model's probabilities: sigmoid of the same logits
    sig = np.load(saved).astype(np.float64)
    shift = np.log(sig / (1 - sig)) - np.log(expected)  # logits, less (log softmax =) logits - a row constant
    assert (sig > 0).all() and (sig < 1).all() and not np.allclose(sig.sum(1), 1)
    np.testing.assert_allclose(shift, np.repeat(shift[:, :1], shift.shape[1], axis=1), atol=1e-3)

    (tmp_path / "v2" / "7" / names[1]).write_bytes(b"not an image")  # decoded in a worker process
    result = CliRunner().invoke(main, ["evaluate", "--model", str(tmp_path / "model"), "--images",
                                       str(tmp_path / "v2"), "-b", "inv2-ml", "--labels", str(refined),
                                       "--workers", "1"])  # fmt: skip
    assert result.exit_code != 0 and f"{names[1]}: not a recognised image format" in result.output

    (tmp_path / "v2" / "0" / names[0]).unlink()
    result = CliRunner().invoke(main, ["evaluate", "--model", str(tmp_path / "model"), "--images",
                                       str(tmp_path / "v2"), "-b", "inv2-ml", "--labels", str(refined)])  # fmt: skip
    assert result.exit_code != 0 and f"1 of the 5 images of 'inv2-ml' are missing, e.g. {names[0]}" in result.output


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_evaluate_refuses_every_malformed_file_in_one_line_with_exit_status_1(tmp_path):
    from test_evaluation_predictions import MALFORMED

    rng = np.random.default_rng(0)
    names = [f"{i:040x}.jpeg" for i in rng.choice(2**60, size=40, replace=False)]
    refined = tmp_path / "refined.json"
    refined.write_text(json.dumps({n: [str(i)] for i, n in enumerate(names)}))
    scores = rng.random((40, 1000)).astype(np.float32)
    for name, write, message in MALFORMED:
        path = tmp_path / name
        write(path, names, scores)
        result = CliRunner().invoke(main, ["evaluate", str(path), "-b", "inv2-ml", "--labels", str(refined)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (name, result.output)
        assert "Traceback" not in result.output and result.output.startswith(f"Error: {path}: "), result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert re.search(message, result.output), (name, result.output)


def test_evaluate_scores_float64_near_1e300_as_given(tmp_path):
    import torch

    names = [f"{i:040x}.jpeg" for i in range(4)]
    refined = tmp_path / "refined.json"
    refined.write_text(json.dumps({n: [str(i)] for i, n in enumerate(names)}))
    scores = np.full((4, 1000), 1e299)
    scores[np.arange(4), [0, 1, 7, 7]] = 1e300  # right, right, wrong, wrong; a float32 cast makes all inf
    torch.save(torch.from_numpy(scores), tmp_path / "huge.pt")
    result = run("evaluate", tmp_path / "huge.pt", "-b", "inv2-ml", "--labels", refined, "-o", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["inv2-ml"]["multilabel_top1"] == 50.0
